"""Short-budget study: several training recipes x seeds, each for a fixed wall-clock budget.

    python studies/budget_study.py --data-dir ../shared/data/mvtec_ad --category bottle \
        --minutes 15 --arms fast,paper,egbad,autoencoder --seeds 1,2,3 --parallel 2

Each run is ``train.py --minutes M`` followed by ``evaluate.py`` on the model the run chose without
test labels (``--select synthetic``, the default). With ``--parallel 2`` two runs share the machine,
each pinned to its own CPU core (``taskset``) with one TensorFlow thread, so every run gets the same
compute whatever runs beside it. Writes, under ``--results``:

* ``runs.csv``: one row per run (arm, seed, steps, wall time, selected step, auROC and max balanced
  accuracy of the chosen model, plus for reference the last snapshot's and the best snapshot's test
  auROC from the monitoring log, which no rule here may use);
* ``summary.csv`` / ``summary.md``: median and range per arm;
* ``<category>-<arm>-seed<s>/``: each run's config, logs, metrics and summary;
* ``study.png``: test auROC over steps per arm and seed (monitoring), the label-free choice marked.

* ``recipes.csv`` / ``recipes.md``: per arm and image-score rule, the median over categories of the
  per-category medians over seeds (how a recipe is chosen) and the worst category.

``--plot-only`` redraws ``study.png`` from those files; ``--reevaluate`` evaluates finished runs again
with today's scoring code (stored maps reused) and rewrites their rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

#: The repository (this file is studies/budget_study.py): its train.py and evaluate.py are the ones run.
#: They run in the current folder, so relative paths (--data-dir, --output-dir, --results) mean the same
#: to them as to this script.
ROOT = Path(__file__).resolve().parents[1]

#: The tiles arms' common flags (issue 15): the fast recipe on 64 px crops of each image at its own
#: scale, scored on overlapping tiles by the anomaly map's maximum; the last weights are the model
#: (selection on maps of every held-out image each --eval-every would cost most of a 15-minute budget).
#: Each arm names its --normalize and --train-crops, so it keeps what it ran as the defaults change
#: (and --width 3: the fast preset's tiles were widened to 6 after the twelfth study).
TILES = ["--preset", "fast", "--kind", "tiles", "--image-score", "map_max", "--select", "final",
         "--eval-every", "1000000", "--global-views", "0", "--width", "3"]

#: Arm name -> train.py flags. EGBAD and the autoencoder use the fast recipe with alpha 0 / 1, so the
#: three methods differ only in alpha; "paper" is the paper's recipe unchanged. The arms of the fast
#: preset as it was pin --global-views 0: they ran before the fast preset gave tiles a global view.
ARMS = {
    # the fast arms pin --width 3 and --normalize none: they ran before the fast preset widened objects
    # to 6 and standardized every image
    "fast": ["--preset", "fast", "--width", "3", "--normalize", "none"],
    # native-resolution tiles with the paper's inputs (before tiles standardized by default) and crops
    # anywhere on the canvas (before tiles cropped inside the image by default)
    "tiles": TILES + ["--normalize", "none", "--train-crops", "canvas"],
    # tiles with every image standardized per channel (--normalize per_image): magnetic tiles differ
    # several-fold in brightness between images, and the L1 residual with them (issue 15 maps figure)
    "tiles_norm": TILES + ["--normalize", "per_image", "--train-crops", "canvas"],
    # tiles_norm again after the input pipeline fix (per-image statistics once per pool, not per batch:
    # the tiles_norm runs made about half the steps on magnetic tile and leather)
    "tiles_norm2": TILES + ["--normalize", "per_image", "--train-crops", "canvas"],
    # tiles_norm2 trained only on crops centred inside each image, not on the canvas's mirrored padding
    # (a 200x500 magnetic tile fills a quarter of its 640 px canvas): the tiles default since
    "tiles_image": TILES + ["--normalize", "per_image", "--train-crops", "image"],
    # tiles_image with a 4x larger latent code z (256): more capacity for the fine streaks of normal
    # surfaces, at almost no extra cost per step (only the dense layers grow)
    "tiles_z256": TILES + ["--normalize", "per_image", "--train-crops", "image", "--latent-dim", "256"],
    # and with a 4x smaller one (16): a tighter bottleneck, so that what the code cannot hold (a
    # blowhole, a crack) is reconstructed as the surface around it
    "tiles_z16": TILES + ["--normalize", "per_image", "--train-crops", "image", "--latent-dim", "16"],
    # tiles_image at half resolution (--scale 0.5, canvas half the side): a 64 px tile sees twice the
    # surface, and the image a quarter of the pixels to score
    "tiles_half": TILES + ["--normalize", "per_image", "--train-crops", "image", "--scale", "0.5"],
    # the fast preset as it is since the first study (map_max image score, and the label-free snapshot
    # choice by map_max too); the "fast" rows ran before, choosing by the paper's summed score
    "fast_map": ["--preset", "fast", "--width", "3", "--normalize", "none"],
    # objects at the paper's 128 px instead of the fast preset's 64 (4x the compute per step: fewer
    # steps in the budget, but small defects keep 4x the pixels)
    "fast128": ["--preset", "fast", "--image-size", "128", "--width", "3", "--normalize", "none"],
    # tiles_image with networks twice as wide (width multiplier c = 6 instead of 3: 6 to 96 channels):
    # more capacity to reconstruct the fine texture of normal surfaces, at a higher cost per step
    "tiles_w6": TILES + ["--normalize", "per_image", "--train-crops", "image", "--width", "6"],
    # the fast preset with networks twice as wide (the fast preset's objects since)
    "fast_w6": ["--preset", "fast", "--width", "6", "--normalize", "none"],
    # tiles_image with the consistency term weighted more (alpha 0.9: nearer a double autoencoder,
    # sharper reconstructions of the normal texture) and less (alpha 0.1: nearer the plain BiGAN)
    # than the fast preset's 0.5
    "tiles_a09": TILES + ["--normalize", "per_image", "--train-crops", "image", "--alpha", "0.9"],
    "tiles_a01": TILES + ["--normalize", "per_image", "--train-crops", "image", "--alpha", "0.1"],
    # the fast preset as it is (objects at width 6, textures at 3) with every image standardized per
    # channel (--normalize per_image, the tiles default): robust to lighting drift, if not worse
    "fast_norm": ["--preset", "fast", "--normalize", "per_image", "--global-views", "0"],
    # tiles_image with 128 px tiles instead of 64 (4x the context per tile, at native scale: large,
    # low-contrast defects such as 'uneven' span more than a 64 px tile; about a third of the steps)
    "tiles_p128": TILES + ["--normalize", "per_image", "--train-crops", "image", "--patch-size", "128"],
    # the fast preset as it is, trained in bfloat16 (--precision mixed_bfloat16: about 1.2x the steps;
    # float32 weights, losses, outputs and scoring)
    "fast_bf16": ["--preset", "fast", "--precision", "mixed_bfloat16", "--global-views", "0"],
    # the fast preset as a new user types it, on a folder it does not know: the kind is chosen from the
    # images' sizes (magnetic tile: tiles on a 640 px canvas) and scoring that chooses nothing keeps to
    # its share of the time (the tiles arms above passed --eval-every 1000000 instead)
    "auto": ["--preset", "fast", "--global-views", "0"],
    # the fast preset with the last (EMA) weights as the model instead of the snapshot chosen on
    # synthetic defects (ninth study: the synthetic statistic peaks early while the test auROC still rises)
    "fast_final": ["--preset", "fast", "--select", "final", "--global-views", "0"],
    # the same trained in bfloat16 (magnetic tile: tiles, chosen from its images' sizes)
    "fast_final_bf16": ["--preset", "fast", "--select", "final", "--precision", "mixed_bfloat16", "--global-views", "0"],
    # the fast preset with denoising training: half of the E+G batch's images get a synthetic defect
    # (spot, line or pasted patch) and G must give back the clean image (cbigan/data/defects.py)
    "fast_dn": ["--preset", "fast", "--denoise", "0.5", "--global-views", "0"],
    # and with a defect in every one of them
    "fast_dn1": ["--preset", "fast", "--denoise", "1.0", "--global-views", "0"],
    # tiles (bfloat16, as fast_final_bf16) with a quarter of every batch the whole image resized to one
    # tile (--global-views 0.25): the model also learns the whole part's look, scored beside the tiles
    # (magnetic tile's uneven and break defects span more than a tile; the squashed 64 px object model
    # and the tiles make nearly uncorrelated mistakes there)
    "tiles_gv": ["--preset", "fast", "--kind", "tiles", "--global-views", "0.25", "--width", "3",
                 "--precision", "mixed_bfloat16"],
    # and with half of every batch whole images (the fast preset's tiles since)
    "tiles_gv50": ["--preset", "fast", "--kind", "tiles", "--global-views", "0.5", "--width", "3",
                   "--precision", "mixed_bfloat16"],
    # and with three quarters of every batch whole images (the tiles still get a quarter)
    "tiles_gv75": ["--preset", "fast", "--kind", "tiles", "--global-views", "0.75", "--width", "3",
                   "--precision", "mixed_bfloat16"],
    # half of every batch global views, with networks twice as wide (objects gained from it, fourth study;
    # the global view is an object's view): the fast preset's tiles since the twelfth study
    "tiles_gv50_w6": ["--preset", "fast", "--kind", "tiles", "--global-views", "0.5", "--width", "6",
                      "--precision", "mixed_bfloat16"],
    # the README recipe exactly as a user types it (issue 34 rules study)
    "readme": ["--preset", "fast"],
    "paper": ["--preset", "paper"],
    "egbad": ["--preset", "fast", "--alpha", "0", "--width", "3", "--normalize", "none"],
    "autoencoder": ["--preset", "fast", "--alpha", "1", "--width", "3", "--normalize", "none"],
}
KEEP = ("config.json", "train_log.csv", "eval_log.csv", "metrics.csv", "summary.json", "threshold.json",
        "evaluation.json", "scores.csv")
#: Per (arm, category) train.py flags: the tiles canvas holds each set's largest image at native scale.
ARM_CATEGORY_FLAGS = {
    ("tiles", "bottle"): ["--image-size", "256"],        # 256 px images
    ("tiles", "leather"): ["--image-size", "512"],       # 512 px images
    ("tiles", "magnetic_tile"): ["--image-size", "640"],  # up to about 630 px a side
}
ARM_CATEGORY_FLAGS.update({(arm, c): f for (a, c), f in list(ARM_CATEGORY_FLAGS.items()) if a == "tiles"
                           for arm in ("tiles_norm", "tiles_norm2", "tiles_image", "tiles_z256", "tiles_z16", "tiles_w6", "tiles_a09",
                                       "tiles_a01", "tiles_p128")})
ARM_CATEGORY_FLAGS.update({("tiles_half", c): ["--image-size", str(int(f[1]) // 2)]
                           for (a, c), f in list(ARM_CATEGORY_FLAGS.items()) if a == "tiles"})
#: The fast preset's arms on magnetic tile train tiles (its images vary in size): they ran at width 3,
#: before the fast preset's tiles were widened to 6 (twelfth study).
ARM_CATEGORY_FLAGS.update({(arm, "magnetic_tile"): ["--width", "3"]
                           for arm in ("auto", "fast_bf16", "fast_final", "fast_final_bf16", "fast_dn", "fast_dn1",
                                       "fast_norm")})
#: Image-score rules evaluate.py reports side by side on every run (one scoring pass).
RULES = ("paper", "map_max", "map_topk")


def run_one(category: str, arm: str, seed: int, slot: int, args) -> dict:
    name = f"{arm}-seed{seed}"
    data_dir = args.data_dir
    if "/" in category:  # a category folder elsewhere: DATA_DIR/CATEGORY
        data_dir, category = str(Path(category).parent), Path(category).name
    run_dir = Path(args.output_dir) / category / name
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    pin = ["taskset", "-c", str(slot)] if args.parallel > 1 and shutil.which("taskset") else []
    train = pin + [sys.executable, str(ROOT / "train.py"), "--category", category, "--data-dir",
                   data_dir, "--output-dir", args.output_dir, "--run-name", name, "--seed", str(seed),
                   "--minutes", str(args.minutes), "--steps", "10000000", "--eval-every", str(args.eval_every),
                   "--log-every", str(args.eval_every), "--preview-every", "100000000", "--no-export",
                   "--quiet", "--fresh"] + ARMS[arm] + ARM_CATEGORY_FLAGS.get((arm, category), []) + args.extra
    log = Path(args.output_dir) / f"{category}-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write(" ".join(train) + "\n")
        f.flush()
        subprocess.run(train, stdout=f, stderr=subprocess.STDOUT, env=env, check=True)
        if args.evaluate:
            evaluate(run_dir, pin, env, f)
    return result_row(category, arm, seed, run_dir, " ".join(train[len(pin):]), time.monotonic() - t0, args)


def evaluate(run_dir: Path, pin: list, env: dict, log) -> None:
    """``evaluate.py RUN --rules ...``: every image-score rule from one scoring pass (stored score parts
    and maps are reused when the weights have not changed, so re-evaluating costs no network pass)."""
    subprocess.run(pin + [sys.executable, str(ROOT / "evaluate.py"), str(run_dir), "--quiet", "--rules", *RULES],
                   stdout=log, stderr=subprocess.STDOUT, env=env, check=True)


def last_snapshot_auroc(ev, summary, auroc) -> float:
    """The last weights' test auROC: the training's final monitoring, or, where training left the test
    set to evaluate.py (a tiles run over its share of the time) and the model is the last weights, the
    evaluated auROC; NaN otherwise."""
    if "test_auroc" in ev and ev["test_auroc"].iloc[-1] == ev["test_auroc"].iloc[-1]:
        return round(float(ev["test_auroc"].iloc[-1]), 4)
    if summary["selected_step"] == summary["steps"]:
        return round(float(auroc), 4)
    return float("nan")


def no_margin_auroc(run_dir: Path, rule: str) -> float | None:
    """Test auROC of a map rule over each image's whole region (margin 0), for a run whose own margin is
    larger: the same stored maps and the one rule implementation (cbigan.core.anomaly_score), so the study
    shows what the border margin changes. None without stored maps or a margin."""
    sys.path.insert(0, str(ROOT))
    from cbigan.core.anomaly_score import global_weight
    from cbigan.core.config import Config
    from cbigan.scoring.metrics import auroc
    from cbigan.core.results import ImageResults

    cfg = Config.from_json(run_dir / "config.json")
    if not cfg.score_margin or not (run_dir / "pixel_maps.npz").is_file():
        return None
    parts = ImageResults.load_parts(run_dir / "scores_parts.npz")
    maps = ImageResults.load_maps(run_dir / "pixel_maps.npz", global_weight(cfg))
    scores = maps.image_scores(cfg.score_lambda, rule, cfg.score_topk, margin=0)
    return float(auroc(parts.labels, scores))


def result_row(category: str, arm: str, seed: int, run_dir: Path, command: str, total: float, args) -> dict:
    name = run_dir.name
    summary = json.loads((run_dir / "summary.json").read_text())
    log = run_dir / "eval_log.csv"
    ev = pd.read_csv(log) if log.is_file() and log.stat().st_size else pd.DataFrame({"step": []})
    # the chosen model's test metrics: evaluate.py's, or the monitoring row of the selected step (the
    # same scorer and lambda, computed during training)
    if args.evaluate:
        metrics = pd.read_csv(run_dir / "metrics.csv")
        chosen = metrics[metrics["chosen"]].iloc[0]
        auroc, mba = chosen["auroc"], chosen["max_balanced_accuracy"]
        rule = json.loads((run_dir / "evaluation.json").read_text()).get("image_score", "paper")
        by_rule = {rule: auroc} | {r: chosen.get(f"auroc[{r}]") for r in RULES if r != rule}
    else:
        chosen = ev[ev["step"] == summary["selected_step"]].iloc[-1]
        auroc, mba = chosen["test_auroc"], chosen["test_max_balanced_accuracy"]
    row = {"category": category, "arm": arm, "seed": seed, "steps": summary["steps"],
           "train_seconds": summary["wall_seconds"],
           "total_seconds": round(total, 1), "selected_step": summary["selected_step"],
           "auroc": round(float(auroc), 4), "max_balanced_accuracy": round(float(mba), 4),
           "last_snapshot_test_auroc": last_snapshot_auroc(ev, summary, auroc),
           "best_snapshot_test_auroc": (round(float(ev["test_auroc"].max()), 4)
                                        if "test_auroc" in ev else float("nan")),
           "command": command}
    if args.evaluate:  # every rule from the same scoring pass, and the localization where there are masks
        row.update({f"auroc_{r}": round(float(v), 4) for r, v in by_rule.items() if v is not None and v == v})
        row["pixel_auroc"], row["aupro"] = chosen.get("pixel_auroc"), chosen.get("aupro")
        row["score_margin"] = json.loads((run_dir / "evaluation.json").read_text()).get("score_margin", 0)
        for r in ("map_max", "map_topk"):
            whole = no_margin_auroc(run_dir, r)
            if whole is not None:
                row[f"auroc_{r}_no_margin"] = round(whole, 4)
    dest = Path(args.results) / f"{category}-{name}"
    dest.mkdir(parents=True, exist_ok=True)
    for f in KEEP:
        if (run_dir / f).is_file():
            shutil.copy2(run_dir / f, dest / f)
    print(f"{category}/{name}: {row['steps']} steps, auROC {row['auroc']} (selected step {row['selected_step']}; "
          f"last snapshot {row['last_snapshot_test_auroc']})", flush=True)
    return row


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    g = runs.groupby(["category", "arm"], sort=False)
    out = pd.DataFrame({
        "runs": g.size(),
        "steps_median": g["steps"].median(),
        "auroc_median": g["auroc"].median(), "auroc_min": g["auroc"].min(), "auroc_max": g["auroc"].max(),
        "auroc_range": g["auroc"].max() - g["auroc"].min(),
        "mba_median": g["max_balanced_accuracy"].median(),
        "last_snapshot_auroc_median": g["last_snapshot_test_auroc"].median(),
    })
    for col in [c for c in runs.columns if c.startswith("auroc_") or c in ("pixel_auroc", "aupro")]:
        out[f"{col}_median"] = g[col].median()   # every image-score rule, localization
    return out.round(4).reset_index()


def plot_study(results: Path) -> Path:
    """One panel per (category, arm): test auROC over steps for each seed, the selected step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = pd.read_csv(results / "runs.csv")
    groups = list(runs.groupby(["category", "arm"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.4), sharey=True, squeeze=False)
    for ax, ((category, arm), rows) in zip(axes[0], groups):
        for r in rows.itertuples():
            log = results / f"{category}-{arm}-seed{r.seed}" / "eval_log.csv"
            if not log.is_file() or "test_auroc" not in pd.read_csv(log).columns:  # no monitoring (tiles)
                ax.plot([r.steps], [r.auroc], "s", ms=7, label=f"seed {r.seed} (last weights)")
                continue
            ev = pd.read_csv(log).dropna(subset=["test_auroc"])  # rows between monitorings are empty
            line, = ax.plot(ev["step"], ev["test_auroc"], lw=1.2, label=f"seed {r.seed}")
            ax.plot([r.selected_step], [r.auroc], "o", color=line.get_color(), ms=7, mfc="none", mew=1.8)
        ax.axhline(0.5, color="0.7", lw=0.8, ls=":")
        ax.set_title(f"{category}: {arm}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("test auROC (monitoring)")
    fig.suptitle("circle: the snapshot chosen without test labels (synthetic defects on held-out "
                 "normal images)", fontsize=9)
    fig.tight_layout()
    out = results / "study.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/mvtec_ad")
    p.add_argument("--category", default="bottle")
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--parallel", type=int, default=2, help="runs at once, one CPU core each")
    p.add_argument("--eval-every", type=int, default=50, help="snapshot / monitoring interval (all arms)")
    p.add_argument("--also", action="append", default=[], metavar="CATEGORY:ARM:SEED",
                   help="one more run (queued first), e.g. ../shared/data/magnetic_tile:fast:1")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                   help="take the chosen model's test metrics from its monitoring row instead of "
                        "running evaluate.py (same scorer; saves a process start per run)")
    p.add_argument("--output-dir", default="runs/budget")
    p.add_argument("--results", default="results/budget")
    p.add_argument("--plot-only", action="store_true", help="only redraw study.png from --results")
    p.add_argument("--reevaluate", action="store_true",
                   help="run evaluate.py again on the finished runs of --category/--arms/--seeds (stored "
                        "maps reused: the scoring code of today on the same weights) and rewrite their rows")
    p.add_argument("extra", nargs="*", help="more train.py flags for every run (after --)")
    args = p.parse_args(argv)
    if args.plot_only:
        print(plot_study(Path(args.results)))
        return 0
    if args.reevaluate:
        return reevaluate(args)
    jobs = [(c, a, int(s)) for c, a, s in (j.split(":") for j in args.also)]
    jobs += [(c, a, int(s)) for s in args.seeds.split(",") for c in args.category.split(",")
             for a in args.arms.split(",")]
    jobs = list(dict.fromkeys((str(Path(c)), a, s) for c, a, s in jobs))  # each run once, in order
    done = pd.read_csv(Path(args.results) / "runs.csv") if (Path(args.results) / "runs.csv").is_file() else None
    rows = [] if done is None else done.to_dict("records")
    finished = {(Path(r["category"]).name, r["arm"], int(r["seed"])) for r in rows}
    jobs = [j for j in jobs if (Path(j[0]).name, j[1], j[2]) not in finished]  # resumable: one row a run
    print(f"{len(jobs)} run(s) to do, {len(finished)} already in {args.results}/runs.csv", flush=True)
    unknown = {a for _, a, _ in jobs} - set(ARMS)
    if unknown:
        p.error(f"unknown arm(s) {sorted(unknown)}; choose from {list(ARMS)}")
    free = list(range(args.parallel))

    def work(job):
        slot = free.pop()
        try:
            return run_one(*job, slot, args)
        except subprocess.CalledProcessError as e:
            print(f"{job[0]}/{job[1]}-seed{job[2]} failed ({e}); see its log", file=sys.stderr, flush=True)
            return None
        finally:
            free.append(slot)

    with ThreadPoolExecutor(args.parallel) as pool:
        for row in pool.map(work, jobs):
            if row is not None:
                rows.append(row)
                runs = pd.DataFrame(rows)
                Path(args.results).mkdir(parents=True, exist_ok=True)
                runs.to_csv(Path(args.results) / "runs.csv", index=False)
    if not rows:
        return 1
    write_tables(rows, Path(args.results))
    return 0 if len(rows) >= len(jobs) + len(finished) else 1


