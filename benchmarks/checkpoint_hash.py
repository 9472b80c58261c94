"""A hash of every variable in a workdir's newest checkpoint (shared by
benchmarks/fingerprints.py and benchmarks/quality.py's archive; no flags)."""

from __future__ import annotations

import hashlib
import os


def checkpoint_hashes(workdir):
  """{variable key: sha256 of its value} of the newest checkpoint."""
  import tensorflow as tf
  path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  if path is None:
    raise RuntimeError(f"no checkpoint under {workdir}")
  reader = tf.train.load_checkpoint(path)
  out = {}
  for key in sorted(reader.get_variable_to_shape_map()):
    # The object graph, and how many saves the run made (one more when it
    # was stopped by a signal and resumed): not the run's state.
    if key.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter")):
      continue
    value = reader.get_tensor(key)
    digest = hashlib.sha256(getattr(value, "tobytes", lambda: repr(value).encode())())
    out[key] = digest.hexdigest()[:16]
  return out
