"""Damage (drop bottleneck cells) and the gated repair blocks R1..Rn+1."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from artifact_spotting.models.blocks import PACKAGE, Conv2D, ConvBlock

FILL_MODES = ("blur", "average", "zeros")


def sample_keep_mask(seed, batch_size, grid, drop_rate, offset=0,
                     total_batch=None):
  """Bernoulli keep-mask [B, M, N, 1] (1 = keep) from a stateless seed.

  The mask is drawn for ``total_batch`` rows and rows ``offset:offset+B`` are
  returned, so replicas that each slice their part of a global batch draw
  exactly the masks a single device would draw for the whole batch.
  """
  total = batch_size if total_batch is None else total_batch
  m, n = grid
  u = tf.random.stateless_uniform([total, m, n, 1], seed=seed)
  keep = tf.cast(u >= drop_rate, tf.float32)
  return keep[offset:offset + batch_size]


def upsample_mask(mask, size):
  """Nearest-neighbour upsampling of a [B, M, N, 1] mask to ``size`` (H, W)."""
  m, n = mask.shape[1], mask.shape[2]
  fh, fw = size[0] // m, size[1] // n
  if fh * m != size[0] or fw * n != size[1]:
    raise ValueError(f"Feature size {size} is not a multiple of the mask grid "
                     f"{(m, n)}.")
  if fh > 1:
    mask = ops.repeat(mask, fh, axis=1)
  if fw > 1:
    mask = ops.repeat(mask, fw, axis=2)
  return mask


@keras.saving.register_keras_serializable(PACKAGE)
class Damage(layers.Layer):
  """Replaces the feature vector of every cell where keep_mask == 0.

  fill="blur" (the paper's damage, and the released code's
  ``pixel_dropout_avg``): ``keep * phi + (1 - keep) * avg3x3(phi)``, the 3x3
  box average of the *clean* features, the dropped cell's own included, so a
  dropped cell becomes a local blur of its content and its neighbours'.
  fill="average": the mean of the *kept* cells of the 3x3 neighbourhood
  (zeros where none is kept): the cell's own content is deleted.
  fill="zeros": dropped cells become 0 (a hole).
  The 3x3 averages leave out cells beyond the grid's border.
  """

  def __init__(self, fill: str, **kwargs):
    super().__init__(**kwargs)
    if fill not in FILL_MODES:
      raise ValueError(f"Damage fill must be one of {FILL_MODES}, got {fill!r}")
    self.fill = fill

  def call(self, phi, keep_mask):
    keep_mask = ops.cast(keep_mask, phi.dtype)
    kept = phi * keep_mask
    if self.fill == "zeros":
      return kept
    if self.fill == "blur":
      return kept + (1.0 - keep_mask) * ops.average_pool(phi, 3, 1, padding="same")
    total = ops.average_pool(kept, 3, 1, padding="same") * 9.0
    count = ops.average_pool(keep_mask, 3, 1, padding="same") * 9.0
    average = total / ops.maximum(count, 1.0)
    return kept + (1.0 - keep_mask) * average

  def get_config(self):
    config = super().get_config()
    config.update(fill=self.fill)
    return config


@keras.saving.register_keras_serializable(PACKAGE)
class RepairBlock(layers.Layer):
  """h <- h + (1 - Omega_up) * R(concat(h, Omega_up)).

  R = conv3x3 + BN + leaky ReLU, then a linear conv3x3 back to h's width.
  With gated=False (ablation (i)) the residual is added everywhere.
  out_initializer="zeros" starts the last conv at zero, so an untrained
  block is the identity; "glorot_uniform" starts it as any other conv.
  """

  def __init__(self, filters: int, hidden: int, gated: bool,
               negative_slope: float = 0.2, out_initializer: str = "zeros",
               **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.hidden = int(hidden)
    self.gated = bool(gated)
    self.negative_slope = float(negative_slope)
    self.out_initializer = out_initializer
    self.body = ConvBlock(self.hidden, 3, 1, "batch", self.negative_slope,
                          name="body", dtype=self.dtype_policy)
    self.out = Conv2D(self.filters, 3, padding="same", name="out",
                             kernel_initializer=out_initializer,
                             dtype=self.dtype_policy)

  def build(self, h_shape, keep_mask_shape=None):
    shape = tuple(h_shape[:-1]) + (h_shape[-1] + 1,)
    self.body.build(shape)
    self.out.build(self.body.compute_output_shape(shape))
    self.built = True

  def call(self, h, keep_mask, training=False):
    mask = ops.cast(upsample_mask(keep_mask, (h.shape[1], h.shape[2])),
                    h.dtype)
    r = self.body(ops.concatenate([h, mask], axis=-1), training=training)
    r = self.out(r)
    if self.gated:
      r = (1.0 - mask) * r
    return h + r

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, hidden=self.hidden, gated=self.gated,
                  negative_slope=self.negative_slope,
                  out_initializer=self.out_initializer)
    return config
