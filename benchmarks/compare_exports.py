r"""Whether two exports (trainers.export version folders) are the same model:
every variable of the SavedModel bit for bit, and every signature's outputs on
the same fixed images (and keep-masks) bit for bit.

  python -m benchmarks.compare_exports /tmp/a/4 /tmp/b/4

Prints one line per difference and "identical" when there is none; exits 1
when the exports differ. Used to show that a workdir written by an older tree
exports the same SavedModel under the current one
(results/refactor_fingerprints_cpu2_avx2.md).
"""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np


def _digest(value) -> str:
  return hashlib.sha256(np.asarray(value).tobytes()).hexdigest()[:16]


def variables(path: str) -> dict:
  """{key in the SavedModel's variables checkpoint: digest of its value}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
  return {k: _digest(reader.get_tensor(k))
          for k in sorted(reader.get_variable_to_shape_map())
          if not k.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def outputs(loaded, seed: int = 0) -> dict:
  """{signature/output: digest} on fixed random images (and keep-masks)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  out = {}
  for name, fn in sorted(loaded.signatures.items()):
    specs = fn.structured_input_signature[1]
    args = {}
    for key, spec in sorted(specs.items()):
      if spec.dtype == tf.uint8:  # images of any size: the model resizes
        shape = [3, 40, 40, spec.shape[-1]]
        args[key] = tf.constant(rng.integers(0, 256, shape), tf.uint8)
      else:  # a keep-mask on the model's grid
        shape = [3] + spec.shape.as_list()[1:]
        args[key] = tf.constant(rng.random(shape) > 0.5, spec.dtype)
    for key, value in sorted(fn(**args).items()):
      out[f"{name}/{key}"] = _digest(value.numpy())
  return out


def compare(a: str, b: str) -> list:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  lines = []
  for what, x, y in (
      ("variable", variables(a), variables(b)),
      ("output", outputs(tf.saved_model.load(a)), outputs(tf.saved_model.load(b)))):
    for key in sorted(set(x) | set(y)):
      if x.get(key) != y.get(key):
        lines.append(f"{what} {key}: {x.get(key)} vs {y.get(key)}")
  return lines


def main(argv):
  """Compares the two exports named on the command line."""
  if len(argv) != 3:
    print("usage: python -m benchmarks.compare_exports EXPORT_A EXPORT_B", file=sys.stderr)
    return 2
  lines = compare(argv[1], argv[2])
  for line in lines:
    print("DIFFERS", line)
  print("identical" if not lines else f"{len(lines)} differences")
  return 1 if lines else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
