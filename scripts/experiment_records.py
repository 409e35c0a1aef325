"""The experiment records as data: one run index, and every results table regenerated from it.

Usage:
    python scripts/experiment_records.py            # rewrite index.json, the tables, their docs pages and the README's findings
    python scripts/experiment_records.py --out DIR  # the same into DIR (mirrors the repository's paths), touching nothing here
    python scripts/experiment_records.py --index-only

Reads reports/experiments/questions.yaml (the questions, and which runs make each final table) and
every run folder under reports/experiments/ (`<question>/runs/<run>/`: params.yaml,
predictions/<method>.jsonl, metrics/<method>.json, train/<method>.json, valid_loss/<method>.tsv;
archive/ holds superseded records). Writes:

- reports/experiments/index.json: one entry per run and method (id `<run>:<method>`), with its
  question, status (chosen, candidate or superseded), the commit that added its files, its params
  file and the settings that tell runs apart (seed, steps, ratio, mask strategy, learning rate), its
  metrics as recorded, and the paths of its predictions, metrics and training summary.
- reports/experiments/<question>/tables/<table>.md: each final table, computed from the committed
  predictions (scores with `neft.evaluation.task_metrics`; differences with the seed-aware test,
  `neft.significance.seed_aware_test`, and a Holm correction over every test of the question).
- the same tables inside docs/experiments/<question>.md and README.md, between
  `<!-- BEGIN TABLE name -->` and `<!-- END TABLE -->` markers (only the text between them changes).

tests/test_experiment_records.py regenerates into a temporary folder and checks that the committed
tables, pages and README equal what this writes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from neft.config import MetricOptions  # noqa: E402
from neft.evaluation import task_metrics  # noqa: E402
from neft.methods import EVAL_METHODS  # noqa: E402
from neft.significance import seed_aware_test  # noqa: E402

RECORDS = Path("reports/experiments")
METHODS = tuple(sorted(EVAL_METHODS))  # the order index.json lists them in
METRIC_LABELS = {"bleu": "BLEU", "chrf": "chrF", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
                 "rougeLsum": "ROUGE-Lsum"}
ALPHA = 0.05


# --- the index ------------------------------------------------------------------------------------

def _run_dirs(records: Path) -> list[Path]:
    """Every run folder: `<question>/runs/<run>/` and `archive/**/runs/<run>/`, or (older layout) a folder with params.yaml."""
    found = {path.parent for path in records.rglob("params.yaml") if "archive" not in path.parts}
    found |= {path for path in records.rglob("*") if path.is_dir() and path.parent.name == "runs"}
    return sorted(found)


def _files_by_method(run: Path) -> dict[str, dict[str, Path]]:
    """Per method, the run's predictions, metrics, train and valid_loss files, in either naming scheme."""
    files: dict[str, dict[str, Path]] = {}

    def put(method: str, role: str, path: Path) -> None:
        if method in METHODS and path.is_file():
            files.setdefault(method, {})[role] = path

    for method in METHODS:
        for role, names in (("predictions", [f"predictions/{method}.jsonl", f"{method}_predictions.jsonl",
                                              f"eval/{method}/predictions.jsonl"]),
                            ("metrics", [f"metrics/{method}.json", f"{method}_metrics.json", f"eval/{method}/metrics.json"]),
                            ("train", [f"train/{method}.json", f"train_{method}.json"]),
                            ("valid_loss", [f"valid_loss/{method}.tsv", f"valid_loss_{method}.tsv", f"{method}_valid_loss.tsv"])):
            for name in names:
                put(method, role, run / name)
    single = run / "metrics.json"
    if single.is_file():
        method = json.loads(single.read_text()).get("method")
        if method:  # one method's evaluation (older layout)
            put(method, "metrics", single)
            put(method, "predictions", run / "predictions.jsonl")
    return files


