"""Write params.yaml from conf/ exactly as `dvc exp run` would (Hydra composition), for `dvc repro`.

Usage: python scripts/compose_params.py [HYDRA_OVERRIDE ...]
  e.g. python scripts/compose_params.py model=tiny-llama task=jsonl
"""

import sys
from pathlib import Path

from omegaconf import OmegaConf

from neft.config import compose_params

if __name__ == "__main__":
    Path("params.yaml").write_text(OmegaConf.to_yaml(compose_params(sys.argv[1:])), encoding="utf-8")
