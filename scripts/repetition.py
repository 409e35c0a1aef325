"""How many predictions loop (neft.repetition), per predictions file.

Usage:
    python scripts/repetition.py reports/eval/*/predictions.jsonl [--span 20] [--times 3]

Prints a markdown table: file, predictions, how many repeat, the rate, and the same for the
references (a floor: some real texts repeat too).

The default counts loops: a 20-character stretch (spaces removed) 3 or more times, the test the
Bible learning-curve study settled on. The library's own default (`neft.repetition.SPAN`, 6
characters) overstates repetition there: 24 of the 300 reference verses pass it (" the land" three
times in a verse is ordinary English), while no reference has a 20-character stretch 3 times. Pass
`--span 6` for that looser count.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from neft.repetition import TIMES, repeats

LOOP_SPAN = 20  # characters; see the docstring


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="predictions.jsonl files (id, reference, prediction)")
    parser.add_argument("--span", type=int, default=LOOP_SPAN, help="characters in a repeated stretch (default 20)")
    parser.add_argument("--times", type=int, default=TIMES, help="occurrences that count as repeating (default 3)")
    args = parser.parse_args(argv)
    rows = []
    for path in args.files:
        frame = pd.read_json(path, lines=True, dtype=False)
        predicted = frame["prediction"].map(lambda text: repeats(text, args.span, args.times))
        referenced = frame["reference"].map(lambda text: repeats(text, args.span, args.times))
        rows.append({"file": str(path), "predictions": len(frame), "repeating": int(predicted.sum()),
                     "rate": predicted.mean(), "references_repeating": int(referenced.sum())})
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
