import keras
import numpy as np
import pytest
import tensorflow as tf

from cbigan.core.config import Config
from cbigan.model.gan import CBiGAN, build_model
from cbigan.model.networks import build_critic, build_encoder, build_generator


def tiny_cfg(**kw):
    base = dict(category="tiny", kind="object", image_size=64, patch_size=64, width=1, latent_dim=8,
                batch_size=4, seed=1)
    base.update(kw)
    return Config(**base)


def batch(n=4, size=64, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32"))


def snapshot(net):
    return [w.copy() for w in net.get_weights()]


def changed(before, net):
    return any(not np.array_equal(a, b) for a, b in zip(before, net.get_weights()))


@pytest.mark.slow
def test_critic_step_changes_only_the_critic():
    m = build_model(tiny_cfg())
    e, g, d = snapshot(m.encoder), snapshot(m.generator), snapshot(m.critic)
    m.critic_step(batch())
    assert changed(d, m.critic)
    assert not changed(e, m.encoder) and not changed(g, m.generator)


@pytest.mark.slow
def test_eg_step_changes_only_encoder_and_generator():
    m = build_model(tiny_cfg())
    e, g, d = snapshot(m.encoder), snapshot(m.generator), snapshot(m.critic)
    m.eg_step(batch())
    assert changed(e, m.encoder) and changed(g, m.generator)
    assert not changed(d, m.critic)


@pytest.mark.slow
@pytest.mark.parametrize("d_iter", [0, 1, 5])
def test_schedule_follows_d_iter_in_one_trace(d_iter):
    traces = []

    class Counting(CBiGAN):
        def train_step(self, x):
            traces.append(1)
            return super().train_step(x)

    cfg = tiny_cfg(d_iter=d_iter).resolved()
    kw = dict(latent_dim=cfg.latent_dim, width=cfg.width)
    m = Counting(build_encoder(64, **kw), build_generator(64, **kw), build_critic(64, **kw), d_iter=d_iter)
    m.build((None, 64, 64, 3))
    m.compile()
    ds = tf.data.Dataset.from_tensors(batch()).repeat()
    m.fit(ds, steps_per_epoch=12, epochs=1, verbose=0)
    n_d, n_eg = int(m.d_optimizer.iterations.numpy()), int(m.eg_optimizer.iterations.numpy())
    assert n_d + n_eg == 12
    assert n_d == 12 * d_iter // (d_iter + 1)
    assert len(traces) == 1  # the branch is chosen in the graph: no retracing
    # the first d_iter steps of each cycle are critic steps
    flags = [bool(m.is_critic_step(tf.constant(s, tf.int64))) for s in range(2 * (d_iter + 1))]
    assert flags == ([True] * d_iter + [False]) * 2


@pytest.mark.slow
def test_alpha_zero_ignores_the_consistency_term():
    m = build_model(tiny_cfg(alpha=0.0))
    x = batch()
    z = tf.constant(np.random.default_rng(3).standard_normal((4, 8)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        losses = m.eg_losses(x, z)
        ex, gz = m.encoder(x, training=True), m.generator(z, training=True)
        s = m.critic([tf.concat([x, gz], 0), tf.concat([ex, z], 0)], training=True)
        plain = tf.reduce_mean(s[:4]) - tf.reduce_mean(s[4:])
    g_total = tape.gradient(losses["loss_total"], m.eg_variables)
    g_plain = tape.gradient(plain, m.eg_variables)
    for a, b in zip(g_total, g_plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    assert float(losses["loss_c"]) > 0  # still measured for the logs

    m1 = build_model(tiny_cfg(alpha=0.5))
    with tf.GradientTape() as tape:
        l1 = m1.eg_losses(x, z)["loss_total"]
    g1 = tape.gradient(l1, m1.encoder.trainable_variables)
    assert all(g is not None for g in g1)


@pytest.mark.slow
def test_losses_match_hand_computation():
    alpha = 0.25
    m = build_model(tiny_cfg(alpha=alpha))
    x = batch()
    z = tf.constant(np.random.default_rng(4).standard_normal((4, 8)).astype("float32"))
    ex, gz = m.encoder(x).numpy(), m.generator(z).numpy()
    d = lambda a, b: m.critic([tf.constant(a), tf.constant(b)]).numpy().ravel()
    d_real, d_fake = d(x.numpy(), ex), d(gz, z.numpy())
    l_eg = d_real.mean() - d_fake.mean()
    rx = np.abs(x.numpy() - m.generator(ex).numpy()).reshape(4, -1).sum(1).mean()
    rz = np.abs(z.numpy() - m.encoder(gz).numpy()).sum(1).mean()
    got = m.eg_losses(x, z)
    np.testing.assert_allclose(float(got["loss_eg"]), l_eg, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(got["loss_rx"]), rx, rtol=1e-4)
    np.testing.assert_allclose(float(got["loss_rz"]), rz, rtol=1e-4)
    np.testing.assert_allclose(float(got["loss_total"]), (1 - alpha) * l_eg + alpha * (rx + rz), rtol=1e-4)
    eps = tf.constant([[0.0], [1.0], [0.5], [0.25]])
    crit = m.critic_losses(x, z, eps)
    np.testing.assert_allclose(float(crit["d_real"]), d_real.mean(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(crit["d_fake"]), d_fake.mean(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(crit["loss_d"]),
                               d_fake.mean() - d_real.mean() + 10.0 * float(crit["gp"]), rtol=1e-4, atol=1e-5)


def test_gradient_penalty_equals_hand_computation_on_a_tiny_critic():
    """D(x, z) = 0.5 (|x|^2 + |z|^2): its gradient at (x^, z^) is (x^, z^), so GP is known in closed form."""
    size, n_lat = 64, 8
    xi = keras.Input((size, size, 3))
    zi = keras.Input((n_lat,))
    sx = keras.layers.Lambda(lambda t: 0.5 * keras.ops.sum(keras.ops.square(t), axis=(1, 2, 3)))(xi)
    sz = keras.layers.Lambda(lambda t: 0.5 * keras.ops.sum(keras.ops.square(t), axis=1))(zi)
    out = keras.layers.Reshape((1,))(keras.layers.Add()([sx, sz]))
    critic = keras.Model([xi, zi], out)
    enc, gen = build_encoder(size, n_lat, width=1), build_generator(size, n_lat, width=1)
    m = CBiGAN(enc, gen, critic, gp_weight=10.0)
    x = batch(3) * 0.01
    z = tf.constant(np.random.default_rng(5).standard_normal((3, n_lat)).astype("float32") * 0.05)
    eps = tf.constant([[0.2], [0.7], [1.0]])
    got = m.critic_losses(x, z, eps)
    ex, gz = enc(x).numpy(), gen(z).numpy()
    e = eps.numpy()
    x_hat = e[:, :, None, None] * x.numpy() + (1 - e[:, :, None, None]) * gz
    z_hat = e * z.numpy() + (1 - e) * ex
    norm = np.sqrt((x_hat ** 2).reshape(3, -1).sum(1) + (z_hat ** 2).sum(1))
    np.testing.assert_allclose(float(got["gp"]), np.mean((norm - 1) ** 2), rtol=1e-4)


@pytest.mark.slow
def test_ema_warmup_and_update_interval():
    m = build_model(tiny_cfg(ema_every=3))
    w0 = [w.copy() for w in m.ema_encoder.get_weights()]
    np.testing.assert_array_equal(w0[0], m.encoder.get_weights()[0])  # EMA starts at the initial weights
    ds = tf.data.Dataset.from_tensors(batch()).repeat()
    m.fit(ds, steps_per_epoch=7, epochs=1, verbose=0)
    assert int(m.ema_updates.numpy()) == 2  # after steps 3 and 6
    # warm-up: the first update uses decay min(0.999, 1/10) = 0.1, so the EMA follows the raw weights quickly
    m2 = build_model(tiny_cfg())
    before = m2.ema_encoder.get_weights()[0].copy()
    m2.encoder.get_weights()
    new = [w + 1.0 for w in m2.encoder.get_weights()]
    m2.encoder.set_weights(new)
    m2.update_ema()
    np.testing.assert_allclose(m2.ema_encoder.get_weights()[0], 0.1 * before + 0.9 * new[0], rtol=1e-5, atol=1e-6)
    m2.encoder.set_weights([w + 1.0 for w in new])
    m2.update_ema()  # second update: decay 2/11
    d = 2 / 11
    expected = d * (0.1 * before + 0.9 * new[0]) + (1 - d) * (new[0] + 1.0)
    np.testing.assert_allclose(m2.ema_encoder.get_weights()[0], expected, rtol=1e-5, atol=1e-5)


def test_ema_without_warmup_uses_the_plain_decay():
    m = build_model(tiny_cfg(ema_warmup=False))
    before = m.ema_encoder.get_weights()[0].copy()
    m.encoder.set_weights([w + 1.0 for w in m.encoder.get_weights()])
    m.update_ema()
    np.testing.assert_allclose(m.ema_encoder.get_weights()[0], before + 0.001, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_call_uses_the_ema_networks():
    m = build_model(tiny_cfg())
    x = batch(2)
    np.testing.assert_allclose(m(x).numpy(), m.ema_generator(m.ema_encoder(x)).numpy(), rtol=1e-6)
    m.encoder.set_weights([w * 0 for w in m.encoder.get_weights()])
    assert not np.allclose(m(x).numpy(), m.generator(m.encoder(x)).numpy())


@pytest.mark.slow
def test_save_and_load_keep_ema_weights(tmp_path):
    cfg = tiny_cfg(ema_every=1)
    m = build_model(cfg)
    ds = tf.data.Dataset.from_tensors(batch()).repeat()
    m.fit(ds, steps_per_epoch=4, epochs=1, verbose=0)
    m.save_weights(tmp_path / "m.weights.h5")
    m2 = build_model(cfg)
    m2.load_weights(tmp_path / "m.weights.h5")
    for a, b in zip(m.ema_generator.get_weights(), m2.ema_generator.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(m2.train_counter.numpy()) == 4
    assert not all(np.array_equal(a, b) for a, b in zip(m2.ema_generator.get_weights(), m2.generator.get_weights()))
