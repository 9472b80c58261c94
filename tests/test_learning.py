"""A short real run on Fashion-MNIST learns, in numbers.

One run of ``train_lib.train`` (``configs/fashion_mnist.py:tiny``: 16x16, a
4x4 grid; 400 autoencoder and 600 adversarial steps of 32 images; 40-50 s
for the whole module on 2 busy CPU cores), with TensorFlow's op determinism
on, so a seed gives the same numbers every time on one machine; then:

- the autoencoder's reconstruction error falls (first vs last logged window);
- C's real/fake accuracy and mask accuracy beat always answering one class
  (real/fake: the mean of the accuracies on reals and on fakes, which one
  answer for all holds at 0.5; mask: max(drop, 1 - drop) per cell, 0.5 at
  the drop rate 0.5 used here);
- C does not win outright: the repair network keeps C's real/fake accuracy
  well below 1. A repair network that helps C instead of fooling it (the
  sign of its adversarial loss flipped) lets C's accuracy reach 0.99 within
  150 steps and stay there;
- the repair network fools a frozen C: with C's weights fixed and the kept-
  region reconstruction term switched off, the model's own adversarial steps
  lower R's adversarial loss -log s(C(fake)) on a fixed batch of test images
  and masks (computed here, not by the code under test). This checks the
  direction of R's update directly: the accuracy checks above alone do not,
  since a flipped sign makes C look *better* at real/fake and at the mask;
- C's features beat the same network at step 0 (same seed, same initial
  weights) on a kNN probe: 500 training images as the memory bank, the first
  1000 test images as queries, pooled conv5 features.

The drop rate is 0.5 (not the config's 0.7) so that the mask's one-class
baseline is chance; C's learning rate is 3e-3 (R keeps 1e-3): in 600 steps
at 1e-3 C's mask accuracy on the weakest of three seeds stayed within 0.01
of chance, at 3e-3 it is 0.516-0.529. Beside each threshold: what seeds 0,
1 and 2 measured, and where it matters what the sign-flipped run measured.
"""

import contextlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from artifact_spotting import evaluation
from artifact_spotting import events
from artifact_spotting import train_state
from artifact_spotting import workdir as workdir_lib
from artifact_spotting import train_lib
from artifact_spotting.data import pipeline
from artifact_spotting.data.sources import DEBIAN_FASHION_MNIST
from artifact_spotting.models.damage_repair import sample_keep_mask
from artifact_spotting.optimizers import FusedAdam
from configs import fashion_mnist

SEED = 0
DROP_RATE = 0.5
LOG_EVERY = 50
EVAL_PP = "resize(16)|value_range(-1, 1)"

# Every test here reads one real training run (a module fixture of minutes):
# the full suite only.
pytestmark = [pytest.mark.usefixtures("fashion_mnist"), pytest.mark.slow]


def learning_config(seed=SEED):
  c = fashion_mnist.get_config("tiny")
  c.seed = seed
  c.dataset.update(path=DEBIAN_FASHION_MNIST, auto_install=False,
                   tfds_fallback=False)
  c.autoencoder.update(steps=400, batch_size=32)
  c.spotter.update(steps=600, batch_size=32, drop_rate=DROP_RATE, lr=3e-3,
                   repair_lr=1e-3)
  c.probe.enabled = False
  # One montage at step 0, one checkpoint at the end.
  c.train.update(log_every=LOG_EVERY, summary_every=0, checkpoint_every=0)
  return c


def _scalars(workdir):
  scalars, _ = events.read_workdir(workdir)
  return {k: [v for _, v in sorted(points)] for k, points in scalars.items()}


def _split(config, split, n):
  source = pipeline.open_source(config.dataset, config.channels, split=split,
                                training=False)
  source = source.take(n)
  return source


def _restore(config, workdir):
  players = train_state.Players(config, tf.distribute.get_strategy(), probe=False)
  latest = tf.train.latest_checkpoint(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR))
  assert latest is not None, "the run saved no checkpoint"
  players.checkpoint.restore(latest).assert_existing_objects_matched()
  return players


def knn_accuracy(players, bank, queries, layer="conv5"):
  extractor = evaluation.discriminator_extractor(players.model.discriminator, 9216)
  feats, labels = evaluation.extract(extractor, bank, EVAL_PP)
  qfeats, qlabels = evaluation.extract(extractor, queries, EVAL_PP)
  preds = evaluation.knn_predict(feats[layer], labels, qfeats[layer], 10)
  return float(np.mean(preds == qlabels))


