"""Export a pretraining workdir as a TF-Serving SavedModel and a .keras file.

``export(workdir, output)`` writes ``output/<version>/`` (the layout TF Serving
loads) holding a SavedModel with three signatures, preprocessing inside the
graph so clients send raw uint8 pixels:

- ``serving_default``: images -> ``embedding`` (global-average-pooled conv5),
  ``artifact_probability`` [B] and ``artifact_mask`` [B, M, N] (probability
  that each cell was damaged); images of any height and width are resized
  to the training resolution (bilinear, antialiased, aspect ratio not kept),
  and an empty batch gives empty outputs (also in the other two);
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
import tensorflow as tf

from artifact_spotting import loading
from artifact_spotting import workdir as workdir_lib
from artifact_spotting.models.discriminator import Discriminator


class ExportError(loading.LoadError):
  """The workdir cannot be exported; the message names what is missing."""


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
    """uint8 [B, H, W, C] -> (float [B', R, R, C] in [-1, 1], B).

    Images of another height and width than the training resolution R are
    resized to R x R (bilinear, antialiased; the aspect ratio is not kept,
    so crop first to keep it). An empty batch (B = 0, any H and W) runs as
    one black image (B' = 1), since some kernels refuse empty tensors; the
    signatures slice their outputs back to B rows."""
    expected = f"images must be uint8 [batch, height, width, {self.channels}]"
    # The signature fixes dtype and rank; TF checks the dtype on every call
    # and the rank where shapes are known, this checks the channel count and
    # the size.
    shape = tf.shape(images)
    batch, size = shape[0], shape[1:3]
    checks = [
        tf.debugging.assert_equal(
            shape[-1], self.channels,
            message=expected + "; got another channel count"),
        tf.debugging.assert_equal(
            tf.logical_or(batch == 0, tf.reduce_all(size >= 1)), True,
            message=expected + "; height and width must be at least 1"),
    ]
    target = tf.constant([self.resolution, self.resolution])
    with tf.control_dependencies(checks):
      images = tf.cond(
          batch > 0, lambda: tf.identity(images),
          lambda: tf.zeros([1, self.resolution, self.resolution, self.channels],
                           tf.uint8))
    x = tf.cast(images, tf.float32) / 127.5 - 1.0
    x = tf.cond(
        tf.reduce_all(tf.equal(tf.shape(x)[1:3], target)),
        lambda: x,
        lambda: tf.image.resize(x, target, method="bilinear", antialias=True))
    x = tf.ensure_shape(x, [None, self.resolution, self.resolution, self.channels])
    return x, batch

  def _serve(self, images):
    """``embedding`` [B, conv5 width], ``artifact_probability`` [B],
    ``artifact_mask`` [B, M, N] for uint8 ``images`` [B, H, W, C], any
    H x W (resized to the training resolution, see _preprocess); an empty
    batch gives empty outputs."""
    x, batch = self._preprocess(images)
    out = self.model.discriminator(x, training=False)
    return {
        "embedding": tf.reduce_mean(out["conv5"], axis=[1, 2])[:batch],
        "artifact_probability": tf.sigmoid(-out["logits"])[:batch],
        "artifact_mask": tf.sigmoid(-out["mask_logits"])[:batch],
    }

  def _features(self, images):
    """``conv1``..``conv5`` [B, h, w, c] for uint8 ``images`` [B, H, W, C], as
    _serve takes them (an empty batch gives empty maps)."""
    x, batch = self._preprocess(images)
    out = self.model.discriminator(x, training=False)
    return {k: out[k][:batch] for k in ("conv1", "conv2", "conv3", "conv4", "conv5")}

  def _repair(self, images, keep_mask):
    """``damaged`` and ``repaired`` uint8 [B, R, R, C] for uint8 ``images``
    [B, H, W, C] (as _serve takes them) and ``keep_mask`` [B, M, N]."""
    x, batch = self._preprocess(images)
    keep_mask = tf.cond(batch > 0, lambda: tf.identity(keep_mask),
                        lambda: tf.ones([1] + list(self.model.grid), tf.float32))
    keep = tf.cast(keep_mask > 0.5, tf.float32)[..., None]
    phi = self.model.encoder(x, training=False)
    damaged = self.model.decoder(self.model.damage(phi, keep), training=False)
    repaired = self.model.make_fakes(x, keep, training=False, phi=phi)
    to_uint8 = lambda t: tf.cast(tf.round((tf.clip_by_value(t, -1.0, 1.0) + 1.0) * 127.5),
                                 tf.uint8)[:batch]
    return {"damaged": to_uint8(damaged), "repaired": to_uint8(repaired)}


def backbone_model(model, resolution: int, channels: int) -> keras.Model:
  """A functional keras.Model around a copy of the trained discriminator."""
  disc = Discriminator.from_config(model.discriminator.get_config())
  backbone = loading.backbone_model(disc, resolution, channels)
  disc.set_weights(model.discriminator.get_weights())
  return backbone


def export(workdir: str, output: str, version: int | None = None) -> str:
  """Writes output/<version>/ and returns its path."""
  config, restored = loading.spotter(workdir)
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
