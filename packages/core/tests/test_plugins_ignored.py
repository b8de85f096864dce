"""`ARCTIC_IGNORE_PLUGINS` leaves installed plugin distributions out, as if they were not installed."""

from __future__ import annotations

import os
import subprocess
import sys


def plugins_listing(ignore: str | None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ARCTIC_IGNORE_PLUGINS", None)
    if ignore is not None:
        env["ARCTIC_IGNORE_PLUGINS"] = ignore
    result = subprocess.run(
        [sys.executable, "-m", "arctic_core", "plugins"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_ignored_distributions_are_not_loaded():
    assert "arctic-sft" in plugins_listing(None)
    listing = plugins_listing("arctic_sft, some-other")  # names are normalised, spaces ignored
    assert "arctic-sft" not in listing and "arctic-swiftkv" in listing
