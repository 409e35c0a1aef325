"""NeFT composes with the ecosystem: deltas attached to a transformers model train under
`transformers.Trainer`, with gradient checkpointing on and off, and save, load and merge exactly."""

import copy

import pytest
import torch
from conftest import random_batch, random_mask
from transformers import Trainer, TrainingArguments

from neft.adapter import NeftConfig, NeftModel, get_neft_model


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, vocab_size: int, size: int = 16):
        self.batch = random_batch(vocab_size, batch=size, length=12, seed=1)

    def __len__(self) -> int:
        return len(self.batch["input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.batch.items()}


def train_with_trainer(model, mask, out_dir, gradient_checkpointing: bool):
    model = get_neft_model(copy.deepcopy(model), NeftConfig(mask, base_model="tiny"))
    arguments = TrainingArguments(
        output_dir=str(out_dir), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, seed=0, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=RandomTokens(model.config.vocab_size))
    trainer.train()
    assert model.is_gradient_checkpointing == gradient_checkpointing
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return model, losses


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_trainer_trains_only_the_deltas_and_the_result_round_trips(tiny_model, tmp_path, gradient_checkpointing):
    mask = random_mask(tiny_model, per_matrix=5)
    model, losses = train_with_trainer(tiny_model, mask, tmp_path / "run", gradient_checkpointing)
    assert len(losses) == 4
    deltas = model.trainable_parameters()
    trained = [p for p in model.parameters() if p.requires_grad and p.numel()]
    assert trained and all(any(p is d for d in deltas) for p in trained)
    assert all(delta.abs().min() > 0 for delta in deltas)

    model.save_pretrained(tmp_path / "delta")
    wrapped = set(model.deltas)
    merged_in_memory = model.merge_and_unload().state_dict()
    merged_from_file = NeftModel.from_pretrained(copy.deepcopy(tiny_model), tmp_path / "delta").merge_and_unload().state_dict()
    base = tiny_model.state_dict()
    changed = set()
    for name, tensor in merged_in_memory.items():
        assert torch.equal(tensor, merged_from_file[name]), name
        if not torch.equal(tensor, base[name]):
            changed.add(name)
    assert changed == {name + ".weight" for name in wrapped}


def test_gradient_checkpointing_gives_the_same_deltas(tiny_model, tmp_path):
    mask = random_mask(tiny_model, per_matrix=5)
    plain, plain_losses = train_with_trainer(tiny_model, mask, tmp_path / "plain", gradient_checkpointing=False)
    checkpointed, checkpointed_losses = train_with_trainer(tiny_model, mask, tmp_path / "ckpt", gradient_checkpointing=True)
    assert checkpointed_losses == pytest.approx(plain_losses, rel=1e-5)
    for plain_delta, checkpointed_delta in zip(plain.trainable_parameters(), checkpointed.trainable_parameters(), strict=True):
        torch.testing.assert_close(checkpointed_delta, plain_delta, rtol=1e-5, atol=1e-7)
