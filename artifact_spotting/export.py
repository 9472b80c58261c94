"""Export a pretraining workdir as a TF-Serving SavedModel and a .keras file.

``export(workdir, output)`` writes ``output/<version>/`` (the layout TF Serving
loads) holding a SavedModel with three signatures, preprocessing inside the
graph so clients send raw uint8 pixels:

- ``serving_default``: images -> ``embedding`` (global-average-pooled conv5),
  ``artifact_probability`` [B] and ``artifact_mask`` [B, M, N] (probability
  that each cell was damaged);
- ``features``: images -> ``conv1``..``conv5``;
- ``repair``: images, ``keep_mask`` [B, M, N] (1 = keep) -> ``damaged`` (the
  decoder's output without repair) and ``repaired`` images (uint8).

and ``discriminator.keras`` beside it: the backbone as a functional Keras
model (registered classes only; loads with ``safe_mode=True``). Everything is
written to a temporary directory ``output/.tmp-<version>-*`` first and renamed
into place, so a failure never leaves a half-written export; the writer holds
a lock on that directory until the rename, and the next export into
``output`` removes temporary directories whose writer died. Folders are made
0755 and files 0644 whatever the umask, so a server running as another user
can read them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras
import ml_collections
import tensorflow as tf

from artifact_spotting import config as config_lib
from artifact_spotting import train_lib
from artifact_spotting import workdir as workdir_lib
from artifact_spotting.models.discriminator import Discriminator
from artifact_spotting.models.spotter import ArtifactSpotter


class ExportError(RuntimeError):
  """The workdir cannot be exported; the message names what is missing."""


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not tf.io.gfile.isdir(workdir):
    raise ExportError(f"workdir {workdir!r} does not exist")
  if not tf.io.gfile.exists(path):
    raise ExportError(f"{path} is missing: {workdir!r} is not a pretraining "
                      f"workdir (run trainers.pretrain first)")
  try:
    with tf.io.gfile.GFile(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (json.JSONDecodeError, ValueError) as e:
    raise ExportError(f"{path} is not valid JSON ({e}); the workdir is "
                      f"half-written") from e


class Restored:
  """A workdir's trained model and step counts, as restore_players gives
  them. Only what they need is built: the model and the two optimizers'
  step counters (the optimizers unbuilt, without their moment estimates),
  not the trainer's Players."""

  def __init__(self, model, ae_step: int, adv_step: int, path: str):
    self.model = model
    self.ae_step = int(ae_step)    # autoencoder steps done (phase 1)
    self.adv_step = int(adv_step)  # adversarial steps done (phase 2)
    self.path = path               # the checkpoint restored


def restore_players(workdir: str, require_spotter: bool = True):
  """(config, Restored): the model and step counts restored from the
  workdir's newest readable checkpoint (an unreadable newer one is named in
  a warning)."""
  config = load_config(workdir)
  ckpt_dir = os.path.join(workdir, train_lib.CHECKPOINT_DIR)
  if not train_lib.checkpoint_paths(ckpt_dir):
    raise ExportError(f"no checkpoint in {ckpt_dir}: pretraining has not "
                      f"saved one yet")
  # Built as train_lib.Players builds them (same seed, precision and names),
  # so that the checkpoint's model and step counters match by name.
  keras.utils.set_random_seed(int(config.seed))
  precision = config.train.get("precision", "float32")
  with train_lib.precision_policy(precision):
    model = ArtifactSpotter(**config_lib.spotter_kwargs(
        config, probe=bool(config.probe.enabled)), name="artifact_spotter")
    model.build()
  o = config.optimizer
  ae_opt = train_lib.make_adam(config.autoencoder.lr, config.autoencoder.steps,
                               o, "ae_optimizer", precision)
  c_opt = train_lib.make_adam(config.spotter.lr, config.spotter.steps, o,
                              "c_optimizer", precision)
  checkpoint = tf.train.Checkpoint(model=model, ae_optimizer=ae_opt,
                                   c_optimizer=c_opt)
  try:
    path = train_lib.restore_latest(checkpoint, ckpt_dir)
  except ValueError as e:
    raise ExportError(f"{workdir}: {e}") from e
  restored = Restored(model, ae_opt.iterations.numpy(),
                      c_opt.iterations.numpy(), path)
  if require_spotter and restored.adv_step == 0:
    raise ExportError(f"{workdir}: phase 2 has not run (adversarial step 0), "
                      f"so the discriminator is untrained")
  return config, restored


