"""The losses of CBiGAN as plain functions: the mathematics only, no networks, optimizers or state.

Like the keras.io WGAN-GP example (``examples/generative/wgan_gp.py``) and anomalib's per-model
``loss.py``, the training step (:class:`cbigan.model.gan.CBiGAN`) calls the networks and these functions
compute the numbers. Sources: the paper (Carrara et al., "Combining GANs and AutoEncoders for Efficient
Anomaly Detection", ICPR 2020; ``../shared/reference/cbigan-paper.txt``) and the authors' code
(``../shared/reference/original-implementation.md``, section "Losses"):

* critic (paper Eq. 6 plus the WGAN-GP penalty of Gulrajani et al. 2017, the paper's ref. [32]):
  ``L_D = mean D(G(z), z) - mean D(x, E(x)) + gp_weight * GP`` (:func:`critic_loss`,
  :func:`critic_losses`), with the two-sided penalty ``GP = mean (||grad D(x^, z^)|| - 1)^2`` on
  interpolates of both image and latent, ``x^ = e x + (1 - e) G(z)``, ``z^ = e z + (1 - e) E(x)``, the
  same ``e ~ U(0, 1)`` per sample, the norm taken over image and latent gradients together
  (:func:`interpolate`, :func:`gradient_penalty`);
* encoder + generator (paper Eq. 5): ``L_EG = mean D(x, E(x)) - mean D(G(z), z)``
  (:func:`encoder_generator_loss`);
* consistency (paper Eq. 10-12, reduced as in the authors' code): ``L_C = mean_b sum|x - G(E(x))| +
  mean_b sum|z - E(G(z))|`` (:func:`consistency_loss`, :func:`l1_per_sample`);
* ``L*_EG = (1 - alpha) L_EG + alpha L_C`` (paper Eq. 13; :func:`total_eg_loss`): alpha 0 is EGBAD
  (plain BiGAN), alpha 1 a double autoencoder.

Shapes: images ``[B, H, W, C]``, latent codes ``[B, n]``, critic scores ``[B, 1]`` (unbounded reals: a
Wasserstein critic has no sigmoid), interpolation weights ``[B, 1]`` in ``[0, 1]``. Every loss is a
float32 scalar that is a mean over the batch; under a ``tf.distribute`` strategy that is the mean of
this replica's share (scaling for the summed gradients is the training step's job). Which network a
loss may send gradients into (``tf.stop_gradient``) is also the training step's choice: these functions
differentiate through whatever they are given.
"""

from __future__ import annotations

import tensorflow as tf

#: Added to the squared gradient norm before the square root, so the norm's gradient stays finite at 0.
GRAD_NORM_EPS = 1e-12


def l1_per_sample(a, b):
    """L1 distance of each sample: ``sum |a - b|`` over every axis but the first (batch) one.

    ``a``, ``b``: tensors of equal shape ``[B, ...]`` (images ``[B, H, W, C]`` or codes ``[B, n]``).
    Returns ``[B]``, non-negative, unbounded (it grows with the number of pixels or latent dimensions:
    a 128x128x3 image in ``[-1, 1]`` can reach 98,304). The "||.||_1" of paper Eq. 8, 11 and 12.
    """
    diff = tf.abs(a - b)
    return tf.reduce_sum(tf.reshape(diff, (tf.shape(diff)[0], -1)), axis=1)


def interpolate(x, gz, z, ex, eps):
    """The gradient-penalty points ``x^ = e x + (1 - e) G(z)``, ``z^ = e z + (1 - e) E(x)``.

    ``x``, ``gz``: real and generated images ``[B, H, W, C]``; ``z``, ``ex``: prior and encoded codes
    ``[B, n]``; ``eps``: ``[B, 1]`` in ``[0, 1]``, one weight per sample shared by image and latent
    (as in the authors' code). Returns ``(x_hat [B, H, W, C], z_hat [B, n])``; ``eps = 1`` gives
    ``(x, z)``, ``eps = 0`` gives ``(G(z), E(x))``.
    """
    e_img = tf.reshape(eps, (-1, 1, 1, 1))
    x_hat = e_img * x + (1.0 - e_img) * gz
    z_hat = eps * z + (1.0 - eps) * ex
    return x_hat, z_hat


def penalty_from_gradients(grad_x, grad_z):
    """Two-sided gradient penalty ``mean_b (||(grad_x, grad_z)_b||_2 - 1)^2`` from given gradients.

    ``grad_x``: ``[B, H, W, C]`` gradient of the critic's score with respect to the image input,
    ``grad_z``: ``[B, n]`` with respect to the latent input. The norm is that of both gradients of a
    sample concatenated (``sqrt(sum grad_x^2 + sum grad_z^2 + 1e-12)``). Returns a scalar >= 0; 0 when
    every norm is 1 (1-Lipschitz along the interpolation directions), and it also penalises norms
    below 1 (two-sided, WGAN-GP Eq. 3; the authors' code).
    """
    sq = (tf.reduce_sum(tf.reshape(tf.square(grad_x), (tf.shape(grad_x)[0], -1)), axis=1)
          + tf.reduce_sum(tf.square(grad_z), axis=1))
    grad_norm = tf.sqrt(sq + GRAD_NORM_EPS)
    return tf.reduce_mean(tf.square(grad_norm - 1.0))


