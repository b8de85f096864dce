"""Suite-wide settings: nothing in the tests may touch the network."""

import os
import tempfile

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Tokenized-data caches of the whole run go to one throwaway folder, never the user's ~/.cache.
os.environ.setdefault("ARCTIC_CACHE_DIR", tempfile.mkdtemp(prefix="arctic-test-cache-"))
