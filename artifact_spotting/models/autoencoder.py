"""Encoder and decoder of the frozen autoencoder (E, D1..Dn in the paper).

The encoder is a 3x3 stem followed by stride-2 stages. With the paper's 2x2
stride-2 kernels the stages do not overlap, so one bottleneck cell encodes
exactly one image patch of side ``2**num_stages``; the mask on the bottleneck
grid therefore lines up with image patches (tested in tests/test_models.py).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import keras
from keras import layers, ops

from artifact_spotting.models.blocks import (PACKAGE, Conv2D, ConvBlock, get_indexed,
                                             set_indexed)


@keras.saving.register_keras_serializable(PACKAGE)
class Encoder(layers.Layer):
  """x [B, H, W, C] in [-1, 1] -> phi [B, H / 2**n, W / 2**n, widths[-1]]."""

  def __init__(self, stem_filters: int, widths: Sequence[int],
               kernel_size: int, negative_slope: float = 0.2, **kwargs):
    super().__init__(**kwargs)
    self.stem_filters = int(stem_filters)
    self.widths = tuple(int(w) for w in widths)
    self.kernel_size = int(kernel_size)
    self.negative_slope = float(negative_slope)
    self.stem = ConvBlock(self.stem_filters, 3, 1, "batch", self.negative_slope,
                          name="stem", dtype=self.dtype_policy)
    self._num_stages = set_indexed(self, "stage", [
        ConvBlock(w, self.kernel_size, 2, "batch", self.negative_slope,
                  name=f"stage{i + 1}", dtype=self.dtype_policy)
        for i, w in enumerate(self.widths)])

  @property
  def stages(self):
    return get_indexed(self, "stage", self._num_stages)

  @property
  def downsampling(self) -> int:
    return 2 ** len(self.widths)

  def build(self, input_shape):
    shape = input_shape
    for block in [self.stem] + self.stages:
      block.build(shape)
      shape = block.compute_output_shape(shape)
    self.built = True

  def call(self, x, training=False):
    h = self.stem(x, training=training)
    for stage in self.stages:
      h = stage(h, training=training)
    return h

  def compute_output_shape(self, input_shape):
    b, h, w, _ = input_shape
    f = self.downsampling
    return (b, None if h is None else h // f, None if w is None else w // f,
            self.widths[-1])

  def get_config(self):
    config = super().get_config()
    config.update(stem_filters=self.stem_filters, widths=list(self.widths),
                  kernel_size=self.kernel_size,
                  negative_slope=self.negative_slope)
    return config


@keras.saving.register_keras_serializable(PACKAGE)
class Decoder(layers.Layer):
  """phi -> image in [-1, 1]: n x (bilinear x2, conv3x3 + BN + lReLU), conv3x3, tanh.

  ``call(z, stage_fn=f)`` lets the repair network act between stages without
  copying the decoder: ``f(0, h)`` runs on the bottleneck and ``f(i, h)`` after
  decoder stage ``i``; its return value replaces ``h``. The clean and the
  repaired path therefore share the very same (frozen) decoder weights.
  """

  def __init__(self, widths: Sequence[int], channels: int,
               negative_slope: float = 0.2, **kwargs):
    super().__init__(**kwargs)
    self.widths = tuple(int(w) for w in widths)
    self.channels = int(channels)
    self.negative_slope = float(negative_slope)
    # In float32 whatever the policy: for a bfloat16/float16 image, XLA's
    # lowering of the resize's gradient (ResizeBilinearGrad) returns float32
    # where the graph expects the image's dtype, and the next op of the
    # backward pass then fails to compile ("Seen floating point types of
    # different precisions ... but mixed precision is disallowed"). TF's
    # bilinear resize computes in float32 anyway; the next stage's conv
    # casts back to the compute dtype.
    self.upsample = layers.UpSampling2D(2, interpolation="bilinear",
                                        name="upsample", dtype="float32")
    self._num_stages = set_indexed(self, "stage", [
        ConvBlock(w, 3, 1, "batch", self.negative_slope, name=f"stage{i + 1}",
                  dtype=self.dtype_policy)
        for i, w in enumerate(self.widths)])
    self.to_image = Conv2D(self.channels, 3, padding="same",
                                  name="to_image", dtype=self.dtype_policy)

  @property
  def num_stages(self) -> int:
    return len(self.widths)

  @property
  def stages(self):
    return get_indexed(self, "stage", self._num_stages)

  def build(self, input_shape):
    shape = input_shape
    for stage in self.stages:
      self.upsample.build(shape)
      shape = self.upsample.compute_output_shape(shape)
      stage.build(shape)
      shape = stage.compute_output_shape(shape)
    self.to_image.build(shape)
    self.built = True

  def call(self, z, training=False,
           stage_fn: Optional[Callable] = None):
    h = z
    if stage_fn is not None:
      h = stage_fn(0, h)
    for i, stage in enumerate(self.stages):
      h = stage(self.upsample(h), training=training)
      if stage_fn is not None:
        h = stage_fn(i + 1, h)
    return ops.tanh(ops.cast(self.to_image(h), "float32"))

  def compute_output_shape(self, input_shape):
    b, h, w, _ = input_shape
    f = 2 ** self.num_stages
    return (b, None if h is None else h * f, None if w is None else w * f,
            self.channels)

  def get_config(self):
    config = super().get_config()
    config.update(widths=list(self.widths), channels=self.channels,
                  negative_slope=self.negative_slope)
    return config


@keras.saving.register_keras_serializable(PACKAGE)
class NoiseGenerator(layers.Layer):
  """Ablation (l): a plain GAN generator, noise -> bottleneck -> decoder.

  It reuses the decoder architecture (fresh, trainable weights) so the only
  difference to damage & repair is where the fake images come from.
  """

  def __init__(self, noise_dim: int, grid: Sequence[int], bottleneck: int,
               decoder_widths: Sequence[int], channels: int,
               negative_slope: float = 0.2, **kwargs):
    super().__init__(**kwargs)
    self.noise_dim = int(noise_dim)
    self.grid = tuple(int(g) for g in grid)
    self.bottleneck = int(bottleneck)
    self.decoder_widths = tuple(int(w) for w in decoder_widths)
    self.channels = int(channels)
    self.negative_slope = float(negative_slope)
    m, n = self.grid
    self.project = layers.Dense(m * n * self.bottleneck, name="project",
                                dtype=self.dtype_policy)
    self.reshape = layers.Reshape((m, n, self.bottleneck), name="reshape",
                                  dtype=self.dtype_policy)
    self.decoder = Decoder(self.decoder_widths, self.channels,
                           self.negative_slope, name="decoder",
                           dtype=self.dtype_policy)

  def build(self, input_shape):
    self.project.build(input_shape)
    self.decoder.build((input_shape[0],) + self.grid + (self.bottleneck,))
    self.built = True

  def call(self, z, training=False):
    h = keras.activations.leaky_relu(self.project(z), self.negative_slope)
    return self.decoder(self.reshape(h), training=training)

  def get_config(self):
    config = super().get_config()
    config.update(noise_dim=self.noise_dim, grid=list(self.grid),
                  bottleneck=self.bottleneck,
                  decoder_widths=list(self.decoder_widths),
                  channels=self.channels, negative_slope=self.negative_slope)
    return config
