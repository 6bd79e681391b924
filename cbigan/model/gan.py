"""CBiGAN as one ``keras.Model``: the custom ``train_step`` of the Wasserstein BiGAN with consistency.

The loss mathematics lives in :mod:`cbigan.model.losses` (sources: ``../shared/reference/``); this module
calls the networks, decides which of them a loss may update (``tf.stop_gradient``), and runs the steps:

* critic: ``L_D = mean D(G(z), z) - mean D(x, E(x)) + gp_weight * GP``, two-sided gradient penalty on
  interpolates of both image and latent with the same ``e ~ U(0, 1)`` per sample;
* encoder + generator: ``L_EG = mean D(x, E(x)) - mean D(G(z), z)``;
* consistency: ``L_C = mean_b sum|x - G(E(x))| + mean_b sum|z - E(G(z))|``;
* ``L*_EG = (1 - alpha) L_EG + alpha L_C`` (alpha 0: EGBAD, alpha 1: double autoencoder).

With ``denoise`` > 0 (``--denoise``; not in the paper) the image term of L_C becomes
``sum|x - G(E(x~))|``: ``x~`` is ``x`` with a synthetic defect drawn in with probability ``denoise``
(:func:`cbigan.data.defects.draw_defects`), so G learns to give the clean image back; the adversarial pair
stays ``(x, E(x))`` and the critic never sees ``x~``.

Of every ``d_iter + 1`` consecutive batches, ``d_iter`` update the critic only and one updates E and G
only; the branch is chosen in the graph from a step counter (``tf.cond``), so nothing retraces. Each
step computes only what its branch needs: the critic sees real and generated pairs in one call and
the interpolates in a second one (so the penalty's double backward pass covers B samples, not 3B), and
the E+G step has no gradient penalty. An exponential moving average (EMA) of E and G,
with the warm-up ``decay_n = min(decay, (1 + n) / (10 + n))``, is kept in ``ema_encoder`` and
``ema_generator``: those are the networks that are evaluated, saved and exported.

Under a ``tf.distribute`` strategy (``--distribute``, built inside ``strategy.scope()``) every replica
computes the means of its share of the global batch; the losses used for gradients are divided by the
number of replicas, so the all-reduced (summed) gradients are the gradients of the global-batch means,
while the logged metrics (Keras sums totals and counts over replicas) are the global means. The prior
codes are drawn for the whole global batch and each replica takes its slice, so N replicas see exactly
what one device sees. An optimizer update is a cross-replica synchronisation, which may not sit inside
``tf.cond``: there the critic / E+G branch is chosen on the host, between two traced step functions
(:meth:`make_train_function`), instead of in the graph.
"""

from __future__ import annotations

import dataclasses
import functools

import keras
import tensorflow as tf

from cbigan.model import losses as L
from cbigan.core.config import Config, as_resolved
from cbigan.data.defects import draw_defects
from cbigan.model.networks import build_critic, build_encoder, build_generator, float32_copy, precision_scope

LOSS_NAMES = ("loss_d", "gp", "d_real", "d_fake", "loss_eg", "loss_c", "loss_rx", "loss_rz", "loss_total")


