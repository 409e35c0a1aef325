"""`pip install neft` (no extras) is enough for `import neft` and the adapter: importing them loads no
distribution that the `pipeline` extra adds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def distribution_name(requirement: str) -> str:
    """`hydra-core>=1.3; extra == "x"` -> `hydra_core` (names compared normalised)."""
    return re.sub(r"[-_.]+", "_", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def installed_closure(names: list[str]) -> set[str]:
    """These distributions and everything they require (without extras), as far as installed."""
    seen: set[str] = set()
    todo = [distribution_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            needed = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [distribution_name(item) for item in needed if "extra ==" not in item]
    return seen


def loaded_distributions(code: str) -> set[str]:
    """The distributions whose modules a fresh interpreter has loaded after running `code`."""
    probe = (f"{code}\nimport json, sys\nfrom importlib.metadata import packages_distributions\n"
             "owners = packages_distributions()\n"
             "print(json.dumps(sorted({d for m in list(sys.modules) for d in owners.get(m.partition('.')[0], [])})))")
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return {distribution_name(name) for name in json.loads(output.splitlines()[-1])}


def test_the_core_loads_nothing_only_the_pipeline_extra_brings():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = installed_closure(project["dependencies"])
    # What the extra names, less what the core needs anyway (tqdm comes with transformers). Not their
    # own requirements: torch imports some of those (dill) whenever they happen to be installed.
    pipeline_only = {distribution_name(name) for name in project["optional-dependencies"]["pipeline"]} - core
    assert {"pandas", "matplotlib", "sacrebleu", "hydra_core"} <= pipeline_only
    loaded = loaded_distributions("import neft\nfrom neft.adapter import NeftConfig, NeftModel, get_neft_model")
    assert not loaded & pipeline_only, f"the core imports pipeline-only packages: {sorted(loaded & pipeline_only)}"
