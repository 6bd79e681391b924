"""TensorBoard: a tiny run writes event files under <run>/tensorboard/ that hold losses, evaluations and previews."""

from collections import defaultdict

import numpy as np
import pytest
import tensorflow as tf

from cbigan.core.config import Config
from cbigan.core.runfolder import TENSORBOARD
from cbigan.training.run import train

pytestmark = pytest.mark.slow  # every test here trains or scores a model (python -m pytest -m 'not slow' leaves them out)


def read_events(folder):
    """{tag: [(step, value or image bytes)]} of every event file under ``folder``."""
    found = defaultdict(list)
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "images":
                    found[value.tag].append((event.step, value.tensor.string_val[2]))
                else:
                    found[value.tag].append((event.step, float(tf.make_ndarray(value.tensor))))
    return found


def test_run_writes_tensorboard_events(synthetic_root, tmp_path, monkeypatch):
    # test-set monitoring at step 2 waits while it would cost too much of the run's time, judged from the
    # first scoring call's time, tf.function tracing included: on a slow machine it skipped step 2.
    # Not what this test is about: here monitoring is always affordable.
    monkeypatch.setattr("cbigan.training.monitor.EVAL_FREE_S", 1e9)
    cfg = Config(category="synth_obj", data_dir=str(synthetic_root), output_dir=str(tmp_path), run_name="tb",
                 image_size=64, patch_size=64, steps=4, batch_size=4, log_every=2, eval_every=2,
                 preview_every=4, width=2, latent_dim=16)
    run = train(cfg, verbose=0, export=False)
    events = read_events(run / TENSORBOARD)
    for loss in ("train/loss_d", "train/loss_eg", "train/loss_total"):
        assert [step for step, _ in events[loss]] == [2, 4], (loss, sorted(events))
        assert all(np.isfinite(v) for _, v in events[loss])
    assert [step for step, _ in events["eval/test_auroc"]] == [2, 4]
    assert all(0.0 <= v <= 1.0 for _, v in events["eval/test_auroc"])
    (step, png), = events["previews"]
    assert step == 4
    image = tf.io.decode_image(png).numpy()
    assert image.ndim == 3 and image.shape[0] > 50 and image.std() > 1  # the preview grid, not a blank