def gradient_penalty(critic, x_hat, z_hat, training=True):
    """Two-sided gradient penalty of ``critic`` at the points ``(x_hat, z_hat)`` (its own critic call).

    ``critic``: callable as ``critic([x, z], training=...)`` returning ``[B, 1]`` scores; ``x_hat``
    ``[B, H, W, C]``, ``z_hat`` ``[B, n]`` (usually from :func:`interpolate`). Returns the scalar
    ``mean_b (||grad_(x, z) D(x_hat, z_hat)_b|| - 1)^2 >= 0`` (:func:`penalty_from_gradients`).
    Differentiable with respect to the critic's weights (a second-order gradient) when called under
    an outer tape. :func:`critic_losses` calls it on the interpolates, apart from the real and generated
    pairs, so that the second-order pass covers only these B samples.
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([x_hat, z_hat])
        d_hat = critic([x_hat, z_hat], training=training)
    grad_x, grad_z = tape.gradient(d_hat, [x_hat, z_hat])
    return penalty_from_gradients(grad_x, grad_z)


def critic_loss(d_real, d_fake, gp, gp_weight):
    """``L_D = mean D(G(z), z) - mean D(x, E(x)) + gp_weight * GP`` (paper Eq. 6 with WGAN-GP).

    ``d_real``: critic scores of real pairs ``(x, E(x))``, ``d_fake``: of generated pairs
    ``(G(z), z)``, each ``[B, 1]`` (or already their means, scalars); ``gp``: scalar
    (:func:`gradient_penalty`), ``gp_weight``: 10 in the paper's code. Returns a scalar, any real
    value: the critic minimises it, i.e. scores real pairs high and generated pairs low.
    """
    return tf.reduce_mean(d_fake) - tf.reduce_mean(d_real) + gp_weight * gp


def critic_losses(critic, x, z, ex, gz, eps, gp_weight, training=True):
    """``L_D`` and its parts: one critic call on the real and generated pairs, one for the penalty.

    ``x`` ``[B, H, W, C]`` real images, ``z`` ``[B, n]`` prior codes, ``ex = E(x)`` ``[B, n]``,
    ``gz = G(z)`` ``[B, H, W, C]``, ``eps`` ``[B, 1]`` interpolation weights in ``[0, 1]``;
    ``critic`` as in :func:`gradient_penalty`. The critic scores ``[x; G(z)]`` with ``[E(x); z]`` in one
    batch of 2B for the Wasserstein term, and the penalty is :func:`gradient_penalty` on the
    interpolates (:func:`interpolate`), a separate call of B: the double backward pass of the penalty
    then runs over B samples instead of the 3B of one concatenated call (a third of the second-order
    work; the values are the same for any critic whose score of a sample does not depend on the other
    samples of its batch, i.e. unless ``norm="batch"``). Returns ``{"loss_d": L_D, "gp": GP (>= 0),
    "d_real": mean D(x, E(x)), "d_fake": mean D(G(z), z)}``, all scalars. Pass ``ex`` and ``gz``
    through ``tf.stop_gradient`` when E and G must not be updated.
    """
    x_hat, z_hat = interpolate(x, gz, z, ex, eps)
    scores = critic([tf.concat([x, gz], 0), tf.concat([ex, z], 0)], training=training)
    d_real, d_fake = tf.split(scores, 2, axis=0)
    gp = gradient_penalty(critic, x_hat, z_hat, training=training)
    d_real, d_fake = tf.reduce_mean(d_real), tf.reduce_mean(d_fake)
    loss_d = critic_loss(d_real, d_fake, gp, gp_weight)
    return {"loss_d": loss_d, "gp": gp, "d_real": d_real, "d_fake": d_fake}


def encoder_generator_loss(d_real, d_fake):
    """``L_EG = mean D(x, E(x)) - mean D(G(z), z)`` (paper Eq. 5; the authors' code).

    ``d_real``, ``d_fake``: critic scores ``[B, 1]`` of real and generated pairs (or their means).
    Returns a scalar, any real value; E and G minimise it (the opposite of the critic's objective,
    without the penalty).
    """
    return tf.reduce_mean(d_real) - tf.reduce_mean(d_fake)


def consistency_loss(x, x_rec, z, z_rec):
    """The two parts of ``L_C`` (paper Eq. 10-12): ``(mean_b sum|x - G(E(x))|, mean_b sum|z - E(G(z))|)``.

    ``x``, ``x_rec = G(E(x))``: ``[B, H, W, C]``; ``z``, ``z_rec = E(G(z))``: ``[B, n]``. Each part is
    the L1 norm of a sample summed over all its pixels (or latent dimensions), then averaged over the
    batch, as in the authors' code (:func:`l1_per_sample`); hence the tiny alpha. Returns two scalars
    ``(loss_rx, loss_rz)``, each >= 0; ``L_C = loss_rx + loss_rz``.
    """
    return tf.reduce_mean(l1_per_sample(x, x_rec)), tf.reduce_mean(l1_per_sample(z, z_rec))


def total_eg_loss(loss_eg, loss_c, alpha):
    """``L*_EG = (1 - alpha) L_EG + alpha L_C`` (paper Eq. 13): what E and G minimise.

    ``loss_eg``: scalar :func:`encoder_generator_loss`; ``loss_c``: scalar ``L_C`` (sum of
    :func:`consistency_loss`); ``alpha``: a Python number in ``[0, 1]`` (paper: 1e-4 for objects,
    1e-4 to 1e-5 for textures). ``alpha = 0`` gives exactly ``L_EG`` (EGBAD; ``loss_c`` is then not
    used at all, so it adds no gradient and even a non-finite value cannot leak in); ``alpha = 1``
    gives ``L_C`` (a double autoencoder, no adversarial term).
    """
    return (1.0 - alpha) * loss_eg + (alpha * loss_c if alpha > 0 else 0.0)
