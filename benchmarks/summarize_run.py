r"""Summarize a pretraining workdir's TensorBoard logs into results/.

  python -m benchmarks.summarize_run --workdir=/tmp/as_fmnist \
      --out=results/pretrain_fashion_mnist

Writes OUT.json (every logged scalar), OUT.md (a table of the key scalars at
about ten points of each phase, plus the run's images/s) and OUT_montage.png
(the last montage: input | autoencoded | dropped cells | repaired | predicted
keep-mask). Nothing here trains: it only reads what the run logged.
"""

import json
import os
import platform

import numpy as np
import tensorflow as tf
from absl import app, flags

from artifact_spotting.events import read_workdir

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Pretraining workdir.")
flags.DEFINE_string("out", "results/pretrain_fashion_mnist", "Output prefix.")
flags.DEFINE_integer("rows", 10, "Rows per phase in the markdown table.")

SPOTTER_KEYS = ["c/class_loss", "c/real_accuracy", "c/fake_accuracy",
                "c/mask_accuracy", "c/mask_loss", "r/adversarial", "r/recon_kept",
                "probe/accuracy"]
AE_KEYS = ["ae/loss", "ae/mse"]


def table(scalars, keys, rows):
  steps = [s for s, _ in scalars.get(keys[0], [])]
  if not steps:
    return []
  pick = sorted({steps[int(round(i))] for i in np.linspace(0, len(steps) - 1, rows)})
  lookup = {k: dict(scalars.get(k, [])) for k in keys}
  lines = ["| step | " + " | ".join(keys) + " |",
           "| --- |" + " --- |" * len(keys)]
  for s in pick:
    cells = [f"{lookup[k][s]:.3f}" if s in lookup[k] else "" for k in keys]
    lines.append(f"| {s} | " + " | ".join(cells) + " |")
  return lines


def main(argv):
  del argv
  scalars, images = read_workdir(FLAGS.workdir)
  with open(os.path.join(FLAGS.workdir, "config.json")) as f:
    config = json.load(f)
  summary = {}
  path = os.path.join(FLAGS.workdir, "train_summary.json")
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  report = {"workdir": FLAGS.workdir, "machine": {
      "platform": platform.platform(), "cores": os.cpu_count(),
      "tensorflow": tf.__version__}, "train_summary": summary,
            "config": {k: config[k] for k in ("autoencoder", "spotter", "resolution")},
            "scalars": scalars}
  with open(FLAGS.out + ".json", "w") as f:
    json.dump(report, f, indent=1)
  sp, ae = config["spotter"], config["autoencoder"]
  lines = [f"# Pretraining run: {config['dataset']['name']} at {config['resolution']}x"
           f"{config['resolution']}", "",
           f"Machine: {report['machine']['platform']}, {report['machine']['cores']} cores, "
           f"TensorFlow {tf.__version__}. Autoencoder {ae['steps']} steps x batch "
           f"{ae['batch_size']}; spotter {sp['steps']} steps x batch {sp['batch_size']}, "
           f"drop rate {sp['drop_rate']}, history {sp['history_size']}.",
           "Produced by `python -m benchmarks.summarize_run` from the run's TensorBoard "
           "logs. Accuracies are on the training batches of the logging window "
           "(C's real/fake accuracy at threshold 0.5; mask accuracy per cell; the probe "
           "is the online linear probe on stop-gradient conv5).", ""]
  for phase, r in summary.items():
    if r:
      lines.append(f"- {phase}: {r['steps']} steps, {r['images_per_second']:.1f} img/s "
                   "(median of the logging windows after the first)")
  drop = sp["drop_rate"]
  lines += ["", f"Chance levels: real/fake 0.5; mask accuracy of always answering "
            f"'dropped' = {drop:.2f}, 'kept' = {1 - drop:.2f}.", "",
            "## Phase 1: autoencoder", ""] + table(scalars, AE_KEYS, FLAGS.rows)
  lines += ["", "## Phase 2: damage & repair vs. spotter", ""] + table(
      scalars, SPOTTER_KEYS, FLAGS.rows)
  montage = [v for k, v in images.items() if k.startswith("montage/")]
  if montage:
    step, value = montage[0][-1]
    png = FLAGS.out + "_montage.png"
    with open(png, "wb") as f:
      f.write(value[2])
    lines += ["", f"Montage at step {step} (`{os.path.basename(png)}`): per row, "
              "input | autoencoded | dropped cells (black) | repaired | predicted "
              "keep-mask (white = kept)."]
  with open(FLAGS.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
