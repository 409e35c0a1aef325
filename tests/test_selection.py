"""Choosing each method's learning rate: the lowest validation loss, never a test score; a choice at
the edge of its grid is flagged."""

from __future__ import annotations

import math

import pytest

from neft.errors import UserError
from neft.report import verdict
from neft.selection import Candidate, RateSelection, select_rate


def candidates(losses: dict[float, float]) -> list[Candidate]:
    return [Candidate(rate, loss, f"neft/lr{rate}") for rate, loss in losses.items()]


def test_the_lowest_validation_loss_chooses_even_when_the_test_score_disagrees():
    valid_loss = {5e-4: 2.66, 1e-3: 2.61, 2e-3: 2.62}
    test_bleu = {5e-4: 5.7, 1e-3: 6.0, 2e-3: 6.9}  # the test split would pick 2e-3; it is never consulted
    chosen = select_rate("neft", candidates(valid_loss)).chosen
    assert chosen.learning_rate == 1e-3 != max(test_bleu, key=test_bleu.get)
    assert chosen.run == "neft/lr0.001"


def test_candidates_come_back_in_rate_order_whatever_the_grid_order():
    selection = select_rate("neft", candidates({2e-3: 2.62, 5e-4: 2.66, 1e-3: 2.61}))
    assert [c.learning_rate for c in selection.candidates] == [5e-4, 1e-3, 2e-3]


@pytest.mark.parametrize("losses, status", [
    ({5e-4: 2.66, 1e-3: 2.61, 2e-3: 2.62}, "bracketed"),
    ({5e-4: 2.60, 1e-3: 2.61, 2e-3: 2.62}, "not bracketed"),  # the lowest rate: a lower one might do better
    ({5e-4: 2.66, 1e-3: 2.65, 2e-3: 2.62}, "not bracketed"),  # the highest rate
    ({5e-4: 2.66, 1e-3: 2.61}, "not bracketed"),  # two rates never bracket
    ({1e-3: 2.61}, "one rate, not searched"),
])
def test_a_choice_at_the_edge_of_its_grid_is_flagged(losses, status):
    selection = select_rate("neft", candidates(losses))
    assert selection.status == status and selection.bracketed == (status == "bracketed")


def test_a_tie_goes_to_the_lower_rate_and_a_diverged_run_is_never_chosen():
    assert select_rate("lora", candidates({4e-3: 2.5, 2e-3: 2.5})).chosen.learning_rate == 2e-3
    assert select_rate("lora", candidates({2e-3: math.nan, 4e-3: 2.7, 8e-3: math.inf})).chosen.learning_rate == 4e-3
    with pytest.raises(UserError, match=r"every lora run diverged .* lower methods.lora.learning_rates"):
        select_rate("lora", candidates({2e-3: math.nan, 4e-3: math.inf}))


def test_a_selection_survives_its_json_form():
    selection = select_rate("full", candidates({1e-4: 2.70, 2e-4: 2.60, 4e-4: 2.67}))
    assert RateSelection.from_dict(selection.as_dict()) == selection
    assert selection.as_dict()["status"] == "bracketed"


@pytest.mark.parametrize("difference, p_value, word", [
    (1.2, 0.01, "better"), (-1.2, 0.01, "worse"), (1.2, 0.05, "within noise"), (-3.0, 0.2, "within noise"),
    (0.0, 0.001, "within noise"),  # sacreBLEU's statistic gives equal scores a small p; no difference is no verdict
])
def test_the_verdict_word(difference, p_value, word):
    assert verdict(difference, p_value) == word
