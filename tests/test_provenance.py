"""Every artifact records the fingerprints of what it was made from, and loading checks them: a
mask, delta or adapter made for another base model is refused even when every shape agrees."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCHITECTURE, inside, random_mask

from neft.artifacts import BASE_MODEL_DIR, MASK_FILE, PROBE_DIR, SCORES_DIR, chosen_run, eval_dir, weights_dir
from neft.io import CorruptFileError, load_safetensors
from neft.methods import load_trained_model, lora_finetuning, neft_finetuning, save_lora_adapter
from neft.models import build_random_model, load_model
from neft.provenance import ProvenanceError, model_fingerprint, record_fingerprint, write_made_from
from stages.train import train


def saved_base(directory: Path, seed: int) -> tuple[Path, str]:
    build_random_model(TINY_ARCHITECTURE, vocab_size=259, seed=seed).save_pretrained(directory)
    return directory, record_fingerprint(directory)


@pytest.fixture
def two_bases(tmp_path):
    """Two tiny Llamas of identical shape and different weights, each with its fingerprint."""
    return saved_base(tmp_path / "base_a", 0), saved_base(tmp_path / "base_b", 1)


def refused_with_both(error: pytest.ExceptionInfo, recorded: str, actual: str) -> bool:
    return recorded[:16] in str(error.value) and actual[:16] in str(error.value)


def test_a_delta_for_another_base_of_the_same_shape_is_refused(two_bases, tmp_path):
    (base_a, fingerprint_a), (base_b, fingerprint_b) = two_bases
    model = build_random_model(TINY_ARCHITECTURE, vocab_size=259, seed=0)
    trainable = neft_finetuning(model, random_mask(model, per_matrix=4), "tiny-a", {"base_model": fingerprint_a, "mask": "m" * 64})
    with torch.no_grad():
        for parameter in trainable.parameters:
            parameter.fill_(0.01)
    trainable.save(tmp_path / "delta")
    assert load_trained_model("neft", base_a, tmp_path / "delta") is not None
    with pytest.raises(ProvenanceError) as refused:
        load_trained_model("neft", base_b, tmp_path / "delta")
    assert refused_with_both(refused, fingerprint_a, fingerprint_b)


def test_a_lora_adapter_for_another_base_of_the_same_shape_is_refused(two_bases, tmp_path):
    (base_a, fingerprint_a), (base_b, fingerprint_b) = two_bases
    trainable = lora_finetuning(build_random_model(TINY_ARCHITECTURE, vocab_size=259, seed=0), rank=2, alpha=16)
    save_lora_adapter(trainable.model, tmp_path / "adapter")
    write_made_from(tmp_path / "adapter", {"base_model": fingerprint_a})
    assert load_trained_model("lora", base_a, tmp_path / "adapter") is not None
    with pytest.raises(ProvenanceError) as refused:
        load_trained_model("lora", base_b, tmp_path / "adapter")
    assert refused_with_both(refused, fingerprint_a, fingerprint_b)


def test_the_pipeline_records_what_each_artifact_was_made_from(project):
    with inside(project[0]):
        base, probe = model_fingerprint(BASE_MODEL_DIR), model_fingerprint(PROBE_DIR)
        assert base != probe
        made_from = {"base_model": base, "probe": probe}
        assert json.loads((SCORES_DIR / "summary.json").read_text())["made_from"] == made_from
        assert json.loads(MASK_FILE.read_text())["made_from"] == made_from
        delta_config = json.loads((weights_dir(chosen_run("neft")) / "neft_config.json").read_text())
        assert delta_config["base_fingerprint"] == base and len(delta_config["mask_fingerprint"]) == 64
        assert json.loads((weights_dir(chosen_run("lora")) / "made_from.json").read_text())["base_model"] == base
        for method in ("full", "neft", "lora"):
            weights = json.loads((eval_dir(method) / "metrics.json").read_text())["weights"]
            assert weights == {"base_model": base, "trained": model_fingerprint(weights_dir(chosen_run(method)))}


def test_training_neft_on_a_mask_from_another_base_is_refused_before_any_work(project):
    directory, config, _ = project
    with inside(directory):
        original = MASK_FILE.read_bytes()
        mask = json.loads(original)
        mask["made_from"]["base_model"] = "f" * 64
        MASK_FILE.write_text(json.dumps(mask))
        try:
            with pytest.raises(ProvenanceError, match=r"the mask .* was made from ffffffffffffffff\.\.\., but the base model"):
                train("neft", config)
        finally:
            MASK_FILE.write_bytes(original)


def test_weights_swapped_under_a_fingerprint_are_refused_and_a_touch_alone_is_not(two_bases):
    """Readers trust fingerprint.json while each file has the recorded size and is no newer than the
    record; otherwise they hash again, and refuse weights whose hash differs from the record."""
    (base_a, fingerprint_a), (base_b, fingerprint_b) = two_bases
    record_bytes = (base_a / "fingerprint.json").read_bytes()
    record = json.loads(record_bytes)
    assert record == {"sha256": fingerprint_a, "files": {"model.safetensors": (base_a / "model.safetensors").stat().st_size}}
    assert record_fingerprint(base_a) == fingerprint_a and (base_a / "fingerprint.json").read_bytes() == record_bytes, \
        "no times in the record: the same weights give the same bytes, which DVC can skip on"
    assert model_fingerprint(base_a) == fingerprint_a
    weights = base_a / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # as a dvc checkout may leave it
    assert model_fingerprint(base_a) == fingerprint_a, "same bytes, new time: hashed again and accepted"
    shutil.copyfile(base_b / "model.safetensors", weights)  # the other model's weights, same size
    with pytest.raises(ProvenanceError, match=rf"{base_a}: the weights are not the ones .*fingerprint.json records "
                                              rf"\(sha256 {fingerprint_b[:16]}\.\.\., recorded {fingerprint_a[:16]}\.\.\.\)"):
        model_fingerprint(base_a)
    (base_a / "fingerprint.json").write_text(json.dumps({"sha256": fingerprint_a}))  # as written before sizes and times
    with pytest.raises(ProvenanceError, match="the weights are not the ones"):
        model_fingerprint(base_a)
    assert model_fingerprint(base_b) == fingerprint_b


def test_a_truncated_safetensors_file_is_one_user_error_naming_it(two_bases, tmp_path):
    (base_a, _), _ = two_bases
    weights = base_a / "model.safetensors"
    assert set(load_safetensors(weights)) and load_model(base_a) is not None
    content = weights.read_bytes()
    for cut in (0, 7, 100, len(content) // 2, len(content) - 1):
        weights.write_bytes(content[:cut])
        with pytest.raises(CorruptFileError, match=rf"^{weights}: (not a readable|truncated or corrupt) .safetensors file "
                                                   rf"\(.*{cut} bytes.*\); restore it, or rerun the stage that writes it"):
            load_safetensors(weights)
        with pytest.raises(CorruptFileError, match=rf"^{weights}: "):
            load_model(base_a)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(CorruptFileError, match=r"garbage.safetensors: not a readable .safetensors file"):
        load_safetensors(garbage)
