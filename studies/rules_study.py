"""Image-score rules study (issue 34): every rule on the same trained runs, with the verdict at each
rule's calibrated threshold and a label-free choice per run.

    python studies/rules_study.py RUN_DIR [RUN_DIR ...] --results results/rules

Each run folder (trained by ``studies/budget_study.py``, e.g. arm ``readme``: ``--preset fast`` as a
user types it) is evaluated with today's scoring code and every image-score rule from one scoring pass
(``evaluate_run(..., rules=IMAGE_SCORE_RULES)``; a threshold record from before the fused rules is
calibrated again on the run's held-out images, which leaves the run's own threshold unchanged). Writes:

* ``runs.csv``: one row per run: category, seed, steps, and for every rule its image auROC, its recall
  and false-alarm rate on ``test/good`` at its own calibrated threshold, and its label-free synthetic
  separation (local / global copies of the held-out images); pixel auROC and AUPRO of the run's map;
  the rule a label-free choice would take (``choice``: the highest mean synthetic separation) and its
  auROC;
* ``summary.csv``: per rule (and the per-run choice), the per-category medians over seeds, their median
  over categories, the worst category, and each category's loss against the best rule there.

A run already in ``runs.csv`` is not evaluated again (``--redo`` does), so the study resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cbigan.core.anomaly_score import IMAGE_SCORE_RULES  # noqa: E402


def run_row(run_dir: Path) -> dict:
    from cbigan.reporting.evaluation import evaluate_run

    ev = evaluate_run(run_dir, rules=list(IMAGE_SCORE_RULES), progress=False)
    m = ev.metrics[ev.metrics["chosen"]].iloc[0]
    s = ev.summary
    own = s["image_score"]
    cfg = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    thr = json.loads((run_dir / "threshold.json").read_text())
    row = {"category": cfg["category"], "seed": cfg["seed"], "run": str(run_dir), "steps": summary["steps"],
           "kind": cfg["kind"], "own_rule": own, "n_val": thr.get("n_val"),
           "pixel_auroc": s.get("pixel_auroc"), "aupro": s.get("aupro")}
    syn = thr.get("synthetic_auroc") or {}
    for r in IMAGE_SCORE_RULES:
        key = "" if r == own else f"[{r}]"
        row[f"auroc_{r}"] = round(float(m[f"auroc{key}"]), 4)
        row[f"recall_{r}"] = _round(m.get(f"thr_recall{key}"))
        row[f"false_alarms_{r}"] = _round(m.get(f"thr_false_alarm_rate{key}"))
        row[f"synthetic_local_{r}"] = _round((syn.get(r) or {}).get("local"))
        row[f"synthetic_global_{r}"] = _round((syn.get(r) or {}).get("global"))
    if syn:
        choice = max(IMAGE_SCORE_RULES, key=lambda r: (row[f"synthetic_local_{r}"] or 0) + (row[f"synthetic_global_{r}"] or 0))
        row["choice"], row["auroc_choice"] = choice, row[f"auroc_{choice}"]
    return row


def _round(v):
    return None if v is None or v != v else round(float(v), 4)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    rules = [c[len("auroc_"):] for c in runs.columns if c.startswith("auroc_")]
    per_cat = runs.groupby("category")[[f"auroc_{r}" for r in rules]].median()
    best = per_cat.max(axis=1)
    rows = []
    for r in rules:
        col = per_cat[f"auroc_{r}"]
        rec = runs.groupby("category")[f"recall_{r}"].median() if f"recall_{r}" in runs else None
        fa = runs.groupby("category")[f"false_alarms_{r}"].median() if f"false_alarms_{r}" in runs else None
        rows.append({"rule": r, **{c: round(v, 4) for c, v in col.items()},
                     "median_over_categories": round(float(col.median()), 4), "worst_category": round(float(col.min()), 4),
                     "largest_loss_vs_best_rule": round(float((best - col).max()), 4),
                     **({} if rec is None else {f"recall_{c}": v for c, v in rec.round(3).items()}),
                     **({} if fa is None else {f"false_alarms_{c}": v for c, v in fa.round(3).items()})})
    return pd.DataFrame(rows).sort_values("median_over_categories", ascending=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="trained run folders")
    p.add_argument("--results", type=Path, default=Path("results/rules"))
    p.add_argument("--redo", action="store_true", help="evaluate runs already in runs.csv again")
    args = p.parse_args(argv)
    out = args.results / "runs.csv"
    rows = pd.read_csv(out).to_dict("records") if out.is_file() else []
    done = {r["run"] for r in rows}
    for run in args.runs:
        if str(run) in done and not args.redo:
            continue
        if not (run / "summary.json").is_file():
            print(f"{run}: not finished, skipped", flush=True)
            continue
        row = run_row(run)
        rows = [r for r in rows if r["run"] != str(run)] + [row]
        args.results.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).sort_values(["category", "seed"]).to_csv(out, index=False)
        print(f"{row['category']} seed {row['seed']}: " + "  ".join(
            f"{r} {row[f'auroc_{r}']:.3f}" for r in IMAGE_SCORE_RULES), flush=True)
    runs = pd.DataFrame(rows)
    summary = summarize(runs)
    summary.to_csv(args.results / "summary.csv", index=False)
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
