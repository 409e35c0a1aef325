"""DVC stage entry points, one module per stage: `python -m stages.<name> [ARG]` from the project root.

Each module owns its stage's orchestration (params in, artifacts out, atomically); the work itself is
in the `neft` library. Importing the package makes the run offline before any hub client loads.
"""

import os

for _variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "DVC_NO_ANALYTICS"):
    os.environ.setdefault(_variable, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
