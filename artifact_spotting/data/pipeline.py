"""tf.data input pipelines, one per input pipeline (worker) and per-replica batch."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
from absl import logging

from artifact_spotting.data import pp as pp_lib
from artifact_spotting.data import sources


# The contract every source function returns, defined in sources; the
# functions here take and return it, and evaluation names it pipeline.Source.
Source = sources.Source


def open_source(dataset_cfg, channels: int, split: Optional[str] = None,
                training: bool = True) -> Source:
  """Resolves config.dataset into a Source (tfds may download its data;
  nothing is installed)."""
  split = split or dataset_cfg.split
  kind = dataset_cfg.source
  if kind == "idx":
    path, fallback = sources.resolve_idx(_with_split(dataset_cfg, split))
    if fallback == "tfds":
      logging.info("IDX files missing; using tfds %s", dataset_cfg.name)
      return sources.tfds_source(dataset_cfg, split, training)
    return sources.idx_source(path, split)
  if kind == "tfds":
    return sources.tfds_source(dataset_cfg, split, training)
  if kind == "image_folder":
    return sources.image_folder_source(dataset_cfg, channels)
  raise ValueError(f"config.dataset.source={kind!r} is unknown; use one of "
                   f"idx | tfds | image_folder")


def keep_indices(ds, indices):
  """The elements of ``ds`` at positions ``indices`` (in stream order)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  wanted = np.unique(np.asarray(indices, np.int64))
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(wanted, tf.ones_like(wanted, tf.int32)), 0)
  return ds.enumerate().filter(lambda i, ex: table.lookup(i) > 0).map(
      lambda i, ex: ex)


def _with_split(dataset_cfg, split):
  """A copy of dataset_cfg with ``split`` set (configs from the command line
  are locked and may not have the field; the caller's config is unchanged)."""
  cfg = dataset_cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.split = split
  return cfg


def make_dataset(source: Source, pp: str, batch_size: int, *, training: bool,
                 shuffle_buffer: int = 10_000, input_context=None,
                 seed: Optional[int] = None, drop_remainder: bool = True,
                 cache: bool = False, keep_label: bool = True,
                 repeat: Optional[bool] = None):
  """Shard -> (cache) -> shuffle -> repeat -> decode -> pp -> batch -> prefetch
  (batch before pp when the images share one shape and pp works on batches).

  Training pipelines shuffle and (unless ``repeat=False``) repeat forever.

  ``batch_size`` is the batch of *this* pipeline's replica; with
  ``distribute_datasets_from_function`` pass
  ``input_context.get_per_replica_batch_size(global_batch)``.
  """
  ds = source.dataset
  if input_context is not None and input_context.num_input_pipelines > 1:
    ds = ds.shard(input_context.num_input_pipelines,
                  input_context.input_pipeline_id)
  if cache:
    ds = ds.cache()
  if training:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if training if repeat is None else repeat:
    ds = ds.repeat()
  if source.decode is not None:
    # No ignore_errors: the image folder scan decoded every file once and kept
    # only those that decode. Skipping failures here would spin forever, with
    # a warning per image, on a repeated dataset where every element fails.
    ds = ds.map(source.decode, num_parallel_calls=tf.data.AUTOTUNE)
  process = pp_lib.parse(pp)

  def prepare(features):
    out = process(features)
    keep = {"image": tf.cast(out["image"], tf.float32)}
    if keep_label and source.has_label and "label" in out:
      keep["label"] = out["label"]
    return keep
  # Same-sized images and ops that work on batches: one map call per batch
  # instead of one per image (per-image calls leave the fast phases,
  # autoencoder and feature extraction, waiting for input on 2 cores).
  batch_first = (pp_lib.batchable(pp)
                 and ds.element_spec["image"].shape.is_fully_defined())
  if batch_first:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=not training)
  if not batch_first:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  options = tf.data.Options()
  options.deterministic = not training
  options.experimental_optimization.map_parallelization = True
  ds = ds.with_options(options)
  return ds.prefetch(tf.data.AUTOTUNE)


def distributed_dataset(strategy, source: Source, pp: str, global_batch: int,
                        *, shuffle_buffer: int, seed=None, cache=False,
                        skip: int = 0):
  """Per-replica batches through distribute_datasets_from_function; the
  first ``skip`` steps' batches are produced and dropped (a resumed run
  continues with the batch an uninterrupted one would see next)."""
  if global_batch % strategy.num_replicas_in_sync:
    raise ValueError(f"global batch {global_batch} is not divisible by the "
                     f"{strategy.num_replicas_in_sync} replicas")

  def dataset_fn(ctx):
    ds = make_dataset(source, pp, ctx.get_per_replica_batch_size(global_batch),
                      training=True, shuffle_buffer=shuffle_buffer,
                      input_context=ctx, seed=seed, cache=cache)
    return ds.skip(skip) if skip else ds
  return strategy.distribute_datasets_from_function(dataset_fn)
