"""Label-free snapshot choice vs the last weights, from the logs of finished study runs (no training).

    python studies/selection_study.py --results results/small_defects --out results/small_defects/selection.csv

Every run of a budget study (``studies/budget_study.py``) that chose its model with ``--select
synthetic`` logged, in ``eval_log.csv``, the held-out synthetic-defect auROC of every snapshot
(``val_synthetic_auroc``, what the rule maximizes) and, at the monitoring steps and at the end, the test
image auROC of the EMA weights of that moment (``test_auroc``: the same score rule and lambda as
``evaluate.py``; never used to choose). The chosen model's test auROC is the run's ``metrics.csv``
(``evaluate.py`` on the chosen snapshot); the last weights' is the last monitoring row, taken at the
final step. Writes one row per run (arm, seed, steps, chosen step, both auROCs, their difference) and
prints the per-category summary: how often the choice beat / matched / lost to the last weights, the
median and the worst difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from budget_study import markdown  # studies/ is this script's folder

#: auROC differences within this are a tie (one test image's rank on the smallest set moves more).
TIE = 0.001


def run_row(run_dir: Path) -> dict | None:
    """One run's chosen-vs-last comparison, or None when it did not select on synthetic defects or its
    log has no test auROC at the final step."""
    cfg = json.loads((run_dir / "config.json").read_text())
    if cfg.get("select") != "synthetic" or not (run_dir / "eval_log.csv").exists():
        return None
    ev = pd.read_csv(run_dir / "eval_log.csv")
    if "val_synthetic_auroc" not in ev or ev["val_synthetic_auroc"].notna().sum() == 0:
        return None  # the rule was inactive (no held-out images): the last weights were the model
    tested = ev.dropna(subset=["test_auroc"])
    if tested.empty or tested["step"].iloc[-1] != ev["step"].iloc[-1]:
        return None
    metrics = pd.read_csv(run_dir / "metrics.csv")
    chosen = metrics[metrics["chosen"]] if "chosen" in metrics else metrics
    val = ev.dropna(subset=["val_synthetic_auroc"])
    top = val["val_synthetic_auroc"].max()
    chosen_step = int(val.loc[val["val_synthetic_auroc"] == top, "step"].max())  # ties: the later one
    last_step = int(ev["step"].iloc[-1])
    category, _, rest = run_dir.name.partition("-")
    arm, _, seed = rest.rpartition("-seed")
    return {"category": category, "arm": arm, "seed": int(seed), "image_score": cfg.get("image_score"),
            "steps": last_step, "chosen_step": chosen_step, "chosen_at": round(chosen_step / last_step, 3),
            "auroc_chosen": round(float(chosen["auroc"].iloc[0]), 6),
            "auroc_last": round(float(tested["test_auroc"].iloc[-1]), 6),
            "synthetic_chosen": round(float(top), 6),
            "synthetic_last": round(float(val["val_synthetic_auroc"].iloc[-1]), 6)}


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per category: runs, wins / ties / losses of the choice against the last weights, median and
    worst difference (chosen - last), median auROC of each."""
    out = []
    for cat, g in list(rows.groupby("category")) + [("all", rows)]:
        d = g["auroc_chosen"] - g["auroc_last"]
        out.append({"category": cat, "runs": len(g), "chosen better": int((d > TIE).sum()),
                    "tie": int((d.abs() <= TIE).sum()), "last better": int((d < -TIE).sum()),
                    "median difference": round(d.median(), 4), "mean difference": round(d.mean(), 4),
                    "worst difference": round(d.min(), 4), "best difference": round(d.max(), 4),
                    "median chosen": round(g["auroc_chosen"].median(), 4),
                    "median last": round(g["auroc_last"].median(), 4),
                    "median chosen at (share of the run)": round(g["chosen_at"].median(), 2)})
    return pd.DataFrame(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results/small_defects", help="folder of <category>-<arm>-seed<s>/ runs")
    p.add_argument("--out", default="results/small_defects/selection.csv")
    p.add_argument("--image-score", default="map_max",
                   help="only runs scored by this rule (the fast preset's); 'any' for all")
    args = p.parse_args(argv)
    rows = [r for d in sorted(Path(args.results).glob("*-seed*")) if d.is_dir() and (r := run_row(d))]
    table = pd.DataFrame(rows)
    if table.empty:
        p.error(f"no run in {args.results} chose its model on synthetic defects with a final test auROC")
    if args.image_score != "any":
        table = table[table["image_score"] == args.image_score]
    table.to_csv(args.out, index=False)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    print()
    print(markdown(summary(table)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
