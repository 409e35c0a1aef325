"""What a user can get wrong, as opposed to a bug: stages print these as one line and exit 2."""

import os
import sys
from pathlib import Path

# Set by a stage that relaunches itself under torchrun (neft.distributed.relaunched): a folder where each
# rank leaves its user error, so that the launching process prints it once rather than every rank.
RANK_ERRORS_VARIABLE = "NEFT_RANK_ERRORS"


class UserError(ValueError):
    """Base of every error that a change of configuration, data or artifacts fixes."""


class ConfigError(UserError):
    """The configuration asks for something that does not exist or cannot work."""


def report_user_error(error: UserError) -> None:
    """One line on stderr; in a torchrun rank of a relaunched stage, a file the launcher reads instead."""
    if folder := os.environ.get(RANK_ERRORS_VARIABLE):
        (Path(folder) / f"rank{os.environ.get('RANK', '0')}").write_text(str(error))
    else:
        print(f"error: {error}", file=sys.stderr)
