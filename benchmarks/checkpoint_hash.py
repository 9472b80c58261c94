"""Hashes of every variable in a workdir's newest checkpoint, and the comparison
of two sets of them (shared by benchmarks/fingerprints.py and
benchmarks/quality.py's archive; no flags)."""

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


def compare(new, old, allow_new=()):
  """Lines naming every run and variable that differ (empty: identical);
  variables only in ``new`` whose key starts with one of ``allow_new`` are
  no difference."""
  lines = []
  for name in sorted(set(new) | set(old)):
    if name not in new or name not in old:
      lines.append(f"{name}: only in {'new' if name in new else 'old'}")
      continue
    a, b = ({k: v for k, v in r[name]["variables"].items()
             if not k.startswith("save_counter")} for r in (new, old))
    a = {k: v for k, v in a.items() if k in b or not k.startswith(tuple(allow_new))}
    if a == b:
      continue
    moved = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    lines.append(f"{name}: {len(moved)} variables differ, "
                 f"{len(set(a) - set(b))} new, {len(set(b) - set(a))} gone; "
                 f"e.g. {(moved or sorted(set(a) ^ set(b)))[:3]}")
  return lines
