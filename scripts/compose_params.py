"""Write params.yaml from conf/ exactly as `dvc exp run` would (Hydra composition), for `dvc repro`.

Usage: python scripts/compose_params.py [HYDRA_OVERRIDE ...]
  e.g. python scripts/compose_params.py model=tiny-llama task=jsonl
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from neft.config import compose_params  # noqa: E402

if __name__ == "__main__":
    Path("params.yaml").write_text(OmegaConf.to_yaml(compose_params(sys.argv[1:])), encoding="utf-8")
