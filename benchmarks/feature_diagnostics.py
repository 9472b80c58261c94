r"""Why ours' deep layers fall off: one trained discriminator, read several ways.

  python -m benchmarks.feature_diagnostics --workdir=W --root=R \
      --report=results/feature_diagnostics_fashion_mnist

Evaluates the folds protocol (``configs/eval/fashion_mnist_folds.py:folds_only``:
ridge and kNN on 10 folds of 1,000 labelled images) on a pretraining workdir's
discriminator and on a random-initialised one of the same config, each read
in these ways ("views"):

  as_trained      the features as trainers.linear_eval takes them (after the
                  leaky ReLU, batch norm with the statistics of training)
  pre_activation  the batch norm's output, before the leaky ReLU
  bn_raw          batch-norm statistics re-estimated on --recalibrate_images
                  unlabelled raw training images, layer by layer (in training
                  the discriminator only saw autoencoded and repaired images)
  autoencoded     the images passed through the workdir's frozen autoencoder
                  first (the kind of image the discriminator was trained on)

and the discriminator at earlier checkpoints (``--steps``, as_trained; the
run must keep them: ``--config.train.keep_checkpoints``). Closures are taken
against the supervised bound and random init of ``--bound_report`` (a
benchmarks.quality report made with the same evaluation config and the same
discriminator architecture) when it gives them, as the share of the gap from
random init's best layer to the bound's best layer.

Resumable: each evaluation is written to ``<root>/<name>.json`` and skipped
when it exists.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from benchmarks.machine import isa_tag, machine

FLAGS = flags.FLAGS
VIEWS = ("as_trained", "pre_activation", "bn_raw", "autoencoded")


def define_flags():
  """The command-line flags, defined only when run as a program: the
  functions here are imported by tests beside other benchmarks whose flags
  share names (--root, --report)."""
  flags.DEFINE_string("workdir", None, "Pretraining workdir (phase 2 done).")
  flags.DEFINE_string("root", "/tmp/as_diagnostics", "Where evaluations go.")
  flags.DEFINE_string("report", "results/feature_diagnostics_fashion_mnist",
                      "Report path without extension (.json and .md).")
  flags.DEFINE_string("eval_config", "configs/eval/fashion_mnist_folds.py:folds_only",
                      "Evaluation config (folds protocol).")
  flags.DEFINE_list("views", list(VIEWS), "Views of the workdir's discriminator.")
  flags.DEFINE_list("random_views", list(VIEWS), "Views of the random-init "
                    "discriminator (empty: none, e.g. for a second run of the "
                    "same architecture).")
  flags.DEFINE_list("steps", [], "Adversarial steps of earlier checkpoints to "
                    "evaluate (as_trained).")
  flags.DEFINE_integer("random_seed", 0, "Seed of the random-init discriminator.")
  flags.DEFINE_integer("recalibrate_images", 10000,
                       "Raw training images for the bn_raw view.")
  flags.DEFINE_string("bound_report", "results/quality_fashion_mnist.json",
                      "Quality report whose bound and random rows give closures.")
  flags.DEFINE_string("label", "", "What the workdir's run is, for the report.")
  flags.DEFINE_multi_string("also", [], "name=workdir: another pretraining run "
                            "(e.g. a variation of the recipe) whose discriminator "
                            "is evaluated as trained, row <name>_as_trained.")
  flags.mark_flag_as_required("workdir")


LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def log(msg):
  print(time.strftime("%H:%M:%S"), msg, flush=True)


# ------------------------------------------------------------------- views
def _pool(fmaps, pooled_dims):
  from artifact_spotting.evaluation.features import pool_flatten  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {k: tf.cast(pool_flatten(v, pooled_dims), tf.float32)
          for k, v in fmaps.items()}


def pre_activation_features(disc, x):
  """conv1..conv5 after batch norm, before the leaky ReLU (batch-norm blocks)."""
  out, h = {}, x
  for name, block, pool in zip(LAYERS, disc.blocks, disc.pools):
    if block.bn is None:
      raise ValueError(f"{name} has no batch norm; pre_activation needs one")
    z = block.bn(block.conv(h), training=False)
    out[name] = z
    h = block.act(z)
    if pool is not None:
      h = pool(h, training=False)
  return out


def recalibrate_batch_norm(disc, images, batch_size=500):
  """Sets every conv block's batch-norm moving mean and variance to the
  exact statistics of ``images`` (each layer's, given the layers before it
  recalibrated)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  for i, block in enumerate(disc.blocks):
    s = s2 = 0.0
    n = 0
    for start in range(0, len(images), batch_size):
      h = images[start:start + batch_size]
      for j in range(i):
        h = disc.blocks[j](h, training=False)
        if disc.pools[j] is not None:
          h = disc.pools[j](h, training=False)
      z = np.asarray(block.conv(h), np.float64).reshape(-1, block.filters)
      s = s + z.sum(0)
      s2 = s2 + (z * z).sum(0)
      n += len(z)
    mean = s / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
    block.bn.moving_mean.assign(mean.astype(np.float32))
    block.bn.moving_variance.assign(var.astype(np.float32))


