import pytest

pytest_plugins = ["arctic_core.testing.fixtures"]


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory):
    """A saved tiny BERT encoder (weights, config, the shipped tokenizer), no dropout."""
    from embed_support import save_tiny_encoder

    return save_tiny_encoder(tmp_path_factory.mktemp("encoder") / "bert", "bert", seed=0)
