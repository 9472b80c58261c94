"""The machine a benchmark ran on, recorded beside every figure.

CPU machines of the same name differ a lot here (one session's 2-core "AMD
EPYC" had AVX-512 with bfloat16 units, the next one's AVX2 only, with a
third of the bfloat16 matmul rate), so the record carries the CPU's family,
model and the vector/matrix ISA that decides TensorFlow's kernels, and
``isa_tag`` names result files by it.
"""

import os
import platform

# Most capable first: the first one present names the machine's ISA.
ISA_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def cpu_info(path="/proc/cpuinfo"):
  info = {"cpu": platform.processor() or "", "cpu_family": None,
          "cpu_model": None, "cpu_flags": []}
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return info
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


def isa_tag(m):
  """'avx512_bf16', 'avx2', ... (the best ISA flag), '' when unknown."""
  flags = m.get("cpu_flags") or []
  return flags[0] if flags else ""


def machine():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  m = cpu_info()
  m.update({"cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "gpus": len(tf.config.list_physical_devices("GPU"))})
  return m
