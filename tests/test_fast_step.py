"""The fast train step computes the same losses and gradients as a plain reference implementation.

The reference below is written out straightforwardly (as in the authors' code and
``../shared/bench/reference_step.py``): one critic call each on the real pairs, the generated pairs and
the interpolates, the penalty from a nested tape, the consistency terms from their own network calls.
The step under test is the model's compiled ``train_step`` (branch chosen in the graph by ``tf.cond``)
on fixed inputs and fixed weights: its optimizers are replaced by recorders that store the gradients
instead of applying them, so every step sees the same weights as the reference.
"""

import numpy as np
import pytest
import tensorflow as tf

from cbigan.core.config import Config
from cbigan.model.gan import build_model

B, SIZE, LATENT = 4, 64, 8


class GradientRecorder:
    """Stands in for an optimizer: keeps the last gradients of its variables, changes no weight."""

    def __init__(self, variables):
        self.variables_ = list(variables)
        self.grads = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables_]
        self.calls = tf.Variable(0, trainable=False)

    def build(self, variables):
        pass

    def apply_gradients(self, grads_and_vars):
        grads_and_vars = list(grads_and_vars)
        assert len(grads_and_vars) == len(self.variables_)
        for slot, own, (g, v) in zip(self.grads, self.variables_, grads_and_vars):
            assert v is own
            slot.assign(g)
        self.calls.assign_add(1)

    def recorded(self):
        return [g.numpy() for g in self.grads]


def model_with_recorders(alpha, d_iter=2):
    cfg = Config(category="tiny", kind="object", image_size=SIZE, patch_size=SIZE, width=1, latent_dim=LATENT,
                 batch_size=B, seed=3, alpha=alpha, d_iter=d_iter, ema_every=1)
    m = build_model(cfg)
    m.d_optimizer = GradientRecorder(m.critic.trainable_variables)
    m.eg_optimizer = GradientRecorder(m.eg_variables)
    return m


def reference_critic(m, x, z, eps):
    """L_D, its parts and its gradients for the critic: three separate critic calls."""
    ex, gz = m.encoder(x, training=True), m.generator(z, training=True)
    with tf.GradientTape() as tape:
        d_real = tf.reduce_mean(m.critic([x, ex], training=True))
        d_fake = tf.reduce_mean(m.critic([gz, z], training=True))
        e = tf.reshape(eps, (-1, 1, 1, 1))
        x_hat, z_hat = e * x + (1 - e) * gz, eps * z + (1 - eps) * ex
        with tf.GradientTape() as gp_tape:
            gp_tape.watch([x_hat, z_hat])
            d_hat = m.critic([x_hat, z_hat], training=True)
        gx, gzh = gp_tape.gradient(d_hat, [x_hat, z_hat])
        norm = tf.sqrt(tf.reduce_sum(tf.square(gx), [1, 2, 3]) + tf.reduce_sum(tf.square(gzh), 1) + 1e-12)
        gp = tf.reduce_mean(tf.square(norm - 1))
        loss_d = d_fake - d_real + m.gp_weight * gp
    grads = tape.gradient(loss_d, m.critic.trainable_variables)
    return {"loss_d": loss_d, "gp": gp, "d_real": d_real, "d_fake": d_fake}, grads


def reference_eg(m, x, z, alpha):
    """L*_EG, its parts and its gradients for E and G: separate critic calls, plain consistency terms."""
    with tf.GradientTape() as tape:
        ex, gz = m.encoder(x, training=True), m.generator(z, training=True)
        loss_eg = (tf.reduce_mean(m.critic([x, ex], training=True))
                   - tf.reduce_mean(m.critic([gz, z], training=True)))
        rx = tf.reduce_mean(tf.reduce_sum(tf.abs(x - m.generator(ex, training=True)), [1, 2, 3]))
        rz = tf.reduce_mean(tf.reduce_sum(tf.abs(z - m.encoder(gz, training=True)), 1))
        total = (1 - alpha) * loss_eg + alpha * (rx + rz) if alpha > 0 else loss_eg
    grads = tape.gradient(total, m.eg_variables)
    return {"loss_eg": loss_eg, "loss_rx": rx, "loss_rz": rz, "loss_c": rx + rz, "loss_total": total}, grads