def _replicas() -> tuple[int, tf.Tensor | int]:
    """(replicas in sync, this replica's id) in the current replica context; (1, 0) outside a strategy."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return 1, 0
    return ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group


class CBiGAN(keras.Model):
    """Owns E, G, D and the EMA copies of E and G; trains with :meth:`fit`."""

    def __init__(self, encoder: keras.Model, generator: keras.Model, critic: keras.Model, *,
                 alpha: float = 1e-4, d_iter: int = 5, gp_weight: float = 10.0,
                 ema_decay: float = 0.999, ema_every: int = 10, ema_warmup: bool = True,
                 seed: int = 42, denoise: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.generator, self.critic = encoder, generator, critic
        # the EMA networks (what is evaluated, selected and exported) compute in float32 whatever the
        # training precision (cbigan.core.config.PRECISIONS)
        self.ema_encoder = float32_copy(encoder, "ema_encoder")
        self.ema_generator = float32_copy(generator, "ema_generator")
        self.ema_encoder.set_weights(encoder.get_weights())
        self.ema_generator.set_weights(generator.get_weights())
        self.ema_encoder.trainable = False
        self.ema_generator.trainable = False
        self.latent_dim = int(generator.inputs[0].shape[-1])
        self.alpha = float(alpha)
        self.d_iter = int(d_iter)
        self.gp_weight = float(gp_weight)
        self.ema_decay = float(ema_decay)
        self.ema_every = int(ema_every)
        self.ema_warmup = bool(ema_warmup)
        if not 0.0 <= denoise <= 1.0:
            raise ValueError(f"denoise must be in [0, 1], got {denoise}")
        self.denoise = float(denoise)
        # built inside a strategy scope: train with host-side branch selection (see the module docstring)
        self.distributed = tf.distribute.has_strategy()
        self.train_counter = keras.Variable(0, dtype="int64", trainable=False, name="train_counter")
        self.ema_updates = keras.Variable(0, dtype="int64", trainable=False, name="ema_updates")
        self.seed = tf.constant(int(seed), tf.int64)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}

    # ------------------------------------------------------------------ keras plumbing
    def compile(self, d_optimizer=None, eg_optimizer=None, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer = d_optimizer or keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.9)
        self.eg_optimizer = eg_optimizer or keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.1)
        # Optimizer slots must exist before the first step: they cannot be created inside tf.cond.
        self.d_optimizer.build(self.critic.trainable_variables)
        self.eg_optimizer.build(self.eg_variables)
        if self.optimizer is not None and not self.optimizer.built:
            # Keras's own optimizer is unused: built empty, so that fit under a strategy does not give
            # it slots for every weight (which would also go into the checkpoints)
            self.optimizer.build([])

    @property
    def eg_variables(self):
        return self.encoder.trainable_variables + self.generator.trainable_variables

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, x, training=False):
        """Reconstruction G(E(x)) with the EMA networks (what is evaluated and exported)."""
        return self.ema_generator(self.ema_encoder(x, training=training), training=training)

    def build(self, input_shape=None):
        self.built = True

    # ------------------------------------------------------------------ losses
    def critic_losses(self, x, z, eps):
        """L_D and its parts for given real images, prior codes and interpolation weights
        (:func:`cbigan.model.losses.critic_losses`: one critic call on real and generated pairs, one on the
        interpolates for the gradient penalty)."""
        # E and G are fixed during a critic step: no gradient flows back into them
        ex = tf.stop_gradient(self.encoder(x, training=True))
        gz = tf.stop_gradient(self.generator(z, training=True))
        return L.critic_losses(self.critic, x, z, ex, gz, eps, self.gp_weight, training=True)

    def consistency_losses(self, x, z, ex, gz, training=True):
        """L_C parts: mean_b sum|x - G(E(x))| and mean_b sum|z - E(G(z))|
        (:func:`cbigan.model.losses.consistency_loss`)."""
        x_rec = self.generator(ex, training=training)
        z_rec = self.encoder(gz, training=training)
        return L.consistency_loss(x, x_rec, z, z_rec)

    def eg_losses(self, x, z, x_defect=None):
        """L*_EG and its parts. With alpha = 0 the consistency terms are computed for logging only.

        ``x_defect``: ``x`` with synthetic defects (denoising training), or None; when given, the image
        consistency term reconstructs ``x`` from ``E(x_defect)`` (one encoder call on both).
        """
        if x_defect is None:
            ex = ex_in = self.encoder(x, training=True)
        else:
            ex, ex_in = tf.split(self.encoder(tf.concat([x, x_defect], 0), training=True), 2, axis=0)
        gz = self.generator(z, training=True)
        scores = self.critic([tf.concat([x, gz], 0), tf.concat([ex, z], 0)], training=True)
        d_real, d_fake = tf.split(scores, 2, axis=0)
        loss_eg = L.encoder_generator_loss(d_real, d_fake)
        if self.alpha > 0:
            loss_rx, loss_rz = self.consistency_losses(x, z, ex_in, gz)
        else:
            loss_rx, loss_rz = self.consistency_losses(tf.stop_gradient(x), z, tf.stop_gradient(ex_in),
                                                       tf.stop_gradient(gz))
            loss_rx, loss_rz = tf.stop_gradient(loss_rx), tf.stop_gradient(loss_rz)
        loss_c = loss_rx + loss_rz
        total = L.total_eg_loss(loss_eg, loss_c, self.alpha)
        return {"loss_eg": loss_eg, "loss_c": loss_c, "loss_rx": loss_rx, "loss_rz": loss_rz,
                "loss_total": total}

    # ------------------------------------------------------------------ steps
    def is_critic_step(self, step):
        """True where ``step`` (0-based) is one of the d_iter critic-only batches of its cycle."""
        return tf.math.floormod(step, self.d_iter + 1) < self.d_iter

    def _sample(self, x):
        """Prior codes z and interpolation weights e for this step.

        Stateless draws keyed by (seed, step): a run resumed from a checkpoint draws exactly what the
        uninterrupted run would have drawn.
        """
        batch = tf.shape(x)[0]
        step = tf.cast(self.train_counter.value, tf.int64)
        n, replica = _replicas()  # with N replicas: draw for the global batch, keep this replica's slice
        total = batch if n == 1 else n * batch
        z = tf.random.stateless_normal((total, self.latent_dim), seed=tf.stack([self.seed, 2 * step]))
        eps = tf.random.stateless_uniform((total, 1), seed=tf.stack([self.seed, 2 * step + 1]))
        if n > 1:
            z, eps = z[replica * batch:(replica + 1) * batch], eps[replica * batch:(replica + 1) * batch]
        return z, eps

    @staticmethod
    def _for_gradients(loss):
        """The loss to differentiate: the replicas' gradients are summed, so each takes 1/N of its mean."""
        n, _ = _replicas()
        return loss if n == 1 else loss / n

    def critic_step(self, x):
        z, eps = self._sample(x)
        with tf.GradientTape() as tape:
            losses = self.critic_losses(x, z, eps)
            loss = self._for_gradients(losses["loss_d"])
        grads = tape.gradient(loss, self.critic.trainable_variables)
        self.d_optimizer.apply_gradients(zip(grads, self.critic.trainable_variables))
        for k, v in losses.items():
            self.trackers[k].update_state(v)
        return tf.constant(True)

    def _defects(self, x):
        """``x`` with synthetic defects (``denoise`` > 0), keyed by (seed, step, replica); else None."""
        if self.denoise <= 0:
            return None
        step = tf.cast(self.train_counter.value, tf.int64)
        n, replica = _replicas()
        key = step * n + tf.cast(replica, tf.int64)
        return draw_defects(x, self.denoise, tf.stack([self.seed + 104729, key]))[0]

    def eg_step(self, x):
        z, _ = self._sample(x)
        x_defect = self._defects(x)
        with tf.GradientTape() as tape:
            losses = self.eg_losses(x, z, x_defect)
            loss = self._for_gradients(losses["loss_total"])
        grads = tape.gradient(loss, self.eg_variables)
        self.eg_optimizer.apply_gradients(zip(grads, self.eg_variables))
        for k, v in losses.items():
            self.trackers[k].update_state(v)
        return tf.constant(False)

    def update_ema(self):
        """One EMA update of E and G into ema_encoder / ema_generator (with warm-up if enabled)."""
        n = tf.cast(self.ema_updates, tf.float32)
        decay = tf.constant(self.ema_decay, tf.float32)
        if self.ema_warmup:
            decay = tf.minimum(decay, (1.0 + n) / (10.0 + n))
        sources = self.encoder.weights + self.generator.weights
        targets = self.ema_encoder.weights + self.ema_generator.weights
        for src, dst in zip(sources, targets):
            dst.assign(decay * dst + (1.0 - decay) * tf.cast(src, dst.dtype))
        self.ema_updates.assign_add(1)
        return tf.constant(True)

    def copy_weights_to_ema(self):
        """Make the EMA networks equal to the raw ones (e.g. to evaluate raw weights)."""
        self.ema_encoder.set_weights(self.encoder.get_weights())
        self.ema_generator.set_weights(self.generator.get_weights())

    def train_step(self, x, critic=None):
        """One batch. ``critic`` None: the branch is chosen in the graph; True / False: forced (host)."""
        step = tf.identity(self.train_counter.value)  # read now, not after the increment below
        if critic is None and self.d_iter == 0:
            critic = False
        if critic is None:
            tf.cond(self.is_critic_step(step), lambda: self.critic_step(x), lambda: self.eg_step(x))
        else:
            self.critic_step(x) if critic else self.eg_step(x)
        # the counter and the EMA are updated on each replica's copy alike (no aggregation, no sync)
        self.train_counter.assign_add(1)
        tf.cond(tf.math.floormod(step + 1, self.ema_every) == 0, self.update_ema, lambda: tf.constant(False))
        return {name: t.result() for name, t in self.trackers.items()}

    def make_train_function(self, force=False):
        """Single device: Keras's own (the branch is in the graph). Under a strategy: the host reads the
        step counter before each batch and runs the traced critic or E+G step on every replica; the
        logged values are the mean over replicas of their running means, i.e. the global means."""
        if not self.distributed:
            return super().make_train_function(force)
        if self.train_function is not None and not force:
            return self.train_function
        if self.steps_per_execution != 1:
            raise ValueError("distributed CBiGAN training needs steps_per_execution=1")
        strategy = self.distribute_strategy

        def traced(critic):
            @tf.function
            def one_step(iterator):
                logs = strategy.run(functools.partial(self.train_step, critic=critic),
                                    args=(iterator.get_next(),))
                return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

            return one_step

        functions = {True: traced(True), False: traced(False)}  # each traced on its first call

        def train_function(iterator):
            step = int(keras.ops.convert_to_numpy(self.train_counter))
            return functions[self.d_iter > 0 and step % (self.d_iter + 1) < self.d_iter](iterator)

        self.train_function = train_function
        return train_function