class ServingModule(tf.Module):
  """The discriminator (and the frozen autoencoder and repair network for the
  ``repair`` signature) with uint8 preprocessing inside."""

  def __init__(self, model, resolution: int, channels: int):
    super().__init__(name="artifact_spotting")
    self.model = model
    self.resolution = int(resolution)
    self.channels = int(channels)
    m, n = model.grid
    spec = tf.TensorSpec([None, None, None, self.channels], tf.uint8, name="images")
    self.serve = tf.function(self._serve, input_signature=[spec])
    self.features = tf.function(self._features, input_signature=[spec])
    self.repair = tf.function(self._repair, input_signature=[
        spec, tf.TensorSpec([None, m, n], tf.float32, name="keep_mask")])

  def _preprocess(self, images):
    expected = f"images must be uint8 [batch, height, width, {self.channels}]"
    # The signature fixes dtype and rank; TF checks the dtype on every call
    # and the rank where shapes are known, this checks the channel count.
    checks = [tf.debugging.assert_equal(
        tf.shape(images)[-1], self.channels,
        message=expected + "; got another channel count")]
    with tf.control_dependencies(checks):
      x = tf.cast(images, tf.float32) / 127.5 - 1.0
    size = tf.shape(x)[1:3]
    target = tf.constant([self.resolution, self.resolution])
    x = tf.cond(
        tf.reduce_all(tf.equal(size, target)),
        lambda: x,
        lambda: tf.image.resize(x, target, method="bilinear", antialias=True))
    return tf.ensure_shape(x, [None, self.resolution, self.resolution, self.channels])

  def _serve(self, images):
    out = self.model.discriminator(self._preprocess(images), training=False)
    return {
        "embedding": tf.reduce_mean(out["conv5"], axis=[1, 2]),
        "artifact_probability": tf.sigmoid(-out["logits"]),
        "artifact_mask": tf.sigmoid(-out["mask_logits"]),
    }

  def _features(self, images):
    out = self.model.discriminator(self._preprocess(images), training=False)
    return {k: out[k] for k in ("conv1", "conv2", "conv3", "conv4", "conv5")}

  def _repair(self, images, keep_mask):
    x = self._preprocess(images)
    keep = tf.cast(keep_mask > 0.5, tf.float32)[..., None]
    phi = self.model.encoder(x, training=False)
    damaged = self.model.decoder(self.model.damage(phi, keep), training=False)
    repaired = self.model.make_fakes(x, keep, training=False, phi=phi)
    to_uint8 = lambda t: tf.cast(tf.round((tf.clip_by_value(t, -1.0, 1.0) + 1.0) * 127.5),
                                 tf.uint8)
    return {"damaged": to_uint8(damaged), "repaired": to_uint8(repaired)}


def backbone_model(model, resolution: int, channels: int) -> keras.Model:
  """A functional keras.Model around a copy of the trained discriminator."""
  disc = Discriminator.from_config(model.discriminator.get_config())
  inputs = keras.Input((resolution, resolution, channels), name="images")
  outputs = disc(inputs)
  disc.set_weights(model.discriminator.get_weights())
  return keras.Model(inputs, outputs, name="artifact_spotting_discriminator")


def export(workdir: str, output: str, version: int | None = None) -> str:
  """Writes output/<version>/ and returns its path."""
  config, restored = restore_players(workdir)
  model = restored.model
  version = restored.adv_step if version is None else int(version)
  final = os.path.join(output, str(version))
  if tf.io.gfile.exists(final):
    raise ExportError(f"{final} exists already; pass another --version or "
                      f"remove it")
  created = not os.path.isdir(output)
  workdir_lib.make_dir(output, "the export folder")
  if created:
    os.chmod(output, 0o755)
  workdir_lib.remove_dead_temps(output, workdir_lib.EXPORT_TMP_NAME)
  tmp = tempfile.mkdtemp(prefix=f"{workdir_lib.EXPORT_TMP_PREFIX}{version}-",
                         dir=output)
  held = workdir_lib.HeldDir(tmp)
  try:
    module = ServingModule(model, config.resolution, config.channels)
    tf.saved_model.save(module, tmp, signatures={
        "serving_default": module.serve,
        "features": module.features,
        "repair": module.repair})
    backbone_model(model, config.resolution, config.channels).save(
        os.path.join(tmp, "discriminator.keras"))
    with open(os.path.join(tmp, "export_info.json"), "w") as f:
      json.dump({"workdir": os.path.abspath(workdir),
                 "adversarial_step": restored.adv_step,
                 "autoencoder_step": restored.ae_step,
                 "resolution": config.resolution, "channels": config.channels,
                 "grid": list(model.grid)}, f, indent=2)
    workdir_lib.make_readable(tmp)
    os.rename(tmp, final)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(e, tf.errors.OpError) and workdir_lib.disk_errno(e):
      raise workdir_lib.write_error(f"the export {final}", e) from e
    raise
  finally:
    held.release()
  return final