def _report_metrics(run: Path) -> dict[str, Any]:
    """A whole pipeline run's report metrics (every method's scores), if the run kept its report."""
    for name in ("report/metrics.json", "metrics.json"):
        path = run / name
        if path.is_file():
            data = json.loads(path.read_text())
            if "method" not in data:
                return data
    return {}


@cache
def _first_commit(path: str) -> str | None:
    """The commit that added a file, followed through renames."""
    result = subprocess.run(["git", "log", "--follow", "--diff-filter=A", "--format=%H", "--", path],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    commits = result.stdout.split()
    return commits[-1] if commits else None


def _relative(path: Path | None) -> str | None:
    return path.relative_to(ROOT).as_posix() if path else None


def _settings(params: dict[str, Any], method: str, train: dict[str, Any]) -> dict[str, Any]:
    method_params = (params.get("methods") or {}).get(method) or {}
    return {
        "model": (params.get("model") or {}).get("name"),
        "task": (params.get("task") or {}).get("name"),
        "seed": train.get("seed", params.get("seed")),
        "steps": train.get("steps", (params.get("train") or {}).get("steps")) if method != "base" else 0,
        "ratio": params.get("ratio") if method in ("neft", "lora") else None,
        "mask_strategy": (params.get("mask") or {}).get("strategy") if method == "neft" else None,
        "learning_rate": train.get("learning_rate", method_params.get("learning_rate")) if method != "base" else None,
        "trainable_percent": train.get("trainable_percent"),
        "best_valid_loss": train.get("best_valid_loss"),
    }


def _question_of(relative: Path, external: dict[str, str]) -> str:
    parts = relative.parts
    if parts[0] == "archive":
        return "archive/" + parts[1]
    if "runs" in parts:
        return "/".join(parts[:parts.index("runs")])
    return "controls_gemma" if parts[:2] == ("en_zh_gemma", "controls_runs") else parts[0]


def build_index(config: dict[str, Any], strict: bool = True) -> list[dict[str, Any]]:
    """One entry per run and method found on disk (module docstring)."""
    questions = config["questions"]
    chosen, candidates = set(), set()
    for question in questions.values():
        for name, members in question["systems"].items():
            (candidates if name in question.get("candidates", []) else chosen).update(members)
    external = {run: (question_name, path) for question_name, question in questions.items()
                for run, path in (question.get("external_runs") or {}).items()}
    runs = [(run, run.relative_to(ROOT).as_posix()) for run in _run_dirs(ROOT / RECORDS)]
    runs += [(ROOT / path, path) for _, path in external.values()]
    entries = []
    for run, relative in runs:
        run_id = run.name if relative not in {path for _, path in external.values()} else \
            next(name for name, (_, path) in external.items() if path == relative)
        question = external[run_id][0] if run_id in external else _question_of(run.relative_to(ROOT / RECORDS), external)
        params_path = run / "params.yaml" if (run / "params.yaml").is_file() else None
        if run_id in external:
            params_path = ROOT / "params.yaml"
        params = yaml.safe_load(params_path.read_text()) if params_path else {}
        report = _report_metrics(run)
        files = _files_by_method(run)
        for method in METHODS:
            if method in report and method not in files and (run / f"predictions/{method}.jsonl").is_file():
                files[method] = {"predictions": run / f"predictions/{method}.jsonl"}
        for method, paths in sorted(files.items()):
            entry_id = f"{run_id}:{method}"
            train = json.loads(paths["train"].read_text()) if "train" in paths else {}
            metrics = json.loads(paths["metrics"].read_text()) if "metrics" in paths else dict(report.get(method) or {})
            for source in (report.get(method) or {}, metrics):  # what a run without a training summary recorded elsewhere
                train = {**{key: source[key] for key in ("learning_rate", "trainable_percent") if key in source}, **train}
            anchor = paths.get("predictions") or paths.get("metrics") or paths.get("train") or paths["valid_loss"]
            if question.startswith("archive/"):
                status = "superseded"
            elif entry_id in chosen:
                status = "chosen"
            else:
                status = "candidate"
            entries.append({
                "id": entry_id, "run": run_id, "method": method, "question": question, "status": status,
                "path": relative, "commit": _first_commit(anchor.relative_to(ROOT).as_posix()),
                "params": params_path.relative_to(ROOT).as_posix() if params_path else None,
                **_settings(params, method, train),
                "metrics": {name: round(float(metrics[name]), 4) for name in METRIC_LABELS if name in metrics},
                "predictions": _relative(paths.get("predictions")),
                "metrics_file": _relative(paths.get("metrics")),
                "train": _relative(paths.get("train")),
                "valid_loss": _relative(paths.get("valid_loss")),
            })
    for name, reason in (config.get("archive") or {}).items():
        folder = ROOT / RECORDS / "archive" / name
        files = sorted(path for path in folder.rglob("*") if path.is_file())
        entries.append({"id": f"archive/{name}", "run": None, "method": None, "question": f"archive/{name}",
                        "status": "superseded", "path": _relative(folder), "commit": _first_commit(_relative(files[0])) if files else None,
                        "reason": " ".join(reason.split()), "files": len(files), "predictions": None})
    ids = [entry["id"] for entry in entries]
    duplicates = sorted({entry_id for entry_id in ids if ids.count(entry_id) > 1})
    if duplicates:
        raise SystemExit(f"run ids must be unique across questions: {duplicates}")
    missing = sorted((chosen | candidates) - set(ids))
    if missing and strict:
        raise SystemExit(f"questions.yaml names runs the index does not hold: {missing}")
    return entries


# --- the tables -----------------------------------------------------------------------------------

@dataclass
class Question:
    name: str
    spec: dict[str, Any]
    index: dict[str, dict[str, Any]]

    @property
    def options(self) -> MetricOptions:
        return MetricOptions(**self.spec["metric_options"])

    def members(self, system: str) -> list[dict[str, Any]]:
        return [self.index[member] for member in self.spec["systems"][system]]

    def predictions(self, system: str) -> list[pd.DataFrame]:
        return [_read_predictions(entry["predictions"]) for entry in self.members(system)]


@cache
def _read_predictions(path: str) -> pd.DataFrame:
    return pd.read_json(ROOT / path, lines=True, dtype=False)


def _number(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _scientific(rate: float) -> str:
    mantissa, exponent = f"{rate:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _rate(entries: list[dict[str, Any]]) -> str:
    rates = sorted({entry["learning_rate"] for entry in entries if entry["learning_rate"] is not None})
    return " / ".join(_scientific(rate) for rate in rates) or "-"


def scores_table(question: Question, table: dict[str, Any]) -> str:
    metrics = table["metrics"]
    header = ["system", "learning rate", "trainable %", "seeds", *(METRIC_LABELS[metric] for metric in metrics),
              f"{METRIC_LABELS[metrics[0]]} per seed", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system in table["systems"]:
        entries = question.members(system)
        per_seed = [task_metrics(question.spec["kind"], list(frame["prediction"]), list(frame["reference"]), question.options)
                    for frame in question.predictions(system)]
        cells = []
        for metric in metrics:
            values = np.array([float(scores[metric]) for scores in per_seed])
            cells.append(f"{values.mean():.2f}" + (f" +/- {values.std(ddof=1):.2f}" if len(values) > 1 else ""))
        trainable = sorted({round(entry["trainable_percent"], 2) for entry in entries if entry["trainable_percent"] is not None})
        label = system + (" (not chosen)" if system in question.spec.get("candidates", []) else "")
        lines.append("| " + " | ".join([
            label, _rate(entries), " / ".join(f"{value:.2f}" for value in trainable) or ("0" if entries[0]["method"] == "base" else "-"),
            str(len(entries)), *cells, " / ".join(f"{float(scores[metrics[0]]):.2f}" for scores in per_seed),
            ", ".join(f"`{entry['id']}`" for entry in entries)]) + " |")
    return "\n".join(lines)


def _holm(p_values: list[float]) -> list[float]:
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, position in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[position]))
        adjusted[position] = running
    return list(adjusted)


def difference_rows(question: Question) -> list[dict[str, Any]]:
    """Every paired test of the question's difference tables, with Holm's correction over all of them."""
    rows = []
    for table_name, table in question.spec["tables"].items():
        for system, baseline in table.get("pairs", []):
            pairs = list(zip(question.predictions(baseline), question.predictions(system), strict=True))
            results = {result.metric: result for result in seed_aware_test(question.spec["kind"], pairs, question.options)}
            per_seed = [task_metrics(question.spec["kind"], list(b["prediction"]), list(b["reference"]), question.options)
                        for b, _ in pairs], [task_metrics(question.spec["kind"], list(s["prediction"]), list(s["reference"]),
                                                          question.options) for _, s in pairs]
            for metric in table["metrics"]:
                result = results[metric]
                differences = [float(s[metric]) - float(b[metric]) for b, s in zip(*per_seed, strict=True)]
                rows.append({"table": table_name, "comparison": f"{system} - {baseline}", "metric": METRIC_LABELS[metric],
                             "per_seed": differences, "result": result})
    for row, adjusted in zip(rows, _holm([row["result"].p_value for row in rows]), strict=True):
        row["holm"] = adjusted
    return rows


def differences_table(rows: list[dict[str, Any]]) -> str:
    header = ["comparison", "metric", "per seed", "mean (95 % interval)", "p seeds", "p segments", "p", "p Holm"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        result = row["result"]
        interval = "" if result.single_seed else f" ({result.ci95_low:+.2f} to {result.ci95_high:+.2f})"
        mean = _number(result.difference) + interval
        p = _p(result.p_value)
        if result.p_value < ALPHA:
            mean, p = f"**{mean}**", f"**{p}**"
        lines.append("| " + " | ".join([
            row["comparison"], row["metric"], " / ".join(_number(value) for value in row["per_seed"]), mean,
            _p(result.p_seeds), _p(result.p_segments), p, _p(row["holm"])]) + " |")
    return "\n".join(lines)


def question_tables(question: Question) -> dict[str, str]:
    tables = {}
    rows = difference_rows(question)
    for table_name, table in question.spec["tables"].items():
        if "systems" in table:
            tables[f"{question.name}/{table_name}"] = scores_table(question, table)
        else:
            tables[f"{question.name}/{table_name}"] = differences_table([row for row in rows if row["table"] == table_name])
    tests = len(rows)
    below = sum(row["result"].p_value < ALPHA for row in rows)
    survive = sum(row["holm"] < ALPHA for row in rows)
    tables[f"{question.name}/multiple_comparisons"] = (
        f"This page runs {tests} paired tests (comparisons x metrics). At p < {ALPHA} about {tests * ALPHA:.1f} of them would "
        f"fall below it by chance if no difference were real; {below} do, and {survive} of them remain below {ALPHA} after "
        "Holm's correction over all of them (column \"p Holm\"). Read a single p near 0.05 with that in mind.") \
        if tests else "This page runs no paired test."
    question.rows = rows  # type: ignore[attr-defined]
    return tables


def learning_curve_figure(question: Question, path: Path) -> None:
    """Each method's score against its training steps, one system per (steps, method) of the figure's table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = question.spec["figure"]
    metric = spec["metric"]
    curves: dict[str, list[tuple[int, float]]] = {}
    for system in question.spec["tables"][spec["table"]]["systems"]:
        entries = question.members(system)
        scores = [float(task_metrics(question.spec["kind"], list(frame["prediction"]), list(frame["reference"]),
                                     question.options)[metric]) for frame in question.predictions(system)]
        label = system.split(" (")[0]
        curves.setdefault(label, []).append((entries[0]["steps"], float(np.mean(scores))))
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for label, points in curves.items():
        steps, values = zip(*sorted(points), strict=True)
        axes.plot(steps, values, marker="o", label=label)
    axes.set_xlabel("training steps (batch 8)")
    axes.set_ylabel(METRIC_LABELS[metric])
    axes.set_title(spec.get("title", ""), fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def _verdict(question: Question, pair: list[str], metric: str = "BLEU", first: str = "NeFT") -> str:
    comparison = " - ".join(pair)
    found = next(r for r in question.rows if r["comparison"] == comparison and r["metric"] == metric)  # type: ignore[attr-defined]
    result = found["result"]
    verdict = "within noise" if result.p_value >= ALPHA else (f"{first} higher" if result.difference > 0 else f"{first} lower")
    text = f"{_number(result.difference)} (p {_p(result.p_value)}), {verdict}"
    return f"**{text}**" if result.p_value < ALPHA else text


def _page_link(question: Question) -> str:
    page = question.spec["page"].removeprefix("docs/")
    return f"[{page.removeprefix('experiments/')}](docs/{page})"


def readme_table(config: dict[str, Any], questions: dict[str, Question]) -> str:
    lines = ["| setting | NeFT - LoRA (BLEU) | NeFT - full FT (BLEU) | seeds | record |", "|---|---|---|---|---|"]
    for row in config["readme"]:
        question = questions[row["question"]]
        seeds = len(question.members(row["lora"][0]))
        lines.append(f"| {row['setting']} | {_verdict(question, row['lora'])} | {_verdict(question, row['full'])} | {seeds} | "
                     f"{_page_link(question)} |")
    return "\n".join(lines)


def readme_controls(config: dict[str, Any], questions: dict[str, Question]) -> str:
    spec = config["readme_controls"]
    question = questions[spec["question"]]
    lines = ["| the probe's mask against | BLEU | ROUGE-L |", "|---|---|---|"]
    for label, pair in spec["rows"].items():
        lines.append(f"| {label} | {_verdict(question, pair, 'BLEU', 'probe')} | {_verdict(question, pair, 'ROUGE-L', 'probe')} |")
    return "\n".join(lines)


MARKER = re.compile(r"(<!-- BEGIN TABLE (\S+) -->\n)(.*?)(<!-- END TABLE -->)", re.S)


def splice(text: str, tables: dict[str, str], source: str) -> str:
    names = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in tables:
            raise SystemExit(f"{source}: no table named {name}")
        names.add(name)
        return f"{match.group(1)}{tables[name]}\n{match.group(4)}"

    return MARKER.sub(replace, text)


def regenerate(out: Path, index_only: bool = False) -> list[Path]:
    """Write the index, every table, and the pages and README with their tables replaced, under `out`."""
    config = yaml.safe_load((ROOT / RECORDS / "questions.yaml").read_text())
    entries = build_index(config, strict=not index_only)
    written = []

    def write(relative: str, text: str) -> None:
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    write(f"{RECORDS}/index.json", json.dumps(entries, indent=1) + "\n")
    if index_only:
        return written
    index = {entry["id"]: entry for entry in entries}
    questions = {name: Question(name, spec, index) for name, spec in config["questions"].items()}
    tables: dict[str, str] = {}
    for question in questions.values():
        tables.update(question_tables(question))
    tables["readme/findings"] = readme_table(config, questions)
    tables["readme/controls"] = readme_controls(config, questions)
    for name, text in tables.items():
        question, table = name.split("/")
        if question != "readme":
            write(f"{RECORDS}/{question}/tables/{table}.md", text + "\n")
    for question in questions.values():
        if "figure" in question.spec:
            figure_path = out / question.spec["figure"]["file"]
            learning_curve_figure(question, figure_path)
            written.append(figure_path)
    for page in [spec["page"] for spec in config["questions"].values()] + ["README.md"]:
        if (ROOT / page).is_file():
            write(page, splice((ROOT / page).read_text(), tables, page))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="where to write (default: the repository itself)")
    parser.add_argument("--index-only", action="store_true", help="write index.json alone")
    args = parser.parse_args()
    for path in regenerate(args.out.resolve(), args.index_only):
        print(path)


if __name__ == "__main__":
    main()
