"""Training precision (``--precision mixed_bfloat16``): bfloat16 computation in the trained networks only;
float32 variables, outputs, losses, f_D, EMA networks, and float32 networks for scoring and export."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from cbigan.cli.train import parse_args
from cbigan.core.config import PRECISIONS, Config
from cbigan.model.gan import build_model, load_trained
from cbigan.model.networks import feature_extractor
from cbigan.core.runfolder import CONFIG_JSON, WEIGHTS

FLOAT32_LAYERS = ("latent", "image", "score", "critic_features")


def tiny_cfg(**kw):
    base = dict(category="tiny", kind="object", image_size=64, patch_size=64, width=1, latent_dim=8,
                batch_size=4, seed=1)
    base.update(kw)
    return Config(**base)


def inputs(n=4, latent=8):
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (n, 64, 64, 3)).astype("float32"))
    z = tf.random.stateless_normal((n, latent), seed=[1, 2])
    eps = tf.random.stateless_uniform((n, 1), seed=[3, 4])
    return x, z, eps


def policies(net):
    return {layer.name: layer.dtype_policy.name for layer in net.layers if layer.weights}


def twins():
    """A float32 and a mixed_bfloat16 model with the same weights."""
    f32 = build_model(tiny_cfg())
    bf16 = build_model(tiny_cfg(precision="mixed_bfloat16"))
    bf16.set_weights(f32.get_weights())
    return f32, bf16


@pytest.mark.slow
def test_mixed_bfloat16_computes_in_bfloat16_but_keeps_outputs_fd_and_ema_networks_float32():
    before = keras.config.dtype_policy().name
    m = build_model(tiny_cfg(precision="mixed_bfloat16"))
    assert keras.config.dtype_policy().name == before == "float32"  # the global policy is restored
    for net in (m.encoder, m.generator, m.critic):
        pol = policies(net)
        assert {n: p for n, p in pol.items() if n in FLOAT32_LAYERS} == {n: "float32" for n in pol if n in FLOAT32_LAYERS}
        assert sum(p == "mixed_bfloat16" for p in pol.values()) >= 10  # the bulk computes in bfloat16
        assert all(v.dtype == "float32" for v in net.weights)
    for net in (m.ema_encoder, m.ema_generator):
        assert set(policies(net).values()) == {"float32"}
    x, z, _ = inputs()
    assert m.encoder(x).dtype == m.generator(z).dtype == m.critic([x, z]).dtype == tf.float32
    f32 = build_model(tiny_cfg())
    assert set().union(*(set(policies(n).values()) for n in (f32.encoder, f32.generator, f32.critic))) == {"float32"}


@pytest.mark.slow
def test_mixed_bfloat16_losses_and_gradients_agree_with_float32_to_bfloat16_precision():
    f32, bf16 = twins()
    x, z, eps = inputs()
    a, b = f32.critic_losses(x, z, eps), bf16.critic_losses(x, z, eps)
    a.update(f32.eg_losses(x, z))
    b.update(bf16.eg_losses(x, z))
    for k in ("loss_d", "gp", "loss_c", "loss_rx", "loss_rz"):
        np.testing.assert_allclose(float(b[k]), float(a[k]), rtol=2e-2, err_msg=k)
    # the arithmetic really is bfloat16: some loss differs beyond float32's rounding
    assert max(abs(float(b[k]) - float(a[k])) / (abs(float(a[k])) + 1e-6) for k in a) > 1e-5
    grads = []
    for m in (f32, bf16):
        with tf.GradientTape() as tape:
            loss = m.critic_losses(x, z, eps)["loss_d"]
        grads.append(tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(loss, m.critic.trainable_variables)], 0))
    cos = float(tf.reduce_sum(grads[0] * grads[1]) / (tf.norm(grads[0]) * tf.norm(grads[1])))
    assert cos > 0.99


@pytest.mark.slow
def test_mixed_bfloat16_trains_finite_losses():
    m = build_model(tiny_cfg(precision="mixed_bfloat16", d_iter=1, ema_every=1))
    x, _, _ = inputs()
    hist = m.fit(tf.data.Dataset.from_tensors(x).repeat(), steps_per_epoch=6, epochs=1, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in hist.values())
    assert int(m.ema_updates.numpy()) == 6


@pytest.mark.slow
def test_a_bfloat16_run_is_scored_with_float32_networks(tmp_path):
    cfg = tiny_cfg(precision="mixed_bfloat16").resolved()
    m = build_model(cfg)
    x, _, _ = inputs()
    m.fit(tf.data.Dataset.from_tensors(x).repeat(), steps_per_epoch=2, epochs=1, verbose=0)
    m.save_weights(tmp_path / WEIGHTS)
    (tmp_path / CONFIG_JSON).write_text(json.dumps(
        {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()}))
    cfg2, loaded = load_trained(tmp_path)
    assert cfg2.precision == "mixed_bfloat16"  # the run's setting is kept ...
    for net in (loaded.encoder, loaded.generator, loaded.critic, loaded.ema_encoder, loaded.ema_generator):
        assert set(policies(net).values()) == {"float32"}  # ... but scoring runs float32 networks
    np.testing.assert_array_equal(loaded(x).numpy(), m(x).numpy())  # the EMA networks were float32 already
    code = m.ema_encoder(x)
    np.testing.assert_array_equal(feature_extractor(loaded.critic)([x, code]).numpy(),
                                  feature_extractor(m.critic)([x, code]).numpy())  # and so was f_D


def test_precision_flag_and_config_validation():
    cfg, _ = parse_args(["--category", "bottle", "--precision", "mixed_bfloat16"])
    assert cfg.precision == "mixed_bfloat16"
    assert parse_args(["--category", "bottle"])[0].precision == "float32"
    assert PRECISIONS == ("float32", "mixed_bfloat16")
    with pytest.raises(SystemExit):
        parse_args(["--category", "bottle", "--precision", "float16"])
    with pytest.raises(ValueError, match="precision must be one of float32, mixed_bfloat16, auto"):
        Config(category="bottle", precision="bfloat16").resolved()
    assert parse_args(["--category", "bottle", "--precision", "auto"])[0].precision == "auto"


def test_a_note_when_the_cpu_has_no_native_bfloat16():
    from cbigan.training.machine import cpu_flags, precision_note

    def cpuinfo(*flags):
        return "processor\t: 0\nvendor_id\t: x\nflags\t\t: " + " ".join(flags) + "\n"

    bf16 = tiny_cfg(precision="mixed_bfloat16")
    assert cpu_flags(cpuinfo("fpu", "avx512f", "avx512_bf16")) == {"fpu", "avx512f", "avx512_bf16"}
    note = precision_note(bf16, cpuinfo("fpu", "avx2", "avx512f"), gpu=False)
    assert note.startswith("note: --precision mixed_bfloat16 on a CPU without native bfloat16")
    assert "slower" in note and "\n" not in note
    assert precision_note(bf16, cpuinfo("avx2", "amx_bf16"), gpu=False) is None
    assert precision_note(bf16, cpuinfo("avx2"), gpu=True) is None          # a GPU decides, not the CPU
    assert precision_note(bf16, "processor\t: 0\n", gpu=False) is None      # flags unknown: no guess
    assert precision_note(tiny_cfg(), cpuinfo("avx2"), gpu=False) is None  # float32: nothing to say


def test_auto_precision_is_bfloat16_only_on_a_cpu_with_native_bfloat16_and_no_gpu():
    from cbigan.training.machine import choose_precision

    def cpuinfo(*flags):
        return "processor\t: 0\nflags\t\t: " + " ".join(flags) + "\n"

    auto = tiny_cfg(precision="auto")
    assert choose_precision(auto, cpuinfo("avx2", "avx512_bf16"), gpu=False) == "mixed_bfloat16"
    assert choose_precision(auto, cpuinfo("avx2", "amx_bf16"), gpu=False) == "mixed_bfloat16"
    assert choose_precision(auto, cpuinfo("avx2", "avx512f"), gpu=False) == "float32"  # emulated: slower
    assert choose_precision(auto, cpuinfo("avx512_bf16"), gpu=True) == "float32"
    assert choose_precision(auto, "processor\t: 0\n", gpu=False) == "float32"       # flags unknown
    for given in PRECISIONS:  # a precision given is kept, whatever the machine
        assert choose_precision(tiny_cfg(precision=given), cpuinfo("avx2"), gpu=True) == given
    m = build_model(auto.resolved())  # outside a training run "auto" builds float32 networks
    assert set(policies(m.encoder).values()) == {"float32"}


@pytest.mark.slow
def test_a_run_records_the_precision_auto_chose(tmp_path):
    from synthetic import make_category

    from cbigan.training.machine import choose_precision
    from cbigan.training.run import train

    make_category(tmp_path / "data", "auto_p", size=32, n_train=4, n_good=1, n_defect=1)
    cfg = Config(category="auto_p", data_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "runs"),
                 run_name="r", image_size=64, patch_size=64, width=1, latent_dim=8, batch_size=2, steps=2,
                 log_every=2, eval_every=2, preview_every=100, d_iter=1, precision="auto")
    run = train(cfg, verbose=0, export=False)
    stored = json.loads((run / CONFIG_JSON).read_text())["precision"]
    assert stored == choose_precision(cfg) and stored in PRECISIONS
