"""Building blocks shared by the autoencoder, repair network and discriminator."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

PACKAGE = "artifact_spotting"

# Input channels from which a stride-1 conv's input gradient is computed as a
# forward convolution (below that, TF's own kernel was faster; see Conv2D).
FAST_INPUT_GRAD_MIN_CHANNELS = 8


@tf.custom_gradient
def conv2d_same(x, kernel):
  """Stride-1 'same' conv (odd kernel) whose input gradient is a forward conv.

  dL/dx of a stride-1 'same' convolution with an odd kernel is the 'same'
  convolution of dL/dy with the kernel flipped in space and with its in/out
  channels swapped. TensorFlow's CPU Conv2DBackpropInput kernel runs 2-5x
  slower than its forward Conv2D at the discriminator's shapes (4x4..16x16
  maps, 64..256 channels; measured in benchmarks/throughput.md), so the input
  gradient is written as that forward conv. The kernel gradient stays TF's.
  Unused halves are pruned from the graph (R's loss needs only dL/dx).
  """
  y = tf.nn.conv2d(x, kernel, 1, "SAME")

  def grad(dy):
    flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
    dx = tf.nn.conv2d(dy, flipped, 1, "SAME")
    dk = tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
        strides=[1, 1, 1, 1], padding="SAME")
    return dx, dk
  return y, grad


@keras.saving.register_keras_serializable(PACKAGE)
class Conv2D(layers.Conv2D):
  """keras Conv2D with a faster input gradient where it applies.

  Same variables, config and forward result as ``keras.layers.Conv2D``; for
  stride 1, dilation 1, 'same' padding, odd kernels, channels_last, no groups
  and at least FAST_INPUT_GRAD_MIN_CHANNELS input channels the gradient goes
  through :func:`conv2d_same` (equal to TF's up to float rounding, tested).
  Other shapes use the parent's convolution unchanged.
  """

  def _fast_grad(self, inputs):
    k = self.kernel_size
    return (keras.backend.backend() == "tensorflow" and len(k) == 2
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.padding == "same" and self.groups == 1
            and self.data_format == "channels_last"
            and k[0] % 2 == 1 and k[1] % 2 == 1
            and inputs.shape[-1] is not None
            and inputs.shape[-1] >= FAST_INPUT_GRAD_MIN_CHANNELS)

  def convolution_op(self, inputs, kernel):
    if self._fast_grad(inputs):
      return conv2d_same(inputs, tf.cast(keras.ops.convert_to_tensor(kernel),
                                         inputs.dtype))
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
class ConvBlock(layers.Layer):
  """Conv -> norm -> leaky ReLU, sublayers held as attributes.

  norm: "batch" (synchronized across replicas; conv without bias), "lrn"
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
    self.bn = (layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
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
