"""Each method's learning rate, chosen on validation loss and never on a test score.

A method trains once per rate of its grid (`methods.<method>.learning_rates`); every run keeps its
checkpoint with the lowest validation loss (neft.training). The rate whose kept checkpoint has the
lowest validation loss is chosen, and only that run is evaluated on the test split, so each method is
compared at the rate that suits it. A choice at either end of its grid is "not bracketed": a rate
beyond the grid might have done better, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neft.errors import UserError


@dataclass(frozen=True)
class Candidate:
    learning_rate: float
    valid_loss: float  # of the run's kept (best) checkpoint
    run: str  # its training run, e.g. "neft/lr0.001" (neft.artifacts.candidate_run)


@dataclass(frozen=True)
class RateSelection:
    method: str
    candidates: tuple[Candidate, ...]  # by increasing rate
    chosen: Candidate

    @property
    def bracketed(self) -> bool:
        """A lower and a higher rate were tried and both did worse on validation loss."""
        return self.candidates[0] != self.chosen != self.candidates[-1]

    @property
    def status(self) -> str:
        if len(self.candidates) == 1:
            return "one rate, not searched"
        return "bracketed" if self.bracketed else "not bracketed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "chosen": vars(self.chosen),
            "bracketed": self.bracketed,
            "status": self.status,
            "candidates": [vars(candidate) for candidate in self.candidates],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateSelection:
        return cls(data["method"], tuple(Candidate(**c) for c in data["candidates"]), Candidate(**data["chosen"]))


def select_rate(method: str, candidates: list[Candidate]) -> RateSelection:
    """The candidate with the lowest validation loss; a tie goes to the lower rate. A run whose loss
    is not finite (diverged) is never chosen."""
    if not candidates:
        raise UserError(f"methods.{method}.learning_rates is empty: give at least one rate")
    ordered = tuple(sorted(candidates, key=lambda c: c.learning_rate))
    finite = [c for c in ordered if math.isfinite(c.valid_loss)]
    if not finite:
        raise UserError(f"every {method} run diverged (validation loss not finite at rates "
                        f"{[c.learning_rate for c in ordered]}): lower methods.{method}.learning_rates")
    return RateSelection(method, ordered, min(finite, key=lambda c: c.valid_loss))
