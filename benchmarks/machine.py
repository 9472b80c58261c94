"""The machine a benchmark ran on, recorded beside every figure."""

import os
import platform


def machine():
  cpu = platform.processor() or ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "tensorflow": tf.__version__,
          "gpus": len(tf.config.list_physical_devices("GPU"))}
