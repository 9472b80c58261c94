"""Fast-gradient kernels: ops whose backward pass is written out by hand.

Each function computes the same result and gradients as TensorFlow's plain
op (up to float rounding; tests/test_models.py compares them) but with a
backward pass that runs faster on CPUs at this project's shapes. Which one a
layer uses, and when, is decided by the layers in models/blocks.py (by shape,
dtype, XLA and whether TensorFlow's oneDNN kernels are on). The timings
behind those choices, per formulation, layer shape and oneDNN state, are in
docs/performance.md ("CPU kernels: oneDNN or not").
"""

from __future__ import annotations

import tensorflow as tf


def filter_grad(x, kernel, dy):
  """TF's kernel gradient of a stride-1 'same' conv."""
  return tf.raw_ops.Conv2DBackpropFilter(
      input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
      strides=[1, 1, 1, 1], padding="SAME")


@tf.custom_gradient
def conv2d_same(x, kernel):
  """Stride-1 'same' conv (odd kernel) whose input gradient is a forward conv.

  dL/dx of a stride-1 'same' convolution with an odd kernel is the 'same'
  convolution of dL/dy with the kernel flipped in space and with its in/out
  channels swapped. Without oneDNN, TensorFlow's CPU Conv2DBackpropInput
  kernel is 1.8 to 6.6 times slower than that forward conv at the
  discriminator's shapes (4x4..16x16 maps, 64..256 input channels); with
  oneDNN the two are about even (docs/performance.md), so the input gradient
  is written as the forward conv. The kernel gradient stays TF's. Unused
  halves are pruned from the graph (R's loss needs only dL/dx).
  """
  y = tf.nn.conv2d(x, kernel, 1, "SAME")

  def grad(dy):
    flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
    dx = tf.nn.conv2d(dy, flipped, 1, "SAME")
    return dx, filter_grad(x, kernel, dy)
  return y, grad


@tf.custom_gradient
def conv2d_few_channels(x, kernel):
  """Stride-1 'same' conv (odd kernel) of an input with few channels, whose
  input gradient is one matmul plus shifted sums.

  dL/dx[n, a, b, c] = sum_{i, j} cols[n, a - i + p, b - j + q, i, j, c] with
  cols = dL/dy . kernel^T (a [N*H*W, O] x [O, kh*kw*C] matmul) and p, q half
  the kernel. For inputs with few channels (the discriminator's conv1 on
  grayscale or RGB images) oneDNN's backward-data kernel is slower than this:
  1.8 times for conv1 on one channel at 32x32 (docs/performance.md). Without
  oneDNN, TF's own kernel is about as fast, so blocks.Conv2D uses this only with
  oneDNN on.
  """
  y = tf.nn.conv2d(x, kernel, 1, "SAME")

  def grad(dy):
    kh, kw, c, o = kernel.shape
    p, q = kh // 2, kw // 2
    n, h, w = tf.shape(dy)[0], tf.shape(dy)[1], tf.shape(dy)[2]
    # Summed in float32 whatever the compute dtype, as TF's conv kernels
    # accumulate: kh*kw additions in bfloat16 lose enough precision to move
    # the mixed-precision losses.
    k2 = tf.reshape(tf.transpose(tf.cast(kernel, tf.float32), [3, 0, 1, 2]),
                    [o, kh * kw * c])
    cols = tf.matmul(tf.reshape(tf.cast(dy, tf.float32), [-1, o]), k2)
    cols = tf.reshape(cols, [n, h, w, kh, kw, c])
    cols = tf.pad(cols, [[0, 0], [p, p], [q, q], [0, 0], [0, 0], [0, 0]])
    dx = tf.add_n([cols[:, 2 * p - i:2 * p - i + h, 2 * q - j:2 * q - j + w, i, j, :]
                   for i in range(kh) for j in range(kw)])
    dx = tf.cast(dx, x.dtype)
    return dx, filter_grad(x, kernel, dy)
  return y, grad


def max_pool_argmax(x, ksize, strides, padding: str):
  """NHWC max pool that records the argmax in the forward pass, so that its
  backward pass is a scatter (MaxPoolGradWithArgmax) instead of a second
  search of every window (Eigen's MaxPoolGrad). ``ksize`` and ``strides``
  are 4-element NHWC lists, ``padding`` "SAME" or "VALID". Same results as
  tf.nn.max_pool2d and its gradient. Not available under XLA (no
  MaxPoolWithArgmax there)."""

  @tf.custom_gradient
  def pool(x):
    y, argmax = tf.nn.max_pool_with_argmax(x, ksize, strides, padding,
                                           include_batch_in_index=True)

    def grad(dy):
      return tf.raw_ops.MaxPoolGradWithArgmax(
          input=x, grad=dy, argmax=argmax, ksize=ksize, strides=strides,
          padding=padding, include_batch_in_index=True)
    return y, grad
  return pool(x)


def fused_batch_norm_training(x, gamma, beta, epsilon: float):
  """Training-mode batch norm of float32 NHWC ``x`` through TF's fused kernel
  (FusedBatchNormV3: one kernel forward, one backward, instead of the
  Mul/Tile/Sum chains of a moments + batch_normalization graph).

  Returns (y, batch mean, batch variance), the variance biased (divided by
  the element count, as keras keeps it in its moving average; the kernel
  itself returns the Bessel-corrected one).
  """
  empty = tf.zeros([0], tf.float32)
  y, mean, var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
      x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
      epsilon=epsilon, exponential_avg_factor=1.0, data_format="NHWC",
      is_training=True)
  n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
  var = var * (n - 1.0) / n
  return y, mean, var


def in_xla() -> bool:
  """Whether ops are being traced for XLA (tf.function(jit_compile=True))."""
  from tensorflow.python.ops import control_flow_util  # pylint: disable=g-import-not-at-top
  return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
