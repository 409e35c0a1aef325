"""Write params.yaml from conf/ exactly as `dvc exp run` would (Hydra composition), for `dvc repro`.

Usage: python scripts/compose_params.py [--keep] [HYDRA_OVERRIDE ...]
  e.g. python scripts/compose_params.py model=tiny-llama task=jsonl

--keep also makes the group choices among the overrides (model=, task=, machine=) the defaults in
conf/config.yaml. `dvc exp run -S ...` composes params.yaml afresh from conf/ and its own -S options,
so without this every experiment on another model or task has to repeat -S model=... -S task=....
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from neft.config import CONFIG_DIR, compose_params
from neft.errors import ConfigError


def keep_choices(overrides: list[str], config_dir: Path = CONFIG_DIR) -> list[str]:
    """Rewrite the `defaults:` entries of config.yaml for each `group=option` override of a config
    group; return the groups changed. Comments and every other line stay as they are."""
    config_file = Path(config_dir) / "config.yaml"
    text = config_file.read_text(encoding="utf-8")
    changed = []
    for override in overrides:
        group, _, option = override.partition("=")
        if not (Path(config_dir) / group).is_dir():
            continue  # a value such as ratio=0.12, not a group choice
        entry = re.compile(rf"^(  - {re.escape(group)}: )\S+", re.MULTILINE)
        if not entry.search(text):
            raise ConfigError(f"{config_file}: no `- {group}: ...` entry under defaults to keep {override!r} in")
        text = entry.sub(lambda match, option=option: match.group(1) + option, text, count=1)
        changed.append(group)
    config_file.write_text(text, encoding="utf-8")
    return changed


def main(args: list[str]) -> None:
    keep = "--keep" in args
    overrides = [arg for arg in args if arg != "--keep"]
    params = compose_params(overrides)  # refuses an unknown group option before anything is written
    if keep:
        keep_choices(overrides)
    Path("params.yaml").write_text(OmegaConf.to_yaml(params), encoding="utf-8")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
