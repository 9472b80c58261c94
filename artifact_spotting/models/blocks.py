"""Building blocks shared by the autoencoder, repair network and discriminator.

Conv2D, BatchNorm and MaxPool are keras' layers (same variables, configs and
results) that decide, per call, whether to run one of the fast-gradient
kernels in models/kernels.py instead of TensorFlow's plain op: by shape,
dtype, XLA and whether TensorFlow's oneDNN kernels are on. ConvBlock and
LocalResponseNorm are plain layers built from them.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from artifact_spotting.hardware import onednn_enabled
from artifact_spotting.models import kernels
from artifact_spotting.models import replica
from artifact_spotting.models.kernels import conv2d_few_channels, conv2d_same

PACKAGE = "artifact_spotting"

# Input channels from which a stride-1 conv's input gradient is computed as a
# forward convolution (kernels.conv2d_same); below that, TF's own kernel
# without oneDNN, and kernels.conv2d_few_channels' matmul with oneDNN (see
# Conv2D).
FAST_INPUT_GRAD_MIN_CHANNELS = 8


@keras.saving.register_keras_serializable(PACKAGE)
class Conv2D(layers.Conv2D):
  """keras Conv2D with a faster input gradient where it applies.

  Same variables, config and forward result as ``keras.layers.Conv2D``; for
  stride 1, dilation 1, 'same' padding, odd kernels, channels_last, no groups
  and at least FAST_INPUT_GRAD_MIN_CHANNELS input channels the gradient goes
  through :func:`conv2d_same`; with fewer input channels and TF's oneDNN
  kernels on, through :func:`conv2d_few_channels` (both equal to TF's up to
  float rounding, tested). Other shapes use the parent's convolution unchanged.
  """

  def _same_odd(self):
    k = self.kernel_size
    return (keras.backend.backend() == "tensorflow" and len(k) == 2
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.padding == "same" and self.groups == 1
            and self.data_format == "channels_last"
            and k[0] % 2 == 1 and k[1] % 2 == 1)

  def _fast_grad(self, inputs):
    """The custom input gradient this conv uses: conv2d_same,
    conv2d_few_channels or None (TF's own)."""
    if not self._same_odd() or inputs.shape[-1] is None:
      return None
    if inputs.shape[-1] >= FAST_INPUT_GRAD_MIN_CHANNELS:
      return conv2d_same
    return conv2d_few_channels if onednn_enabled() else None

  def convolution_op(self, inputs, kernel):
    fn = self._fast_grad(inputs)
    if fn is not None:
      return fn(inputs, tf.cast(keras.ops.convert_to_tensor(kernel), inputs.dtype))
    return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(PACKAGE)
class LocalResponseNorm(layers.Layer):
  """Caffe AlexNet's cross-channel LRN (size 5, alpha 1e-4, beta 0.75)."""

  def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
               bias: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    self.size, self.alpha, self.beta, self.bias = int(size), float(alpha), float(beta), float(bias)

  def call(self, x):
    # Caffe divides alpha by the window size; tf.nn's depth_radius is half of it.
    # In float32: the CPU kernel has no bfloat16 version (and the sum of
    # squares is better kept in full precision anyway).
    y = tf.nn.local_response_normalization(
        tf.cast(x, tf.float32), depth_radius=self.size // 2, bias=self.bias,
        alpha=self.alpha / self.size, beta=self.beta)
    return tf.cast(y, x.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(size=self.size, alpha=self.alpha, beta=self.beta, bias=self.bias)
    return config


@keras.saving.register_keras_serializable(PACKAGE)
class BatchNorm(layers.BatchNormalization):
  """keras BatchNormalization that trains through TF's fused kernel.

  Same variables, config and results (up to float rounding, tested) as the
  parent. In training, with local statistics (one replica, or per-replica
  batch norm: ``replica.local_batch_norm``), for NHWC feature maps it calls
  kernels.fused_batch_norm_training (FusedBatchNormV3: one kernel forward,
  one backward) instead of keras' moments + batch_normalization graph, whose
  backward is a chain of many small ops (Mul/Tile/Sum) on CPU; together with
  the argmax max pool this took the adversarial step from 40.8 to 50.7
  images/s on a 2-core avx2 machine (docs/performance.md). With synchronized
  statistics on several replicas (a cross-replica reduction), masks, renorm
  or other shapes it is the parent's code, whose moments are the replica's
  own in per-replica mode.
  """

  def _fused(self, inputs, training, mask):
    return (training and self.trainable and mask is None and not self.renorm
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4 and self.axis in (-1, 3)
            and self.center and self.scale and replica.local_batch_norm())

  def _moments(self, inputs, mask):
    if mask is None and self.synchronized and replica.local_batch_norm():
      return keras.ops.moments(inputs, axes=self._reduction_axes)
    return super()._moments(inputs, mask)

  def call(self, inputs, training=None, mask=None):
    if not self._fused(inputs, training, mask):
      return super().call(inputs, training=training, mask=mask)
    # In float32 like keras: bfloat16/float16 statistics overflow or lose
    # enough precision to move the mixed-precision losses.
    y, mean, var = kernels.fused_batch_norm_training(
        tf.cast(inputs, tf.float32),
        tf.cast(keras.ops.convert_to_tensor(self.gamma), tf.float32),
        tf.cast(keras.ops.convert_to_tensor(self.beta), tf.float32),
        self.epsilon)
    m = self.momentum
    self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
    self.moving_variance.assign(self.moving_variance * m + var * (1.0 - m))
    return tf.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(PACKAGE)
class MaxPool(layers.MaxPooling2D):
  """keras MaxPooling2D that, in training and without oneDNN, pools through
  kernels.max_pool_argmax (argmax recorded in the forward pass, so each
  backward pass is a cheap scatter).

  The adversarial step backprops twice through C's pools (C's loss and R's
  loss); TF's Eigen CPU MaxPoolGrad searches every window again each time,
  the argmax pool does the search once (same results, tested). With TF's
  oneDNN kernels on, the plain pool is oneDNN's (it keeps a workspace for
  its backward pass) and is the faster one, so the argmax path is only taken
  without oneDNN (docs/performance.md, results/throughput_*.md). Inference
  (training=False), XLA (which has no MaxPoolWithArgmax) and mixed precision
  use the parent's plain pool. Mixed precision is excluded as a precaution:
  its losses drift between initialisations with either pool, so the argmax
  path has not been shown to be equivalent there.
  """

  def _argmax(self, inputs, training):
    return (bool(training) and keras.backend.backend() == "tensorflow"
            and self.data_format == "channels_last" and len(inputs.shape) == 4
            and self.compute_dtype == "float32" and not onednn_enabled()
            and not kernels.in_xla())  # XLA has no MaxPoolWithArgmax

  def call(self, inputs, training=None):
    if not self._argmax(inputs, training):
      return super().call(inputs)
    return kernels.max_pool_argmax(inputs, [1, *self.pool_size, 1],
                                   [1, *self.strides, 1], self.padding.upper())


@keras.saving.register_keras_serializable(PACKAGE)
class ConvBlock(layers.Layer):
  """Conv -> norm -> leaky ReLU, sublayers held as attributes.

  norm: "batch" (statistics synchronized across replicas unless the step
  mode makes them per replica, see models/replica.py; conv without bias), "lrn"
  (Caffe AlexNet's LRN, after the activation) or "none".
  """

  def __init__(self, filters: int, kernel_size: int, strides: int = 1,
               norm: str = "batch", negative_slope: float = 0.2, **kwargs):
    super().__init__(**kwargs)
    if norm not in ("batch", "lrn", "none"):
      raise ValueError(f"norm must be 'batch', 'lrn' or 'none', got {norm!r}")
    self.filters, self.kernel_size, self.strides = int(filters), int(kernel_size), int(strides)
    self.norm, self.negative_slope = norm, float(negative_slope)
    dt = self.dtype_policy
    self.conv = Conv2D(self.filters, self.kernel_size, strides=self.strides,
                              padding="same", use_bias=norm != "batch",
                              name="conv", dtype=dt)
    self.bn = (BatchNorm(momentum=0.9, epsilon=1e-5,
                                         synchronized=True, name="bn", dtype=dt)
               if norm == "batch" else None)
    self.act = layers.LeakyReLU(self.negative_slope, name="act", dtype=dt)
    self.lrn = LocalResponseNorm(name="lrn", dtype=dt) if norm == "lrn" else None

  def build(self, input_shape):
    self.conv.build(input_shape)
    shape = self.conv.compute_output_shape(input_shape)
    if self.bn is not None:
      self.bn.build(shape)
    self.built = True

  def compute_output_shape(self, input_shape):
    return self.conv.compute_output_shape(input_shape)

  def call(self, x, training=False):
    if isinstance(x, (list, tuple)):
      # Views convolved one by one, normalised together: an input gradient is
      # then only computed for the views that need one (see Discriminator).
      x = tf.concat([self.conv(v) for v in x], axis=0)
    else:
      x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x, training=training)
    x = self.act(x)
    if self.lrn is not None:
      x = self.lrn(x)
    return x

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size,
                  strides=self.strides, norm=self.norm,
                  negative_slope=self.negative_slope)
    return config


def set_indexed(owner, prefix, items):
  """owner.<prefix>1, owner.<prefix>2, ... = items.

  Sublayers are held as attributes, not in Python lists: TensorFlow's
  checkpoint and SavedModel graphs do not see layers inside Keras' tracked
  lists, so their variables (BN statistics included) would not be saved.
  """
  for i, item in enumerate(items):
    setattr(owner, f"{prefix}{i + 1}", item)
  return len(items)


def get_indexed(owner, prefix, count):
  return [getattr(owner, f"{prefix}{i + 1}") for i in range(count)]
