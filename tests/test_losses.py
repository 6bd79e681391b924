"""cbigan.model.losses against NumPy references and closed forms, on small fixed inputs (no CBiGAN model)."""

import ast
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cbigan.model import losses as L

RNG = np.random.default_rng(7)
B, H, W, C, N = 3, 4, 5, 3, 6
X = RNG.uniform(-1, 1, (B, H, W, C)).astype("float32")
X2 = RNG.uniform(-1, 1, (B, H, W, C)).astype("float32")
Z = RNG.standard_normal((B, N)).astype("float32")
Z2 = RNG.standard_normal((B, N)).astype("float32")
EPS = np.array([[0.0], [1.0], [0.3]], "float32")


def t(a):
    return tf.constant(a)


def linear_critic(w_x, w_z, b=0.0):
    """D(x, z) = <w_x, x> + <w_z, z> + b per sample: its gradient is (w_x, w_z) everywhere."""
    w_x, w_z = tf.constant(w_x, tf.float32), tf.constant(w_z, tf.float32)

    def critic(inputs, training=False):
        x, z = inputs
        return tf.reshape(tf.reduce_sum(x * w_x, axis=(1, 2, 3)) + tf.reduce_sum(z * w_z, axis=1) + b, (-1, 1))

    return critic


def quadratic_critic(inputs, training=False):
    """D(x, z) = 0.5 (|x|^2 + |z|^2) per sample: its gradient at (x, z) is (x, z)."""
    x, z = inputs
    return tf.reshape(0.5 * (tf.reduce_sum(x ** 2, axis=(1, 2, 3)) + tf.reduce_sum(z ** 2, axis=1)), (-1, 1))


def test_l1_per_sample_sums_every_axis_but_the_batch():
    got = L.l1_per_sample(t(X), t(X2)).numpy()
    assert got.shape == (B,)
    np.testing.assert_allclose(got, np.abs(X - X2).reshape(B, -1).sum(1), rtol=1e-6)
    got_z = L.l1_per_sample(t(Z), t(Z2)).numpy()
    np.testing.assert_allclose(got_z, np.abs(Z - Z2).sum(1), rtol=1e-6)
    assert np.all(L.l1_per_sample(t(X), t(X)).numpy() == 0)


def test_consistency_loss_is_the_batch_mean_of_per_sample_l1_sums():
    rx, rz = L.consistency_loss(t(X), t(X2), t(Z), t(Z2))
    np.testing.assert_allclose(float(rx), np.abs(X - X2).reshape(B, -1).sum(1).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(rz), np.abs(Z - Z2).sum(1).mean(), rtol=1e-6)
    # summed over pixels (not averaged): a constant offset of 0.5 gives 0.5 * H * W * C
    rx_const, rz_const = L.consistency_loss(t(X), t(X + 0.5), t(Z), t(Z - 0.5))
    np.testing.assert_allclose(float(rx_const), 0.5 * H * W * C, rtol=1e-5)
    np.testing.assert_allclose(float(rz_const), 0.5 * N, rtol=1e-5)


def test_encoder_generator_and_critic_losses_against_numpy():
    d_real = np.array([[1.5], [-0.5], [2.0]], "float32")
    d_fake = np.array([[0.25], [-1.0], [0.75]], "float32")
    l_eg = float(L.encoder_generator_loss(t(d_real), t(d_fake)))
    np.testing.assert_allclose(l_eg, d_real.mean() - d_fake.mean(), rtol=1e-6)
    l_d = float(L.critic_loss(t(d_real), t(d_fake), tf.constant(0.3), 10.0))
    np.testing.assert_allclose(l_d, d_fake.mean() - d_real.mean() + 10.0 * 0.3, rtol=1e-6)
    # the adversarial parts are opposite: without the penalty, L_D = -L_EG
    np.testing.assert_allclose(float(L.critic_loss(t(d_real), t(d_fake), 0.0, 10.0)), -l_eg, rtol=1e-6)
    # means already taken give the same value
    np.testing.assert_allclose(float(L.encoder_generator_loss(d_real.mean(), d_fake.mean())), l_eg, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 1e-4, 0.25, 1.0])
def test_total_eg_loss_is_the_paper_mixture(alpha):
    got = float(L.total_eg_loss(tf.constant(-2.0), tf.constant(6000.0), alpha))
    np.testing.assert_allclose(got, (1 - alpha) * -2.0 + alpha * 6000.0, rtol=1e-6)


def test_total_eg_loss_at_the_ends():
    assert float(L.total_eg_loss(tf.constant(-2.0), tf.constant(6000.0), 0.0)) == -2.0  # EGBAD: L_EG only
    assert float(L.total_eg_loss(tf.constant(-2.0), tf.constant(6000.0), 1.0)) == 6000.0  # autoencoder: L_C
    # alpha 0 does not touch L_C at all: a non-finite L_C cannot leak in, and it gets no gradient
    assert float(L.total_eg_loss(tf.constant(-2.0), tf.constant(float("nan")), 0.0)) == -2.0
    lc = tf.Variable(5.0)
    with tf.GradientTape() as tape:
        total = L.total_eg_loss(tf.constant(1.0), lc * 2.0, 0.0)
    assert tape.gradient(total, lc) is None


