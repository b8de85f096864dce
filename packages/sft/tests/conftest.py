import pytest

pytest_plugins = ["arctic_core.testing.fixtures"]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """Saved tiny Llamas: untied and tied output embeddings."""
    from arctic_core.testing import save_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {
        "untied": save_tiny_model(root / "untied", "llama", seed=0),
        "tied": save_tiny_model(root / "tied", "llama", seed=0, tie_word_embeddings=True),
    }


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory):
    from arctic_core.testing.datasets import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "chat.jsonl", "chat", n=64, seed=0)
