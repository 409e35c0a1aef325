"""Write data/custom/example/{train,valid,test}.jsonl: a small Spanish->English phrase set.

It shows the format `task=jsonl` reads and feeds the tiny end-to-end test. Usage:
    python scripts/make_example_data.py
"""

import itertools
import json
import random
from pathlib import Path

NUMBERS = [("dos", "two"), ("tres", "three"), ("cuatro", "four"), ("cinco", "five"), ("seis", "six"), ("siete", "seven")]
COLOURS = [("rojos", "red"), ("azules", "blue"), ("verdes", "green"), ("blancos", "white"), ("negros", "black")]
NOUNS = [("perros", "dogs"), ("gatos", "cats"), ("libros", "books"), ("barcos", "boats"), ("caballos", "horses"), ("árboles", "trees")]


def main() -> None:
    rows = [
        {"source": f"Hay {n_es} {noun_es} {c_es}.", "target": f"There are {n_en} {c_en} {noun_en}."}
        for (n_es, n_en), (c_es, c_en), (noun_es, noun_en) in itertools.product(NUMBERS, COLOURS, NOUNS)
    ]
    random.Random(0).shuffle(rows)
    out = Path(__file__).resolve().parents[1] / "data" / "custom" / "example"
    out.mkdir(parents=True, exist_ok=True)
    for split, part in {"test": rows[:20], "valid": rows[20:40], "train": rows[40:]}.items():
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for index, row in enumerate(part):
                handle.write(json.dumps({"id": f"{split}-{index}", **row}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
