"""params.yaml is what conf/ composes to, and it loads into one typed Config: every mistake in it
is reported at once, naming the key, the value and what is allowed."""

import os
from pathlib import Path

import pytest
import torch
import yaml

from neft.config import (
    TASK_SOURCES,
    ConfigError,
    RuntimeConfig,
    autocast_dtype,
    compose_config,
    compose_params,
    load_config,
    parse_config,
    resolve_device,
)
from neft.data.sources import BUILDERS
from neft.models import locate_wheel_file

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
        resolve_device(RuntimeConfig(device="cpu", deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        resolve_device(RuntimeConfig(device="cpu"))
    assert not torch.are_deterministic_algorithms_enabled()