def raw_training_images(eval_config, count):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from artifact_spotting.data import pipeline  # pylint: disable=g-import-not-at-top
  src = pipeline.open_source(eval_config.dataset, eval_config.channels,
                             split=eval_config.dataset.train_split,
                             training=False).take(count)
  batches = [b["image"].numpy() for b in pipeline.make_dataset(
      src, eval_config.pp_eval, 500, training=False, drop_remainder=False)]
  return np.concatenate(batches)


def also_runs():
  """--also as {name: workdir}."""
  out = {}
  for spec in FLAGS.also:
    name, sep, workdir = spec.partition("=")
    if not sep or not name or not workdir:
      raise ValueError(f"--also={spec!r} must be name=workdir")
    out[name] = workdir
  return out


def discriminator_at(workdir, step):
  """The workdir's discriminator at adversarial step ``step`` (a kept
  checkpoint), or its newest one when step is None."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting import checkpoints  # pylint: disable=g-import-not-at-top
  from artifact_spotting import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from artifact_spotting import loading  # pylint: disable=g-import-not-at-top
  if step is None:
    return loading.discriminator(workdir)
  config = loading.workdir_config(workdir)
  for path in checkpoints.checkpoint_paths(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)):
    if checkpoints.steps_of(path)["adversarial"] == step:
      disc = loading.new_discriminator(config)
      tf.train.Checkpoint(model=tf.train.Checkpoint(discriminator=disc)).read(
          path).expect_partial()
      return disc
  raise ValueError(f"{workdir} keeps no checkpoint at adversarial step {step}")


def make_extractor(model, view, eval_config):
  """model: 'ours' | 'random' | 'ours@<step>' -> an evaluation Extractor."""
  from artifact_spotting import loading  # pylint: disable=g-import-not-at-top
  from artifact_spotting.evaluation.features import Extractor, discriminator_extractor  # pylint: disable=g-import-not-at-top
  dims = eval_config.pooled_dims
  if model == "random":
    disc = loading.new_discriminator(loading.workdir_config(FLAGS.workdir),
                                     FLAGS.random_seed)
  elif model.startswith("run:"):
    disc = loading.discriminator(also_runs()[model[len("run:"):]])
  else:
    step = int(model.split("@")[1]) if "@" in model else None
    disc = discriminator_at(FLAGS.workdir, step)
  name = f"{model}/{view}"
  if view == "as_trained":  # exactly trainers.linear_eval's extractor
    return discriminator_extractor(disc, dims, name)
  if view == "bn_raw":
    recalibrate_batch_norm(disc, raw_training_images(eval_config,
                                                     FLAGS.recalibrate_images))
    return discriminator_extractor(disc, dims, name)
  keep = [disc]
  if view == "pre_activation":
    fn = lambda x: _pool(pre_activation_features(disc, x), dims)
  elif view == "autoencoded":
    _, restored = loading.spotter(FLAGS.workdir)
    spotter = restored.model
    keep.append(spotter)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    fn = lambda x: _pool(disc.features(tf.cast(spotter.autoencode(x), tf.float32),
                                       training=False), dims)
  else:
    raise ValueError(f"view {view!r} is unknown")
  return Extractor(name, LAYERS, fn, keep=keep)


def evaluations():
  """name -> (model, view)."""
  out = {}
  for model, views in (("ours", FLAGS.views), ("random", FLAGS.random_views)):
    for view in views:
      out[f"{model}_{view}"] = (model, view)
  for step in FLAGS.steps:
    out[f"ours_step{int(step)}_as_trained"] = (f"ours@{int(step)}", "as_trained")
  for name in also_runs():
    out[f"{name}_as_trained"] = (f"run:{name}", "as_trained")
  return out


def evaluate_all(eval_config):
  from artifact_spotting import workdir  # pylint: disable=g-import-not-at-top
  from artifact_spotting.evaluation import protocol  # pylint: disable=g-import-not-at-top
  os.makedirs(FLAGS.root, exist_ok=True)
  results = {}
  for name, (model, view) in evaluations().items():
    path = os.path.join(FLAGS.root, name + ".json")
    if os.path.exists(path):
      log(f"{name}: done already")
    else:
      log(f"{name}: evaluating")
      t0 = time.time()
      r = protocol.evaluate(eval_config, make_extractor(model, view, eval_config),
                            log=lambda m: log("  " + m))
      r["seconds"] = time.time() - t0
      workdir.atomic_write(path, json.dumps(r))
    with open(path) as f:
      results[name] = json.load(f)
  return results


# ------------------------------------------------------------------ report
def table(result, metric="linear"):
  return {l: (result["folds"][l][metric]["mean"], result["folds"][l][metric]["std"])
          for l in LAYERS if metric in result["folds"][l]}


def bound_rows(path):
  """(bound per layer, random per layer) means from a quality report, or None."""
  if not path or not os.path.exists(path):
    return None
  with open(path) as f:
    q = json.load(f)
  m = q.get("models", {})
  if "supervised" not in m or "random" not in m:
    return None
  return ({l: m["supervised"][l]["mean"] for l in LAYERS},
          {l: m["random"][l]["mean"] for l in LAYERS}, q.get("date"),
          q.get("machine", {}))


def build_report(results, eval_config_spec):
  import numpy as np  # pylint: disable=g-import-not-at-top
  b = bound_rows(FLAGS.bound_report)
  rows = {}
  for name, r in results.items():
    lin = table(r)
    best = max(lin, key=lambda l: lin[l][0])
    row = {"linear": lin, "knn": table(r, "knn"), "best_layer": best,
           "best": lin[best][0], "seconds": round(r.get("seconds", 0))}
    if b:
      bound_best, random_best = max(b[0].values()), max(b[1].values())
      row["closure_best_vs_best"] = (lin[best][0] - random_best) / (
          bound_best - random_best)
    base = results.get("ours_as_trained")
    if base is not None and name != "ours_as_trained":
      # Same folds and test images: the per-fold difference is paired.
      row["minus_ours"] = {}
      for l in LAYERS:
        d = np.subtract(r["folds"][l]["linear"]["per_fold"],
                        base["folds"][l]["linear"]["per_fold"])
        row["minus_ours"][l] = (float(d.mean()), float(d.std()))
    rows[name] = row
  runs = {}
  for name, workdir in [("ours", FLAGS.workdir)] + list(also_runs().items()):
    with open(os.path.join(workdir, "config.json")) as f:
      runs[name] = json.load(f)
    # benchmarks.quality's marker: the wall time of the run's last start.
    marker = os.path.join(workdir, "train_done.json")
    if os.path.exists(marker):
      with open(marker) as f:
        runs[name]["wall_seconds"] = round(json.load(f)["seconds_last_run"])
  pretrain = runs["ours"]
  return {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
          "workdir_label": FLAGS.label, "eval_config": eval_config_spec,
          "views": list(FLAGS.views), "random_views": list(FLAGS.random_views),
          "steps": [int(s) for s in FLAGS.steps],
          "precision": pretrain.get("train", {}).get("precision"),
          "pretrain_config": pretrain, "also": {
              n: c for n, c in runs.items() if n != "ours"},
          "recalibrate_images": FLAGS.recalibrate_images,
          "bound_report": FLAGS.bound_report if b else None,
          "bound": b[0] if b else None, "random_report": b[1] if b else None,
          "bound_report_date": b[2] if b else None, "rows": rows}


def run_words(c):
  """The pretraining settings that matter here, from a workdir's config.json."""
  a, s = c.get("autoencoder", {}), c.get("spotter", {})
  return (f"autoencoder {a.get('steps')} steps x {a.get('batch_size')}, "
          f"{s.get('steps')} adversarial steps x {s.get('batch_size')}, C lr "
          f"{s.get('lr')}, R lr {s.get('repair_lr')}, drop rate "
          f"{s.get('drop_rate')}, pp `{c.get('pp')}`, precision "
          f"{c.get('train', {}).get('precision')}"
          + (f", adversarial phase {c['wall_seconds']} s of wall time"
             if "wall_seconds" in c else ""))


