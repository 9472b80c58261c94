"""Loading what pretraining wrote: one place that reads a workdir, an export
or a ``.keras`` file into what evaluation, fine-tuning and export need.

Each loader restores only the network it is asked for from the workdir's
newest readable checkpoint: ``discriminator`` builds a Discriminator and reads
its variables alone, ``encoder`` the autoencoder's encoder alone, ``spotter``
the whole model (export's ``repair`` signature needs every network) without
the optimizers' state. Networks compute in the run's training precision, as
they did in training.

``backbone(init)`` is the fine-tuning and evaluation entry point: a
functional Keras model images -> discriminator outputs from a ``.keras`` file,
an export version folder, a pretraining workdir, or ``random:<config or
workdir>`` (fresh weights, seeded).
"""

from __future__ import annotations

import errno
import importlib.util
import os

from typing import Any, Dict, Tuple

import keras
import ml_collections
import tensorflow as tf

from artifact_spotting import config as config_lib
from artifact_spotting import checkpoints
from artifact_spotting import precision as precision_lib
from artifact_spotting import workdir as workdir_lib
from artifact_spotting.models.autoencoder import Encoder
from artifact_spotting.models.discriminator import Discriminator
from artifact_spotting.models.spotter import ArtifactSpotter

class LoadError(RuntimeError):
  """What was asked for cannot be loaded; the message names what is missing."""


# ------------------------------------------------------------------ configs
def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a pretraining workdir recorded (config.json)."""
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not tf.io.gfile.isdir(workdir):
    raise LoadError(f"workdir {workdir!r} does not exist")
  try:
    recorded = workdir_lib.read_config(workdir)
  except workdir_lib.WorkdirError as e:
    raise LoadError(f"{path} is not valid JSON ({e.__cause__}); the workdir is "
                    f"half-written") from e
  if recorded is None:
    raise LoadError(f"{path} is missing: {workdir!r} is not a pretraining "
                    f"workdir (run trainers.pretrain first)")
  return ml_collections.ConfigDict(recorded)


def pretrain_config(spec: str) -> ml_collections.ConfigDict:
  """A pretraining workdir, or ``configs/x.py[:arg]`` -> that pretraining config."""
  if tf.io.gfile.isdir(spec):
    return workdir_config(spec)
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("pretrain_config", path)
  if module_spec is None:
    raise FileNotFoundError(errno.ENOENT,
                            f"pretraining config {path!r} does not exist")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


# -------------------------------------------------------------- checkpoints
class Restored:
  """What a workdir's checkpoint gave: the networks restored, the step
  counts (autoencoder steps done in phase 1, adversarial steps in phase 2)
  and the checkpoint's path."""

  def __init__(self, model, ae_step: int, adv_step: int, path: str):
    self.model = model
    self.ae_step = int(ae_step)
    self.adv_step = int(adv_step)
    self.path = path


def restore(workdir: str, model=None, **networks) -> Restored:
  """Restores ``model`` (a whole built ArtifactSpotter) or ``networks``
  (attribute name on the ArtifactSpotter -> a built network, e.g.
  ``discriminator=disc``) from the workdir's newest readable checkpoint (an
  unreadable newer one is named in a warning), leaving everything else in it
  unread; the two phases' step counts are read from that checkpoint's files
  (checkpoints.steps_of: no optimizer is made)."""
  ckpt_dir = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
  if not checkpoints.checkpoint_paths(ckpt_dir):
    raise LoadError(f"no checkpoint in {ckpt_dir}: pretraining has not "
                    f"saved one yet")
  checkpoint = tf.train.Checkpoint(
      model=model if model is not None else tf.train.Checkpoint(**networks))
  try:
    path = checkpoints.restore_latest(checkpoint, ckpt_dir)
  except ValueError as e:
    raise LoadError(f"{workdir}: {e}") from e
  steps = checkpoints.steps_of(path)
  return Restored(model if model is not None else networks,
                  steps["autoencoder"], steps["adversarial"], path)


def _precision(config) -> str:
  """A workdir's recorded precision; for a config file's "auto", what a new
  run on this machine would train in."""
  return precision_lib.of_config(config)


def _require_spotter(workdir: str, restored: Restored):
  if restored.adv_step == 0:
    raise LoadError(f"{workdir}: phase 2 has not run (adversarial step 0), "
                    f"so the discriminator is untrained")


def new_discriminator(config, seed: int = None) -> Discriminator:
  """A built Discriminator of a pretraining config (seeded when ``seed`` is
  given), computing in the config's training precision."""
  if seed is not None:
    keras.utils.set_random_seed(seed)
  with precision_lib.policy(_precision(config)):
    disc = Discriminator(**config_lib.discriminator_kwargs(config),
                         name="discriminator")
    disc(tf.zeros((1, config.resolution, config.resolution, config.channels)))
  return disc


def _new_spotter(config, probe: bool) -> ArtifactSpotter:
  """The whole model as the trainer builds it (seed, precision, name)."""
  keras.utils.set_random_seed(int(config.seed))
  with precision_lib.policy(_precision(config)):
    model = ArtifactSpotter(**config_lib.spotter_kwargs(config, probe),
                            name="artifact_spotter")
    model.build()
  return model


