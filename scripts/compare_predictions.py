"""Paired bootstrap between saved prediction files per pair, and over the pairs (one per seed) the
seed-aware test that also counts training variance (docs/statistics.md): the quality
part of scripts/compare_runs.py for files alone (neft/comparison.py), so that every p-value in
reports/experiments/ can be recomputed from the committed predictions on a fresh clone, without the
DVC experiments that made them. Also compares methods of different runs, e.g. one run's NeFT with
another run's full FT on the same seed's test sample.

Usage:
    python scripts/compare_predictions.py BASELINE.jsonl:SYSTEM.jsonl [...] [--out DIR]
        [--kind translation|summarization] [--bleu-tokenize zh] [--rouge]

    R=reports/experiments/en_zh_gemma/runs/seed1
    python scripts/compare_predictions.py \\
        $R/predictions/full.jsonl:$R/predictions/neft.jsonl \\
        --bleu-tokenize zh --rouge --out /tmp/neft_vs_full

Each file is JSONL with id, reference, prediction (what the evaluate stages write); a pair's two
files must hold the same ids in the same order; pairs are seeds, which may share test segments
(resampled together) or draw their own. Writes quality.csv, differences.csv and summary.md.
"""

import argparse
from pathlib import Path

import pandas as pd

from neft.comparison import SavedPredictions, write_quality_report
from neft.config import MetricOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="BASELINE:SYSTEM, each a predictions .jsonl file")
    parser.add_argument("--out", type=Path, default=Path("comparison"))
    parser.add_argument("--kind", default="translation", choices=["translation", "summarization"])
    parser.add_argument("--bleu-tokenize", default="13a")
    parser.add_argument("--rouge", action="store_true", help="translation: also compare ROUGE (CJK per character)")
    args = parser.parse_args()
    sides = [pair.split(":") for pair in args.pairs]
    if any(len(names) != 2 for names in sides):
        parser.error("each pair is BASELINE:SYSTEM, two file names joined by one ':'")
    missing = sorted({name for names in sides for name in names if not Path(name).is_file()})
    if missing:
        parser.error(f"no such predictions file: {', '.join(missing)}")
    loaded = {name: SavedPredictions(name, pd.read_json(name, lines=True, dtype=False)) for names in sides for name in names}
    pairs = [(loaded[baseline], loaded[system]) for baseline, system in sides]
    for baseline, system in pairs:
        if list(baseline.predictions["id"]) != list(system.predictions["id"]):
            parser.error(f"{baseline.name} and {system.name} hold different test segments (ids or their order differ): "
                         "pair predictions of the same seed's test sample")
    args.out.mkdir(parents=True, exist_ok=True)
    tables = write_quality_report(args.kind, pairs, MetricOptions(args.bleu_tokenize, args.rouge), args.out)
    sections = ["# Prediction comparison, paired bootstrap per seed and seed-aware over seeds (system - baseline; two-sided p)",
                "", *tables]
    (args.out / "summary.md").write_text("\n".join(sections))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
