"""tf.distribute strategy from config.distribute (the only place that knows)."""

from __future__ import annotations

import json
import os

import tensorflow as tf


def make_strategy(cfg):
  """default | one_device | mirrored | multi_worker | tpu."""
  name = cfg.strategy
  devices = list(cfg.get("devices", ()) or ())
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(devices[0] if devices else "/cpu:0")
  if name == "mirrored":
    return tf.distribute.MirroredStrategy(devices or None)
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=cfg.get("tpu", "") or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"config.distribute.strategy={name!r} is unknown; use one of "
                   "default | one_device | mirrored | multi_worker | tpu")


def is_chief(strategy) -> bool:
  """True on the task that writes checkpoints, summaries and the config."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type is None:
    return True
  if task_type == "chief":
    return True
  cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
  return task_type == "worker" and task_id == 0 and "chief" not in cluster


def task_name(strategy) -> str:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or resolver.task_type is None:
    return "local"
  return f"{resolver.task_type}_{resolver.task_id}"
