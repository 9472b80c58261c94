"""Every loss term against a numpy formula written out here, signs included.

The functions in ``artifact_spotting.losses`` return one replica's share of a
mean over the *global* batch: the sum over the replica's rows divided by the
global count. So each check passes the count explicitly, and one test splits
a batch into two "replicas" whose shares must add up to the whole batch's
mean (values and gradients).

The last tests run one autoencoder step and one adversarial step of the real
model and recompute every loss the steps report (C's real/fake loss, the mask
loss on fakes and on reals, R's adversarial loss, the kept-region
reconstruction, the confusion term, the autoencoder's reconstruction + L2)
from the networks' outputs with the numpy formulas.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from artifact_spotting import config as config_lib
from artifact_spotting import losses
from artifact_spotting.models import spotter as spotter_lib
from artifact_spotting.models.damage_repair import sample_keep_mask
from artifact_spotting.models.spotter import ArtifactSpotter
from artifact_spotting.optimizers import FusedAdam

from conftest import tiny_config

LOG2 = math.log(2.0)


# ------------------------------------------------------ numpy references
def np_softplus(x):
  """log(1 + e^x), stable for large |x|."""
  return np.logaddexp(0.0, np.asarray(x, np.float64))


def np_log_sigmoid(x):
  """log s(x) = -log(1 + e^-x)."""
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_bce(labels, logits):
  """-y log s(l) - (1 - y) log(1 - s(l)), with 1 - s(l) = s(-l)."""
  y = np.asarray(labels, np.float64)
  logits = np.asarray(logits, np.float64)
  return -y * np_log_sigmoid(logits) - (1 - y) * np_log_sigmoid(-logits)


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _f32(x):
  return tf.constant(np.asarray(x, np.float32))


def _value(t):
  return float(t.numpy())


# ------------------------------------------------------------ global_mean
def test_global_mean_divides_the_local_sum_by_the_global_count():
  x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
  assert _value(losses.global_mean(_f32(x), 6)) == pytest.approx(x.sum() / 6, rel=1e-6)
  # A replica holding 6 of 24 rows: its share of the global mean.
  assert _value(losses.global_mean(_f32(x), 24)) == pytest.approx(x.sum() / 24, rel=1e-6)
  assert _value(losses.global_mean(_f32(x), tf.constant(24))) == pytest.approx(
      x.sum() / 24, rel=1e-6)


# ------------------------------------------------- C's real/fake log loss
def test_real_fake_loss_known_values_and_signs():
  # C undecided (logit 0): -log(1/2) for each half, 2 log 2 in all.
  assert _value(losses.real_fake_loss(_f32([0, 0]), _f32([0, 0, 0]), 2, 3)) == pytest.approx(
      2 * LOG2, rel=1e-6)
  # C right (real logits high, fake logits low): loss near 0.
  right = _value(losses.real_fake_loss(_f32([8.0]), _f32([-8.0]), 1, 1))
  assert right == pytest.approx(2 * math.log1p(math.exp(-8)), rel=1e-5)
  # C wrong the other way round: about 8 per half.
  wrong = _value(losses.real_fake_loss(_f32([-8.0]), _f32([8.0]), 1, 1))
  assert wrong == pytest.approx(2 * (8 + math.log1p(math.exp(-8))), rel=1e-5)
  # One real with logit 2: -log s(2) = log(1 + e^-2); one fake with logit 2:
  # -log(1 - s(2)) = log(1 + e^2).
  assert _value(losses.real_fake_loss(_f32([2.0]), _f32([2.0]), 1, 1)) == pytest.approx(
      math.log1p(math.exp(-2)) + math.log1p(math.exp(2)), rel=1e-6)


def test_real_fake_loss_matches_numpy_on_random_logits():
  rng = np.random.default_rng(1)
  real, fake = rng.normal(0, 3, 7), rng.normal(0, 3, 11)
  for global_real, global_fake in ((7, 11), (14, 33)):
    want = (-np_log_sigmoid(real).sum() / global_real
            - np_log_sigmoid(-fake).sum() / global_fake)
    got = _value(losses.real_fake_loss(_f32(real), _f32(fake), global_real, global_fake))
    assert got == pytest.approx(want, rel=1e-5)


def test_real_fake_loss_gradient_pushes_reals_up_and_fakes_down():
  real, fake = _f32([0.5, -1.0]), _f32([0.3, 2.0, -0.7])
  with tf.GradientTape() as tape:
    tape.watch([real, fake])
    loss = losses.real_fake_loss(real, fake, 2, 3)
  g_real, g_fake = tape.gradient(loss, [real, fake])
  # d/dl -log s(l) = -(1 - s(l)); d/dl -log(1 - s(l)) = s(l).
  np.testing.assert_allclose(g_real.numpy(), -(1 - np_sigmoid(real.numpy())) / 2, rtol=1e-5)
  np.testing.assert_allclose(g_fake.numpy(), np_sigmoid(fake.numpy()) / 3, rtol=1e-5)
  assert (g_real.numpy() < 0).all() and (g_fake.numpy() > 0).all()


# ----------------------------------------------- R's adversarial loss
def test_non_saturating_loss_known_values_and_sign():
  # -log s(C(fake)): log 2 at logit 0; small when C calls the fake real
  # (logit 2: log(1 + e^-2) = 0.1269), large when C calls it fake
  # (logit -2: log(1 + e^2) = 2.1269).
  assert _value(losses.non_saturating_loss(_f32([0.0, 0.0]), 2)) == pytest.approx(LOG2, rel=1e-6)
  assert _value(losses.non_saturating_loss(_f32([2.0]), 1)) == pytest.approx(0.126928011, rel=1e-6)
  assert _value(losses.non_saturating_loss(_f32([-2.0]), 1)) == pytest.approx(2.126928011, rel=1e-6)
  assert _value(losses.non_saturating_loss(_f32([-8.0]), 1)) > 8.0


def test_non_saturating_loss_matches_numpy_and_its_gradient_raises_c_of_fake():
  logits = np.random.default_rng(2).normal(0, 3, 9)
  for global_fake in (9, 27):
    want = -np_log_sigmoid(logits).sum() / global_fake
    got = _value(losses.non_saturating_loss(_f32(logits), global_fake))
    assert got == pytest.approx(want, rel=1e-5)
  x = _f32(logits)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = losses.non_saturating_loss(x, 9)
  grad = tape.gradient(loss, x).numpy()
  # d/dl -log s(l) = -(1 - s(l)) < 0: descending the loss raises C's logit,
  # i.e. R learns to make C call its repairs real.
  np.testing.assert_allclose(grad, -(1 - np_sigmoid(logits)) / 9, rtol=1e-5, atol=1e-8)
  assert (grad < 0).all()


# -------------------------------------- the released code's confusion term
def test_confusion_loss_is_cross_entropy_against_one_half():
  logits = np.random.default_rng(3).normal(0, 3, 8)
  # -(1/2) log s(l) - (1/2) log(1 - s(l)).
  want = (-0.5 * np_log_sigmoid(logits) - 0.5 * np_log_sigmoid(-logits)).sum() / 16
  assert _value(losses.confusion_loss(_f32(logits), 16)) == pytest.approx(want, rel=1e-5)
  # Smallest (log 2) where C is undecided, the same for l and -l.
  assert _value(losses.confusion_loss(_f32([0.0]), 1)) == pytest.approx(LOG2, rel=1e-6)
  assert _value(losses.confusion_loss(_f32([3.0]), 1)) == pytest.approx(
      _value(losses.confusion_loss(_f32([-3.0]), 1)), rel=1e-6)
  assert _value(losses.confusion_loss(_f32([3.0]), 1)) > LOG2
  x = _f32(logits)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = losses.confusion_loss(x, 8)
  # d/dl = (s(l) - 1/2): pulls every logit towards 0.
  np.testing.assert_allclose(tape.gradient(loss, x).numpy(),
                             (np_sigmoid(logits) - 0.5) / 8, rtol=1e-5, atol=1e-8)


# -------------------------------------------------------------- mask loss
def test_mask_loss_known_values_and_signs():
  zeros = tf.zeros((2, 3, 3))
  keep = tf.constant(np.random.default_rng(4).integers(0, 2, (2, 3, 3)), tf.float32)
  assert _value(losses.mask_loss(zeros, keep, 2)) == pytest.approx(LOG2, rel=1e-6)
  # Logits +6 on kept cells, -6 on dropped cells: right, loss near 0.
  right = 6.0 * (2 * keep - 1)
  assert _value(losses.mask_loss(right, keep, 2)) == pytest.approx(
      math.log1p(math.exp(-6)), rel=1e-5)
  # The opposite signs: about 6 per cell.
  assert _value(losses.mask_loss(-right, keep, 2)) == pytest.approx(
      6 + math.log1p(math.exp(-6)), rel=1e-5)


def test_mask_loss_matches_numpy_per_cell_mean_with_either_mask_rank():
  rng = np.random.default_rng(5)
  logits = rng.normal(0, 2, (4, 3, 5))
  keep = rng.integers(0, 2, (4, 3, 5))
  for global_rows in (4, 12):
    want = np_bce(keep, logits).sum() / (global_rows * 3 * 5)
    got3 = _value(losses.mask_loss(_f32(logits), _f32(keep), global_rows))
    got4 = _value(losses.mask_loss(_f32(logits), _f32(keep[..., None]), global_rows))
    assert got3 == pytest.approx(want, rel=1e-5)
    assert got4 == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------- reconstruction terms
def test_masked_mse_sums_kept_pixels_and_divides_by_every_pixel():
  rng = np.random.default_rng(6)
  target, pred = rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 4, 4, 2))
  mask = rng.integers(0, 2, (3, 4, 4, 1)).astype(np.float64)
  se = (target - pred) ** 2
  for global_rows in (3, 6):
    want = (se * mask).sum() / (global_rows * 4 * 4 * 2)
    got = _value(losses.masked_mse(_f32(target), _f32(pred), _f32(mask), global_rows))
    assert got == pytest.approx(want, rel=1e-5)
  # Nothing kept: 0; everything kept: the plain MSE.
  assert _value(losses.masked_mse(_f32(target), _f32(pred), tf.zeros((3, 4, 4, 1)), 3)) == 0.0
  assert _value(losses.mse(_f32(target), _f32(pred), 3)) == pytest.approx(se.mean(), rel=1e-5)
  # Known value: every pixel off by 0.5 -> 0.25.
  assert _value(losses.mse(tf.zeros((2, 2, 2, 1)), tf.fill((2, 2, 2, 1), 0.5), 2)) == 0.25


def test_l2_penalty_is_the_sum_of_squared_kernels_only():
  keras.utils.set_random_seed(0)
  model = keras.Sequential([
      keras.layers.Input((6, 6, 2)),
      keras.layers.Conv2D(3, 3, bias_initializer="ones"),
      keras.layers.BatchNormalization(gamma_initializer="ones"),
      keras.layers.Flatten(),
      keras.layers.Dense(4, bias_initializer="ones"),
  ])
  variables = model.trainable_variables
  # Kernels are the variables of rank >= 2 here; biases and BN's gamma/beta
  # (rank 1, some set to ones) must not count.
  want = sum(float((v.numpy().astype(np.float64) ** 2).sum())
             for v in variables if len(v.shape) >= 2)
  assert want > 0
  assert _value(losses.l2_penalty(variables)) == pytest.approx(want, rel=1e-5)
  assert _value(losses.l2_penalty([v for v in variables if len(v.shape) < 2])) == 0.0


# ------------------------------------------ the replica-share convention
def test_shares_of_two_replicas_add_up_to_the_whole_batch_loss_and_gradient():
  rng = np.random.default_rng(7)
  b = 6
  real, fake = _f32(rng.normal(0, 2, b)), _f32(rng.normal(0, 2, b))
  mask_logits = _f32(rng.normal(0, 2, (b, 2, 2)))
  keep = _f32(rng.integers(0, 2, (b, 2, 2, 1)))
  target, pred = _f32(rng.normal(size=(b, 4, 4, 1))), _f32(rng.normal(size=(b, 4, 4, 1)))
  keep_up = _f32(rng.integers(0, 2, (b, 4, 4, 1)))

  def total(rows, count):
    s = slice(*rows)
    return (losses.real_fake_loss(real[s], fake[s], count, count)
            + losses.non_saturating_loss(fake[s], count)
            + losses.confusion_loss(fake[s], count)
            + losses.mask_loss(mask_logits[s], keep[s], count)
            + losses.masked_mse(target[s], pred[s], keep_up[s], count))

  with tf.GradientTape(persistent=True) as tape:
    tape.watch([real, fake, mask_logits, pred])
    whole = total((0, b), b)
    shares = total((0, 2), b) + total((2, b), b)
  assert _value(shares) == pytest.approx(_value(whole), rel=1e-6)
  for g_whole, g_shares in zip(tape.gradient(whole, [real, fake, mask_logits, pred]),
                               tape.gradient(shares, [real, fake, mask_logits, pred])):
    np.testing.assert_allclose(g_shares.numpy(), g_whole.numpy(), rtol=1e-5, atol=1e-8)


# ------------------------------------------------- the losses in the steps
def _model(**overrides):
  c = tiny_config(**overrides)
  c.probe.enabled = False
  c.spotter.history_size = 0  # C sees [reals, fakes] only
  keras.utils.set_random_seed(0)
  model = ArtifactSpotter(**config_lib.spotter_kwargs(c))
  model.build()
  return c, model


def _images(seed, b=8, size=16):
  return tf.constant(np.random.default_rng(seed).uniform(-1, 1, (b, size, size, 1)),
                     tf.float32)


def test_autoencoder_step_reports_weighted_mse_plus_l2_of_kernels():
  c, model = _model()
  x = _images(0)
  # Training-mode outputs use the batch's statistics, so recomputing them
  # before the step gives the step's own forward pass.
  x_ae = model.autoencode(x, training=True).numpy().astype(np.float64)
  mse = ((x.numpy() - x_ae) ** 2).mean()
  l2 = sum(float((v.numpy().astype(np.float64) ** 2).sum())
           for v in model.autoencoder_variables if len(v.shape) >= 2)
  metrics = model.autoencoder_step({"image": x}, FusedAdam(1e-3))
  assert float(metrics["ae/mse"]) == pytest.approx(mse, rel=1e-4)
  want = c.autoencoder.recon_weight * mse + c.autoencoder.l2_weight * l2
  assert float(metrics["ae/loss"]) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("released_code", [False, True])
def test_adversarial_step_reports_each_loss_as_written_out(released_code):
  overrides = {}
  if released_code:  # adds C's mask loss on reals and R's confusion + mask terms
    overrides = {"spotter.generator_adds_c_losses": True,
                 "spotter.mask_real_weight": 0.1}
  c, model = _model(**overrides)
  sp = c.spotter
  x = _images(1)
  b = int(x.shape[0])
  discriminator_opt = FusedAdam(1e-3)
  # The step's damage mask: its stateless draw for step 0.
  keep = sample_keep_mask(model._seed(spotter_lib._MASK, 0), b, model.grid,  # pylint: disable=protected-access
                          sp.drop_rate)
  x_ae = model.autoencode(x)
  fake = model.make_fakes(x, keep, training=True)
  out = model.discriminator([x_ae, fake], training=True)
  logits = out["logits"].numpy().astype(np.float64)
  mask_logits = out["mask_logits"].numpy().astype(np.float64)
  real_l, fake_l = logits[:b], logits[b:]
  keep_np = keep.numpy()[..., 0]
  assert 0 < keep_np.mean() < 1  # both kinds of cells are present

  class_loss = (-np_log_sigmoid(real_l)).mean() + (-np_log_sigmoid(-fake_l)).mean()
  mask_fake = np_bce(keep_np, mask_logits[b:]).mean()
  mask_real = np_bce(np.ones_like(keep_np), mask_logits[:b]).mean()
  c_loss = class_loss + sp.mask_weight * mask_fake + sp.mask_real_weight * mask_real
  adversarial = (-np_log_sigmoid(fake_l)).mean()
  cell = x.shape[1] // model.grid[0]
  keep_up = np.repeat(np.repeat(keep_np, cell, 1), cell, 2)[..., None]
  recon = (((x_ae.numpy() - fake.numpy()) ** 2) * keep_up).mean()
  r_loss = adversarial + sp.recon_weight * recon
  if released_code:
    confusion = (-0.5 * np_log_sigmoid(fake_l) - 0.5 * np_log_sigmoid(-fake_l)).mean()
    r_loss += confusion + sp.mask_weight * mask_fake
  metrics = model.adversarial_step({"image": x}, discriminator_opt, FusedAdam(1e-3))
  got = {k: float(v) for k, v in metrics.items()}
  assert got["c/class_loss"] == pytest.approx(class_loss, rel=1e-4)
  assert got["c/mask_loss"] == pytest.approx(mask_fake, rel=1e-4)
  assert got["c/loss"] == pytest.approx(c_loss, rel=1e-4)
  assert got["r/adversarial"] == pytest.approx(adversarial, rel=1e-4)
  assert got["r/recon_kept"] == pytest.approx(recon, rel=1e-4, abs=1e-7)
  assert got["r/loss"] == pytest.approx(r_loss, rel=1e-4)
  assert got["c/real_accuracy"] == pytest.approx((real_l > 0).mean())
  assert got["c/fake_accuracy"] == pytest.approx((fake_l < 0).mean())
  assert got["c/mask_accuracy"] == pytest.approx(
      ((mask_logits[b:] > 0) == (keep_np > 0.5)).mean())
