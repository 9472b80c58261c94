r"""Feature quality on Fashion-MNIST: ours vs. baselines vs. ablations.

  nohup python -m benchmarks.quality --root=/tmp/as_quality > /tmp/as_quality.log 2>&1 &

Pretrains (one shared autoencoder, then each ablation row's spotter phase under
one common budget), trains the supervised upper bound, evaluates every model
with the folds protocol, kNN and the full-label probe
(``configs/eval/fashion_mnist_folds.py``), and writes
``results/quality_fashion_mnist.{json,md,png}``.

Seed replicates (how much of an ablation gap is training noise):

  python -m benchmarks.quality --root=R --ablations=full,k,l,a,g \
      --row_seeds=2 --replicate=full,k,l

trains the rows of --replicate once more per extra seed (the others once)
and reports each replicated row's seed spread and its per-fold differences to
the full row of the same seed. Added to a finished root, it trains and
evaluates only the new runs.

Resumable: every stage writes its result under ``--root`` and is skipped when
that result exists; training runs resume from their checkpoints. Kill it and
run the same command again. Each training run is its own process (its log is
``<root>/logs/<name>.log``).

A root outlives its machine through an archive of its report inputs (no
checkpoints, a few hundred kB):

  python -m benchmarks.quality --root=R --deterministic ... --stages=evaluate,archive \
      --archive=results/quality_inputs/NAME
  # later, on a fresh machine of the same kind:
  python -m benchmarks.quality --root=R2 --deterministic ... \
      --stages=restore,pretrain,peer,supervised,evaluate,report \
      --archive=results/quality_inputs/NAME

The restored runs are neither trained nor evaluated again; the shared
autoencoder is retrained and must hash as archived (it does with
--deterministic on the same kind of machine), so new rows train against the
same autoencoder as the archived ones.

This module runs the stages (its command line above); the report is
benchmarks/quality_report.py's (``python -m benchmarks.quality
--stages=report`` writes it again from a root's evaluations), and where each
run and evaluation lives under ``--root`` is benchmarks/quality_plan.py's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags

from benchmarks import quality_report
from benchmarks.machine import isa_tag, machine
from benchmarks.quality_plan import (EVAL_CONFIG, NO_KNN, Options, ablation_dir,
                                     autoencoder_dir, config_spec, done_marker,
                                     eval_path, models, ours_dir, ours_long,
                                     ours_steps, peer_dir, row_runs)

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "/tmp/as_quality", "Working folder (resumable).")
flags.DEFINE_string("report", "results/quality_fashion_mnist",
                    "Output path prefix of the report (.json, .md, .png).")
flags.DEFINE_integer("ae_steps", Options.ae_steps,
                     "Autoencoder steps (shared by all rows).")
flags.DEFINE_integer("spotter_steps", Options.spotter_steps,
                     "Adversarial steps per ablation row (the common budget).")
flags.DEFINE_integer("ours_steps", Options.ours_steps,
                     "Adversarial steps of ours (the headline model); 0 or "
                     "--spotter_steps: ours is the ablation table's full row, "
                     "more: a separate, longer run.")
flags.DEFINE_list("ablations", list(Options.ablations),
                  "Ablation rows to train; 'full' is ours.")
flags.DEFINE_string("config_arg", Options.config_arg,
                    "Extra argument of configs/fashion_mnist.py for every "
                    "model built from it (pretraining, random baselines, "
                    "supervised bound), e.g. 'grid=8'.")
flags.DEFINE_multi_string("override", list(Options.override),
                          "Extra config overrides for every spotter run, e.g. "
                          "--override=spotter.lr=0.001 (the autoencoder is "
                          "shared and takes none). Finished runs are not "
                          "retrained: use a fresh --root.")
flags.DEFINE_bool("deterministic", Options.deterministic, "Pretraining runs "
                  "(the shared autoencoder and every spotter) with "
                  "train.deterministic=True: op determinism and a seeded input, "
                  "so the same command on the same kind of machine retrains the "
                  "same autoencoder and rows bit for bit (a root can then be "
                  "rebuilt and extended).")
flags.DEFINE_integer("row_seeds", Options.row_seeds,
                     "Training seeds per ablation row (--config.seed=0..N-1, "
                     "same shared autoencoder): with 2 or more, the report "
                     "gives each row's seed-to-seed spread and its per-fold "
                     "differences to the full row of the same seed, and the "
                     "ablation verdict uses the spread as a noise floor.")
flags.DEFINE_list("replicate", list(Options.replicate),
                  "Rows that get the seeds after 0 (default: every row of "
                  "--ablations); e.g. --replicate=full,k,l.")
flags.DEFINE_bool("ablation_knn", Options.ablation_knn,
                  "Evaluate the ablation rows with kNN too (about a minute "
                  "more per row); finished evaluations without kNN are run "
                  "again (their linear figures reproduce exactly: the folds, "
                  "the ridge and its penalty choice are deterministic).")
flags.DEFINE_integer("random_seeds", Options.random_seeds,
                     "Random-init discriminators.")
flags.DEFINE_integer("supervised_max_epochs", Options.supervised_max_epochs,
                     "Most epochs of the supervised bound; it stops earlier "
                     "once its accuracy on 5,000 held-out training images has "
                     "not improved for 4 epochs, and the best such epoch is "
                     "the bound (configs/finetune/fashion_mnist.py:supervised).")
flags.DEFINE_bool("peer", Options.peer,
                  "Train and evaluate the peer pretext task, RotNet "
                  "(configs/finetune/fashion_mnist.py:rotnet): the same "
                  "discriminator, preprocessing and number of images as ours.")
flags.DEFINE_string("stages", "pretrain,ours,peer,supervised,evaluate,report",
                    "Comma-separated stages to run; also 'archive' (the last "
                    "stage: --archive gets the root's report inputs) and "
                    "'restore' (the first: a root gets an archive's finished "
                    "runs).")
flags.DEFINE_string("archive", "", "Folder of a root's report inputs for the "
                    "archive and restore stages: every evaluation's "
                    "eval_results.json and its training run's record files "
                    "(config.json, train_done.json, train_summary.json, "
                    "finetune_results.json; never checkpoints), and a hash of "
                    "the shared autoencoder's checkpoint. Restored into a "
                    "fresh root (with --deterministic, on the same kind of "
                    "machine), finished runs are neither trained nor "
                    "evaluated again, the autoencoder is retrained and must "
                    "hash as archived, and new rows train against it.")


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


def pretrain_cmd(opts, arg, workdir, overrides, extra=()):
  if opts.deterministic:
    overrides = list(overrides) + [("train.deterministic", True)]
  return ([sys.executable, "-m", "trainers.pretrain",
           f"--config={config_spec(opts, arg)}",
           f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides]
          + [f"--config.{o}" for o in extra])


# ----------------------------------------------------------------- archive
RECORD_FILES = ("config.json", "train_done.json", "train_summary.json",
                "finetune_results.json")
MANIFEST = "MANIFEST.json"
AE_HASH = "autoencoder_checkpoint.json"
RESTORED = "restored.json"  # in a training run's folder: from an archive


def report_inputs(root, opts):
  """Paths (relative to ``root``) of what the report reads of every model
  evaluated so far: its eval_results.json and its training run's record
  files. The shared autoencoder's own files are left out (a restored root
  retrains it; its evaluation is kept)."""
  out = []
  for name, (_, _, needs) in models(root, opts).items():
    path = eval_path(root, name)
    if not os.path.exists(path):
      continue
    out.append(os.path.relpath(path, root))
    workdir = os.path.dirname(needs) if needs else None
    if workdir and workdir != autoencoder_dir(root):
      out += [os.path.relpath(os.path.join(workdir, f), root) for f in RECORD_FILES
              if os.path.exists(os.path.join(workdir, f))]
  return sorted(set(out))


def autoencoder_hash(root):
  """{variable: hash} of the shared autoencoder's newest checkpoint."""
  from benchmarks.checkpoint_hash import checkpoint_hashes  # pylint: disable=g-import-not-at-top
  return checkpoint_hashes(autoencoder_dir(root))


