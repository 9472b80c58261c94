"""tf.distribute strategy from config.distribute (the only place that knows)."""

from __future__ import annotations

import json
import os

import tensorflow as tf


def split_cpu(n: int):
  """Splits the host CPU into ``n`` logical devices (/cpu:0../cpu:n-1).

  TensorFlow fixes its logical devices when its runtime initialises (the
  first op, tf.data or device query that needs them), so this must run
  before that. Raises ValueError when the runtime already has a different
  number of logical CPUs.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * n)
  except RuntimeError as e:
    have = len(tf.config.list_logical_devices("CPU"))
    if have != n:
      raise ValueError(
          f"config.distribute.logical_cpus={n}: TensorFlow's runtime is "
          f"already initialised with {have} logical CPU device(s) in this "
          f"process, and they cannot be changed afterwards; set logical_cpus "
          f"before anything runs a TensorFlow op, or start a new process") from e


def make_strategy(cfg):
  """default | one_device | mirrored | multi_worker | tpu.

  mirrored with ``logical_cpus=N`` (> 0) splits the host CPU into N logical
  devices first and mirrors over them (or over ``devices`` when given): N
  replicas on one CPU, e.g. to run multi-replica code paths without GPUs.
  """
  name = cfg.strategy
  devices = list(cfg.get("devices", ()) or ())
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(devices[0] if devices else "/cpu:0")
  if name == "mirrored":
    cpus = int(cfg.get("logical_cpus", 0) or 0)
    if cpus:
      split_cpu(cpus)
      devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
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


def device_kind(strategy) -> str:
  """"CPU", "GPU" or "TPU": the kind of device the strategy's replicas run
  on (the most capable one if they are mixed). The default strategy runs on
  the first GPU when there is one."""
  try:
    devices = strategy.extended.worker_devices
  except (RuntimeError, NotImplementedError):  # the default strategy
    devices = ()
  kinds = {tf.DeviceSpec.from_string(d).device_type for d in devices}
  if not kinds:
    kinds = {"GPU"} if tf.config.list_logical_devices("GPU") else {"CPU"}
  for kind in ("TPU", "GPU", "CPU"):
    if kind in kinds:
      return kind
  return "CPU"


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


# jit_compile="auto" per kind of device the replicas run on.
AUTO_JIT = {
    # XLA makes both steps slower on CPUs, on one device and with replicas
    # on logical CPUs (docs/performance.md; results/throughput_*.md).
    "CPU": "off",
    # No GPU measurement: off until one shows XLA to be the faster choice.
    "GPU": "off",
    # TPUStrategy compiles every replica step with XLA by itself; the
    # trainer's own XLA compile of the compute part would add nothing.
    "TPU": "off",
}


def resolve_jit(mode: str, strategy) -> str:
  """``mode`` ("off", "on", "spotter") as it is; ``"auto"`` -> AUTO_JIT's
  choice for the kind of device ``strategy``'s replicas run on
  (device_kind: "CPU", "GPU" or "TPU"). The table gives "off"
  for every kind (reasons in AUTO_JIT), so the strategy changes the answer
  only where an entry differs.
  """
  if mode != "auto":
    return mode
  return AUTO_JIT[device_kind(strategy)]
