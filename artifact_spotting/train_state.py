"""The train state: the model, one optimizer per player and the two phases'
step counters (``StepCounters``), built for a config inside a strategy's
scope, and one checkpoint of them all. The counters are what resume,
``init_from``, loading and export read (checkpoints.steps_of); the optimizers'
own ``iterations`` drive their learning-rate schedules only.
``init_autoencoder`` starts phase 2 from another workdir's finished
autoencoder."""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf
from absl import logging

from artifact_spotting import checkpoints
from artifact_spotting import config as config_lib
from artifact_spotting import precision as precision_lib
from artifact_spotting import workdir as workdir_lib
from artifact_spotting.models.spotter import ArtifactSpotter
from artifact_spotting.optimizers import FusedAdam, player_optimizer


class StepCounters(tf.Module):
  """Steps done in each phase: int64 variables saved in every checkpoint as
  ``steps/autoencoder`` and ``steps/adversarial``. A step counts once it ran,
  whether or not its optimizer applied it (mixed_float16 skips an update
  whose gradients overflow; the data, masks and noise of the step are used
  all the same)."""

  def __init__(self):
    super().__init__(name="steps")
    # Written once per global step, as an optimizer's iterations are.
    kw = dict(dtype=tf.int64, trainable=False,
              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.autoencoder = tf.Variable(0, name="autoencoder", **kw)
    self.adversarial = tf.Variable(0, name="adversarial", **kw)

  def set(self, steps: dict):
    """Sets both counters from checkpoints.steps_of's dict."""
    self.autoencoder.assign(steps["autoencoder"])
    self.adversarial.assign(steps["adversarial"])


class Players:
  """The model and one optimizer per player, built inside the strategy scope.

  The weights are initialised from ``config.seed`` (Keras, TF and NumPy global
  seeds are set here), so two runs of one config start from the same weights
  and different seeds start from different ones. The damage masks, noise and
  history draws are seeded by ``config.seed`` too (stateless, per step), and
  the input order by the data pipeline's seed.
  """

  def __init__(self, config, strategy, probe: bool = True):
    keras.utils.set_random_seed(int(config.seed))
    precision = precision_lib.of_config(config)
    precision_lib.warn_slow_precision(precision)
    with strategy.scope():
      with precision_lib.policy(precision):
        self.model = ArtifactSpotter(**config_lib.spotter_kwargs(config, probe),
                                     name="artifact_spotter")
        self.model.build()
      self.ae_opt = player_optimizer(config, "ae_optimizer")
      self.discriminator_opt = player_optimizer(config, "c_optimizer")
      self.repair_opt = player_optimizer(config, "r_optimizer")
      self.probe_opt = FusedAdam(config.probe.lr, name="probe_optimizer")
      m = self.model
      self.ae_opt.build(m.autoencoder_variables)
      self.discriminator_opt.build(m.discriminator_variables)
      self.repair_opt.build(m.repair_variables)
      self.probe_opt.build(m.probe_variables)
      self.steps = StepCounters()
    # The checkpoint's names are the paper's C (discriminator) and R
    # (repair network); every workdir holds them under these names.
    parts = dict(model=self.model, ae_optimizer=self.ae_opt,
                 c_optimizer=self.discriminator_opt, r_optimizer=self.repair_opt,
                 probe_optimizer=self.probe_opt)
    self._without_steps = tf.train.Checkpoint(**parts)
    self.checkpoint = tf.train.Checkpoint(steps=self.steps, **parts)

  @property
  def ae_step(self) -> int:
    return int(self.steps.autoencoder.numpy())

  @property
  def adv_step(self) -> int:
    return int(self.steps.adversarial.numpy())

  def reader(self, path):
    """The checkpoint to restore ``path`` with (checkpoints.Keeper's
    ``reader``): ``self.checkpoint``; for a checkpoint written before the
    step counters existed, the same less them, the counters set here from
    its optimizers' iterations."""
    if checkpoints.has_step_counters(path):
      return self.checkpoint
    self.steps.set(checkpoints.steps_of(path))
    return self._without_steps

  # One replica's step of each phase (for make_loop), counted.
  def autoencoder_step(self, batch):
    metrics = self.model.autoencoder_step(batch, self.ae_opt)
    self.steps.autoencoder.assign_add(1)
    return metrics

  def adversarial_step(self, batch, probe_opt=None):
    metrics = self.model.adversarial_step(
        batch, self.discriminator_opt, self.repair_opt, probe_opt,
        step=self.steps.adversarial)
    self.steps.adversarial.assign_add(1)
    return metrics


AUTOENCODER_FIELDS = ("stem_filters", "widths", "kernel_size", "decoder_widths")


def init_autoencoder(players: Players, config):
  """Starts phase 2 from another workdir's finished autoencoder.

  Restores the encoder and decoder (weights and batch norm statistics) from the
  newest checkpoint of ``config.autoencoder.init_from`` and marks phase 1 as
  done. Raises ValueError naming the problem when that workdir has no
  checkpoint, a different autoencoder, or an unfinished phase 1.
  """
  source = config.autoencoder.init_from
  latest = checkpoints.newest_readable(
      os.path.join(source, workdir_lib.CHECKPOINT_DIR))
  if latest is None:
    raise ValueError(f"config.autoencoder.init_from={source!r} holds no checkpoint "
                     f"(expected {os.path.join(source, workdir_lib.CHECKPOINT_DIR)})")
  try:
    theirs = workdir_lib.read_config(source)
  except workdir_lib.WorkdirError as e:
    raise ValueError(f"config.autoencoder.init_from={source!r}: its "
                     f"{workdir_lib.CONFIG_FILE} is not valid JSON "
                     f"({e.__cause__})") from e
  if theirs is None:
    raise ValueError(f"config.autoencoder.init_from={source!r} holds checkpoints "
                     f"but no {workdir_lib.CONFIG_FILE}, so its autoencoder "
                     f"cannot be checked against this config")
  ours = config.to_dict()
  for key in AUTOENCODER_FIELDS + ("resolution", "channels"):
    mine = ours["autoencoder"].get(key, ours.get(key))
    other = theirs["autoencoder"].get(key, theirs.get(key))
    if json.loads(json.dumps(mine)) != other:
      raise ValueError(
          f"config.autoencoder.init_from={source!r} has {key}={other}, this "
          f"config {key}={mine}; the autoencoders must match")
  steps = checkpoints.steps_of(latest)["autoencoder"]
  done = max(int(theirs["autoencoder"]["steps"]), int(config.autoencoder.steps))
  if steps < done:
    raise ValueError(
        f"config.autoencoder.init_from={source!r}: its autoencoder has {steps} "
        f"steps, fewer than {done} (its own config's or this config's "
        f"autoencoder.steps); finish it first")
  model = players.model
  status = tf.train.Checkpoint(
      model=tf.train.Checkpoint(encoder=model.encoder, decoder=model.decoder),
  ).restore(latest)
  status.expect_partial()
  status.assert_existing_objects_matched()
  players.steps.autoencoder.assign(config.autoencoder.steps)
  logging.info("Autoencoder from %s (%d steps); phase 1 skipped.", latest, steps)
  return latest
