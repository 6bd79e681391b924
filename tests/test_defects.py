"""Synthetic training defects (cbigan/data/defects.py) and the denoising consistency term (--denoise)."""
import numpy as np
import pytest
import tensorflow as tf

from cbigan.core.config import Config
from cbigan.data.defects import MAX_FRAC, draw_defects
from cbigan.model.gan import build_model


def images(n=16, size=48, seed=0):
    rng = np.random.default_rng(seed)
    # each image has its own range, so a fill outside [min, max] of its own image would show
    lo = rng.uniform(-1, 0, (n, 1, 1, 1))
    return tf.constant((lo + rng.uniform(0, 1, (n, size, size, 3)) * 0.5).astype("float32"))


def seed(a=3, b=5):
    return tf.constant([a, b], tf.int64)


def test_prob_zero_changes_nothing_and_prob_one_marks_every_image():
    x = images()
    out, mask = draw_defects(x, 0.0, seed())
    np.testing.assert_array_equal(out.numpy(), x.numpy())
    assert float(tf.reduce_sum(mask)) == 0
    out, mask = draw_defects(x, 1.0, seed())
    area = mask.numpy().sum(axis=(1, 2, 3))
    assert out.shape == x.shape and mask.shape == (16, 48, 48, 1)
    assert (area >= 1).all()
    # no side is longer than MAX_FRAC of the image side, so the area is at most its square (+ rounding)
    assert area.max() <= (MAX_FRAC * 48 + 1) ** 2


def test_pixels_outside_the_mask_are_untouched_and_fills_come_from_the_images():
    x = images()
    out, mask = draw_defects(x, 1.0, seed())
    x, out, m = x.numpy(), out.numpy(), mask.numpy()[..., 0] > 0
    np.testing.assert_array_equal(out[~m], x[~m])
    nxt = np.roll(x, 1, axis=0)
    kinds = set()
    for i in range(len(x)):
        inside = out[i][m[i]]
        if np.array_equal(inside, nxt[i][m[i]]):
            kinds.add("paste")
        else:  # one constant inside the image's own range
            assert np.allclose(inside, inside.flat[0])
            assert x[i].min() - 1e-6 <= inside.flat[0] <= x[i].max() + 1e-6
            kinds.add("constant")
    assert kinds == {"paste", "constant"}


def test_draws_are_a_function_of_the_seed_and_prob_is_a_share():
    x = images(n=64)
    a, ma = draw_defects(x, 0.5, seed())
    b, mb = draw_defects(x, 0.5, seed())
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    _, mc = draw_defects(x, 0.5, seed(3, 6))
    assert not np.array_equal(ma.numpy(), mc.numpy())
    share = (ma.numpy().sum(axis=(1, 2, 3)) > 0).mean()
    assert 0.25 < share < 0.75
    with pytest.raises(ValueError, match="prob"):
        draw_defects(x, 1.5, seed())


def tiny(**kw):
    return Config(category="tiny", kind="object", image_size=64, patch_size=64, width=1, latent_dim=8,
                  batch_size=4, seed=1, alpha=0.5, **kw)


@pytest.mark.slow
def test_denoising_reconstructs_the_clean_image_from_the_defective_one():
    m = build_model(tiny(denoise=1.0))
    x = images(n=4, size=64, seed=1)
    z = tf.constant(np.random.default_rng(2).standard_normal((4, 8)).astype("float32"))
    x_defect = m._defects(x)
    assert x_defect is not None and not np.array_equal(x_defect.numpy(), x.numpy())
    got = m.eg_losses(x, z, x_defect)
    rx = np.abs(x.numpy() - m.generator(m.encoder(x_defect)).numpy()).reshape(4, -1).sum(1).mean()
    np.testing.assert_allclose(float(got["loss_rx"]), rx, rtol=1e-4)
    # the adversarial pair is still (x, E(x)): L_EG is the one without defects
    plain = m.eg_losses(x, z)
    np.testing.assert_allclose(float(got["loss_eg"]), float(plain["loss_eg"]), rtol=1e-4, atol=1e-5)
    # the image term is a function of the defective input (G reconstructs from E(x_defect)), while
    # the adversarial term is not
    xd = tf.Variable(x_defect)
    with tf.GradientTape(persistent=True) as tape:
        out = m.eg_losses(x, z, xd)
    assert float(tf.reduce_sum(tf.abs(tape.gradient(out["loss_rx"], xd)))) > 0
    g_eg = tape.gradient(out["loss_eg"], xd)
    assert g_eg is None or float(tf.reduce_sum(tf.abs(g_eg))) == 0
    # a step trains on it without error, and the paper's setting draws nothing
    m.eg_step(x)
    assert build_model(tiny())._defects(x) is None


def test_config_refuses_a_denoise_share_outside_0_1():
    with pytest.raises(ValueError, match="denoise"):
        tiny(denoise=1.5).resolved()
    assert Config().resolved().denoise == 0.0
