"""Loading what pretraining wrote: one place that reads a workdir, an export
or a ``.keras`` file into what evaluation, fine-tuning and export need.

Each loader restores only the network it is asked for from the workdir's
newest readable checkpoint: ``discriminator`` builds a Discriminator and reads
its variables alone, ``encoder`` the autoencoder's encoder alone, ``spotter``
the whole model (export's ``repair`` signature needs every network) without
the optimizers. Training progress is read from the checkpoint's step
counters, not from optimizers built for the purpose.

``backbone(init)`` is the fine-tuning and evaluation entry point: a
functional Keras model images -> discriminator outputs from a ``.keras`` file,
an export version folder, a pretraining workdir, or ``random:<config or
workdir>`` (fresh weights, seeded).
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Tuple

import keras
import ml_collections
import tensorflow as tf

from artifact_spotting import config as config_lib
from artifact_spotting import train_lib
from artifact_spotting.models.autoencoder import Encoder
from artifact_spotting.models.discriminator import Discriminator
from artifact_spotting.models.spotter import ArtifactSpotter

# Keras 3 optimizers track their step counter as `_iterations`.
_STEPS = "{}/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


class LoadError(RuntimeError):
  """What was asked for cannot be loaded; the message names what is missing."""


# ------------------------------------------------------------------ configs
def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a pretraining workdir recorded (config.json)."""
  path = os.path.join(workdir, "config.json")
  if not tf.io.gfile.isdir(workdir):
    raise LoadError(f"workdir {workdir!r} does not exist")
  if not tf.io.gfile.exists(path):
    raise LoadError(f"{path} is missing: {workdir!r} is not a pretraining "
                    f"workdir (run trainers.pretrain first)")
  try:
    with tf.io.gfile.GFile(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (json.JSONDecodeError, ValueError) as e:
    raise LoadError(f"{path} is not valid JSON ({e}); the workdir is "
                    f"half-written") from e


def pretrain_config(spec: str) -> ml_collections.ConfigDict:
  """A pretraining workdir, or ``configs/x.py[:arg]`` -> that pretraining config."""
  if tf.io.gfile.isdir(spec):
    return workdir_config(spec)
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("pretrain_config", path)
  if module_spec is None:
    raise FileNotFoundError(f"pretraining config {path!r} does not exist")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


# -------------------------------------------------------------- checkpoints
def restore(workdir: str, **networks) -> Tuple[str, int, int]:
  """Restores ``networks`` (attribute name on the ArtifactSpotter -> a built
  network, e.g. ``discriminator=disc``) from the workdir's newest readable
  checkpoint, leaving everything else in it unread. Returns (the checkpoint's
  path, its autoencoder steps, its adversarial steps)."""
  ckpt_dir = os.path.join(workdir, train_lib.CHECKPOINT_DIR)
  if not train_lib.checkpoint_paths(ckpt_dir):
    raise LoadError(f"no checkpoint in {ckpt_dir}: pretraining has not "
                    f"saved one yet")
  checkpoint = tf.train.Checkpoint(model=tf.train.Checkpoint(**networks))
  try:
    path, _ = train_lib.restore_newest(checkpoint, ckpt_dir)
  except ValueError as e:
    raise LoadError(f"{workdir}: {e}") from e
  return (path, int(tf.train.load_variable(path, _STEPS.format("ae_optimizer"))),
          int(tf.train.load_variable(path, _STEPS.format("c_optimizer"))))


def _require_spotter(workdir: str, adv_step: int):
  if adv_step == 0:
    raise LoadError(f"{workdir}: phase 2 has not run (adversarial step 0), "
                    f"so the discriminator is untrained")


def new_discriminator(config, seed: int = None) -> Discriminator:
  """A built Discriminator of a pretraining config (seeded when ``seed`` is
  given)."""
  if seed is not None:
    keras.utils.set_random_seed(seed)
  disc = Discriminator(**config_lib.discriminator_kwargs(config),
                       name="discriminator")
  disc(tf.zeros((1, config.resolution, config.resolution, config.channels)))
  return disc


def discriminator(workdir: str) -> Discriminator:
  """The trained discriminator of a pretraining workdir (its variables alone
  are read)."""
  config = workdir_config(workdir)
  disc = new_discriminator(config)
  _, _, adv_step = restore(workdir, discriminator=disc)
  _require_spotter(workdir, adv_step)
  return disc


def encoder(workdir: str) -> Encoder:
  """The trained autoencoder's encoder of a pretraining workdir."""
  config = workdir_config(workdir)
  model = ArtifactSpotter(**config_lib.spotter_kwargs(config, probe=False))
  model.build()
  _, ae_step, _ = restore(workdir, encoder=model.encoder)
  if ae_step == 0:
    raise LoadError(f"{workdir}: the autoencoder is untrained")
  return model.encoder


def spotter(workdir: str, require_spotter: bool = True):
  """(config, the whole ArtifactSpotter, its adversarial steps) of a
  pretraining workdir; the optimizers are not built."""
  config = workdir_config(workdir)
  model = ArtifactSpotter(**config_lib.spotter_kwargs(
      config, probe=bool(config.probe.enabled)), name="artifact_spotter")
  model.build()
  _, _, adv_step = restore(workdir, **{
      name: getattr(model, name) for name in model_parts(model)})
  if require_spotter:
    _require_spotter(workdir, adv_step)
  return config, model, adv_step


def model_parts(model: ArtifactSpotter):
  """The names of the model's tracked children that hold variables."""
  return [name for name, child in model._trackable_children().items()  # pylint: disable=protected-access
          if getattr(child, "variables", None)]


# ----------------------------------------------------------------- backbones
def backbone_model(disc: Discriminator, resolution: int, channels: int,
                   name: str = "discriminator_backbone") -> keras.Model:
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
      raise FileNotFoundError(f"--init {init} does not exist")
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
