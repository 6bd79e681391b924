"""Encoder E, generator G and critic D of CBiGAN (paper Fig. 3, authors' code).

Residual blocks: ``skip = Conv1x1(k)(x)``; ``y = Conv3x3 -> act -> Conv3x3 -> act -> Conv1x1``;
``out = act(y + skip)``. Generator blocks upsample x2 (bilinear) first; encoder/critic blocks pool
x2 (average) after, except the last one. Bias pattern of the original: the 1x1 skip, both 3x3
convolutions and the hidden dense layers have no bias; each block's last 1x1 convolution and the
output layers do. With ``width=3`` and ``latent_dim=64`` the parameter counts are those of the
original (G 83,142; E 60,244 / 87,892; D 638,789 / 666,437 at 64 / 128 px).
"""

from __future__ import annotations

import contextlib

import keras
from keras import layers

from cbigan.core.config import PRECISIONS

NORMALIZATIONS = ("none", "batch", "layer", "instance")
#: Layers that compute in float32 under every precision (:data:`cbigan.core.config.PRECISIONS`): the output
#: layers (the image, the code, the critic's score) and the critic's feature layer f_D, so the losses and
#: the anomaly score's parts are float32.
_FLOAT32 = "float32"
ACTIVATIONS = ("leaky_relu", "relu", "elu", "gelu", "swish")

#: Name of the critic layer whose output is f_D in the anomaly score (the first 3x3 convolution of
#: the critic's image path, before its activation, as in the original).
DEFAULT_FEATURE_LAYER = "critic_features"


@contextlib.contextmanager
def precision_scope(precision: str = "float32"):
    """Build networks under ``precision`` (:data:`PRECISIONS`): Keras's global dtype policy for the
    duration of the block, restored after it. ``auto`` not yet resolved by a training run (a model
    built outside one) is float32. ValueError for an unknown precision."""
    precision = "float32" if precision == "auto" else precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def float32_copy(model: keras.Model, name: str | None = None) -> keras.Model:
    """A copy of ``model``'s architecture with every layer computing in float32 (fresh weights of the
    same shapes and order: ``copy.set_weights(model.get_weights())`` makes the two equal). For a float32
    model, a plain :func:`keras.models.clone_model`."""
    def clone(layer):
        config = layer.get_config()
        config["dtype"] = _FLOAT32
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    if name:
        copy.name = name
    return copy


def _activation(name: str, layer_name: str | None = None) -> layers.Layer:
    if name == "leaky_relu":
        return layers.LeakyReLU(negative_slope=0.2, name=layer_name)
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")
    return layers.Activation(name, name=layer_name)


def _normalization(kind: str) -> layers.Layer | None:
    if kind == "none":
        return None
    if kind == "batch":
        return layers.BatchNormalization()
    if kind == "layer":
        return layers.LayerNormalization()
    if kind == "instance":
        return layers.GroupNormalization(groups=-1)
    raise ValueError(f"unknown normalization {kind!r}; choose one of {NORMALIZATIONS}")


def _norm_act(x, norm: str, activation: str):
    n = _normalization(norm)
    if n is not None:
        x = n(x)
    return _activation(activation)(x)


def residual_block(x, filters: int, norm: str = "none", activation: str = "leaky_relu",
                   first_conv_name: str | None = None):
    """One residual block; ``first_conv_name`` names its first 3x3 convolution."""
    skip = layers.Conv2D(filters, 1, padding="same", use_bias=False)(x)
    # the named first convolution is the critic's f_D: float32 under every precision
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=first_conv_name,
                      dtype=_FLOAT32 if first_conv_name else None)(x)
    y = _norm_act(y, norm, activation)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = _norm_act(y, norm, activation)
    y = layers.Conv2D(filters, 1, padding="same", use_bias=True)(y)
    return _activation(activation)(layers.Add()([y, skip]))


def _widths(width: int) -> list[int]:
    """Block widths 1c, 2c, 3c, 4c, 8c, 16c of the encoder/critic (reversed for the generator)."""
    return [width * m for m in (1, 2, 3, 4, 8, 16)]


def _image_path(x, width: int, norm: str, activation: str, first_conv_name: str | None = None):
    """The conv stack shared by encoder and critic: 6 blocks, average-pooled after all but the last."""
    widths = _widths(width)
    for i, filters in enumerate(widths):
        x = residual_block(x, filters, norm, activation,
                           first_conv_name=first_conv_name if i == 0 else None)
        if i < len(widths) - 1:
            x = layers.AveragePooling2D(2)(x)
    return layers.Flatten()(x)


