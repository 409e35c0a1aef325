"""dvc.yaml lists exactly the code each stage runs: its module and every project module that it
imports, transitively (no more, no less), so that editing any of them makes `dvc status` report the
stage. A missing dep would leave results silently stale; an extra one reruns stages for nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from neft.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("neft", "stages")


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name, or None for a third-party or standard module."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    path = ROOT.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def with_packages(name: str) -> list[str]:
    """`a.b.c` imports a, a.b and a.b.c: each package's __init__ runs too."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def direct_imports(path: Path) -> set[Path]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # function-level imports count too
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the project uses absolute ones"
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    files = {module_file(package) for name in names for package in with_packages(name)}
    return {file for file in files if file is not None}


def code_closure(module: str) -> set[str]:
    """Project files that `python -m module` runs: the module, its packages, all they import."""
    todo = [module_file(package) for package in with_packages(module)]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += direct_imports(path) - seen
    return {path.relative_to(ROOT).as_posix() for path in seen}


def stages() -> dict[str, dict]:
    """Every stage as DVC resolves dvc.yaml (anchors, stage vars, foreach, the committed params.yaml),
    so what is checked is what DVC runs and records in dvc.lock: name -> {cmd, deps, params}."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.addressing: {
            "cmd": stage.cmd,
            "deps": [dep.def_path for dep in stage.deps if not isinstance(dep, ParamsDependency)],
            "params": [key for dep in stage.deps if isinstance(dep, ParamsDependency) for key in dep.params],
        } for stage in repo.index.stages}


STAGES = stages()


def stage_module(command: str) -> str:
    words = command.split()
    assert words[:2] == ["python", "-m"], f"stage commands are `python -m stages.NAME`: {command}"
    return words[2]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_exactly_the_code_it_imports(name):
    stage = STAGES[name]
    listed = {dep for dep in stage["deps"] if dep.endswith(".py")}
    needed = code_closure(stage_module(stage["cmd"]))
    assert listed == needed, (f"{name}: missing {sorted(needed - listed)}, not imported {sorted(listed - needed)}; "
                              f"its code deps are:\n" + "\n".join(f"      - {dep}" for dep in sorted(needed)))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_no_stage_depends_on_a_code_directory(name):
    # A directory dep would make every module in it a dep, imported or not.
    for dep in STAGES[name]["deps"]:
        if (ROOT / dep).is_dir():
            assert not list((ROOT / dep).rglob("*.py")), f"{name}: {dep} holds code; list the imported files instead"


def test_the_closure_follows_imports_transitively():
    closure = code_closure("stages.report")
    # stages.report -> neft.report -> neft.significance -> neft.evaluation -> neft.tokenization
    assert {"stages/__init__.py", "stages/report.py", "neft/__init__.py", "neft/report.py", "neft/significance.py",
            "neft/evaluation.py", "neft/tokenization.py"} <= closure
    assert "neft/delta.py" in closure  # through neft.methods
    assert "neft/analysis.py" not in closure


def test_every_stage_is_checked():
    # DVC's resolution, not a reading of the YAML: a stage that failed to resolve would go unchecked.
    assert {"prepare_data", "probe", "train_neft@0.001", "evaluate_base", "evaluate@lora", "export@neft", "report"} <= set(STAGES)
    assert STAGES["train_lora@0.004"]["deps"][-1] == "artifacts/budget.json"
    assert STAGES["evaluate@neft"]["deps"][-1] == "artifacts/chosen/neft.json"


def test_config_stays_a_leaf_so_stages_that_only_read_it_do_not_depend_on_the_neuron_code():
    # neft.config names the choices that neft.masks, neft.models and neft.neurons implement, rather
    # than importing them (tests/test_config.py checks they agree).
    assert code_closure("neft.config") == {"neft/__init__.py", "neft/config.py", "neft/errors.py"}
    assert not {"neft/masks.py", "neft/models.py", "neft/neurons.py"} & code_closure("stages.prepare_data")


def test_the_per_method_stages_are_the_registry_s_methods():
    """dvc.yaml cannot read the registry: each compared method needs its train_<method> stage (one run
    per rate of its grid) and its evaluate and export entries, and nothing else has any."""
    grids = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]
    expected = {f"train_{method}@{rate}" for method in METHODS for rate in grids[method]["learning_rates"]}
    expected |= {f"{stage}@{method}" for stage in ("evaluate", "export") for method in METHODS}
    assert {name for name in STAGES if "@" in name} == expected
