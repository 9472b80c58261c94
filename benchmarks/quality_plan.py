"""What a benchmarks.quality root holds: the runs, the evaluations, and where.

The settings of a quality run (``Options``, benchmarks.quality's flags) decide
which training runs and evaluations a root gets and what they are called;
benchmarks/quality.py runs them, benchmarks/quality_report.py reads them back.
Nothing here reads flags or touches the disk.
"""

from __future__ import annotations

import dataclasses
import os

CONFIG = "configs/fashion_mnist.py"
EVAL_CONFIG = "configs/eval/fashion_mnist_folds.py"
NO_KNN = ["--config.knn.enabled=False"]


@dataclasses.dataclass(frozen=True)
class Options:
  """The settings of a quality run; the defaults are benchmarks.quality's
  (each field is the flag of the same name, described there)."""
  ae_steps: int = 1000
  spotter_steps: int = 700
  ours_steps: int = 0
  ablations: tuple[str, ...] = ("full", "a", "g", "k", "l")
  config_arg: str = ""
  override: tuple[str, ...] = ()
  deterministic: bool = False
  row_seeds: int = 1
  replicate: tuple[str, ...] = ()
  ablation_knn: bool = True
  random_seeds: int = 3
  supervised_max_epochs: int = 60
  peer: bool = True


def done_marker(workdir):
  return os.path.join(workdir, "train_done.json")


def config_spec(opts, arg=""):
  """``configs/fashion_mnist.py:<arg>``, with --config_arg added."""
  return f"{CONFIG}:" + ",".join(filter(None, (arg, opts.config_arg)))


def autoencoder_dir(root):
  return os.path.join(root, "pretrain", "autoencoder")


def ablation_dir(root, row, seed=0):
  return os.path.join(root, "pretrain", row if not seed else f"{row}_s{seed}")


def row_seeds(opts, row=None):
  """The training seeds of ``row`` (of any row when None)."""
  if row is not None and opts.replicate and row not in opts.replicate:
    return range(1)
  return range(max(opts.row_seeds, 1))


def row_runs(opts):
  """(row, seed) of every ablation run: all rows' seed 0 first, then the
  replicates, so that a partial run has a complete first seed."""
  return [(row, seed) for seed in row_seeds(opts) for row in opts.ablations
          if seed in row_seeds(opts, row)]


def ours_long(opts):
  return opts.ours_steps > opts.spotter_steps


def ours_dir(root, opts):
  if ours_long(opts):
    return os.path.join(root, "pretrain", f"full_{opts.ours_steps}")
  return ablation_dir(root, "full")


def row_name(opts, row, seed=0):
  """The evaluation name of an ablation row (trained with ``seed``); only
  the full row's seed 0 depends on ``opts`` (whether ours is a longer run)."""
  if seed:
    return f"ablation_{row}_s{seed}"
  if row == "full":
    return "ablation_full" if ours_long(opts) else "ours"
  return f"ablation_{row}"


def ours_steps(opts):
  return max(opts.ours_steps, opts.spotter_steps)


def peer_dir(root):
  return os.path.join(root, "rotnet")


def models(root, opts):
  """name -> (linear_eval flags, config argument, file that must exist first).

  Ablation rows get the folds protocol (linear, and kNN unless
  --noablation_knn), random seeds other than 0 its linear classifiers only;
  ours and the baselines also the full-label probe."""
  out = {}
  out["ours"] = ([f"--workdir={ours_dir(root, opts)}"], "",
                 done_marker(ours_dir(root, opts)))
  for row, seed in row_runs(opts):
    if row_name(opts, row, seed) != "ours":
      wd = ablation_dir(root, row, seed)
      out[row_name(opts, row, seed)] = ([f"--workdir={wd}"] + (
          [] if opts.ablation_knn else NO_KNN), ":folds_only",
                                        done_marker(wd))
  for seed in range(opts.random_seeds):
    out[f"random_seed{seed}"] = (
        ["--features=random", f"--pretrain_config={config_spec(opts)}", f"--seed={seed}"]
        + ([] if seed == 0 else NO_KNN), "" if seed == 0 else ":folds_only", None)
  out["autoencoder"] = (["--features=autoencoder",
                         f"--workdir={autoencoder_dir(root)}"], "",
                        done_marker(autoencoder_dir(root)))
  out["pixels"] = (["--features=pixels"], "", None)
  if opts.peer:
    out["rotnet"] = (["--features=keras",
                      f"--keras_file={os.path.join(peer_dir(root), 'final.keras')}"],
                     "", done_marker(peer_dir(root)))
  # The epoch chosen on held-out training images (never the test split).
  keras_file = os.path.join(root, "supervised", "best.keras")
  out["supervised"] = (["--features=keras", f"--keras_file={keras_file}"], "",
                       done_marker(os.path.join(root, "supervised")))
  return out


def eval_path(root, name):
  return os.path.join(root, "eval", name, "eval_results.json")
