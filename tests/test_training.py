import copy

import pytest
import torch
from conftest import random_batch

from neft.data.records import Example
from neft.errors import UserError
from neft.methods import full_finetuning, lora_finetuning
from neft.tokenization import encode_all, training_batches
from neft.training import Checkpoints, TrainSettings, backward_on_batch, causal_lm_loss, linear_schedule, train


def cycle(batches):
    while True:
        yield from batches


def test_linear_schedule_warms_up_then_decays_to_zero():
    multiplier = linear_schedule(warmup_steps=2, total_steps=10)
    values = [multiplier(step) for step in range(10)]
    assert values[0] < values[1] < values[2] == 1.0
    assert values[2:] == sorted(values[2:], reverse=True) and values[-1] > 0
    assert linear_schedule(0, 10)(10) == 0.0


@pytest.mark.parametrize("bad, message", [
    ({"steps": 0}, "steps"), ({"learning_rate": 0}, "learning_rate"), ({"warmup_steps": 5}, "warmup"),
])
def test_bad_settings_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**{"steps": 5, "learning_rate": 1e-3, **bad})


def seeded_lora_run(tiny_model, tokenizer, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
    """What a seed decides in a training stage: the batch order, LoRA's initialisation (and dropout), the losses."""
    items = encode_all(tokenizer, [Example(str(i), f"prompt number {i}", f"answer {i}") for i in range(12)], max_length=64)
    batches = training_batches(items, 4, tokenizer.pad_token_id, seed)
    order = [next(batches)["input_ids"] for _ in range(6)]  # two epochs
    torch.manual_seed(seed)  # as the training stage does before building the model
    trainable = lora_finetuning(copy.deepcopy(tiny_model), rank=2, alpha=16, dropout=0.1)
    initial = [p.detach().clone() for p in trainable.parameters]
    settings = TrainSettings(steps=6, learning_rate=1e-2)
    losses = train(trainable.model, trainable.parameters, training_batches(items, 4, tokenizer.pad_token_id, seed), settings).losses
    return order, initial, losses


def test_same_seed_same_batches_initialisation_and_losses_other_seed_other(tiny_model, tokenizer):
    order, initial, losses = seeded_lora_run(tiny_model, tokenizer, seed=3)
    again = seeded_lora_run(tiny_model, tokenizer, seed=3)
    other = seeded_lora_run(tiny_model, tokenizer, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(order, again[0], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(initial, again[1], strict=True))
    assert losses == again[2]
    assert not all(torch.equal(a, b) for a, b in zip(order, other[0], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(initial, other[1], strict=True))
    assert losses != other[2]


def test_best_validation_step_is_restored(tiny_model):
    train_batch = random_batch(tiny_model.config.vocab_size, seed=1)
    valid = [random_batch(tiny_model.config.vocab_size, seed=2)]
    # A learning rate far too high: validation loss gets worse after the first evaluation.
    settings = TrainSettings(steps=6, learning_rate=0.5, eval_every=1, max_grad_norm=None)
    model = copy.deepcopy(tiny_model)
    result = train(model, full_finetuning(model).parameters, cycle([train_batch]), settings, valid)
    assert len(result.valid_losses) == 6
    best_step, best_loss = min(result.valid_losses, key=lambda pair: pair[1])
    assert (result.best_step, result.best_valid_loss) == (best_step, best_loss)
    assert result.best_step < settings.steps and result.valid_losses[-1][1] > best_loss, "the test needs a best step before the last"
    from neft.training import validation_loss

    assert validation_loss(model, valid) == pytest.approx(best_loss, rel=1e-5)


def test_loss_on_labelled_positions_only_equals_transformers_loss(tiny_model):
    batch = random_batch(tiny_model.config.vocab_size, batch=3, length=10, seed=1)
    batch["labels"][:, :4] = -100  # the prompt
    batch["labels"][1, 7:] = -100  # padding of a shorter row
    batch["attention_mask"][1, 7:] = 0
    ours = causal_lm_loss(tiny_model, batch, None)
    ours.backward()
    ours_gradient = tiny_model.get_input_embeddings().weight.grad.clone()
    tiny_model.zero_grad()
    reference = tiny_model(**batch).loss
    reference.backward()
    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-6)
    torch.testing.assert_close(ours_gradient, tiny_model.get_input_embeddings().weight.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("micro_batches", [2, 4])
def test_gradient_accumulation_gives_the_whole_batchs_gradient_and_loss(tiny_model, micro_batches):
    """Passes with different numbers of labelled tokens are weighted by them, so the accumulated
    gradient is that of the whole batch's token-mean loss, not a mean of the passes' means."""
    batch = random_batch(tiny_model.config.vocab_size, batch=4, length=12)
    for row, unlabelled in enumerate([0, 3, 6, 9]):  # a different label count in each pass
        batch["labels"][row, :unlabelled] = -100
    whole_loss = causal_lm_loss(tiny_model, batch, None)
    whole_loss.backward()
    whole = {name: p.grad.clone() for name, p in tiny_model.named_parameters()}
    tiny_model.zero_grad(set_to_none=True)
    mean_loss, tokens = backward_on_batch(tiny_model, batch, None, micro_batches=micro_batches)
    assert mean_loss == pytest.approx(float(whole_loss.detach()), rel=1e-6)
    assert tokens == 4 * 12
    for name, parameter in tiny_model.named_parameters():
        torch.testing.assert_close(parameter.grad, whole[name], rtol=1e-5, atol=1e-7, msg=name)


def test_one_pass_back_propagates_the_batch_loss_unchanged(tiny_model):
    batch = random_batch(tiny_model.config.vocab_size)
    causal_lm_loss(tiny_model, batch, None).backward()
    plain = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad(set_to_none=True)
    backward_on_batch(tiny_model, batch, None)
    assert all(torch.equal(p.grad, g) for p, g in zip(tiny_model.parameters(), plain, strict=True))


def test_an_unreadable_checkpoint_is_a_user_error_and_check_hands_its_read_to_load(tmp_path, monkeypatch):
    checkpoints = Checkpoints(tmp_path / "run", every=1, fingerprint="f" * 64)
    assert checkpoints.load() is None
    checkpoints.save({"step": 3, "parameters": [torch.ones(8, 8)]})
    content = checkpoints.path.read_bytes()
    reads = []
    original_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: reads.append(args) or original_load(*args, **kwargs))
    checkpoints.check()
    assert checkpoints.load()["step"] == 3 and len(reads) == 1, "the stage's check and the loop's load read the file once"
    assert Checkpoints(tmp_path / "run", every=1, fingerprint="0" * 64).load() is None, "another run's checkpoint is ignored"
    for broken in (b"", content[:len(content) // 2], content[:-1], b"\x00garbage" * 8):
        checkpoints.path.write_bytes(broken)
        with pytest.raises(UserError, match=rf"^{checkpoints.path}: unreadable checkpoint, truncated or corrupt .*; "
                                            rf"delete it to restart this run from scratch: rm {checkpoints.path}$"):
            checkpoints.check()
