r"""Fingerprints of what training does: every shipped pretraining config and
every ablation row, a few steps of both phases through the real binary, then a
hash of every variable in the final checkpoint (weights, batch-norm moving
statistics, optimizer slots and step counters).

  python -m benchmarks.fingerprints --out=/tmp/fp_before.json
  # ... change code that must not change behaviour ...
  python -m benchmarks.fingerprints --out=/tmp/fp_after.json --compare=/tmp/fp_before.json

Each run has ``train.deterministic=True`` (op determinism, a seeded input) and
float32 precision, so two runs of the same code on the same machine give
bit-identical checkpoints; a difference after a refactor names the run and
the variables that moved. Data: generated Fashion-MNIST-format IDX files for
the IDX configs, a generated image folder for the image-folder config, and
``tfds.testing.mock_data`` for the tfds configs (the same stand-ins as
tests/test_every_config.py). Checkpoints of another machine kind may differ in
the last bits: compare fingerprints from one machine only.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks.checkpoint_hash import checkpoint_hashes, compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("out", "", "Write the fingerprints (JSON) here.")
flags.DEFINE_string("compare", "", "Fingerprints to compare against; exit 1 "
                    "when any run differs.")
flags.DEFINE_list("only", [], "Run only these run names (default: all).")
flags.DEFINE_integer("steps", 3, "Steps of each phase.")
flags.DEFINE_list("allow_new", [], "With --compare: variables whose key starts "
                  "with one of these are allowed to be new (e.g. steps/, what "
                  "a change adds to the train state); any other new, missing "
                  "or changed variable is a difference.")

MOCK_EXAMPLES = 24
# Everything that makes a run fast and reproducible; the model is the config's.
COMMON = ["train.deterministic=True", "train.precision=float32",
          "train.checkpoint_every=1000", "train.summary_every=1000",
          "train.log_every=1000"]


def idx_dir(root):
  import numpy as np
  from artifact_spotting.data.sources import write_idx  # pylint: disable=g-import-not-at-top
  path = os.path.join(root, "idx")
  if not os.path.isdir(path):
    os.makedirs(path)
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("t10k", 100)):
      write_idx(os.path.join(path, f"{split}-images-idx3-ubyte"),
                 rng.integers(0, 256, (n, 28, 28)))
      write_idx(os.path.join(path, f"{split}-labels-idx1-ubyte"),
                 rng.integers(0, 10, (n,)))
  return path


def image_folder(root):
  import numpy as np
  import tensorflow as tf
  path = os.path.join(root, "images")
  if not os.path.isdir(path):
    os.makedirs(path)
    rng = np.random.default_rng(1)
    for i in range(12):
      h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
      image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      with open(os.path.join(path, f"img{i}.png"), "wb") as f:
        f.write(tf.io.encode_png(image).numpy())
  return path


def runs():
  """name -> (config spec, extra overrides)."""
  from artifact_spotting import config as config_lib
  out = {}
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    name = os.path.basename(path)[:-3]
    if name in ("__init__", "datasets"):
      continue
    out[name] = (f"configs/{name}.py:smoke", [])
  out["fashion_mnist_full_size"] = ("configs/fashion_mnist.py", [])
  out["fashion_mnist_grid8"] = ("configs/fashion_mnist.py:grid=8", [])
  out["fashion_mnist_width2"] = ("configs/fashion_mnist.py:width=2", [])
  for row in config_lib.ABLATIONS:
    out[f"tiny_{row}"] = (f"configs/fashion_mnist.py:tiny,ablation={row}", [])
  return out


def _data_flags(spec, root):
  module = spec.split(":")[0][:-3].replace("/", ".")
  arg = spec.split(":")[1] if ":" in spec else ""
  import importlib
  dataset = importlib.import_module(module).get_config(arg).dataset
  if dataset.source == "idx":
    return [f"dataset.path={idx_dir(root)}", "dataset.auto_install=False",
            "dataset.tfds_fallback=False"], False
  if dataset.source == "image_folder":
    return [f"dataset.path={image_folder(root)}"], False
  return [], True


def fingerprint(name, spec, extra, root):
  workdir = os.path.join(root, name)
  data, uses_tfds = _data_flags(spec, root)
  overrides = COMMON + data + extra + [
      f"autoencoder.steps={FLAGS.steps}", f"spotter.steps={FLAGS.steps}"]
  args = ["trainers.pretrain", f"--config={spec}", f"--workdir={workdir}"] + [
      f"--config.{o}" for o in overrides]
  if uses_tfds:
    cmd = [sys.executable, os.path.join(ROOT, "tests", "mock_tfds_main.py"),
           str(MOCK_EXAMPLES)] + args
  else:
    cmd = [sys.executable, "-m"] + args
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
  hashes = checkpoint_hashes(workdir)
  total = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]
  return {"config": spec, "overrides": overrides, "total": total, "variables": hashes}


def main(argv):
  del argv
  sys.path.insert(0, ROOT)
  from benchmarks.machine import machine
  selected = {n: r for n, r in runs().items() if not FLAGS.only or n in FLAGS.only}
  results = {}
  t0 = time.time()
  with tempfile.TemporaryDirectory(prefix="fingerprints_") as root:
    for name, (spec, extra) in selected.items():
      results[name] = fingerprint(name, spec, extra, root)
      print(f"{name}: {results[name]['total']} "
            f"({len(results[name]['variables'])} variables)", flush=True)
  out = {"machine": machine(), "seconds": round(time.time() - t0),
         "steps": FLAGS.steps, "runs": results}
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(out, f, indent=1, sort_keys=True)
  if FLAGS.compare:
    with open(FLAGS.compare) as f:
      old = json.load(f)["runs"]
    lines = compare(results, {n: r for n, r in old.items() if n in results},
                    FLAGS.allow_new)
    for line in lines:
      print("DIFFERS", line)
    print(f"{len(results) - len(lines)}/{len(results)} runs identical")
    if lines:
      sys.exit(1)


if __name__ == "__main__":
  app.run(main)