def checkpoint_record(config, restored: Restored) -> Dict[str, Any]:
  """Which checkpoint ``restored`` read (its path) and how far each phase
  had come in it against the run's config: what results computed from it
  keep, so that a mid-training checkpoint's are told from the final one's."""
  ae_steps, adv_steps = int(config.autoencoder.steps), int(config.spotter.steps)
  path = restored.path
  return {"path": os.path.abspath(path) if workdir_lib.is_local(path) else path,
          "autoencoder_step": restored.ae_step, "autoencoder_steps": ae_steps,
          "adversarial_step": restored.adv_step, "adversarial_steps": adv_steps,
          "finished": restored.ae_step >= ae_steps and restored.adv_step >= adv_steps}


def describe_checkpoint(record: Dict[str, Any]) -> str:
  """checkpoint_record as one line: path, each phase's step of its total."""
  return (f"checkpoint {record['path']}: autoencoder step "
          f"{record['autoencoder_step']}/{record['autoencoder_steps']}, "
          f"adversarial step {record['adversarial_step']}/"
          f"{record['adversarial_steps']} "
          f"({'finished' if record['finished'] else 'mid-training'})")


def trained_discriminator(workdir: str) -> Tuple[Discriminator, Dict[str, Any]]:
  """(the trained discriminator of a pretraining workdir, its variables
  alone read; the checkpoint_record of the checkpoint they came from)."""
  config = workdir_config(workdir)
  disc = new_discriminator(config)
  restored = restore(workdir, discriminator=disc)
  _require_spotter(workdir, restored)
  return disc, checkpoint_record(config, restored)


def discriminator(workdir: str) -> Discriminator:
  """The trained discriminator of a pretraining workdir (its variables alone
  are read)."""
  return trained_discriminator(workdir)[0]


def trained_encoder(workdir: str) -> Tuple[Encoder, Dict[str, Any]]:
  """(the trained autoencoder's encoder of a pretraining workdir, the
  checkpoint_record of the checkpoint it came from)."""
  config = workdir_config(workdir)
  model = _new_spotter(config, probe=False)
  restored = restore(workdir, encoder=model.encoder)
  if restored.ae_step == 0:
    raise LoadError(f"{workdir}: the autoencoder is untrained")
  return model.encoder, checkpoint_record(config, restored)


def encoder(workdir: str) -> Encoder:
  """The trained autoencoder's encoder of a pretraining workdir."""
  return trained_encoder(workdir)[0]


def spotter(workdir: str, require_spotter: bool = True):
  """(config, Restored with ``model`` the whole ArtifactSpotter) of a
  pretraining workdir; no optimizer is built for variables."""
  config = workdir_config(workdir)
  restored = restore(workdir, _new_spotter(config, probe=bool(config.probe.enabled)))
  if require_spotter:
    _require_spotter(workdir, restored)
  return config, restored


# ----------------------------------------------------------------- backbones
def backbone_model(disc: Discriminator, resolution: int, channels: int,
                   name: str = "artifact_spotting_discriminator") -> keras.Model:
  """images -> the discriminator's outputs, as a functional Keras model."""
  inputs = keras.Input((resolution, resolution, channels), name="images")
  return keras.Model(inputs, disc(inputs), name=name)


def backbone(init: str, seed: int = 0) -> keras.Model:
  """A functional model images -> discriminator outputs, from ``init``:
  a ``.keras`` file, an export folder, a pretraining workdir, or
  ``random:<pretraining config or workdir>`` (fresh weights, e.g. for the
  supervised upper bound)."""
  if init.startswith("random:"):
    config = pretrain_config(init[len("random:"):])
    return backbone_model(new_discriminator(config, seed), config.resolution,
                          config.channels, name="random_discriminator")
  if init.endswith(".keras"):
    if not os.path.exists(init):
      raise FileNotFoundError(errno.ENOENT, f"--init {init} does not exist")
    return keras.saving.load_model(init, safe_mode=True)
  keras_file = os.path.join(init, "discriminator.keras")
  if os.path.exists(keras_file):
    return keras.saving.load_model(keras_file, safe_mode=True)
  config = workdir_config(init)
  return backbone_model(discriminator(init), config.resolution, config.channels)


def discriminator_of(model: keras.Model) -> Discriminator:
  """The Discriminator inside a backbone or a fine-tuned model (nested models
  are searched)."""
  found, stack = [], list(model.layers)
  while stack:
    layer = stack.pop()
    if isinstance(layer, Discriminator):
      found.append(layer)
    elif isinstance(layer, keras.Model):
      stack.extend(layer.layers)
  if len(found) != 1:
    raise ValueError("the backbone model holds no artifact_spotting Discriminator")
  return found[0]


def keras_discriminator(path: str) -> Discriminator:
  """The Discriminator inside a ``.keras`` file."""
  return discriminator_of(keras.saving.load_model(path, safe_mode=True,
                                                  compile=False))
