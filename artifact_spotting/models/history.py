"""History of earlier repaired images (paper ablation (j); SimGAN-style buffer)."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from artifact_spotting.models.blocks import PACKAGE


def _scatter(variable, slots, values):
  """variable[slots] = values, in place, also for a mirrored variable updated
  from replica context (every replica passes the same values)."""
  def update(strategy, var, idx, vals):
    strategy.extended.update(
        var, lambda v, i, x: v.scatter_nd_update(i, x), args=(idx, vals),
        group=False)
  if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
    tf.distribute.get_replica_context().merge_call(update, args=(variable, slots, values))
  else:
    variable.scatter_nd_update(slots, values)


@keras.saving.register_keras_serializable(PACKAGE)
class HistoryBuffer(layers.Layer):
  """A fixed-size pool of (fake image, keep-mask) pairs.

  All randomness is stateless and keyed by the step, and every replica updates
  the buffer with the *global* batch of fakes (all-gathered), so the buffer is
  identical on every replica and to a single-device run on the same batch.
  Until the buffer holds anything, ``sample`` returns the current fakes.
  """

  def __init__(self, size: int, image_shape, grid, **kwargs):
    super().__init__(**kwargs)
    self.size = int(size)
    self.image_shape = tuple(int(s) for s in image_shape)
    self.grid = tuple(int(g) for g in grid)
    agg = "only_first_replica"
    self.images = self.add_weight(
        shape=(self.size,) + self.image_shape, initializer="zeros",
        trainable=False, aggregation=agg, name="images", autocast=False)
    self.masks = self.add_weight(
        shape=(self.size,) + self.grid + (1,), initializer="zeros",
        trainable=False, aggregation=agg, name="masks", autocast=False)
    self.count = self.add_weight(
        shape=(), initializer="zeros", dtype="int64", trainable=False,
        aggregation=agg, name="count", autocast=False)
    self.built = True

  def sample(self, seed, num, offset, total, fallback_images, fallback_masks):
    """Rows ``offset:offset+num`` of ``total`` stateless draws from the pool."""
    return self.gather(self.draw(seed, num, offset, total), fallback_images,
                       fallback_masks)

  def draw(self, seed, num, offset, total):
    """The pool slots ``sample`` reads: rows ``offset:offset+num`` of
    ``total`` stateless draws. Separate from ``gather`` so that a train step
    can draw outside its XLA computation (XLA's stateless random numbers
    differ from TensorFlow's kernels')."""
    filled = tf.minimum(self.count.value, self.size)
    u = tf.random.stateless_uniform([total], seed=seed)[offset:offset + num]
    idx = tf.cast(tf.floor(u * tf.cast(tf.maximum(filled, 1), tf.float32)),
                  tf.int32)
    return tf.minimum(idx, self.size - 1)

  def gather(self, idx, fallback_images, fallback_masks):
    """(images, masks) at pool slots ``idx``; evenly strided rows of the
    fallbacks (the current fakes) while the pool is empty."""
    num = idx.shape[0]
    images = tf.gather(self.images.value, idx)
    masks = tf.gather(self.masks.value, idx)
    # Empty pool: evenly strided rows of the current fakes, which selects the
    # same global rows whether the batch is split over replicas or not.
    b = fallback_images.shape[0]
    rows = (tf.range(num) * b) // num
    empty = tf.equal(tf.minimum(self.count.value, self.size), 0)
    images = tf.where(empty, tf.cast(tf.gather(fallback_images, rows), images.dtype),
                      images)
    masks = tf.where(empty, tf.cast(tf.gather(fallback_masks, rows), masks.dtype),
                     masks)
    return images, masks

  def update(self, seed, images, masks):
    """Writes a global batch into the pool: in order until full, then at
    distinct random slots."""
    n = images.shape[0]
    if n > self.size:
      images, masks, n = images[:self.size], masks[:self.size], self.size
    count = self.count.value
    sequential = tf.cast((count + tf.range(n, dtype=tf.int64)) % self.size,
                         tf.int32)
    random = tf.argsort(tf.random.stateless_uniform([self.size], seed=seed))[:n]
    slots = tf.where(count + n <= self.size, sequential, random)[:, None]
    _scatter(self.images.value, slots, tf.cast(images, self.images.dtype))
    _scatter(self.masks.value, slots, tf.cast(masks, self.masks.dtype))
    self.count.assign(count + n)

  def get_config(self):
    config = super().get_config()
    config.update(size=self.size, image_shape=list(self.image_shape),
                  grid=list(self.grid))
    return config
