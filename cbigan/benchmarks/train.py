"""Training throughput: ``python -m cbigan.bench train``.

Prints images/s of full d_iter cycles (d_iter critic steps + 1 E+G step) for the texture (64 px) and
object (128 px) settings, for our train step and for a straightforward step that, like the original,
runs every forward pass, the gradient penalty and the consistency terms at every step and only picks
which gradients to apply. Both run in this process on the same data, so the ratio is a fair one even
on a noisy machine. ``--data`` adds an end-to-end figure on a real category (tf.data + augmentation).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..config import Config
from ..data import load_train_set, train_dataset
from ..model import CBiGAN, build_model

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec_ad"


class StraightforwardCBiGAN(CBiGAN):
    """The reference step: all losses every step (three critic calls, GP, consistency), two tapes."""

    def train_step(self, x):
        step = self.train_counter.value
        z, eps = self._sample(x)
        with tf.GradientTape() as d_tape, tf.GradientTape() as eg_tape:
            ex = self.encoder(x, training=True)
            gz = self.generator(z, training=True)
            d_real = self.critic([x, ex], training=True)
            d_fake = self.critic([gz, z], training=True)
            e_img = tf.reshape(eps, (-1, 1, 1, 1))
            x_hat = e_img * x + (1 - e_img) * gz
            z_hat = eps * z + (1 - eps) * ex
            with tf.GradientTape() as gp_tape:
                gp_tape.watch([x_hat, z_hat])
                d_hat = self.critic([x_hat, z_hat], training=True)
            gx, gzh = gp_tape.gradient(d_hat, [x_hat, z_hat])
            norm = tf.sqrt(tf.reduce_sum(tf.square(gx), [1, 2, 3]) + tf.reduce_sum(tf.square(gzh), 1) + 1e-12)
            gp = tf.reduce_mean(tf.square(norm - 1))
            loss_d = tf.reduce_mean(d_fake) - tf.reduce_mean(d_real) + self.gp_weight * gp
            loss_eg = tf.reduce_mean(d_real) - tf.reduce_mean(d_fake)
            rx = tf.reduce_mean(tf.reduce_sum(tf.abs(x - self.generator(ex, training=True)), [1, 2, 3]))
            rz = tf.reduce_mean(tf.reduce_sum(tf.abs(z - self.encoder(gz, training=True)), 1))
            loss_total = (1 - self.alpha) * loss_eg + self.alpha * (rx + rz)
        d_grads = d_tape.gradient(loss_d, self.critic.trainable_variables)
        eg_grads = eg_tape.gradient(loss_total, self.eg_variables)

        def apply_d():
            self.d_optimizer.apply_gradients(zip(d_grads, self.critic.trainable_variables))
            return tf.constant(True)

        def apply_eg():
            self.eg_optimizer.apply_gradients(zip(eg_grads, self.eg_variables))
            return tf.constant(False)

        tf.cond(self.is_critic_step(step), apply_d, apply_eg)
        self.train_counter.assign_add(1)
        for k, v in {"loss_d": loss_d, "gp": gp, "loss_eg": loss_eg, "loss_total": loss_total}.items():
            self.trackers[k].update_state(v)
        return {k: self.trackers[k].result() for k in ("loss_d", "loss_eg")}


def _model(cfg: Config, cls) -> CBiGAN:
    reference = build_model(cfg)
    if cls is CBiGAN:
        return reference
    m = cls(reference.encoder, reference.generator, reference.critic, alpha=cfg.alpha, d_iter=cfg.d_iter)
    m.build((None, cfg.patch_size, cfg.patch_size, 3))
    m.compile()
    return m


def images_per_second(model: CBiGAN, dataset, batch: int, cycles: int, d_iter: int) -> float:
    """Time ``cycles`` full d_iter cycles with fit, after one warm-up cycle that traces the graph."""
    steps = cycles * (d_iter + 1)
    model.fit(dataset, steps_per_epoch=d_iter + 1, epochs=1, verbose=0, shuffle=False)
    t = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return steps * batch / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cbigan.bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cycles", type=int, default=2, help="timed d_iter cycles per measurement")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="MVTec-layout folder for the end-to-end figure")
    p.add_argument("--category", default="bottle")
    args = p.parse_args(argv)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, batch {args.batch_size}, "
          f"{args.cycles} timed cycles of 5 critic + 1 E+G steps each")
    rows = []
    for kind, size in (("texture", 64), ("object", 128)):
        cfg = Config(category=f"bench_{kind}", kind=kind, image_size=512 if kind == "texture" else size,
                     patch_size=size, batch_size=args.batch_size).resolved()
        x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (args.batch_size, size, size, 3)), tf.float32)
        ds = tf.data.Dataset.from_tensors(x).repeat()
        ours = images_per_second(_model(cfg, CBiGAN), ds, args.batch_size, args.cycles, cfg.d_iter)
        ref = images_per_second(_model(cfg, StraightforwardCBiGAN), ds, args.batch_size, args.cycles, cfg.d_iter)
        rows.append((f"{kind} {size} px, in-memory", ours, ref))
        print(f"{rows[-1][0]:34s} ours {ours:7.1f} img/s   straightforward {ref:7.1f} img/s   "
              f"speed-up {ours / ref:.2f}x", flush=True)
    data_dir = Path(args.data)
    if (data_dir / args.category / "train" / "good").is_dir():
        cfg = Config(category=args.category, data_dir=str(data_dir), batch_size=args.batch_size).resolved()
        images = load_train_set(cfg).images
        ds = train_dataset(images, cfg)
        e2e = images_per_second(_model(cfg, CBiGAN), ds, args.batch_size, args.cycles, cfg.d_iter)
        print(f"{args.category} {cfg.patch_size} px, end to end (tf.data, rotation) ours {e2e:7.1f} img/s")
    else:
        print(f"(no data at {data_dir / args.category}: end-to-end figure skipped)")
    return 0
