r"""The quality benchmark's report: what benchmarks/quality.py's evaluations
say, as numbers (.json), prose and tables (.md) and a plot (.png).

``write(root, out, opts)`` reads the evaluations (and the training runs'
markers, configs and summaries) of a quality root run with ``opts``
(benchmarks/quality_plan.py's Options, benchmarks.quality's flags) and writes
``out.{json,md,png}``; ``build_report`` and ``write_markdown`` are its two
halves, the figures and their prose. Nothing here reads flags: the same
root and options give the same report, byte for byte, but for the machine
and the date (arguments, today's by default).
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import time

from benchmarks.machine import isa_tag, machine
from benchmarks.quality_plan import (ablation_dir, eval_path, models, ours_dir,
                                     ours_steps, row_name, row_runs, row_seeds)

# The command a report names when none is given (the CLI gives its own).
COMMAND = "python -m benchmarks.quality"


def load_results(root, opts):
  """name -> eval_results.json of every evaluation of ``opts`` found in
  ``root``."""
  out = {}
  for name in models(root, opts):
    path = eval_path(root, name)
    if os.path.exists(path):
      with open(path) as f:
        out[name] = json.load(f)
  return out


def per_layer(result):
  """{layer: {mean, std, knn_mean, knn_std, full}} of one linear_eval result."""
  table = {}
  for layer, r in result.get("folds", {}).items():
    table[layer] = {"mean": r["linear"]["mean"], "std": r["linear"]["std"],
                    "dims": r["dims"]}
    if "knn" in r:
      table[layer].update(knn_mean=r["knn"]["mean"], knn_std=r["knn"]["std"])
    if "full" in result:
      table[layer]["full"] = result["full"]["accuracy"][layer]
  return table


def combine_seeds(tables):
  """The 'random' model: per layer, mean over seeds of the fold means; std
  over every (seed, fold) accuracy; plus the best seed."""
  out = {}
  for layer in tables[0][1]:
    accs = [a for _, t, r in tables for a in per_fold(r, layer)]
    knns = [a for _, t, r in tables
            for a in r["folds"][layer].get("knn", {}).get("per_fold", [])]
    means = [t[layer]["mean"] for _, t, _ in tables]
    out[layer] = {"mean": sum(means) / len(means),
                  "std": float(_std(accs)), "best_seed_mean": max(means),
                  "best_seed_std": tables[means.index(max(means))][1][layer]["std"],
                  "dims": tables[0][1][layer]["dims"]}
    if knns:  # from the seeds evaluated with kNN
      out[layer].update(knn_mean=sum(knns) / len(knns), knn_std=float(_std(knns)))
    full = [t[layer].get("full") for _, t, _ in tables if "full" in t[layer]]
    if full:
      out[layer]["full"] = full[0]
  return out


def _std(values):
  m = sum(values) / len(values)
  return (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5


def best(table):
  layer = max(table, key=lambda k: table[k]["mean"])
  return layer, table[layer]


def build_report(root, opts, command=COMMAND, machine_info=None, date=None):
  """The report of ``root``'s evaluations (a quality run with ``opts``), as
  written to its .json (less ``ablation_tables``, which ``write`` adds).
  ``command``: the command line that asked for it; ``machine_info`` and
  ``date``: benchmarks.machine.machine() and today unless given."""
  results = load_results(root, opts)
  # Ours and every baseline are required; ablation rows not evaluated yet are
  # listed as missing (a partial report, its ablation target "not measured").
  missing = [n for n in models(root, opts) if n not in results
             and not n.startswith("ablation_")]
  if missing:
    raise RuntimeError(f"evaluations missing for {missing}; run the evaluate stage")
  tables = {n: per_layer(r) for n, r in results.items()}
  seeds = [(n, tables[n], results[n]) for n in sorted(tables) if n.startswith("random_seed")]
  report_models = {"ours": tables["ours"], "random": combine_seeds(seeds),
                   "autoencoder": tables["autoencoder"], "pixels": tables["pixels"],
                   "supervised": tables["supervised"]}
  if PEER in tables:
    report_models[PEER] = tables[PEER]
  for n, t, _ in seeds:
    report_models[n] = t
  probes = probe_tables(report_models)
  layer, ours = best(tables["ours"])
  rand = report_models["random"][layer]
  sup = tables["supervised"][layer]
  ae_layer, ae = best(tables["autoencoder"])
  gap = closure(ours["mean"], rand["mean"], sup["mean"])
  per_layer_closure = {
      l: closure(tables["ours"][l]["mean"], report_models["random"][l]["mean"],
                 tables["supervised"][l]["mean"])
      for l in tables["ours"] if l in tables["supervised"]}
  best_of = lambda t: max(v["mean"] for v in t.values())
  best_vs_best = closure(best_of(tables["ours"]), best_of(report_models["random"]),
                         best_of(tables["supervised"]))
  ae_vs_best = closure(ae["mean"], best_of(report_models["random"]),
                       best_of(tables["supervised"]))
  margin_random = (ours["mean"] - rand["best_seed_mean"]) / max(ours["std"], rand["best_seed_std"])
  margin_ae = (ours["mean"] - ae["mean"]) / max(ours["std"], ae["std"])
  ablations, ablations_missing = {}, []
  for row in opts.ablations:
    name = row_name(opts, row)
    if name not in tables:
      ablations_missing.append(row)
      continue
    l, r = best(tables[name])
    ablations[row] = {"best_layer": l, "mean": r["mean"], "std": r["std"],
                      f"at_{layer}": tables[name][layer]["mean"],
                      f"at_{layer}_std": tables[name][layer]["std"]}
  ablations_missing += [f"{row}_s{s}" for row, s in row_runs(opts)
                        if s and row in ablations and row_name(opts, row, s) not in tables]
  # kNN at the layer where ours' kNN is best (rows evaluated with kNN).
  knn_layer = max(tables["ours"], key=lambda k: tables["ours"][k].get("knn_mean", 0))
  for row, r in ablations.items():
    t = tables[row_name(opts, row)][knn_layer]
    if "knn_mean" in t:
      r["knn_layer"], r["knn_mean"], r["knn_std"] = knn_layer, t["knn_mean"], t["knn_std"]
  for row, r in ablations.items():
    if row != "full" and "full" in ablations:
      full = ablations["full"]
      r["below_full_in_stds"] = _below_in_stds(full, r, "mean", "std")
      if "knn_mean" in r and "knn_mean" in full:
        r["knn_below_full_in_stds"] = _below_in_stds(full, r, "knn_mean", "knn_std")
  _seed_statistics(ablations, results, layer, opts)
  for row, r in ablations.items():
    game = _game_at_end(ablation_dir(root, row))
    if game:
      r["game_at_end"] = game
  with open(os.path.join(ours_dir(root, opts), "config.json")) as f:
    pre = json.load(f)
  markers = done_markers(root)
  report = {
      "machine": machine() if machine_info is None else machine_info,
      "date": time.strftime("%Y-%m-%d") if date is None else date,
      "command": command,
      "budget": {
          "autoencoder_steps": opts.ae_steps,
          "autoencoder_batch": pre["autoencoder"]["batch_size"],
          "spotter_steps": opts.spotter_steps,
          "ours_spotter_steps": ours_steps(opts),
          "spotter_batch": pre["spotter"]["batch_size"],
          "spotter_lr": pre["spotter"]["lr"],
          "repair_lr": pre["spotter"]["repair_lr"],
          "drop_rate": pre["spotter"]["drop_rate"],
          "config_arg": opts.config_arg,
          "overrides": list(opts.override),
          "row_seeds": max(opts.row_seeds, 1),
          "replicated_rows": [r for r in opts.ablations if len(row_seeds(opts, r)) > 1],
          "supervised_max_epochs": opts.supervised_max_epochs,
          "full_probe": {k: results["ours"]["full"].get(k) for k in (
              "max_epochs", "patience", "validation_size", "train_images")},
          "resolution": pre["resolution"],
          "train_seconds": _train_seconds(markers),
      },
      "protocol": results["ours"]["folds_setup"],
      "supervised_bound": supervised_bound(root),
      "best_layer": layer, "gap_closure": gap,
      "closure_per_layer": per_layer_closure,
      "closure_best_vs_best": best_vs_best,
      "autoencoder_closure_best_vs_best": ae_vs_best,
      "margin_over_best_random_seed_in_stds": margin_random,
      "margin_over_autoencoder_in_stds": margin_ae,
      "autoencoder_best_layer": ae_layer,
      "headline_probe": HEADLINE_PROBE,
      "probes": probes,
      "targets": {
          "beats_random_and_autoencoder_by_3_std": bool(margin_random > 3 and margin_ae > 3),
          # None: the peer was not trained (--nopeer).
          "beats_peer_by_3_std_under_every_probe": (
              bool(all(p["ours_vs_peer"]["in_noise_units"] > 3 for p in probes.values()))
              if all("ours_vs_peer" in p for p in probes.values()) else None),
          "full_probe_best_vs_best_closure_at_least_0.71": (
              bool(probes["full"]["closure_best_vs_best"] >= 0.71)
              if "full" in probes else None),
          "best_vs_best_closure_at_least_0.71": bool(best_vs_best >= 0.71),
          # None: not measured (a row or the full row was not evaluated).
          "k_and_l_clearly_below_full": _ablation_verdict(ablations, {
              row for row, s in row_runs(opts) if row_name(opts, row, s) not in tables}),
      },
      "models": report_models,
      "ablations": ablations,
      "ablations_missing": ablations_missing,
      "provenance": provenance(root, markers, results),
  }
  return report


# The probes every model is read with: (name, value key, spread key or None).
PROBES = (("full", "full", None), ("linear", "mean", "std"),
          ("knn", "knn_mean", "knn_std"))
HEADLINE_PROBE = "full"
PEER = "rotnet"


def probe_tables(report_models):
  """Per probe: every model's value per layer, its best layer, ours' closure
  per layer and best layer against best layer, and ours against the peer at
  each one's best layer (in fold stds of the linear probe where the probe
  itself has no spread)."""
  out = {}
  for probe, key, spread in PROBES:
    models_ = {name: {l: v[key] for l, v in t.items() if key in v}
               for name, t in report_models.items()
               if not name.startswith("random_seed")}
    models_ = {n: t for n, t in models_.items() if t}
    if not {"ours", "random", "supervised"} <= set(models_):
      continue
    best_layer = {n: max(t, key=t.get) for n, t in models_.items()}
    best_of = lambda n: models_[n][best_layer[n]]
    ours, rand, sup = models_["ours"], models_["random"], models_["supervised"]
    entry = {"models": models_, "best_layer": best_layer,
             "closure_per_layer": {l: closure(ours[l], rand[l], sup[l])
                                   for l in ours if l in rand and l in sup},
             "closure_best_vs_best": closure(best_of("ours"), best_of("random"),
                                             best_of("supervised"))}
    if "autoencoder" in models_:
      entry["autoencoder_closure_best_vs_best"] = closure(
          best_of("autoencoder"), best_of("random"), best_of("supervised"))
    if PEER in models_:
      unit_key = spread or "std"
      unit = max(report_models["ours"][best_layer["ours"]][unit_key],
                 report_models[PEER][best_layer[PEER]][unit_key])
      entry["ours_vs_peer"] = {
          "ours": best_of("ours"), "peer": best_of(PEER),
          "difference": best_of("ours") - best_of(PEER),
          "noise_unit": unit, "noise_unit_from": (probe if spread else "linear"),
          "in_noise_units": (best_of("ours") - best_of(PEER)) / max(unit, 1e-9),
          "peer_closure_best_vs_best": closure(best_of(PEER), best_of("random"),
                                               best_of("supervised"))}
    out[probe] = entry
  return out


def closure(value, random, bound):
  """The share of the random-to-bound gap that ``value`` closes."""
  return (value - random) / max(bound - random, 1e-9)


def supervised_bound(root):
  """How the supervised bound was chosen, from its finetune_results.json:
  the epoch picked on held-out training images, how many ran, its held-out
  and test accuracies; None for a bound trained without a held-out choice."""
  path = os.path.join(root, "supervised", "finetune_results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    r = json.load(f)
  if not r.get("validation_size"):
    return None
  return {k: r[k] for k in ("selected_epoch", "epochs_run", "validation_size",
                            "validation_best", "validation_per_epoch",
                            "eval_accuracy")}


def _below_in_stds(full, row, mean, std):
  """How far ``row`` lies below ``full`` in the larger of their fold stds."""
  return (full[mean] - row[mean]) / max(full[std], row[std])


def per_fold(result, layer, metric="linear"):
  return result["folds"][layer][metric]["per_fold"]


def _seed_statistics(ablations, results, layer, opts):
  """With --row_seeds >= 2 (``opts.row_seeds``): per row, its mean at ``layer`` for every seed
  evaluated, their spread, and the per-fold differences to the full row of
  the same seed (the folds are the same, so fold difficulty cancels)."""
  if opts.row_seeds < 2:
    return
  for row, r in ablations.items():
    if len(row_seeds(opts, row)) < 2:
      continue
    seeds = [s for s in row_seeds(opts, row) if row_name(opts, row, s) in results]
    means = [results[row_name(opts, row, s)]["folds"][layer]["linear"]["mean"] for s in seeds]
    r["seeds"] = seeds
    r[f"seed_means_at_{layer}"] = means
    r[f"seed_mean_at_{layer}"] = sum(means) / len(means)
    if len(means) > 1:
      r[f"seed_std_at_{layer}"] = statistics.stdev(means)
    if row == "full":
      continue
    diffs = [f - a for s in seeds if row_name(opts, "full", s) in results
             for f, a in zip(per_fold(results[row_name(opts, "full", s)], layer),
                             per_fold(results[row_name(opts, row, s)], layer))]
    if diffs:
      r[f"paired_gap_at_{layer}"] = sum(diffs) / len(diffs)
      r[f"paired_gap_fold_std_at_{layer}"] = float(_std(diffs))
  full = ablations.get("full", {})
  for row, r in ablations.items():
    noise = [full.get(f"seed_std_at_{layer}"), r.get(f"seed_std_at_{layer}")]
    if row == "full" or None in noise or f"paired_gap_at_{layer}" not in r:
      continue
    # The noise floor: the larger of the two rows' fold stds and seed spreads.
    floor = max(noise + [full[f"at_{layer}_std"], r[f"at_{layer}_std"]])
    r["below_full_in_noise"] = r[f"paired_gap_at_{layer}"] / floor
    r["noise_floor"] = floor


def _ablation_verdict(ablations, unfinished=frozenset()):
  """(k) and (l) more than 3 noise units below the full row: fold stds with
  one seed per row, fold stds or seed spreads (the larger) for a row
  replicated with several (a row left out of --replicate: its fold stds).
  None: full, k or l has a run (any seed) not yet evaluated."""
  if unfinished & {"full", "k", "l"}:
    return None
  rows = [ablations.get(r, {}) for r in ("k", "l")]
  gaps = [r.get("below_full_in_noise", r.get("below_full_in_stds")) for r in rows]
  if None in gaps:  # a row, or the full row, not among --ablations
    return None
  return bool(all(g > 3 for g in gaps))


def _gap_words(ablations):
  """Each of k and l's distance below full in the unit its verdict uses."""
  out = []
  for row in ("k", "l"):
    a = ablations.get(row, {})
    if "below_full_in_noise" in a:
      out.append(f"{row}: {a['below_full_in_noise']:.1f} noise units, see seed replicates")
    elif "below_full_in_stds" in a:
      out.append(f"{row}: {a['below_full_in_stds']:.1f} fold stds")
    else:
      out.append(f"{row}: not run")
  return "; ".join(out)


