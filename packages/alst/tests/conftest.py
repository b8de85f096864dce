import pytest

pytest_plugins = ["arctic_core.testing.fixtures"]


@pytest.fixture(autouse=True)
def _restore_attention():
    """Tests that install the Ulysses attention leave transformers' functions as they found them."""
    yield
    from arctic_alst import ulysses

    ulysses.uninstall()
