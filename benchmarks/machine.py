"""The machine a benchmark ran on, recorded beside every figure.

CPU machines of the same name differ a lot here (one session's 2-core "AMD
EPYC" had AVX-512 with bfloat16 units, the next one's AVX2 only, with a
third of the bfloat16 matmul rate), so the record carries the CPU's family,
model and the vector/matrix ISA that decides TensorFlow's kernels, and
``isa_tag`` names result files by it.
"""

import json
import os
import platform
import statistics
import time

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


def matmul_rate(dtype: str, n: int = 2048, seconds: float = 3.0) -> float:
  """FLOP/s of an n x n x n matmul in ``dtype`` (median of timed runs)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  a = tf.random.normal([n, n], dtype=tf.float32)
  a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)

  @tf.function
  def many(k):
    acc = tf.zeros([], tf.float32)
    for _ in tf.range(k):
      acc += tf.cast(tf.matmul(a, b)[0, 0], tf.float32)
    return acc
  many(tf.constant(2)).numpy()
  rates = []
  reps = 4
  deadline = time.perf_counter() + seconds
  while time.perf_counter() < deadline or len(rates) < 3:
    t0 = time.perf_counter()
    many(tf.constant(reps)).numpy()
    rates.append(2 * n ** 3 * reps / (time.perf_counter() - t0))
  return statistics.median(rates)


MATMUL_SIZES = (1024, 2048, 4096)


def best_matmul_rate(dtype):
  """The machine's matmul rate: the best of a few square sizes (on one AVX2
  CPU the smallest was the fastest, so one size under-states the peak)."""
  return max(matmul_rate(dtype, n, seconds=2.0) for n in MATMUL_SIZES)


def write_report(out_dir, name, report, lines):
  """``out_dir/name.json`` (the report) and ``.md`` (``lines``); the prefix."""
  os.makedirs(out_dir, exist_ok=True)
  prefix = os.path.join(out_dir, name)
  with open(prefix + ".json", "w") as f:
    json.dump(report, f, indent=2)
  with open(prefix + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  return prefix
