"""How many predictions repeat themselves (neft.repetition), per predictions file.

Usage:
    python scripts/repetition.py reports/eval/*/predictions.jsonl [--span 6] [--times 3]

Prints a markdown table: file, predictions, how many repeat, the rate, and the same for the
references (a floor: some real texts repeat too).
"""

import argparse
from pathlib import Path

import pandas as pd

from neft.repetition import SPAN, TIMES, repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="predictions.jsonl files (id, reference, prediction)")
    parser.add_argument("--span", type=int, default=SPAN, help="characters in a repeated stretch")
    parser.add_argument("--times", type=int, default=TIMES, help="occurrences that count as repeating")
    args = parser.parse_args()
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
