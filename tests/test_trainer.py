"""NeFT composes with the ecosystem: deltas attached to a transformers model train under
`transformers.Trainer`, with gradient checkpointing on and off, and save, load and merge exactly."""

import copy

import pytest
import torch
from conftest import random_batch, random_mask
from transformers import Trainer, TrainingArguments

from neft.delta import NeftConfig, apply_delta, attach_deltas, load_delta, merge_deltas, save_delta


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, vocab_size: int, size: int = 16):
        self.batch = random_batch(vocab_size, batch=size, length=12, seed=1)

    def __len__(self) -> int:
        return len(self.batch["input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.batch.items()}


def train_with_trainer(model, mask, out_dir, gradient_checkpointing: bool):
    model = copy.deepcopy(model)
    wrappers = attach_deltas(model, mask)
    arguments = TrainingArguments(
        output_dir=str(out_dir), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, seed=0, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=RandomTokens(model.config.vocab_size))
    trainer.train()
    assert model.is_gradient_checkpointing == gradient_checkpointing
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return model, wrappers, losses


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_trainer_trains_only_the_deltas_and_the_result_round_trips(tiny_model, tmp_path, gradient_checkpointing):
    mask = random_mask(tiny_model, per_matrix=5)
    model, wrappers, losses = train_with_trainer(tiny_model, mask, tmp_path / "run", gradient_checkpointing)
    assert len(losses) == 4
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(any(p is d for w in wrappers.values() for d in (w.row_delta, w.column_delta)) for p in trained)
    assert all(delta.abs().min() > 0 for w in wrappers.values() for delta in (w.row_delta, w.column_delta) if delta.numel())

    save_delta(wrappers, tmp_path / "delta", NeftConfig.for_mask(mask, "tiny"))
    merged_in_memory = merge_deltas(model, wrappers).state_dict()
    merged_from_file = apply_delta(copy.deepcopy(tiny_model), load_delta(tmp_path / "delta")).state_dict()
    base = tiny_model.state_dict()
    changed = set()
    for name, tensor in merged_in_memory.items():
        assert torch.equal(tensor, merged_from_file[name]), name
        if not torch.equal(tensor, base[name]):
            changed.add(name)
    assert changed == {name + ".weight" for name in wrappers}


def test_gradient_checkpointing_gives_the_same_deltas(tiny_model, tmp_path):
    mask = random_mask(tiny_model, per_matrix=5)
    _, plain, plain_losses = train_with_trainer(tiny_model, mask, tmp_path / "plain", gradient_checkpointing=False)
    _, checkpointed, checkpointed_losses = train_with_trainer(tiny_model, mask, tmp_path / "ckpt", gradient_checkpointing=True)
    assert checkpointed_losses == pytest.approx(plain_losses, rel=1e-5)
    for name, wrapper in plain.items():
        torch.testing.assert_close(checkpointed[name].row_delta, wrapper.row_delta, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(checkpointed[name].column_delta, wrapper.column_delta, rtol=1e-5, atol=1e-7)