GAME_KEYS = ("c/real_accuracy", "c/fake_accuracy", "c/mask_accuracy")


def _game_at_end(workdir):
  """C's real/fake and mask accuracies over the last logged window of a
  spotter run (its train_summary.json, written by trainers.pretrain), with the
  keep rate: a mask head that calls every cell kept scores the keep rate."""
  path = os.path.join(workdir, "train_summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    spotter = json.load(f).get("spotter")
  if not spotter:
    return None
  out = {k.split("/")[1]: spotter["metrics"][k] for k in GAME_KEYS
         if k in spotter["metrics"]}
  out["steps"] = spotter["steps"]
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      out["keep_rate"] = 1.0 - json.load(f)["spotter"]["drop_rate"]
  return out


def done_markers(root):
  """Every training run's train_done.json under ``root``: its folder relative
  to ``root`` -> the marker (wall seconds, the command that trained it)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(root, "**", "train_done.json"), recursive=True)):
    with open(path) as f:
      out[os.path.relpath(os.path.dirname(path), root)] = json.load(f)
  return out


def _train_seconds(markers):
  return {name: round(m["seconds_last_run"]) for name, m in markers.items()}


def provenance(root, markers, results):
  """What another root made (copied in here to share it): folder relative to
  ``root`` -> where it was made (a marker's --workdir, an eval result's
  ``output``); and the evaluations that do not record where (written before
  eval_results.json carried ``output``)."""
  made = {name: next((a.split("=", 1)[1] for a in m.get("command", [])
                      if a.startswith("--workdir=")), None)
          for name, m in markers.items()}
  unrecorded = []
  for model, result in results.items():
    name = os.path.relpath(os.path.dirname(eval_path(root, model)), root)
    made[name] = result.get("output")
    if made[name] is None:
      unrecorded.append(name)
  copied = {name: where for name, where in sorted(made.items()) if where is not None
            and os.path.abspath(where) != os.path.abspath(os.path.join(root, name))}
  return {"copied": copied, "unrecorded": sorted(unrecorded)}


def provenance_lines(prov):
  out = []
  if prov["copied"]:
    out.append("Made in another root and copied into this one (not rerun by "
               "this command): " + "; ".join(
                   f"{n} (made in {m})" for n, m in sorted(prov["copied"].items())) + ".")
  if prov["unrecorded"]:
    out.append("Evaluations that do not record where they were made (written "
               "before eval_results.json carried it): "
               + ", ".join(prov["unrecorded"]) + ".")
  return " ".join(out) or "Every training run and evaluation was made in this root."


def write_markdown(report, path):
  r = report
  b = r["budget"]
  m = r["machine"]
  lines = [
      "# Feature quality on Fashion-MNIST (folds protocol)", "",
      f"Machine: {m['cpu']} (ISA {isa_tag(m) or 'unknown'}), {m['cores']} cores, "
      f"{m['gpus']} GPUs, TensorFlow "
      f"{m['tensorflow']}; {r['date']}. Reproduce: "
      f"`{r.get('command', 'python -m benchmarks.quality')} --root=R` (resumable; "
      "see its docstring).", "",
      f"Budget: autoencoder {b['autoencoder_steps']} steps x {b['autoencoder_batch']}, "
      f"spotter {b['spotter_steps']} steps x {b['spotter_batch']} per ablation row "
      f"(shared autoencoder), ours {b['ours_spotter_steps']} spotter steps, "
      f"Adam lr {b['spotter_lr']:g} (C) / {b['repair_lr']:g} (R), drop rate "
      f"{b['drop_rate']:g}, config argument {b.get('config_arg') or 'none'}, "
      f"extra overrides {b['overrides'] or 'none'}, "
      f"{b['resolution']}x{b['resolution']} grayscale; "
      f"{_bound_words(r)} "
      f"Wall seconds of each training run (several shared the 2 cores): "
      f"{b['train_seconds']}.", ""] + (
          [provenance_lines(r["provenance"]), ""] if "provenance" in r else []) + [
      f"Protocol: {r['protocol']['num_folds']} seeded disjoint folds of "
      f"{r['protocol']['fold_size']} labelled training images (100 per class), "
      f"ridge classifier on standardized, average-pooled (~9k dims) frozen "
      f"features, penalty chosen on {r['protocol']['validation_size']} training "
      f"images in no fold, tested on {r['protocol']['test_images']} test images; "
      "mean +- std over folds. kNN: cosine, k=20, T=0.07, fold as memory bank. "
      f"Full: softmax probe per layer on {b['full_probe']['train_images']} "
      f"labelled training images, its epoch chosen on "
      f"{b['full_probe']['validation_size']} held out (early stopping, "
      f"patience {b['full_probe']['patience']}, at most "
      f"{b['full_probe']['max_epochs']} epochs).", "",
      "## Targets", "",
      f"- closure, best layer against best layer: (best of ours - best of "
      f"random) / (best of supervised - best of random) = "
      f"**{r['closure_best_vs_best']:.2f}** (target >= 0.71, the paper's "
      f"figure: {'met' if r['targets']['best_vs_best_closure_at_least_0.71'] else 'MISSED'}); "
      f"the autoencoder's best layer: {r['autoencoder_closure_best_vs_best']:.2f}",
      f"- best layer of ours: **{r['best_layer']}**; closure (ours - random) / "
      f"(supervised - random) at that layer: **{r['gap_closure']:.2f}**",
      f"- margin over the best random seed: {r['margin_over_best_random_seed_in_stds']:.1f} "
      f"fold stds; over the autoencoder's best layer ({r['autoencoder_best_layer']}): "
      f"{r['margin_over_autoencoder_in_stds']:.1f} (target > 3 for both: "
      f"{'met' if r['targets']['beats_random_and_autoencoder_by_3_std'] else 'MISSED'})",
      f"- ablations (k) and (l) more than 3 noise units below full "
      f"({_gap_words(r['ablations'])}): "
      f"{_verdict(r['targets']['k_and_l_clearly_below_full'])}",
  ] + _probe_target_lines(r) + [""] + _probe_sections(r) + [
      "## Linear (folds) accuracy per layer, mean +- std", "",
  ]
  def cell(t, layer, key="mean", std="std"):
    return f"{t[layer][key]:.4f} +- {t[layer][std]:.4f}" if layer in t else ""
  conv = ["conv1", "conv2", "conv3", "conv4", "conv5"]
  lines += ["| model | " + " | ".join(conv) + " |", "|---" * 6 + "|"]
  for name in ("ours", "random", "supervised") + tuple(
      n for n in r["models"] if n.startswith("random_seed")):
    lines.append(f"| {name} | " + " | ".join(cell(r["models"][name], l) for l in conv) + " |")
  for name in ("autoencoder", "pixels"):
    t = r["models"][name]
    lines.append(f"| {name} | " + ", ".join(
        f"{l}: {t[l]['mean']:.4f} +- {t[l]['std']:.4f}" for l in t) + " |||||")
  lines.append("| closure of ours | " + " | ".join(
      f"{r['closure_per_layer'][l]:.2f}" if l in r["closure_per_layer"] else ""
      for l in conv) + " |")
  lines += ["", "Closure of ours: (ours - random) / (supervised - random) at "
            "each layer (random: the mean over random-init seeds)."]
  lines += ["", "## kNN (folds) accuracy per layer", "",
            "| model | " + " | ".join(conv) + " |", "|---" * 6 + "|"]
  for name in ("ours", "random", "supervised"):
    lines.append(f"| {name} | " + " | ".join(
        cell(r["models"][name], l, "knn_mean", "knn_std") for l in conv) + " |")
  for name in ("autoencoder", "pixels"):
    t = r["models"][name]
    lines.append(f"| {name} | " + ", ".join(
        f"{l}: {t[l]['knn_mean']:.4f}" for l in t) + " |||||")
  knn_layer = next((a["knn_layer"] for a in r["ablations"].values() if "knn_layer" in a), "")
  lines += ["", "## Ablations (same budget, folds protocol)", "",
            f"| row | best layer | best mean +- std | at {r['best_layer']} | below full (stds) "
            f"| kNN at {knn_layer or '-'} | kNN below full (stds) |",
            "|---|---|---|---|---|---|---|"]
  for row, a in r["ablations"].items():
    knn = (f"{a['knn_mean']:.4f} +- {a['knn_std']:.4f} | "
           f"{a.get('knn_below_full_in_stds', 0):.1f}" if "knn_mean" in a else " | ")
    lines.append(f"| {row} | {a['best_layer']} | {a['mean']:.4f} +- {a['std']:.4f} | "
                 f"{a['at_' + r['best_layer']]:.4f} | "
                 f"{a.get('below_full_in_stds', 0):.1f} | {knn} |")
  if knn_layer:
    lines += ["", "kNN columns: at the layer where ours' kNN accuracy is best, one "
              "seed, fold stds (the ablation target above is judged on the linear "
              "figures; `benchmarks.budget_curve` gives both metrics' paired gaps "
              "with seed spreads)."]
  games = [(row, a["game_at_end"]) for row, a in r["ablations"].items()
           if "game_at_end" in a]
  if games:
    lines += ["", "### The discriminator's game at the end of each run", "",
              "C's accuracies over the last logged window of the run's spotter "
              "phase (train_summary.json): real/fake near 0.5 means C cannot tell "
              "repaired images from autoencoded ones; a mask accuracy at the keep "
              "rate is what calling every cell kept scores.", "",
              "| row | steps | real accuracy | fake accuracy | mask accuracy | keep rate |",
              "|---|---|---|---|---|---|"]
    for row, g in games:
      fmt = lambda k: f"{g[k]:.3f}" if k in g else ""
      lines.append(f"| {row} | {g['steps']} | {fmt('real_accuracy')} | "
                   f"{fmt('fake_accuracy')} | {fmt('mask_accuracy')} | {fmt('keep_rate')} |")
  seeded = [(row, a) for row, a in r["ablations"].items() if "seeds" in a]
  if seeded:
    L = r["best_layer"]
    lines += ["", f"### Seed replicates at {L} (--row_seeds={b['row_seeds']})", "",
              "Each row trained once per seed (same autoencoder; the seed sets the "
              "masks, the data order, the history sampling and, in runs trained "
              "at commit 7d1c4fa or later, the initial weights). Paired gap: "
              "mean over seeds and folds of (full - row) on the same folds. "
              "Noise floor: the larger of the two rows' fold stds and seed "
              "spreads (sample std over seeds).", "",
              "| row | seeds | mean per seed | seed std | paired gap +- fold std | "
              "noise floor | gap / floor |", "|---|---|---|---|---|---|---|"]
    for row, a in seeded:
      fmt = lambda k, p=4: (f"{a[k]:.{p}f}" if k in a else "")
      gap = (f"{a[f'paired_gap_at_{L}']:.4f} +- {a[f'paired_gap_fold_std_at_{L}']:.4f}"
             if f"paired_gap_at_{L}" in a else "")
      lines.append(
          f"| {row} | {','.join(map(str, a['seeds']))} | "
          + ", ".join(f"{m:.4f}" for m in a[f"seed_means_at_{L}"])
          + f" | {fmt(f'seed_std_at_{L}')} | {gap} | {fmt('noise_floor')} | "
          f"{fmt('below_full_in_noise', 1)} |")
  if r.get("ablations_missing"):
    lines += ["", "Not trained/evaluated in this report (partial run): "
              + ", ".join(r["ablations_missing"]) + "."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


PROBE_WORDS = {
    "full": "full-label probe (a softmax classifier per layer on every "
            "training label but the held-out ones, trained until its held-out "
            "accuracy stops improving)",
    "linear": "folds, ridge (1,000 labels per fold)",
    "knn": "folds, kNN (1,000 labels per fold)",
}


def _probe_target_lines(r):
  t, probes = r["targets"], r.get("probes", {})
  lines = []
  peer = t.get("beats_peer_by_3_std_under_every_probe")
  if peer is not None:
    lines.append("- ours above the peer (" + PEER + ") at each one's best layer "
                 "by more than 3 noise units under every probe (" + "; ".join(
                     f"{p}: {v['ours_vs_peer']['difference']:+.4f}, "
                     f"{v['ours_vs_peer']['in_noise_units']:+.1f}"
                     for p, v in probes.items()) + f"): {_verdict(peer)}")
  full = t.get("full_probe_best_vs_best_closure_at_least_0.71")
  if full is not None:
    lines.append(f"- closure best layer against best layer under the full-label "
                 f"probe: **{probes['full']['closure_best_vs_best']:.2f}** "
                 f"(target >= 0.71): {_verdict(full)}")
  return lines


def _probe_sections(r):
  """One table per probe: every model per layer, its best layer, ours'
  closure per layer and best against best, and ours against the peer."""
  probes = r.get("probes")
  if not probes:
    return []
  conv = ["conv1", "conv2", "conv3", "conv4", "conv5"]
  lines = ["## Every probe", "",
           f"Headline probe: **{r.get('headline_probe', HEADLINE_PROBE)}**, "
           "the full-label probe. It is the protocol of the paper's ImageNet "
           "per-layer probes, where the 0.71 target comes from, and it is "
           "trained to convergence on held-out images, so no model is held "
           "back by an under-trained classifier. The folds probes show what "
           "the features give with 1,000 labels and carry a spread over "
           "folds, the noise unit of every comparison below (for the "
           "full-label probe, which has no spread of its own: the folds "
           "ridge probe's std at the two best layers).", ""]
  order = ["ours", PEER, "random", "autoencoder", "pixels", "supervised"]
  for probe, p in probes.items():
    lines += [f"### {PROBE_WORDS.get(probe, probe)}", "",
              "| model | " + " | ".join(conv) + " | best |", "|---" * 7 + "|"]
    for name in (n for n in order if n in p["models"]):
      t = p["models"][name]
      bl = p["best_layer"][name]
      if all(l in t for l in conv):
        cells = [f"**{t[l]:.4f}**" if l == bl else f"{t[l]:.4f}" for l in conv]
      else:
        cells = [""] * 5
      lines.append(f"| {name} | " + " | ".join(cells) + f" | {bl} {t[bl]:.4f} |")
    lines.append("| closure of ours | " + " | ".join(
        f"{p['closure_per_layer'][l]:.2f}" if l in p["closure_per_layer"] else ""
        for l in conv) + " | |")
    words = [f"Best layer against best layer, ours closes "
             f"**{p['closure_best_vs_best']:.2f}** of the gap from random init "
             f"to the bound"]
    if "autoencoder_closure_best_vs_best" in p:
      words.append(f"the autoencoder {p['autoencoder_closure_best_vs_best']:.2f}")
    if "ours_vs_peer" in p:
      v = p["ours_vs_peer"]
      words.append(f"the peer {v['peer_closure_best_vs_best']:.2f}; ours minus "
                   f"the peer, best layer against best layer: "
                   f"{v['difference']:+.4f} ({v['in_noise_units']:+.1f} noise "
                   f"units of {v['noise_unit']:.4f}, from the {v['noise_unit_from']} "
                   f"probe's fold std)")
    lines += ["", "; ".join(words) + ".", ""]
  return lines


def _bound_words(r):
  """How the supervised bound was trained and chosen, in one sentence."""
  bound = r.get("supervised_bound")
  if not bound:
    return ("Supervised bound: trained for a fixed number of epochs, not "
            "chosen on held-out images.")
  return (f"Supervised bound: the whole discriminator trained from scratch on "
          f"the labelled training images less {bound['validation_size']:,} "
          f"held out, until accuracy on those held-out images stopped "
          f"improving; taken at epoch {bound['selected_epoch']} of "
          f"{bound['epochs_run']} run (held-out accuracy "
          f"{bound['validation_best']:.4f}, its own test accuracy "
          f"{bound['eval_accuracy']:.4f}; held-out accuracy per epoch: "
          + ", ".join(f"{v:.4f}" for v in bound["validation_per_epoch"]) + ").")


def _verdict(target):
  return {True: "met", False: "MISSED", None: "NOT MEASURED (rows missing)"}[target]


def plot(report, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name in ("ours", "random", "autoencoder", "pixels", "supervised") + tuple(
      f"ablation_{r}" for r in report["ablations"] if r != "full"):
    t = report["models"].get(name) or {}
    if name.startswith("ablation_"):
      row = name.split("_", 1)[1]
      t = report["ablation_tables"][row]
    layers = list(t)
    x = range(1, len(layers) + 1)
    y = [t[l]["mean"] for l in layers]
    e = [t[l]["std"] for l in layers]
    style = "--" if name.startswith("ablation_") else "-"
    if len(layers) == 1:
      ax.axhline(y[0], linestyle=":", color="gray", label=f"{name} ({layers[0]})")
    else:
      ax.errorbar(x, y, yerr=e, linestyle=style, marker="o", capsize=3,
                  label=name if name != "autoencoder" else "autoencoder (stem, stage1-3)")
  ax.set_xticks(range(1, 6))
  ax.set_xticklabels(["conv1", "conv2", "conv3", "conv4", "conv5"])
  ax.set_xlabel("layer (autoencoder: stem, stage1..3)")
  ax.set_ylabel("folds-protocol test accuracy")
  ax.set_title("Fashion-MNIST, 1,000 labels per fold, frozen features")
  ax.legend(fontsize=7, loc="lower left")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def write(root, out, opts, command=COMMAND, machine_info=None, date=None):
  """Writes the report of ``root`` (see build_report) to ``out``.json, .md
  and .png; returns it."""
  report = build_report(root, opts, command, machine_info, date)
  results = load_results(root, opts)
  report["ablation_tables"] = {
      row: per_layer(results[row_name(opts, row)]) for row in report["ablations"]}
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
  write_markdown(report, out + ".md")
  plot(report, out + ".png")
  return report
