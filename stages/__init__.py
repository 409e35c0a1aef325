"""DVC stage entry points, one module per stage: `python -m stages.<name> [ARG]` from the project root.

Each module owns its stage's orchestration (params in, artifacts out, atomically); the work itself is
in the `neft` library. Importing the package makes the run offline before any hub client loads.
"""

from neft import use_offline_environment

use_offline_environment()
