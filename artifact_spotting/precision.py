"""Training precision: the Keras dtype policy a run computes in, and what
``train.precision="auto"`` picks on this machine (measured choices:
results/throughput_cpu2_avx512_bf16.md, results/throughput_cpu2_avx2.md)."""

from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import keras
import tensorflow as tf
from absl import logging

from artifact_spotting import hardware


@contextlib.contextmanager
def policy(name: str):
  """Layers built inside compute in ``name``'s dtype ("float32",
  "mixed_bfloat16", "mixed_float16"; variables stay float32); the global
  Keras policy is restored afterwards."""
  before = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(before)


def accelerator() -> Optional[str]:
  """"GPU" or "TPU" when TensorFlow sees one, else None (CPU only)."""
  for kind in ("TPU", "GPU"):
    if tf.config.list_logical_devices(kind):
      return kind
  return None


def auto_precision() -> Tuple[str, str]:
  """(precision, why) that train.precision="auto" picks on this machine:
  mixed_float16 on GPUs, mixed_bfloat16 on TPUs and on CPUs with bfloat16
  units, float32 on other CPUs."""
  kind = accelerator()
  if kind == "GPU":
    return "mixed_float16", "a GPU (TensorFlow's mixed-precision recipe for GPUs)"
  if kind == "TPU":
    return "mixed_bfloat16", "a TPU"
  if hardware.cpu_has_bf16_units():
    return "mixed_bfloat16", ("a CPU with bfloat16 units (adversarial step 1.46x "
                              "float32's, results/throughput_cpu2_avx512_bf16.md)")
  return "float32", ("a CPU without bfloat16 units (mixed_bfloat16 ran at 0.20x "
                     "float32's there, results/throughput_cpu2_avx2.md)")


def resolve_precision(requested: str, recorded: Optional[str] = None) -> str:
  """The precision a run trains in: ``requested`` unless it is "auto"; then
  ``recorded`` (what the workdir's config.json says the run trained in, so
  a resumed run keeps its precision) or, for a new run, auto_precision()."""
  if requested != "auto":
    return requested
  if recorded is not None:
    return recorded
  return auto_precision()[0]


def warn_slow_precision(precision: str) -> Optional[str]:
  """The warning logged for mixed_bfloat16 on a CPU without bf16 units."""
  if precision != "mixed_bfloat16":
    return None
  if accelerator() is not None:
    return None
  if hardware.cpu_has_bf16_units() is not False:
    return None
  msg = ("train.precision=mixed_bfloat16 on a CPU without bfloat16 units "
         "(no avx512_bf16/amx_bf16 in /proc/cpuinfo): TensorFlow emulates "
         "bfloat16 there; the adversarial step measured 0.20x its float32 "
         "speed, about 5x slower (results/throughput_cpu2_avx2.md). Use "
         "float32 or auto on this machine.")
  logging.warning(msg)
  return msg


def of_config(config) -> str:
  """The precision ``config`` trains in (train.precision resolved; a config
  without the field: float32)."""
  return resolve_precision(config.train.get("precision", "float32"))