def write_tables(rows: list, results: Path) -> None:
    """runs.csv, summary.csv/.md (per category and arm) and recipes.csv/.md (per arm and rule, the
    median over categories of the per-category medians over seeds), then study.png."""
    runs = pd.DataFrame(rows)
    results.mkdir(parents=True, exist_ok=True)
    runs.to_csv(results / "runs.csv", index=False)
    summary = summarize(runs)
    summary.to_csv(results / "summary.csv", index=False)
    (results / "summary.md").write_text(markdown(summary))
    recipes = recipe_table(summary)
    recipes.to_csv(results / "recipes.csv", index=False)
    (results / "recipes.md").write_text(markdown(recipes))
    print(summary.to_string(index=False))
    print(recipes.to_string(index=False))
    plot_study(results)


def recipe_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, image-score rule): the per-category median image auROC over seeds, their
    median and minimum over categories (the recipe is chosen by the median, never by one category)."""
    rows = []
    for arm, g in summary.groupby("arm", sort=False):
        for col in [c for c in g.columns if c.startswith("auroc_") and c.endswith("_median")
                    and c not in ("auroc_median",)]:
            per_cat = dict(zip(g["category"], g[col]))
            if all(pd.isna(v) for v in per_cat.values()):
                continue
            rule = col[len("auroc_"):-len("_median")]
            rows.append({"arm": arm, "rule": rule, **{c: round(float(v), 4) for c, v in per_cat.items()},
                         "median_over_categories": round(float(pd.Series(per_cat).median()), 4),
                         "worst_category": round(float(pd.Series(per_cat).min()), 4)})
    return pd.DataFrame(rows).sort_values("median_over_categories", ascending=False)


def reevaluate(args) -> int:
    """Evaluate the finished runs again with today's scoring code (same weights) and rewrite their rows."""
    path = Path(args.results) / "runs.csv"
    rows = pd.read_csv(path).to_dict("records")
    wanted = {(Path(c).name, a, int(s)) for s in args.seeds.split(",") for c in args.category.split(",")
              for a in args.arms.split(",")}
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    todo = [i for i, r in enumerate(rows) if (r["category"], r["arm"], int(r["seed"])) in wanted]

    def work(i):
        r = rows[i]
        run_dir = Path(args.output_dir) / r["category"] / f"{r['arm']}-seed{int(r['seed'])}"
        with open(Path(args.output_dir) / f"{r['category']}-{run_dir.name}.reevaluate.log", "w") as f:
            evaluate(run_dir, [], env, f)
        new = result_row(r["category"], r["arm"], int(r["seed"]), run_dir, r["command"], r["total_seconds"], args)
        return i, new

    with ThreadPoolExecutor(args.parallel) as pool:
        for i, new in pool.map(work, todo):
            rows[i] = new
            print(f"{new['category']}/{new['arm']}-seed{new['seed']}: auROC {new['auroc']}", flush=True)
    write_tables(rows, Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
