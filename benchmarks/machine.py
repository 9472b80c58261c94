"""The machine a benchmark ran on, recorded beside every figure.

CPU machines of the same name differ a lot here (one session's 2-core "AMD
EPYC" had AVX-512 with bfloat16 units, the next one's AVX2 only, with a
third of the bfloat16 matmul rate), so the record carries the CPU's family,
model and the vector/matrix ISA that decides TensorFlow's kernels, and
``isa_tag`` names result files by it.
"""

import os
import platform

from artifact_spotting.hardware import cpu_info


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


def machine_tag(m):
  """Name of a machine in result file names: 'gpu_<name>' or
  'cpu<cores>_<isa>' (e.g. cpu2_avx512_bf16)."""
  if m.get("gpu_name"):
    return f"gpu_{m['gpu_name']}"
  isa = isa_tag(m)
  return f"cpu{m['cores']}_{isa}" if isa else f"cpu{m['cores']}"
