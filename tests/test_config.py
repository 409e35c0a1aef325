"""params.yaml is what conf/ composes to, and it loads into one typed Config: every mistake in it
is reported at once, naming the key, the value and what is allowed."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import neft.config
import neft.masks
import neft.models
import neft.neurons
from neft.config import (
    TASK_SOURCES,
    ConfigError,
    RuntimeConfig,
    compose_config,
    compose_params,
    load_config,
    parse_config,
)
from neft.data.sources import BUILDERS
from neft.models import locate_wheel_file
from neft.runtime import autocast_dtype, resolve_device, setup_runtime

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_matches_conf_and_loads():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == compose_params(), "params.yaml drifted from conf/: run python scripts/compose_params.py"
    assert load_config(ROOT / "params.yaml").train.steps == committed["train"]["steps"]


MODELS = sorted(path.stem for path in (ROOT / "conf/model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("task", sorted(path.stem for path in (ROOT / "conf/task").glob("*.yaml")))
def test_every_model_and_task_composes_into_a_valid_config(model, task):
    config = compose_config([f"model={model}", f"task={task}"])
    assert config.model.name == model and config.task.name == task
    assert all(rate > 0 for method in ("full", "neft", "lora") for rate in getattr(config.methods, method).learning_rates)


@pytest.mark.parametrize("model", MODELS)
def test_the_8_gpu_machine_composes_with_every_model(model):
    config = compose_config([f"model={model}", "machine=gpu8"])
    assert (config.runtime.device, config.runtime.processes, config.runtime.strategy) == ("cuda", 8, "fsdp")
    assert config.train.batch_size % 8 == 0
    assert compose_config([f"model={model}"]).runtime.processes == 1, "one process unless the machine says otherwise"


def test_every_task_source_has_a_builder():
    assert set(BUILDERS) == set(TASK_SOURCES)


def test_gpu_models_search_rates_around_the_paper_hyperparameters():
    config = compose_config(["model=llama2-7b-chat", "task=wmt19-en-zh"])
    assert config.model.dtype == "bfloat16"
    # Full FT's grid brackets the paper's 2e-5; NeFT's and LoRA's reach higher, as they wanted on the models measured.
    full, neft, lora = (getattr(config.methods, method).learning_rates for method in ("full", "neft", "lora"))
    assert min(full) < 2e-5 < max(full) and min(neft) <= 2e-5 < max(neft) and min(lora) > 2e-5
    assert config.task.metric_options.bleu_tokenize == "zh"


@pytest.mark.parametrize("override, message", [("model=gpt5", "model/gpt5"), ("task=poetry", "task/poetry")])
def test_unknown_model_or_task_names_the_missing_option(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_params([override])


def test_ratio_override_reaches_the_config():
    assert compose_config(["ratio=0.12"]).ratio == 0.12


def with_changes(**changes):
    params = compose_params()
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        target = params
        for section in sections:
            target = target[section]
        if value is KeyError:
            del target[key]
        else:
            target[key] = value
    return params


@pytest.mark.parametrize("changes, message", [
    ({"ratio": 0}, "ratio = 0: must be a number in (0, 1)"),
    ({"ratio": 1.5}, "ratio = 1.5: must be a number in (0, 1)"),
    ({"ratio": float("nan")}, "ratio = nan: must be a number in (0, 1)"),
    ({"ratio": "six"}, "ratio = 'six': must be a number"),
    ({"ratio": True}, "ratio = True: must be a number"),
    ({"seed": -1}, "seed = -1: must be a value >= 0"),
    ({"seed": 1.5}, "seed = 1.5: must be an integer"),
    ({"train__steps": 0}, "train.steps = 0: must be an integer >= 1"),
    ({"train__warmup_steps": 60}, "train.warmup_steps = 60: must be below train.steps (60)"),
    ({"mask__kinds": ["in", "sideways"]}, "mask.kinds = ['in', 'sideways']: must be a non-empty list of distinct kinds"),
    ({"mask__strategy": "best"}, "mask.strategy = 'best': must be one of ['cosine', 'reversed', 'random']"),
    ({"score__form": "fp16"}, "score.form = 'fp16': must be one of ['stable', 'fp32']"),
    ({"runtime__device": "tpu"}, "runtime.device = 'tpu': must be one of ['auto', 'cpu', 'cuda']"),
    ({"runtime__autocast": "float8"}, "runtime.autocast = 'float8': must be auto, null or one of"),
    ({"model__source": "ftp"}, "model.source = 'ftp': must be one of ['gguf_wheel', 'hub', 'random_init']"),
    ({"model__wheel": KeyError}, "model.wheel is missing: model.source = 'gguf_wheel' needs it"),
    ({"task__kind": "poetry"}, "task.kind = 'poetry': must be one of ['translation', 'summarization']"),
    ({"task__max_examples": {"train": 10}}, "task.max_examples.valid: missing"),
    ({"task__test_books": KeyError}, "task.test_books missing: task.source = 'sword' needs them"),
    ({"methods__lora__dropout": 1.0}, "methods.lora.dropout = 1.0: must be a number in [0, 1)"),
    ({"methods__neft__learning_rates": []}, "methods.neft.learning_rates = []: must be a non-empty list of distinct numbers > 0"),
    ({"methods__full__learning_rates": [1e-4, 1e-4]}, "methods.full.learning_rates = [0.0001, 0.0001]: must be a non-empty list"),
    ({"methods__lora__learning_rates": [-1e-3]}, "methods.lora.learning_rates = [-0.001]: must be a non-empty list"),
    ({"train__batchsize": 8}, "train.batchsize: unknown key; train has ["),
])
def test_each_mistake_names_the_key_the_value_and_what_is_allowed(changes, message):
    with pytest.raises(ConfigError) as error:
        parse_config(with_changes(**changes))
    assert message in str(error.value)
    assert "\n" not in str(error.value)  # a stage prints it as one line


def test_every_mistake_is_reported_at_once():
    with pytest.raises(ConfigError, match=r"4 problem\(s\): .*ratio.*mask.strategy.*train.steps.*evaluate.batch_size"):
        parse_config(with_changes(ratio=2, mask__strategy="best", train__steps=-1, evaluate__batch_size="8"))


def test_missing_model_wheel_names_the_install_command():
    with pytest.raises(ConfigError, match="package .no-such-wheel. is not installed; run `make setup`"):
        locate_wheel_file("no-such-wheel", "x.gguf")


def test_cuda_without_a_gpu_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="runtime.device = 'cuda' but no CUDA device is visible"):
        resolve_device(RuntimeConfig(device="cuda"))


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_autocast_is_bfloat16_only_where_the_cpu_has_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    assert autocast_dtype(RuntimeConfig(device="cpu", autocast="auto")) == expected
    assert autocast_dtype(RuntimeConfig(device="cpu", autocast="bfloat16")) == torch.bfloat16
    assert autocast_dtype(RuntimeConfig(device="cpu", autocast=None)) is None


def test_the_deterministic_switch_sets_torchs_deterministic_algorithms(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        setup_runtime(RuntimeConfig(device="cpu", deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        setup_runtime(RuntimeConfig(device="cpu"))
    assert not torch.are_deterministic_algorithms_enabled()


def test_resolving_the_device_changes_nothing(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    resolve_device(RuntimeConfig(device="cpu", deterministic=True))
    autocast_dtype(RuntimeConfig(device="cpu", deterministic=True))
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


# --- config.py is a leaf: cheap to import, no side effects, and its names agree with the code ---


def imported_by(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after `statement`, and whether it changed the environment."""
    code = (f"import os, sys; before = dict(os.environ); {statement}; "
            "print(' '.join(sorted(sys.modules))); print(dict(os.environ) == before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.split("\n")
    assert out[1] == "True", f"{statement} changed the environment"
    return set(out[0].split())


@pytest.mark.parametrize("statement", ["import neft", "import neft.config", "import neft.config; neft.config.load_config('params.yaml')"])
def test_reading_the_config_imports_neither_torch_nor_matplotlib(statement):
    modules = imported_by(statement)
    heavy = {"torch", "transformers", "matplotlib", "pandas", "sacrebleu"} & modules
    assert not heavy, f"{statement} imports {sorted(heavy)}"
    assert {module for module in modules if module.startswith("neft.")} <= {"neft.config", "neft.errors"}


@pytest.mark.parametrize("module", ["neft.report", "neft.analysis", "neft.comparison", "neft.experiments"])
def test_importing_a_plotting_module_leaves_matplotlibs_backend_alone(module):
    # The backend is the runtime's choice (neft.runtime.setup_runtime), not an import's side effect.
    code = (f"import matplotlib; matplotlib.rcParams['backend'] = 'svg'; import {module}; "
            "print(matplotlib.rcParams['backend'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "svg"


def test_a_stage_draws_plots_to_files(monkeypatch):
    import matplotlib

    from stages._common import plots_to_files

    monkeypatch.delenv("MPLBACKEND", raising=False)
    before = matplotlib.get_backend()
    try:
        matplotlib.use("svg")
        plots_to_files()
        assert matplotlib.get_backend().lower() == "agg" and os.environ["MPLBACKEND"] == "Agg"
    finally:
        matplotlib.use(before)


def test_the_configs_names_agree_with_the_modules_that_implement_them():
    from sacrebleu.metrics.bleu import _TOKENIZERS

    assert neft.config.STRATEGIES == neft.masks.STRATEGIES
    assert neft.config.DTYPES == neft.models.DTYPES
    assert neft.config.MODEL_SOURCES == neft.models.SOURCES
    assert neft.config.NEURON_KINDS == tuple(neft.neurons.NEURON_KINDS)
    assert neft.config.SCORE_FORMS == neft.neurons.SCORE_FORMS
    assert set(neft.config.BLEU_TOKENIZERS) == set(_TOKENIZERS)


# --- issue 38: checked when params.yaml loads, not after the heavy work ---


def test_an_unknown_bleu_tokenizer_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"task.metric_options.bleu_tokenize = 'bogus': must be one of sacreBLEU's tokenizers"):
        parse_config(with_changes(task__metric_options={"bleu_tokenize": "bogus"}))


@pytest.mark.parametrize(("architecture", "message"), [
    ({"hidden_size": 63}, r"model.architecture.hidden_size = 63: must be a multiple of model.architecture.num_attention_heads \(4\), "
                          r"e.g. 60 or 64; or set model.architecture.head_dim"),
    ({"num_key_value_heads": 3}, r"model.architecture.num_attention_heads = 4: must be a multiple of "
                                 r"model.architecture.num_key_value_heads \(3\)"),
    ({"num_hidden_layers": 0}, r"model.architecture.num_hidden_layers = 0: must be an integer >= 1"),
    ({"intermediate_size": "wide"}, r"model.architecture.intermediate_size = 'wide': must be an integer >= 1"),
])
def test_a_random_init_architecture_that_cannot_be_built_is_refused(architecture, message):
    params = compose_params(["model=tiny-llama", "task=jsonl"])
    params["model"]["architecture"].update(architecture)
    with pytest.raises(ConfigError, match=message):
        parse_config(params)


def test_gemma3s_head_dim_lets_the_hidden_size_differ_from_heads_times_head_dim():
    params = compose_params(["model=tiny-gemma3", "task=jsonl"])
    params["model"]["architecture"]["hidden_size"] = 72
    assert parse_config(params).model.architecture["hidden_size"] == 72


@pytest.mark.parametrize(("written", "value"), [("1e-3", 0.001), ("5E-2", 0.05), ("1.0e-3", 0.001), (".5", 0.5)])
def test_params_yaml_reads_numbers_as_yaml_1_2_does(tmp_path, written, value):
    # PyYAML (YAML 1.1) reads 1e-3 as a string; DVC and Hydra read it as a number.
    text = (ROOT / "params.yaml").read_text()
    assert "\nratio: " in text
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(f"ratio: {written}" if line.startswith("ratio: ") else line for line in text.split("\n")))
    assert load_config(path).ratio == value


