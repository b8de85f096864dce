pytest_plugins = ["arctic_core.testing.fixtures"]
