import pytest

pytest_plugins = ["arctic_core.testing.fixtures"]


@pytest.fixture(scope="session", autouse=True)
def _register_models():
    import arctic_swiftkv.models  # noqa: F401  (registers the SwiftKV Auto classes)
