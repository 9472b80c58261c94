r"""Ablation gaps against the training budget, from finished quality roots.

  python -m benchmarks.budget_curve --roots=/tmp/q3k,/tmp/q6k --rows=full,k,l

Each root is a ``benchmarks.quality`` root whose rows were trained with one
--spotter_steps (its budget) and otherwise the same settings. For every budget
and row this reads the folds-protocol evaluations (seed 0 and any seed
replicates) and writes ``results/budget_curve_fashion_mnist.{json,md}``: each
row's accuracy per layer, and each ablation row's paired gap to the full row
(per fold, the folds being the same; averaged over the seeds both rows have),
in fold stds of the two rows (the larger) and, where a row has seed
replicates, their spread if larger: the quantity the ablation target of
``benchmarks.quality`` holds against 3. Nothing is trained here.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import statistics
import time

from absl import app, flags

from benchmarks.machine import machine, write_report
from benchmarks.quality_plan import Options, ablation_dir, eval_path, row_name
from benchmarks.quality_report import per_fold

FLAGS = flags.FLAGS
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
# Settings that may differ between roots: the budget itself, bookkeeping, and
# the autoencoder's path (its checkpoint's bytes are compared instead).
VARYING = {("spotter", "steps"), ("seed",), ("train", "checkpoint_every"),
           ("autoencoder", "init_from")}


def define_flags():
  flags.DEFINE_list("roots", [], "Finished benchmarks.quality roots, one per budget.")
  flags.DEFINE_list("rows", ["full", "k", "l"], "Rows to compare; 'full' first.")
  flags.DEFINE_string("out_dir", "results", "Where the report goes.")
  flags.DEFINE_string("name", "budget_curve_fashion_mnist",
                      "Report name (.json, .md).")


def eval_names(root, row):
  """{seed: evaluation folder name} of ``row``'s evaluated runs in ``root``
  (quality names the full row 'ours', or 'ablation_full' when a longer
  headline run took the name 'ours': then the full row is 'ablation_full')."""
  out = {}
  # Any options: only the full row's seed 0 name depends on them, and that
  # one is looked for under both names.
  opts = Options()
  candidates = ["ablation_full", "ours"] if row == "full" else [row_name(opts, row)]
  for name in candidates:
    if os.path.exists(eval_path(root, name)):
      out[0] = name
      break
  seed = 1
  while os.path.exists(eval_path(root, row_name(opts, row, seed))):
    out[seed] = row_name(opts, row, seed)
    seed += 1
  return out


def _flatten(d, prefix=()):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def load_root(root, rows):
  """(budget, {row: {seed: eval result}}, pretraining config of the full row)."""
  runs, configs = {}, {}
  for row in rows:
    names = eval_names(root, row)
    if 0 not in names:
      raise ValueError(f"{root}: no finished evaluation of row {row!r} "
                       f"(looked for {root}/eval/<name>/eval_results.json)")
    runs[row] = {}
    for seed, name in names.items():
      with open(eval_path(root, name)) as f:
        runs[row][seed] = json.load(f)
      with open(os.path.join(ablation_dir(root, row, seed), "config.json")) as f:
        configs[(row, seed)] = json.load(f)
  budgets = {c["spotter"]["steps"] for c in configs.values()}
  if len(budgets) != 1:
    raise ValueError(f"{root}: rows trained with different spotter steps "
                     f"{sorted(budgets)}; one root must hold one budget")
  return budgets.pop(), runs, configs[("full", 0)]


def checkpoint_digest(workdir):
  """md5 over the files of ``workdir``'s checkpoints folder (None if absent)."""
  files = sorted(glob.glob(os.path.join(workdir, "checkpoints", "*")))
  if not files:
    return None
  h = hashlib.md5()
  for path in files:
    h.update(os.path.basename(path).encode())
    with open(path, "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def check_comparable(configs):
  """Raises when roots differ in anything but the budget (and seed), or their
  spotters started from different autoencoder checkpoints."""
  (root0, c0), rest = configs[0], configs[1:]
  flat0 = dict(_flatten(c0))
  ae0 = checkpoint_digest(c0["autoencoder"]["init_from"])
  for root, c in rest:
    flat = dict(_flatten(c))
    diff = sorted(".".join(k) for k in set(flat0) | set(flat)
                  if k not in VARYING and flat0.get(k) != flat.get(k))
    if checkpoint_digest(c["autoencoder"]["init_from"]) != ae0:
      diff.append("autoencoder checkpoint (autoencoder.init_from's files)")
    if diff:
      raise ValueError(f"{root} and {root0} differ in more than the budget: "
                       f"{', '.join(diff)}")


METRICS = ("linear", "knn")


def has_metric(runs, metric):
  return all(metric in r["folds"][l] for seeds in runs.values()
             for r in seeds.values() for l in LAYERS)


def row_stats(runs, row, layer, metric):
  """The row's fold mean (over seeds), seed-0 fold std, seed spread."""
  means = [statistics.mean(per_fold(r, layer, metric))
           for _, r in sorted(runs[row].items())]
  return {"mean": statistics.mean(means),
          "std": statistics.pstdev(per_fold(runs[row][0], layer, metric)),
          "seed_means": means,
          "seed_std": statistics.stdev(means) if len(means) > 1 else None}


def paired_gap(runs, row, layer, metric):
  """Full minus ``row``, fold by fold, over the seeds both have; in noise
  units: the larger of the two rows' fold stds and seed spreads."""
  seeds = sorted(set(runs["full"]) & set(runs[row]))
  diffs = [f - a for s in seeds
           for f, a in zip(per_fold(runs["full"][s], layer, metric),
                           per_fold(runs[row][s], layer, metric))]
  full = row_stats(runs, "full", layer, metric)
  other = row_stats(runs, row, layer, metric)
  floor = max(x for x in (full["std"], other["std"], full["seed_std"],
                          other["seed_std"]) if x is not None)
  gap = statistics.mean(diffs)
  return {"gap": gap, "fold_std_of_differences": statistics.pstdev(diffs),
          "folds_below_full": sum(d > 0 for d in diffs), "pairs": len(diffs),
          "seeds": seeds, "noise_floor": floor, "in_noise_units": gap / floor}


def build(roots, rows):
  if not rows or rows[0] != "full":
    raise ValueError(f"--rows must start with 'full', got {rows}")
  loaded = [(root, *load_root(root, rows)) for root in roots]
  check_comparable([(root, cfg) for root, _, _, cfg in loaded])
  steps = [b for _, b, _, _ in loaded]
  if len(set(steps)) != len(steps):
    raise ValueError(f"two roots hold the same budget: {dict(zip(roots, steps))}")
  budgets = []
  metrics = [m for m in METRICS if all(has_metric(runs, m) for _, _, runs, _ in loaded)]
  for root, b, runs, cfg in sorted(loaded, key=lambda x: x[1]):
    budgets.append({"spotter_steps": b,
                    "epochs": b * cfg["spotter"]["batch_size"] / 60000,
                    "root": root, "metrics": {}})
    for m in metrics:
      budgets[-1]["metrics"][m] = {
          "best_layer_of_full": max(
              LAYERS, key=lambda l: row_stats(runs, "full", l, m)["mean"]),
          "rows": {row: {l: row_stats(runs, row, l, m) for l in LAYERS}
                   for row in rows},
          "gaps": {row: {l: paired_gap(runs, row, l, m) for l in LAYERS}
                   for row in rows[1:]}}
  cfg = loaded[0][3]
  return {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
          "command": "python -m benchmarks.budget_curve --roots=" + ",".join(
              f"R{i}" for i in range(len(roots))) + f" --rows={','.join(rows)}",
          "settings": {"spotter_batch": cfg["spotter"]["batch_size"],
                       "spotter_lr": cfg["spotter"]["lr"],
                       "repair_lr": cfg["spotter"]["repair_lr"],
                       "drop_rate": cfg["spotter"]["drop_rate"],
                       "precision": cfg["train"]["precision"],
                       "resolution": cfg["resolution"]},
          "metrics": metrics, "budgets": budgets}


def markdown(report):
  s = report["settings"]
  m = report["machine"]
  rows = list(report["budgets"][0]["metrics"]["linear"]["rows"])
  lines = [
      "# Ablation gaps against the training budget (Fashion-MNIST folds protocol)", "",
      f"Machine: {m['cpu']}, {m['cores']} cores, TensorFlow {m['tensorflow']}; "
      f"{report['date']}. Reproduce: `{report['command']}` where each R is a "
      "finished `benchmarks.quality` root trained with that many "
      "--spotter_steps (same settings otherwise; checked).", "",
      f"Spotter batch {s['spotter_batch']}, Adam lr {s['spotter_lr']:g} (C) / "
      f"{s['repair_lr']:g} (R), linear decay to 1% over 90% of each run's steps "
      f"(so every budget ends its own schedule), drop rate {s['drop_rate']:g}, "
      f"{s['precision']}, {s['resolution']}x{s['resolution']} grayscale. "
      "Accuracy: mean over folds (and over seeds where a row has replicates) "
      "+- the seed-0 fold std. Gap: full minus the row, fold by fold on the "
      "same folds, averaged; in noise units: divided by the larger of the two "
      "rows' fold stds and seed spreads (the ablation target asks for more "
      "than 3); then how many (seed, fold) pairs have the row below full.", "",
      "## At the full row's best layer", "",
      "| metric | spotter steps (epochs) | layer | " + " | ".join(
          f"full - {r} (noise units)" for r in rows[1:]) + " |",
      "|" + " --- |" * (3 + len(rows) - 1)]
  for metric in report["metrics"]:
    for b in report["budgets"]:
      t = b["metrics"][metric]
      L = t["best_layer_of_full"]
      lines.append(f"| {metric} | {b['spotter_steps']} ({b['epochs']:.1f}) | {L} | "
                   + " | ".join(f"{t['gaps'][r][L]['gap']:+.4f} "
                                f"({t['gaps'][r][L]['in_noise_units']:.1f})"
                                for r in rows[1:]) + " |")
  for metric in report["metrics"]:
    lines += ["", f"## {metric}, every layer", "",
              "| spotter steps (epochs) | layer | " + " | ".join(rows) + " | " +
              " | ".join(f"full - {r} (noise units, pairs below full)"
                         for r in rows[1:]) + " |",
              "|" + " --- |" * (2 + len(rows) + len(rows) - 1)]
    for b in report["budgets"]:
      t = b["metrics"][metric]
      for layer in LAYERS:
        mark = " (best of full)" if layer == t["best_layer_of_full"] else ""
        cells = [f"{t['rows'][r][layer]['mean']:.4f} +- {t['rows'][r][layer]['std']:.4f}"
                 for r in rows]
        gaps = [f"{g['gap']:+.4f} ({g['in_noise_units']:.1f}, "
                f"{g['folds_below_full']}/{g['pairs']})"
                for g in (t["gaps"][r][layer] for r in rows[1:])]
        lines.append(f"| {b['spotter_steps']} ({b['epochs']:.1f}) | {layer}{mark} | "
                     + " | ".join(cells + gaps) + " |")
  lines += ["", "Seeds per row and budget: " + "; ".join(
      f"{b['spotter_steps']}: " + ", ".join(
          f"{r} {len(b['metrics']['linear']['rows'][r]['conv1']['seed_means'])}"
          for r in rows) for b in report["budgets"]) + "."]
  return lines


def main(argv):
  del argv
  if len(FLAGS.roots) < 1:
    raise app.UsageError("--roots: at least one finished quality root")
  report = build(FLAGS.roots, FLAGS.rows)
  print(write_report(FLAGS.out_dir, FLAGS.name, report, markdown(report)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