def test_a_yaml_syntax_error_is_one_line_naming_the_file_line_and_column(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nratio: 0.06\ntrain:\n  steps: [1, 2\n  batch_size: 4\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid YAML at line 5, column ") and "fix it there" in message


def mutated(change):
    def text() -> str:
        params = compose_params(["model=tiny-llama", "task=jsonl"])
        change(params)
        return yaml.safe_dump(params)
    return text


def broken_yaml() -> str:
    return yaml.safe_dump(compose_params(["model=tiny-llama", "task=jsonl"])).replace("ratio: ", "ratio: [", 1)


@pytest.mark.parametrize(("stage", "params_text", "message"), [
    (["evaluate", "base"], mutated(lambda p: p["task"]["metric_options"].update(bleu_tokenize="bogus")),
     r"task.metric_options.bleu_tokenize = 'bogus': must be one of sacreBLEU's tokenizers \['none', 'zh', '13a'"),
    (["prepare_model"], mutated(lambda p: p["model"]["architecture"].update(hidden_size=63)),
     r"model.architecture.hidden_size = 63: must be a multiple of model.architecture.num_attention_heads \(4\), e.g. 60 or 64"),
    (["mask"], broken_yaml, r"params.yaml: not valid YAML at line \d+, column \d+: .*; fix it there"),
], ids=["bleu_tokenize: bogus", "architecture hidden_size 63", "YAML syntax error"])
def test_a_config_mistake_stops_the_stage_with_one_line_before_any_work(stage, params_text, message, tmp_path, monkeypatch, capsys):
    """As tests/test_bad_input.py's rows: run directly, the stage exits 2 with one line naming the
    field and the fix, and writes nothing."""
    import runpy

    (tmp_path / "params.yaml").write_text(params_text())
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [f"stages.{stage[0]}", *stage[1:]])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_module(f"stages.{stage[0]}", run_name="__main__")
    error = capsys.readouterr().err
    assert exit_status.value.code == 2, error
    assert error.count("\n") == 1 and error.startswith("error: "), error
    assert re.search(message, error), error
    assert sorted(tmp_path.rglob("*")) == before


def test_compose_params_keep_makes_the_model_and_task_stick_for_later_experiments(tmp_path):
    spec = importlib.util.spec_from_file_location("compose_params_script", ROOT / "scripts/compose_params.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    before = (conf / "config.yaml").read_text().splitlines()
    assert script.keep_choices(["model=tiny-llama", "task=jsonl", "ratio=0.12"], conf) == ["model", "task"]
    after = (conf / "config.yaml").read_text().splitlines()
    assert [(old, new) for old, new in zip(before, after, strict=True) if old != new] == [
        ("  - model: smollm2-135m-instruct", "  - model: tiny-llama"), ("  - task: bible-es-en", "  - task: jsonl")]
    # What `dvc exp run -S ratio=0.12` composes afterwards: still the kept model and task.
    later = compose_params(["ratio=0.12"], conf)
    assert (later["model"]["name"], later["task"]["name"], later["ratio"]) == ("tiny-llama", "jsonl", 0.12)


def test_compose_params_refuses_an_unknown_choice_and_keeps_nothing(tmp_path):
    config_before = (ROOT / "conf/config.yaml").read_bytes()
    result = subprocess.run([sys.executable, str(ROOT / "scripts/compose_params.py"), "--keep", "model=nowhere"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: In 'config': Could not find 'model/nowhere'")
    assert (ROOT / "conf/config.yaml").read_bytes() == config_before and not (tmp_path / "params.yaml").exists()