def build_encoder(image_size: int, latent_dim: int = 64, width: int = 3, norm: str = "none",
                  activation: str = "leaky_relu", name: str = "encoder") -> keras.Model:
    """E: image in [-1, 1] of shape (image_size, image_size, 3) -> latent code of size latent_dim."""
    _check_size(image_size)
    x_in = keras.Input((image_size, image_size, 3), name="image")
    h = _image_path(x_in, width, norm, activation)
    h = layers.Dense(16 * width, use_bias=False)(h)
    h = _norm_act(h, "none" if norm == "instance" else norm, activation)
    z = layers.Dense(latent_dim, name="latent", dtype=_FLOAT32)(h)
    return keras.Model(x_in, z, name=name)


def build_generator(image_size: int, latent_dim: int = 64, width: int = 3, norm: str = "none",
                    activation: str = "leaky_relu", name: str = "generator") -> keras.Model:
    """G: latent code -> image in [-1, 1]. 2x2 seed, six blocks; 64 px output skips the first upsampling."""
    _check_size(image_size)
    z_in = keras.Input((latent_dim,), name="latent")
    h = layers.Dense(2 * 2 * 16 * width, use_bias=False)(z_in)
    h = _norm_act(h, "none" if norm == "instance" else norm, activation)
    h = layers.Reshape((2, 2, 16 * width))(h)
    upsample_first = image_size == 128
    for i, filters in enumerate(reversed(_widths(width))):
        if i > 0 or upsample_first:
            h = layers.UpSampling2D(2, interpolation="bilinear")(h)
        h = residual_block(h, filters, norm, activation)
    x = layers.Conv2D(3, 1, padding="same", activation="tanh", name="image", dtype=_FLOAT32)(h)
    return keras.Model(z_in, x, name=name)


def build_critic(image_size: int, latent_dim: int = 64, width: int = 3, norm: str = "none",
                 activation: str = "leaky_relu", name: str = "critic") -> keras.Model:
    """D(x, z): Wasserstein critic on (image, latent) pairs; no sigmoid.

    Its first image convolution is named :data:`DEFAULT_FEATURE_LAYER` so scoring can pick f_D by name.
    """
    _check_size(image_size)
    x_in = keras.Input((image_size, image_size, 3), name="image")
    z_in = keras.Input((latent_dim,), name="latent")
    hx = _image_path(x_in, width, norm, activation, first_conv_name=DEFAULT_FEATURE_LAYER)
    hz = z_in
    for _ in range(3):
        hz = layers.Dense(512, use_bias=False)(hz)
        hz = _activation(activation)(hz)
    h = layers.Concatenate()([hx, hz])
    h = layers.Dense(16 * width, use_bias=False)(h)
    h = _activation(activation)(h)
    out = layers.Dense(1, name="score", dtype=_FLOAT32)(h)
    return keras.Model([x_in, z_in], out, name=name)


def feature_extractor(critic: keras.Model, layer_name: str = DEFAULT_FEATURE_LAYER) -> keras.Model:
    """A model (x, z) -> f_D(x, z): the output of the named critic layer.

    The model's attribute ``linear_in_image`` is True when the layer is a bias-free convolution of the
    critic's image input itself (the default layer): then ``f_D(a) - f_D(b) = f_D(a - b)`` exactly in
    real arithmetic, which :func:`cbigan.scoring.parts.score_patches` uses to run the layer once, not twice.
    """
    try:
        layer = critic.get_layer(layer_name)
    except ValueError:
        names = [l.name for l in critic.layers]
        raise ValueError(f"critic has no layer {layer_name!r}; available: {names}") from None
    model = keras.Model(critic.inputs, layer.output, name="critic_feature_extractor")
    model.linear_in_image = _is_linear_in_image(critic, layer)
    return model


def _is_linear_in_image(critic: keras.Model, layer) -> bool:
    """True when ``layer`` is a bias-free, activation-free Conv2D applied to the critic's image input."""
    if not isinstance(layer, layers.Conv2D) or layer.use_bias:
        return False
    if getattr(layer.activation, "__name__", "") != "linear":
        return False
    return layer.input is critic.inputs[0]


def _check_size(image_size: int) -> None:
    if image_size not in (64, 128):
        raise ValueError(f"image_size must be 64 (textures) or 128 (objects), got {image_size}")
