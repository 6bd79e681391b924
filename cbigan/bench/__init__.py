"""Benchmarks (not tests): ``python -m cbigan.bench {train,ops,loop,score,serve,metrics} [options]``.

One module per benchmark, each with a ``run(...)`` that measures side by side in one process and
prints its figures (ratios, so that they hold on a noisy machine):

* :mod:`cbigan.bench.train`: our train step vs the yardstick ``../shared/bench/reference_step.py``
  (the original's step structure), per thread setting and input size;
* :mod:`cbigan.bench.ops`: the train step's kernel time per op type, ours vs the yardstick (profiler);
* :mod:`cbigan.bench.loop`: the share of a real run's wall time spent outside the train step;
* :mod:`cbigan.bench.score`: batched texture/object scoring vs a per-patch loop like the original's;
* :mod:`cbigan.bench.serve`: the SavedModel signature vs the in-process Python path;
* :mod:`cbigan.bench.metrics`: pixel-metric computation time.

The options of each are in :mod:`cbigan.cli.bench`. Figures measured: ``results/benchmarks.md``.
"""

BENCHMARKS = ("train", "ops", "loop", "score", "serve", "metrics")