def _pm(value, fmt=".4f"):
  """(mean, std) -> 'mean +- std'; None -> an empty cell."""
  return "" if value is None else f"{value[0]:{fmt}} +- {value[1]:.4f}"


def _md_table(head, rows):
  """Markdown lines of a table: the head's cells, then one line per row."""
  return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
          + ["| " + " | ".join(r) + " |" for r in rows])


def write_markdown(rep, path):
  m = rep["machine"]
  lines = [
      "# Feature diagnostics on Fashion-MNIST (folds protocol)", "",
      f"Machine: {m['cpu']} (ISA {isa_tag(m) or 'unknown'}), {m['cores']} cores, "
      f"{m['gpus']} GPUs, TensorFlow {m['tensorflow']}; {rep['date']}. "
      f"Evaluation: `{rep['eval_config']}`. Run evaluated: "
      f"{rep['workdir_label'] or 'see the JSON'}; {run_words(rep['pretrain_config'])}.", ""]
  for name, c in rep.get("also", {}).items():
    lines += [f"Run `{name}`: {run_words(c)}.", ""]
  lines += [
      "Reproduce: `python -m benchmarks.feature_diagnostics --workdir=W "
      f"--root=R --views={','.join(rep['views'])}"
      f" --random_views={','.join(rep['random_views'])}"
      + (f" --steps={','.join(map(str, rep['steps']))}" if rep["steps"] else "")
      + "".join(f" --also={n}=W_{n}" for n in rep.get("also", {}))
      + "`, W (and W_<name>) being the pretraining workdirs described above.", ""]
  if rep["bound"]:
    lines += [f"Closure: share of the gap from random init's best layer to the "
              f"supervised bound's best layer in `{rep['bound_report']}` "
              f"({rep['bound_report_date']}; same evaluation and architecture), "
              f"bound per layer " + ", ".join(
                  f"{l} {v:.4f}" for l, v in rep["bound"].items()) + ".", ""]
  rows = rep["rows"]
  lines += ["Linear (folds) accuracy per layer, mean +- std over folds:", ""]
  lines += _md_table(
      ("run / view",) + LAYERS + ("best", "closure (best vs best)"),
      [[name] + [_pm(row["linear"].get(l)) for l in LAYERS]
       + [f"{row['best_layer']} {row['best']:.4f}",
          "" if row.get("closure_best_vs_best") is None
          else f"{row['closure_best_vs_best']:.2f}"]
       for name, row in rows.items()])
  lines += ["", "Linear accuracy minus ours_as_trained's, paired over the same "
            "folds (mean +- std over folds):", ""]
  lines += _md_table(("run / view",) + LAYERS, [
      [name] + [_pm(row["minus_ours"][l], "+.4f") for l in LAYERS]
      for name, row in rows.items() if "minus_ours" in row])
  lines += ["", "kNN (folds) accuracy per layer:", ""]
  lines += _md_table(("run / view",) + LAYERS, [
      [name] + [_pm(row["knn"].get(l)) for l in LAYERS]
      for name, row in rows.items()])
  lines += ["", "Seconds per evaluation: " + ", ".join(
      f"{n} {r['seconds']}" for n, r in rows.items()) + "."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv):
  del argv
  from artifact_spotting import loading  # pylint: disable=g-import-not-at-top
  path, _, arg = FLAGS.eval_config.partition(":")
  eval_config = loading.pretrain_config(f"{path}:{arg}" if arg else path)
  results = evaluate_all(eval_config)
  rep = build_report(results, FLAGS.eval_config)
  os.makedirs(os.path.dirname(FLAGS.report) or ".", exist_ok=True)
  with open(FLAGS.report + ".json", "w") as f:
    json.dump(rep, f, indent=2, sort_keys=True)
  write_markdown(rep, FLAGS.report + ".md")
  log(f"wrote {FLAGS.report}.json/.md")


if __name__ == "__main__":
  define_flags()
  app.run(main)
