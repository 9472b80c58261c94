"""Loss terms, written for one replica of a global batch.

Every function returns the replica's share of a mean over the *global* batch
(sum over local rows / global count), so summing gradients over replicas (what
the optimizer's all-reduce does) gives exactly the single-device gradient.
"""

from __future__ import annotations

import tensorflow as tf


def global_mean(values, global_count):
  """Sum of ``values`` divided by ``global_count`` (a python or tensor count)."""
  return tf.reduce_sum(values) / tf.cast(global_count, values.dtype)


def real_fake_loss(real_logits, fake_logits, global_real, global_fake):
  """C's GAN log loss: -log s(C(real)) - log(1 - s(C(fake)))."""
  return (global_mean(tf.nn.softplus(-real_logits), global_real) +
          global_mean(tf.nn.softplus(fake_logits), global_fake))


def non_saturating_loss(fake_logits, global_fake):
  """R's adversarial loss: -log s(C(fake)) (make C call repairs real)."""
  return global_mean(tf.nn.softplus(-fake_logits), global_fake)


def confusion_loss(fake_logits, global_fake):
  """Cross-entropy of C(fake) against 1/2 (the released code's extra term)."""
  return global_mean(0.5 * (tf.nn.softplus(fake_logits) +
                            tf.nn.softplus(-fake_logits)), global_fake)


def mask_loss(mask_logits, keep_mask, global_rows):
  """Per-cell sigmoid cross-entropy, mean over the cells of the global batch.

  mask_logits: [B, M, N]; keep_mask: [B, M, N] or [B, M, N, 1] (1 = kept).
  """
  if keep_mask.shape.rank == 4:
    keep_mask = keep_mask[..., 0]
  keep_mask = tf.cast(keep_mask, mask_logits.dtype)
  cells = mask_logits.shape[1] * mask_logits.shape[2]
  ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=keep_mask,
                                               logits=mask_logits)
  return global_mean(ce, tf.cast(global_rows, tf.float32) * cells)


def masked_mse(target, prediction, keep_mask_up, global_rows):
  """Mean squared error on kept regions (mean over all pixels of the batch)."""
  pixels = target.shape[1] * target.shape[2] * target.shape[3]
  se = tf.square(tf.cast(target, tf.float32) - tf.cast(prediction, tf.float32))
  return global_mean(se * keep_mask_up, tf.cast(global_rows, tf.float32) * pixels)


def mse(target, prediction, global_rows):
  """Mean squared error over all pixels of the global batch."""
  return masked_mse(target, prediction, 1.0, global_rows)


def l2_penalty(variables):
  """Sum of squares of the conv / dense kernels (not of BN or biases)."""
  kernels = [v for v in variables if "kernel" in v.path]
  if not kernels:
    return tf.constant(0.0)
  return tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32)))
                   for v in kernels])