def test_interpolate_mixes_real_with_generated_and_prior_with_encoded():
    x_hat, z_hat = L.interpolate(t(X), t(X2), t(Z), t(Z2), t(EPS))
    e4 = EPS[:, :, None, None]
    np.testing.assert_allclose(x_hat.numpy(), e4 * X + (1 - e4) * X2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(z_hat.numpy(), EPS * Z + (1 - EPS) * Z2, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(x_hat.numpy()[0], X2[0])  # eps 0: (G(z), E(x))
    np.testing.assert_array_equal(z_hat.numpy()[1], Z[1])  # eps 1: (x, z)


@pytest.mark.parametrize("sx, sz, expected", [
    (2.0, np.sqrt(5.0), 4.0),  # ||grad|| = sqrt(4 + 5) = 3: (3 - 1)^2; image part alone would give 1
    (0.0, 0.5, 0.25),  # ||grad|| = 0.5 < 1 is penalised too (two-sided): (0.5 - 1)^2
    (0.6, 0.8, 0.0),  # ||grad|| = 1: no penalty
])
def test_gradient_penalty_of_a_linear_critic_is_the_closed_form(sx, sz, expected):
    rng = np.random.default_rng(11)
    w_x, w_z = rng.standard_normal((1, H, W, C)), rng.standard_normal((1, N))
    w_x, w_z = w_x * sx / np.linalg.norm(w_x), w_z * sz / np.linalg.norm(w_z)
    critic = linear_critic(w_x, w_z, b=3.0)
    gp = float(L.gradient_penalty(critic, t(X), t(Z)))
    np.testing.assert_allclose(gp, expected, rtol=1e-5, atol=1e-6)


def test_penalty_from_gradients_uses_the_norm_of_both_gradients_per_sample():
    gx = RNG.standard_normal((B, H, W, C)).astype("float32") * 0.1
    gz = RNG.standard_normal((B, N)).astype("float32")
    norm = np.sqrt((gx ** 2).reshape(B, -1).sum(1) + (gz ** 2).sum(1))
    np.testing.assert_allclose(float(L.penalty_from_gradients(t(gx), t(gz))), np.mean((norm - 1) ** 2), rtol=1e-5)
    # finite gradient of the penalty even where a gradient is exactly zero
    g0 = tf.Variable(np.zeros((B, N), "float32"))
    with tf.GradientTape() as tape:
        p = L.penalty_from_gradients(tf.zeros((B, H, W, C)), g0)
    assert np.isfinite(tape.gradient(p, g0).numpy()).all()


def test_critic_losses_against_numpy_with_a_quadratic_critic():
    """D = 0.5 (|x|^2 + |z|^2): the scores and the gradient at the interpolates are known exactly."""
    x, gz, z, ex = X * 0.1, X2 * 0.1, Z * 0.2, Z2 * 0.2
    got = L.critic_losses(quadratic_critic, t(x), t(z), t(ex), t(gz), t(EPS), 10.0)
    assert set(got) == {"loss_d", "gp", "d_real", "d_fake"}
    d = lambda a, b: 0.5 * ((a ** 2).reshape(B, -1).sum(1) + (b ** 2).sum(1))
    d_real, d_fake = d(x, ex).mean(), d(gz, z).mean()
    e4 = EPS[:, :, None, None]
    x_hat, z_hat = e4 * x + (1 - e4) * gz, EPS * z + (1 - EPS) * ex
    gp = np.mean((np.sqrt((x_hat ** 2).reshape(B, -1).sum(1) + (z_hat ** 2).sum(1)) - 1) ** 2)
    np.testing.assert_allclose(float(got["d_real"]), d_real, rtol=1e-5)
    np.testing.assert_allclose(float(got["d_fake"]), d_fake, rtol=1e-5)
    np.testing.assert_allclose(float(got["gp"]), gp, rtol=1e-5)
    np.testing.assert_allclose(float(got["loss_d"]), d_fake - d_real + 10.0 * gp, rtol=1e-5)
    # the single concatenated call gives the penalty of the stand-alone function
    x_hat_t, z_hat_t = L.interpolate(t(x), t(gz), t(z), t(ex), t(EPS))
    np.testing.assert_allclose(float(got["gp"]), float(L.gradient_penalty(quadratic_critic, x_hat_t, z_hat_t)),
                               rtol=1e-6)


def test_critic_losses_pass_gradients_to_the_critic_weights_through_the_penalty():
    """The penalty is differentiable in the critic's weights (second order), as WGAN-GP needs."""
    scale = tf.Variable(2.0)

    def critic(inputs, training=False):
        x, z = inputs
        return scale * tf.reshape(tf.reduce_sum(x, axis=(1, 2, 3)) + tf.reduce_sum(z, axis=1), (-1, 1))

    with tf.GradientTape() as tape:
        got = L.critic_losses(critic, t(X), t(Z), t(Z2), t(X2), t(EPS), 10.0)
    # ||grad|| = scale * sqrt(H W C + N) per sample, so d gp / d scale = 2 (scale k - 1) k, k = sqrt(HWC + N)
    k = np.sqrt(H * W * C + N)
    d_fake_minus_real = (X2.reshape(B, -1).sum(1) + Z.sum(1) - X.reshape(B, -1).sum(1) - Z2.sum(1)).mean()
    expected = d_fake_minus_real + 10.0 * 2 * (2.0 * k - 1) * k
    np.testing.assert_allclose(float(tape.gradient(got["loss_d"], scale)), expected, rtol=1e-4)


def test_losses_module_does_not_import_the_model():
    tree = ast.parse(Path(L.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
            names |= {("." * node.level + (node.module + "." if node.module else "")) + a.name for a in node.names}
    assert not any(n.endswith("model") or "keras" in n for n in names), names
