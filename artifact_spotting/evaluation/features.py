"""Per-layer features of frozen models, average-pooled to a fixed size.

Each layer's map is average-pooled (area interpolation, i.e. adaptive average
pooling) to the largest square grid whose flattened size stays about
``pooled_dims`` (9,216 by default, the usual AlexNet probe recipe), never above
the map's own size.

Feature sources (``make_extractor``): the discriminator of a pretraining
workdir, a random-initialised discriminator of a pretraining config, the
frozen autoencoder's encoder stages, raw pixels, or the discriminator inside a
``.keras`` file (e.g. the supervised upper bound trained by trainers.finetune).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from artifact_spotting import loading
from artifact_spotting.data import pipeline
from artifact_spotting.models.discriminator import FEATURE_NAMES, Discriminator


def pooled_side(height: int, channels: int, pooled_dims: int) -> int:
  """Side s of the s x s pooled grid: s*s*channels ~ pooled_dims, s <= height."""
  return int(max(1, min(height, round(math.sqrt(pooled_dims / channels)))))


def pool_flatten(fmap, pooled_dims: int):
  """[B, H, W, C] -> [B, s*s*C] by adaptive average pooling to s x s."""
  h, w, c = fmap.shape[1], fmap.shape[2], fmap.shape[3]
  side = pooled_side(min(h, w), c, pooled_dims)
  if (side, side) != (h, w):
    fmap = tf.image.resize(fmap, (side, side), method="area")
  return tf.reshape(fmap, [tf.shape(fmap)[0], side * side * c])


class Extractor:
  """images [B, H, W, C] in [-1, 1] -> {layer: [B, D]} (a tf.function).

  ``fn``: that tf.function, to call on a tensor inside another traced
  function. ``checkpoint``: for features of a pretraining workdir, the
  loading.checkpoint_record of the checkpoint they come from, else None."""

  def __init__(self, name: str, layers: Sequence[str], fn: Callable, keep=None,
               checkpoint: Optional[Dict] = None):
    self.name = name
    self.layers = tuple(layers)
    self.fn = tf.function(fn)
    self._keep = keep  # keeps the owning model alive
    self.checkpoint = checkpoint

  def __call__(self, images) -> Dict[str, tf.Tensor]:
    return self.fn(tf.convert_to_tensor(images, tf.float32))


def discriminator_extractor(disc: Discriminator, pooled_dims: int, name="discriminator"):
  def fn(x):
    feats = disc.features(x, training=False)
    return {k: pool_flatten(feats[k], pooled_dims) for k in FEATURE_NAMES}
  return Extractor(name, FEATURE_NAMES, fn, keep=disc)


def encoder_extractor(encoder, pooled_dims: int, name="autoencoder"):
  names = ["stem"] + [f"stage{i + 1}" for i in range(len(encoder.stages))]

  def fn(x):
    out = {}
    h = encoder.stem(x, training=False)
    out["stem"] = pool_flatten(h, pooled_dims)
    for i, stage in enumerate(encoder.stages):
      h = stage(h, training=False)
      out[f"stage{i + 1}"] = pool_flatten(h, pooled_dims)
    return out
  return Extractor(name, names, fn, keep=encoder)


def pixel_extractor(pooled_dims: int, name="pixels"):
  return Extractor(name, ("pixels",), lambda x: {"pixels": pool_flatten(x, pooled_dims)})


def make_extractor(kind: str, source: str, pooled_dims: int, seed: int = 0) -> Extractor:
  """kind: discriminator (pretraining workdir) | random (a pretraining workdir
  or config file ``path[:arg]``) | autoencoder (pretraining workdir) | pixels |
  keras (a .keras file holding a discriminator)."""
  if kind in ("discriminator", "autoencoder"):
    load, make = ((loading.trained_discriminator, discriminator_extractor)
                  if kind == "discriminator" else
                  (loading.trained_encoder, encoder_extractor))
    network, checkpoint = load(source)
    extractor = make(network, pooled_dims, kind)
    extractor.checkpoint = checkpoint
    return extractor
  if kind == "random":
    disc = loading.new_discriminator(loading.pretrain_config(source), seed)
    return discriminator_extractor(disc, pooled_dims, f"random_seed{seed}")
  if kind == "pixels":
    return pixel_extractor(pooled_dims)
  if kind == "keras":
    return discriminator_extractor(loading.keras_discriminator(source),
                                   pooled_dims, kind)
  raise ValueError(f"feature kind {kind!r} is unknown; use discriminator, random, "
                   f"autoencoder, pixels or keras")


def extract(extractor: Extractor, source: pipeline.Source, pp: str,
            indices: Optional[np.ndarray] = None, batch_size: int = 256,
            dtype=np.float32):
  """Features of the split's images (only ``indices``, in their order, when
  given) -> ({layer: ``dtype`` [N, D]}, labels [N])."""
  ds = source.dataset
  order = None
  if indices is not None:
    indices = np.asarray(indices, np.int64)
    wanted = np.unique(indices)
    ds = pipeline.keep_indices(ds, wanted)
    order = np.searchsorted(wanted, indices)  # positions in the filtered stream
  src = source.with_dataset(ds)
  feats: Dict[str, List[np.ndarray]] = {k: [] for k in extractor.layers}
  labels = []
  for batch in pipeline.make_dataset(src, pp, batch_size, training=False,
                                     drop_remainder=False):
    out = extractor(batch["image"])
    for k in extractor.layers:
      feats[k].append(out[k].numpy().astype(dtype, copy=False))
    if "label" in batch:
      labels.append(batch["label"].numpy())
  result = {k: np.concatenate(feats.pop(k)) for k in extractor.layers}
  labels = np.concatenate(labels) if labels else None
  if order is not None:
    result = {k: v[order] for k, v in result.items()}
    labels = labels[order] if labels is not None else None
  return result, labels