def stage_archive(root, opts, archive, machine_info):
  files = report_inputs(root, opts)
  for rel in files:
    os.makedirs(os.path.dirname(os.path.join(archive, rel)), exist_ok=True)
    shutil.copyfile(os.path.join(root, rel), os.path.join(archive, rel))
  with open(os.path.join(archive, AE_HASH), "w") as f:
    json.dump(autoencoder_hash(root), f, indent=1, sort_keys=True)
  with open(os.path.join(archive, MANIFEST), "w") as f:
    json.dump({"machine": machine_info, "options": dataclasses.asdict(opts),
               "files": files}, f, indent=1, sort_keys=True)
  log(f"archive: {len(files)} files of {root} in {archive}")


def machine_kind(m):
  return f"{m.get('cores')}-core {isa_tag(m) or 'unknown ISA'}"


def stage_restore(root, archive, machine_info):
  """Copies an archive's files into ``root`` where absent; refuses an archive
  made on another kind of machine (cores and best ISA of ``machine_info``,
  this machine's)."""
  with open(os.path.join(archive, MANIFEST)) as f:
    manifest = json.load(f)
  theirs, ours = machine_kind(manifest["machine"]), machine_kind(machine_info)
  if theirs != ours:
    raise RuntimeError(f"{archive} was measured on a {theirs} machine, this is a "
                       f"{ours} one: runs of two machine kinds are not mixed in "
                       f"one report; use a fresh root without the restore stage")
  copied = 0
  for rel in manifest["files"] + [AE_HASH]:
    dest = os.path.join(root, rel)
    if not os.path.exists(dest):
      os.makedirs(os.path.dirname(dest) or root, exist_ok=True)
      shutil.copyfile(os.path.join(archive, rel), dest)
      copied += 1
      if os.path.basename(rel) == "train_done.json":  # a run without checkpoints
        with open(os.path.join(os.path.dirname(dest), RESTORED), "w") as f:
          json.dump({"archive": os.path.abspath(archive)}, f)
  log(f"restore: {copied} files from {archive} into {root}")


