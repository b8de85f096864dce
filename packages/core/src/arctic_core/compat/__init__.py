"""Checks (and, as a last resort, patches) that pin down how Arctic relies on other libraries.

Each module names the library behaviour it depends on and has a check that fails loudly
when a new version changes it; the tests run those checks.
"""