def assert_close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    scale = max(float(np.max(np.abs(want))), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.0, 1e-4, 1.0])
def test_fast_step_losses_and_gradients_equal_the_plain_reference(alpha):
    m = model_with_recorders(alpha)
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (B, SIZE, SIZE, 3)).astype("float32"))
    step = tf.function(m.train_step)  # compiled like fit's; the branch is chosen in the graph
    for n in range(m.d_iter + 1):  # d_iter critic steps, then one E+G step
        z, eps = m._sample(x)  # what the step will draw at this counter
        for t in m.trackers.values():
            t.reset_state()
        d_calls, eg_calls = int(m.d_optimizer.calls.numpy()), int(m.eg_optimizer.calls.numpy())
        logs = step(x)
        if n < m.d_iter:
            assert int(m.d_optimizer.calls.numpy()) == d_calls + 1 and int(m.eg_optimizer.calls.numpy()) == eg_calls
            want, grads = reference_critic(m, x, z, eps)
            got_grads = m.d_optimizer.recorded()
        else:
            assert int(m.eg_optimizer.calls.numpy()) == eg_calls + 1 and int(m.d_optimizer.calls.numpy()) == d_calls
            want, grads = reference_eg(m, x, z, alpha)
            got_grads = m.eg_optimizer.recorded()
        for k, v in want.items():
            assert_close(float(logs[k]), float(v), f"step {n}, alpha {alpha}: {k}")
        assert len(got_grads) == len(grads)
        for i, (a, b) in enumerate(zip(got_grads, grads)):
            assert_close(a, b.numpy(), f"step {n}, alpha {alpha}: gradient {i} ({a.shape})")
    assert int(m.train_counter.numpy()) == m.d_iter + 1


# ---------------------------------------------------------------------------------- the loop around it
class _Counter:
    def __init__(self):
        self.train_counter = np.int64(0)
        self.stop_training = False


def _checkpointer(interval_s):
    from cbigan.training import callbacks as cb

    written = []
    guard = cb.NaNGuard()
    model = _Counter()
    ck = cb.Checkpointer(4, lambda step, state=None: written.append((step, state)), guard,
                         snapshot=lambda: f"state@{int(model.train_counter)}", interval_s=interval_s)
    ck.set_model(model)
    guard.set_model(model)
    ck.on_train_begin()
    return ck, guard, model, written


def _advance(ck, model, steps):
    model.train_counter = np.int64(int(model.train_counter) + steps)
    ck.on_epoch_end(0)


def test_backups_are_held_in_memory_between_timed_writes_and_the_end_writes_the_current_state():
    ck, _, model, written = _checkpointer(interval_s=3600)
    _advance(ck, model, 4)   # the first backup of a run is always written
    _advance(ck, model, 4)   # within the interval: held in memory
    _advance(ck, model, 4)
    assert written == [(4, None)] and ck.held == (12, "state@12") and ck.backup_step() == 12
    model.train_counter = np.int64(14)
    ck.on_train_end()        # budget, last step or signal: the current state
    assert written == [(4, None), (14, None)] and ck.held is None and ck.last_saved == 14


def test_after_a_non_finite_loss_the_last_good_held_backup_is_written():
    ck, guard, model, written = _checkpointer(interval_s=3600)
    _advance(ck, model, 4)
    _advance(ck, model, 4)
    guard.error = "loss 'loss_eg' became nan at step 10"
    _advance(ck, model, 2)
    ck.on_train_end()
    assert written == [(4, None), (8, "state@8")] and ck.last_saved == 8


def test_without_an_interval_every_backup_is_written():
    ck, _, model, written = _checkpointer(interval_s=None)
    for _ in range(3):
        _advance(ck, model, 4)
    assert [s for s, _ in written] == [4, 8, 12] and ck.held is None


def test_intra_op_threads_are_chosen_by_input_size_and_an_explicit_value_wins(monkeypatch):
    from cbigan.training import machine as training

    monkeypatch.setattr(training, "has_gpu", lambda: False)
    monkeypatch.setattr(training, "INTRA_OP_THREADS", ((64, 2, 1),))  # one thread up to 64 px, <= 2 cores
    monkeypatch.setattr(training, "available_cores", lambda: 2)
    cfg = lambda **kw: Config(category="tiny", kind="object", **kw).resolved()
    assert training.choose_intra_op_threads(cfg(image_size=64)) == 1
    assert training.choose_intra_op_threads(cfg(image_size=128)) == 0
    monkeypatch.setattr(training, "available_cores", lambda: 16)  # not measured there: TF's default
    assert training.choose_intra_op_threads(cfg(image_size=64)) == 0
    monkeypatch.setattr(training, "available_cores", lambda: 2)
    assert training.choose_intra_op_threads(cfg(image_size=64, intra_op_threads=2)) == 2
    assert training.choose_intra_op_threads(cfg(image_size=64, distribute="mirrored")) == 0
    monkeypatch.setattr(training, "has_gpu", lambda: True)
    assert training.choose_intra_op_threads(cfg(image_size=64)) == 0
    with pytest.raises(ValueError, match="intra_op_threads"):
        cfg(intra_op_threads=-1)
