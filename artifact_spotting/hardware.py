"""What the CPU can do, read from /proc/cpuinfo (used to warn about slow
settings and to name benchmark results by instruction set)."""

from __future__ import annotations

import platform

# Most capable first: the first one present names the machine's ISA.
ISA_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
  """{cpu, cpu_family, cpu_model, cpu_flags}: the first processor's name,
  family, model and which of ISA_FLAGS it has (best first); cpu_flags is None
  when the file cannot be read."""
  info = {"cpu": platform.processor() or "", "cpu_family": None,
          "cpu_model": None, "cpu_flags": None}
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return info
  info["cpu_flags"] = []
  for line in text.split("\n\n")[0].splitlines():
    key, _, value = line.partition(":")
    key, value = key.strip(), value.strip()
    if key == "model name":
      info["cpu"] = value
    elif key == "cpu family":
      info["cpu_family"] = int(value)
    elif key == "model":
      info["cpu_model"] = int(value)
    elif key == "flags":
      flags = set(value.split())
      info["cpu_flags"] = [f for f in ISA_FLAGS if f in flags]
  return info


def cpu_has_bf16_units(path: str = "/proc/cpuinfo"):
  """Whether the CPU has bfloat16 units (AVX512-BF16 or AMX-BF16); None when
  /proc/cpuinfo cannot be read."""
  flags = cpu_info(path)["cpu_flags"]
  return None if flags is None else any(f in flags for f in BF16_FLAGS)


def onednn_enabled() -> bool:
  """Whether TensorFlow runs its oneDNN CPU kernels in this process.

  TF turns them on by default only on CPUs with AVX512/AMX deep-learning
  features (TF_ENABLE_ONEDNN_OPTS=0/1 forces it). Which kernels are fast
  differs a lot between the two (artifact_spotting/models/blocks.py picks its
  gradient formulations by it). The query is TensorFlow's internal
  ``IsMklEnabled`` (no public API); False when it is not there.
  """
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return bool(_pywrap_util_port.IsMklEnabled())
