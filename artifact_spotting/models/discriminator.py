"""The artifact spotter C: conv1..conv5 features, a real/fake head, a mask head."""

from __future__ import annotations

from typing import Dict, Sequence

import keras
from keras import layers, ops

from artifact_spotting.models.blocks import PACKAGE, BatchNorm, Conv2D, ConvBlock, MaxPool

FEATURE_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
NORMS = ("batch", "lrn", "none")


def _check_spec(spec, index):
  required = {"filters", "kernel", "stride"}
  missing = required - set(spec)
  if missing:
    raise ValueError(f"discriminator.convs[{index}] is missing {sorted(missing)}")
  norm = spec.get("norm", "batch")
  if norm not in NORMS:
    raise ValueError(f"discriminator.convs[{index}].norm must be one of {NORMS}, "
                     f"got {norm!r}")


@keras.saving.register_keras_serializable(PACKAGE)
class Discriminator(layers.Layer):
  """AlexNet-style C with named features.

  ``convs`` holds five dicts ``{filters, kernel, stride, pool, norm}``; ``pool``
  adds a 3x3 stride-2 max pool after the layer. ``call`` returns a dict with
  ``conv1``..``conv5`` (post-activation, pre-pool), ``logits`` [B] (real = 1)
  and ``mask_logits`` [B, M, N] (keep = 1) where conv5's grid is M x N.

  ``x`` may also be a list of image batches (views, e.g. [real, fake,
  history]): conv1 runs on each view and the results are concatenated, so
  everything from conv1's batch norm on sees one batch of all views, exactly
  as for their concatenation, while conv1's input gradient is only computed
  for the views that need one (the fakes, for R's loss) instead of for the
  whole batch and then sliced.
  """

  def __init__(self, convs: Sequence[Dict], fc_units: int, dropout: float,
               negative_slope: float = 0.2, *, fc_norm: bool, **kwargs):
    super().__init__(**kwargs)
    if len(convs) != len(FEATURE_NAMES):
      raise ValueError(f"discriminator.convs needs {len(FEATURE_NAMES)} layers, "
                       f"got {len(convs)}")
    self.convs = [dict(c) for c in convs]
    for i, spec in enumerate(self.convs):
      _check_spec(spec, i)
    self.fc_units = int(fc_units)
    self.dropout = float(dropout)
    self.negative_slope = float(negative_slope)
    self.fc_norm = bool(fc_norm)
    dt = self.dtype_policy
    # Named attributes (conv1..conv5, conv1_pool, ...), not lists: see
    # blocks.set_indexed.
    for name, spec in zip(FEATURE_NAMES, self.convs):
      setattr(self, name, ConvBlock(
          int(spec["filters"]), int(spec["kernel"]), int(spec["stride"]),
          spec.get("norm", "batch"), self.negative_slope, name=name, dtype=dt))
      setattr(self, f"{name}_pool",
              MaxPool(3, 2, padding="same", name=f"{name}_pool", dtype=dt)
              if spec.get("pool", False) else None)
    self.flatten = layers.Flatten(name="flatten", dtype=dt)
    self.fc = layers.Dense(self.fc_units, use_bias=not self.fc_norm,
                           name="fc1", dtype=dt)
    # blocks.BatchNorm for its per-replica mode (replica.StepMode).
    self.fc_bn = (BatchNorm(momentum=0.9, epsilon=1e-5, synchronized=True,
                            name="fc1_bn", dtype=dt)
                  if self.fc_norm else None)
    self.fc_drop = layers.Dropout(self.dropout, name="fc1_dropout", dtype=dt)
    self.class_head = layers.Dense(1, name="class_head", dtype=dt)
    self.mask_head = Conv2D(1, 3, padding="same", name="mask_head", dtype=dt)

  def grid(self, resolution):
    """The M x N grid of conv5 (and of the mask head) for an input size."""
    size = list(resolution)
    for i, spec in enumerate(self.convs):
      if i and self.convs[i - 1].get("pool", False):
        size = [-(-s // 2) for s in size]
      size = [-(-s // int(spec["stride"])) for s in size]
    return tuple(size)

  def build(self, input_shape):
    shape = tuple(input_shape)
    for i, (block, pool) in enumerate(zip(self.blocks, self.pools)):
      block.build(shape)
      shape = block.compute_output_shape(shape)
      if i == len(FEATURE_NAMES) - 1:
        self.mask_head.build(shape)
        flat = self.flatten.compute_output_shape(shape)
      if pool is not None:
        shape = pool.compute_output_shape(shape)
    self.fc.build(flat)
    if self.fc_bn is not None:
      self.fc_bn.build((flat[0], self.fc_units))
    self.class_head.build((flat[0], self.fc_units))
    self.built = True

  @property
  def blocks(self):
    return [getattr(self, n) for n in FEATURE_NAMES]

  @property
  def pools(self):
    return [getattr(self, f"{n}_pool") for n in FEATURE_NAMES]

  def features(self, x, training=False):
    out = {}
    h = x
    for name, block, pool in zip(FEATURE_NAMES, self.blocks, self.pools):
      h = block(h, training=training)
      out[name] = h
      if pool is not None:
        h = pool(h, training=training)
    return out

  def call(self, x, training=False):
    out = self.features(x, training=training)
    c5 = out["conv5"]
    h = self.fc(self.flatten(c5))
    if self.fc_bn is not None:
      h = self.fc_bn(h, training=training)
    h = keras.activations.leaky_relu(h, self.negative_slope)
    h = self.fc_drop(h, training=training)
    out["logits"] = ops.cast(self.class_head(h)[:, 0], "float32")
    out["mask_logits"] = ops.cast(self.mask_head(c5)[..., 0], "float32")
    return out

  def get_config(self):
    config = super().get_config()
    config.update(convs=[dict(c) for c in self.convs], fc_units=self.fc_units,
                  dropout=self.dropout, negative_slope=self.negative_slope,
                  fc_norm=self.fc_norm)
    return config