def check_autoencoder(root):
  """After the autoencoder trained in a restored root: it must be the
  archived one, bit for bit, or the restored rows were trained against
  another autoencoder than new rows would be."""
  path = os.path.join(root, AE_HASH)
  if not os.path.exists(path):
    return
  with open(path) as f:
    archived = json.load(f)
  # Every archived variable; a checkpoint may hold more (a newer tree's
  # train state adds step counters, which are no weights).
  ours = autoencoder_hash(root)
  differ = sorted(k for k, v in archived.items() if ours.get(k) != v)
  if differ:
    raise RuntimeError(
        f"the autoencoder trained in {root} is not the archived one ({len(differ)} "
        f"variables differ, e.g. {differ[:2]}): the restored runs cannot be "
        f"mixed with new ones (was --deterministic off, or the machine another "
        f"kind?); use a fresh root without the restore stage")
  log("autoencoder: identical to the archived one")


def train_once(name, cmd, workdir, root):
  """Runs a (resumable) training command unless its marker says it finished."""
  marker = done_marker(workdir)
  if os.path.exists(marker):
    log(f"{name}: done already ({marker})")
    return
  seconds = run_logged(name, cmd, root)
  with open(marker, "w") as f:
    json.dump({"seconds_last_run": seconds, "command": cmd}, f, indent=2)


def stage_pretrain(root, opts):
  ae = autoencoder_dir(root)
  train_once("autoencoder", pretrain_cmd(
      opts, "ablation=full", ae, [("autoencoder.steps", opts.ae_steps),
                                  ("spotter.steps", 0)]), ae, root)
  check_autoencoder(root)
  for row, seed in row_runs(opts):
    wd = ablation_dir(root, row, seed)
    train_once(f"spotter_{os.path.basename(wd)}", pretrain_cmd(
        opts, f"ablation={row}", wd,
        [("autoencoder.steps", opts.ae_steps), ("autoencoder.init_from", ae),
         ("spotter.steps", opts.spotter_steps), ("seed", seed),
         ("train.checkpoint_every", 100)], opts.override), wd, root)


