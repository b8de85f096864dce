"""Suite-wide settings: nothing in the tests may touch the network."""

import os
import sys
import tempfile

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The suite starts many Python processes (`arctic` commands, launchers, ranks), each
# importing torch, transformers and DeepSpeed. Where PYTHONDONTWRITEBYTECODE is set (CI's machines
# set it) and the venv holds no bytecode, every one of them compiled those libraries from source
# again: about 7 CPU seconds a process. This process and its children write the bytecode once.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
# Tokenized-data caches of the whole run go to one throwaway folder, never the user's ~/.cache.
_CACHE = os.environ.setdefault("ARCTIC_CACHE_DIR", tempfile.mkdtemp(prefix="arctic-test-cache-"))
# A pytest-xdist worker inherits the controller's folder: each takes its own inside it, so that a
# test sees only what tests before it on its worker cached, as in a serial run.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["ARCTIC_CACHE_DIR"] = os.path.join(_CACHE, os.environ["PYTEST_XDIST_WORKER"])

# The test-only plugin `arctic-demo` (a method and a feature) exists only inside the tests: its
# source folder, which holds its module and its entry points (a .dist-info), goes on the path
# of this process and of every `arctic` process a test starts.
_DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "fixtures", "arctic-demo", "src")
sys.path.insert(0, _DEMO)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_DEMO, os.environ.get("PYTHONPATH")) if p)