def build_model(cfg: Config) -> CBiGAN:
    """Build and compile the CBiGAN that ``cfg`` describes (seeded for reproducibility)."""
    cfg = as_resolved(cfg)  # a hand-built config too
    keras.utils.set_random_seed(cfg.seed)
    kw = dict(latent_dim=cfg.latent_dim, width=cfg.width, norm=cfg.norm, activation=cfg.activation)
    with precision_scope(cfg.precision):  # the trained networks; the EMA ones are float32 (CBiGAN)
        nets = build_encoder(cfg.patch_size, **kw), build_generator(cfg.patch_size, **kw), \
            build_critic(cfg.patch_size, **kw)
    model = CBiGAN(*nets, alpha=cfg.alpha, d_iter=cfg.d_iter,
                   gp_weight=cfg.gp_weight, ema_decay=cfg.ema_decay, ema_every=cfg.ema_every,
                   ema_warmup=cfg.ema_warmup, seed=cfg.seed, denoise=cfg.denoise, name="cbigan")
    model.build((None, cfg.patch_size, cfg.patch_size, 3))
    model.compile(
        d_optimizer=keras.optimizers.Adam(cfg.lr_d, beta_1=cfg.betas_d[0], beta_2=cfg.betas_d[1]),
        eg_optimizer=keras.optimizers.Adam(cfg.lr_eg, beta_1=cfg.betas_eg[0], beta_2=cfg.betas_eg[1]),
    )
    return model


def load_trained(run_dir) -> tuple[Config, CBiGAN]:
    """Rebuild the trained model of a run folder (``config.json`` + ``model.weights.h5``).

    Returns ``(config, model)``; the model's EMA networks are the ones to evaluate. Raises a one-line
    :class:`cbigan.core.errors.DataError` when the folder is not a finished run.
    """
    from pathlib import Path

    from cbigan.core.errors import DataError
    from cbigan.core.runfolder import CONFIG_JSON, WEIGHTS, is_run_dir

    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise DataError(f"{run_dir} is not a finished run folder (needs {CONFIG_JSON} and {WEIGHTS}); "
                        f"pass runs/<category>/<run>")
    cfg = Config.from_json(run_dir / CONFIG_JSON)
    # scoring and export run float32 networks whatever the training precision (same weights)
    model = build_model(dataclasses.replace(cfg, precision="float32"))
    model.load_weights(run_dir / WEIGHTS)
    return cfg, model
