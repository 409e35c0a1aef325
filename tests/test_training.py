import copy

import pytest

from conftest import random_batch
from neft.methods import full_finetuning
from neft.training import TrainSettings, linear_schedule, train


def cycle(batches):
    while True:
        yield from batches


def test_linear_schedule_warms_up_then_decays_to_zero():
    multiplier = linear_schedule(warmup_steps=2, total_steps=10)
    values = [multiplier(step) for step in range(10)]
    assert values[0] < values[1] < values[2] == 1.0
    assert values[2:] == sorted(values[2:], reverse=True) and values[-1] > 0
    assert linear_schedule(0, 10)(10) == 0.0


@pytest.mark.parametrize("bad, message", [({"steps": 0}, "steps"), ({"learning_rate": 0}, "learning_rate"), ({"warmup_steps": 5}, "warmup")])
def test_bad_settings_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**{"steps": 5, "learning_rate": 1e-3, **bad})


def test_same_seed_gives_the_same_losses(tiny_model):
    batch = random_batch(tiny_model.config.vocab_size)
    settings = TrainSettings(steps=3, learning_rate=1e-3)
    runs = []
    for _ in range(2):
        model = copy.deepcopy(tiny_model)
        runs.append(train(model, full_finetuning(model).parameters, cycle([batch]), settings).losses)
    assert runs[0] == runs[1]
    assert runs[0][-1] < runs[0][0]


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
    from neft.training import validation_loss

    assert validation_loss(model, valid) == pytest.approx(best_loss, rel=1e-5)