def stage_ours(root, opts):
  """The longer headline run (only when --ours_steps > --spotter_steps)."""
  if not ours_long(opts):
    return
  wd = ours_dir(root, opts)
  train_once(f"spotter_full_{opts.ours_steps}", pretrain_cmd(
      opts, "ablation=full", wd,
      [("autoencoder.steps", opts.ae_steps),
       ("autoencoder.init_from", autoencoder_dir(root)),
       ("spotter.steps", opts.ours_steps),
       ("train.checkpoint_every", 100)], opts.override), wd, root)


def stage_peer(root, opts):
  """RotNet from scratch on the same discriminator, shown as many images as
  ours (ours' adversarial steps x 64, each image in its four rotations)."""
  if not opts.peer:
    return
  wd = peer_dir(root)
  train_once("rotnet", [
      sys.executable, "-m", "trainers.finetune",
      f"--config=configs/finetune/fashion_mnist.py:rotnet,steps={ours_steps(opts)}",
      f"--init=random:{config_spec(opts)}", f"--workdir={wd}"], wd, root)


def stage_supervised(root, opts):
  wd = os.path.join(root, "supervised")
  train_once("supervised", [
      sys.executable, "-m", "trainers.finetune",
      "--config=configs/finetune/fashion_mnist.py:supervised,"
      f"epochs={opts.supervised_max_epochs}",
      f"--init=random:{config_spec(opts)}", f"--workdir={wd}"], wd, root)


def _has_knn(path):
  with open(path) as f:
    return all("knn" in r for r in json.load(f)["folds"].values())


def stage_evaluate(root, opts):
  for name, (flags_, arg, needs) in models(root, opts).items():
    path = eval_path(root, name)
    if os.path.exists(path):
      if NO_KNN[0] in flags_ or _has_knn(path):
        log(f"eval {name}: done already")
        continue
      if needs and os.path.exists(os.path.join(os.path.dirname(needs), RESTORED)):
        log(f"eval {name}: kept without kNN (restored from an archive: its "
            f"training run has no checkpoints here)")
        continue
      log(f"eval {name}: evaluating again, with kNN")
    if needs and not os.path.exists(needs):
      log(f"eval {name}: skipped, its training has not finished ({needs})")
      continue
    run_logged(f"eval_{name}", [
        sys.executable, "-m", "trainers.linear_eval",
        f"--config={EVAL_CONFIG}{arg}", f"--output={os.path.dirname(path)}"]
        + flags_, root)


def stage_report(root, out, opts, command=quality_report.COMMAND):
  report = quality_report.write(root, out, opts, command)
  log(f"wrote {out}.json/.md/.png: best layer {report['best_layer']}, gap "
      f"closure {report['gap_closure']:.2f}, targets {report['targets']}")


def command_line(argv):
  """The command a report names: this module with ``argv`` (the command
  line's arguments), less --root, --stages and --archive."""
  return " ".join([quality_report.COMMAND] + [
      a for a in argv if not a.startswith(("--root", "--stages", "--archive"))])


def options_from_flags(flag_values):
  """The Options of parsed ``flag_values`` (this module's flags; lists as
  tuples)."""
  values = {}
  for field in dataclasses.fields(Options):
    value = flag_values[field.name].value
    values[field.name] = tuple(value) if isinstance(value, list) else value
  return Options(**values)


def main(argv):
  del argv
  opts = options_from_flags(FLAGS)
  root = FLAGS.root
  os.makedirs(root, exist_ok=True)
  stages = FLAGS.stages.split(",")
  if {"archive", "restore"} & set(stages) and not FLAGS.archive:
    raise app.UsageError("the archive and restore stages need --archive=DIR")
  t0 = time.time()
  if "restore" in stages:
    stage_restore(root, FLAGS.archive, machine())
  if "pretrain" in stages:
    stage_pretrain(root, opts)
  if "pretrain" in stages or "ours" in stages:
    stage_ours(root, opts)
  if "peer" in stages:
    stage_peer(root, opts)
  if "supervised" in stages:
    stage_supervised(root, opts)
  if "evaluate" in stages:
    stage_evaluate(root, opts)
  if "report" in stages:
    stage_report(root, FLAGS.report, opts, command_line(sys.argv[1:]))
  if "archive" in stages:
    stage_archive(root, opts, FLAGS.archive, machine())
  log(f"stages {stages} finished in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  app.run(main)