def frozen_c_adversarial_loss(config, workdir, steps=80, lr=1e-2):
  """R's adversarial loss -log s(C(fake)) on a fixed batch before and after
  ``steps`` adversarial steps with C frozen (learning rate 0) and R's
  kept-region reconstruction weight 0, so R's update follows its adversarial
  term alone. C and R run as in training, batch norm on the batch's
  statistics, so only their weights matter, not the moving statistics that
  the steps keep updating; C sees the fakes beside the autoencoded images of
  the same batch."""
  config = config.copy_and_resolve_references()
  config.spotter.recon_weight = 0.0
  players = _restore(config, workdir)
  model = players.model
  x = next(iter(pipeline.make_dataset(_split(config, "test", 64), EVAL_PP, 64,
                                      training=False)))["image"]
  keep = sample_keep_mask(tf.constant([12345, 0], tf.int64), 64, model.grid,
                          DROP_RATE)

  def adversarial_loss():
    fakes = model.make_fakes(x, keep, training=True)
    out = model.discriminator([model.autoencode(x), fakes], training=True)
    fake_logits = out["logits"][64:].numpy().astype(np.float64)
    return float(np.mean(np.logaddexp(0.0, -fake_logits)))  # -log s(l)

  frozen = FusedAdam(learning_rate=0.0)
  repair_opt = FusedAdam(learning_rate=lr, beta_1=config.optimizer.beta1)
  c_before = [v.numpy().copy() for v in model.discriminator_variables]
  train = pipeline.make_dataset(pipeline.open_source(config.dataset, config.channels),
                                config.pp, config.spotter.batch_size, training=True,
                                shuffle_buffer=config.dataset.shuffle_buffer,
                                seed=config.seed + 2)
  step = tf.function(lambda batch: model.adversarial_step(batch, frozen, repair_opt))
  before = adversarial_loss()
  for batch, _ in zip(train, range(steps)):
    step(batch)
  after = adversarial_loss()
  c_fixed = all(np.array_equal(a, v.numpy())
                for a, v in zip(c_before, model.discriminator_variables))
  return before, after, c_fixed


def run_and_measure(workdir, seed=SEED):
  """Trains, then measures everything the tests assert (a dict of floats)."""
  config = learning_config(seed)
  train_lib.train(config, workdir)
  s = _scalars(workdir)
  with open(os.path.join(workdir, "train_summary.json")) as f:
    summary = json.load(f)
  last = summary["spotter"]["metrics"]  # the last logged window
  assert last["c/real_accuracy"] == pytest.approx(s["c/real_accuracy"][-1])
  # C's accuracies over the second half of the adversarial phase.
  half = len(s["c/real_accuracy"]) // 2
  late = lambda k: float(np.mean(s[k][half:]))
  m = {
      "ae_mse_first": s["ae/mse"][0], "ae_mse_last": s["ae/mse"][-1],
      "real_fake_accuracy": (late("c/real_accuracy") + late("c/fake_accuracy")) / 2,
      "mask_accuracy": late("c/mask_accuracy"),
      "real_fake_accuracy_last": (last["c/real_accuracy"] + last["c/fake_accuracy"]) / 2,
  }
  bank, queries = _split(config, "train", 500), _split(config, "test", 1000)
  m["knn_trained"] = knn_accuracy(_restore(config, workdir), bank, queries)
  m["knn_step0"] = knn_accuracy(
      train_state.Players(config, tf.distribute.get_strategy(), probe=False),
      bank, queries)
  before, after, c_fixed = frozen_c_adversarial_loss(config, workdir)
  m.update(frozen_c_adv_before=before, frozen_c_adv_after=after,
           frozen_c_fixed=float(c_fixed))
  return m


@contextlib.contextmanager
def deterministic_ops():
  """TensorFlow's op determinism (it also makes the training input order
  deterministic) for the duration, then back to the default."""
  from tensorflow.python.framework import config as tf_config  # pylint: disable=g-import-not-at-top
  was = tf_config.is_op_determinism_enabled()
  tf.config.experimental.enable_op_determinism()
  try:
    yield
  finally:
    if not was:
      tf_config.disable_op_determinism()


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
  with deterministic_ops():
    return run_and_measure(str(tmp_path_factory.mktemp("learning") / "run"))


def test_reconstruction_error_falls(measured):
  # Seeds 0, 1, 2: 0.629 -> 0.093, 0.477 -> 0.054, 0.326 -> 0.063.
  assert measured["ae_mse_last"] < 0.5 * measured["ae_mse_first"], measured


def test_discriminator_beats_answering_one_class(measured):
  baseline_mask = max(DROP_RATE, 1 - DROP_RATE)
  # Means over the last 300 steps. Real/fake: 0.688, 0.732, 0.722 on seeds
  # 0, 1, 2.
  assert measured["real_fake_accuracy"] > 0.5 + 0.1, measured
  # Mask: 0.516, 0.524, 0.529. 300 steps x 32 images x 16 cells: a C that
  # knows nothing about the mask scores 0.5 with a std of 0.0013, so the
  # threshold is 4.7 of those above chance.
  assert measured["mask_accuracy"] > baseline_mask + 0.006, measured


def test_repair_network_keeps_the_discriminator_from_winning_outright(measured):
  # Last 50 steps: 0.692, 0.735, 0.719 on seeds 0, 1, 2; with the sign of
  # R's adversarial loss flipped 0.998, 0.999, 1.000.
  assert measured["real_fake_accuracy_last"] < 0.9, measured


def test_repair_network_fools_a_frozen_discriminator(measured):
  assert measured["frozen_c_fixed"] == 1.0, "C changed while frozen"
  # Seed 0, 80 frozen-C steps: 1.112 -> 0.716; with the sign flipped it
  # rises: 7.818 -> 7.942. (After 20 steps seeds 0, 1, 2 read 1.112 -> 0.911,
  # 1.375 -> 0.588, 1.267 -> 0.922, and a full-suite run 1.068 -> 1.036:
  # too close to the margin, hence 80.)
  assert measured["frozen_c_adv_after"] < measured["frozen_c_adv_before"] - 0.05, measured


def test_features_beat_the_same_network_at_step_0(measured):
  # Seeds 0, 1, 2: 0.618 -> 0.692, 0.649 -> 0.720, 0.627 -> 0.667.
  assert measured["knn_trained"] > measured["knn_step0"] + 0.02, measured
