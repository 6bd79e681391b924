import keras
import numpy as np
import pytest

from cbigan.model.networks import (
    DEFAULT_FEATURE_LAYER, build_critic, build_encoder, build_generator, feature_extractor)


@pytest.mark.parametrize("size,g,e,d", [(64, 83_142, 60_244, 638_789), (128, 83_142, 87_892, 666_437)])
def test_parameter_counts_match_the_original(size, g, e, d):
    assert build_generator(size).count_params() == g
    assert build_encoder(size).count_params() == e
    assert build_critic(size).count_params() == d


@pytest.mark.parametrize("size", [64, 128])
def test_shapes(size):
    gen, enc, critic = build_generator(size), build_encoder(size), build_critic(size)
    z = np.random.default_rng(0).standard_normal((2, 64)).astype("float32")
    x = gen(z)
    assert x.shape == (2, size, size, 3)
    assert np.all(np.abs(np.asarray(x)) <= 1.0)  # tanh output
    assert enc(x).shape == (2, 64)
    assert critic([x, keras.ops.convert_to_tensor(z)]).shape == (2, 1)


def test_bias_pattern():
    """Only each block's last 1x1 conv and the output layers carry a bias (the original's quirk)."""
    enc = build_encoder(64)
    convs = [l for l in enc.layers if isinstance(l, keras.layers.Conv2D)]
    with_bias = [l for l in convs if l.use_bias]
    assert len(convs) == 6 * 4 and len(with_bias) == 6
    assert all(l.kernel_size == (1, 1) for l in with_bias)
    dense = [l for l in enc.layers if isinstance(l, keras.layers.Dense)]
    assert [l.use_bias for l in dense] == [False, True]


def test_feature_layer_is_first_critic_conv_at_full_resolution():
    critic = build_critic(64)
    first_conv = next(l for l in critic.layers if isinstance(l, keras.layers.Conv2D) and l.kernel_size == (3, 3))
    assert first_conv.name == DEFAULT_FEATURE_LAYER
    f = feature_extractor(critic)
    assert f.output_shape == (None, 64, 64, 3)
    with pytest.raises(ValueError, match="no layer"):
        feature_extractor(critic, "does_not_exist")


@pytest.mark.parametrize("norm", ["batch", "layer", "instance"])
def test_normalisation_options_build_and_run(norm):
    enc = build_encoder(64, norm=norm)
    assert any(norm[:4].lower() in type(l).__name__.lower() or
               (norm == "instance" and type(l).__name__ == "GroupNormalization") for l in enc.layers)
    assert enc(np.zeros((2, 64, 64, 3), "float32")).shape == (2, 64)


def test_activation_option_and_bad_values():
    enc = build_encoder(64, activation="relu")
    assert not any(isinstance(l, keras.layers.LeakyReLU) for l in enc.layers)
    with pytest.raises(ValueError, match="image_size"):
        build_encoder(96)
    with pytest.raises(ValueError, match="normalization"):
        build_encoder(64, norm="weird")


def test_feature_difference_by_linearity_equals_two_critic_calls():
    """The default f_D is a bias-free conv of the image: score_patches runs it once on x - G(E(x))
    instead of twice; L_fD and the feature map must not change (float32 rounding only)."""
    import tensorflow as tf

    from cbigan.model.networks import build_encoder, build_generator
    from cbigan.scoring.parts import score_patches

    critic, enc, gen = build_critic(64), build_encoder(64), build_generator(64)
    f = feature_extractor(critic)
    assert f.linear_in_image
    after = critic.layers[critic.layers.index(critic.get_layer(DEFAULT_FEATURE_LAYER)) + 1]
    assert isinstance(after, keras.layers.LeakyReLU)
    assert not feature_extractor(critic, after.name).linear_in_image  # after the activation
    x = tf.random.stateless_uniform((4, 64, 64, 3), (1, 2), -1.0, 1.0)
    once = score_patches(enc, gen, f, x)
    calls = []
    f.linear_in_image = False
    original_call = f.call
    f.call = lambda inputs, *a, **k: calls.append(1) or original_call(inputs, *a, **k)
    twice = score_patches(enc, gen, f, x)
    assert len(calls) == 2
    np.testing.assert_allclose(once["l_fd"].numpy(), twice["l_fd"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(once["feature_abs"].numpy(), twice["feature_abs"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(once["l_r"].numpy(), twice["l_r"].numpy())
