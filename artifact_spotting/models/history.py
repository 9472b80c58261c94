"""History of earlier repaired images (paper ablation (j); SimGAN-style buffer)."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from artifact_spotting.models.autoencoder import PACKAGE


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
    filled = tf.minimum(self.count.value, self.size)
    u = tf.random.stateless_uniform([total], seed=seed)[offset:offset + num]
    idx = tf.cast(tf.floor(u * tf.cast(tf.maximum(filled, 1), tf.float32)),
                  tf.int32)
    idx = tf.minimum(idx, self.size - 1)
    images = tf.gather(self.images.value, idx)
    masks = tf.gather(self.masks.value, idx)
    empty = tf.equal(filled, 0)
    images = tf.where(empty, tf.cast(fallback_images[:num], images.dtype), images)
    masks = tf.where(empty, tf.cast(fallback_masks[:num], masks.dtype), masks)
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
    self.images.value.scatter_nd_update(slots, tf.cast(images, self.images.dtype))
    self.masks.value.scatter_nd_update(slots, tf.cast(masks, self.masks.dtype))
    self.count.assign(count + n)

  def get_config(self):
    config = super().get_config()
    config.update(size=self.size, image_shape=list(self.image_shape),
                  grid=list(self.grid))
    return config
