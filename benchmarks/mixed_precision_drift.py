r"""How far mixed precision drifts from float32 over a few training steps.

  python -m benchmarks.mixed_precision_drift          # ~1 min on 2 CPU cores

From one set of initial weights per seed (``config.tiny_config``, the model
tests/test_train.py checks), trains two autoencoder steps and three
adversarial steps in float32 and in a mixed precision, on the same batches,
and records:

- each loss of the first adversarial step: relative difference to float32;
- the same after the third step (a tiny GAN's trajectories part quickly);
- the cosine between C's and R's weight updates over the three steps.

Writes results/mixed_precision_drift_<machine>.{json,md}: the spread over
seeds behind the bounds of test_mixed_precision_tracks_float32.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from benchmarks.machine import machine, machine_tag, write_report

FLAGS = flags.FLAGS


def define_flags():
  """Flags of the binary (defined when run, so that tests can import the
  module beside others that define flags of the same names)."""
  flags.DEFINE_integer("seeds", 10, "Initialisations (and batches) to try.")
  flags.DEFINE_list("precisions", ["mixed_bfloat16"], "Mixed precisions to compare.")
  flags.DEFINE_string("out_dir", "results", "Output folder.")

LOSSES = ("c/class_loss", "c/mask_loss", "r/adversarial")


def steps_from(precision, init, batches):
  """Players for ``precision`` from weights ``init``, after 2 autoencoder and
  3 adversarial steps on ``batches``; returns (players, each adversarial
  step's metrics)."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting import config as config_lib  # pylint: disable=g-import-not-at-top
  from artifact_spotting import train_state  # pylint: disable=g-import-not-at-top
  c = config_lib.tiny_config(**{"train.precision": precision,
                                "discriminator.dropout": 0.0})
  players = train_state.Players(c, tf.distribute.get_strategy(), probe=False)
  players.model.set_weights(init)
  for opt in (players.ae_opt, players.discriminator_opt, players.repair_opt):
    if isinstance(opt, keras.optimizers.LossScaleOptimizer):
      # Start below the default 2**15, which overflows on the first steps and
      # (correctly) skips them; here every step should apply.
      opt.dynamic_scale.assign(256.0)
  ae = tf.function(players.autoencoder_step)  # the trainer's steps, counted
  adv = tf.function(players.adversarial_step)
  for x in batches[:2]:
    ae({"image": x})
  return players, [{k: float(v) for k, v in adv({"image": x}).items()}
                   for x in batches[2:]]


def drift(precision, seed):
  """(reference players, players, their metrics, cosine of C's and R's
  weight updates) for one initialisation."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting import config as config_lib  # pylint: disable=g-import-not-at-top
  from artifact_spotting import train_state  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  batches = [tf.constant(rng.uniform(-1, 1, (8, 16, 16, 1)), tf.float32)
             for _ in range(5)]
  keras.utils.set_random_seed(seed)
  base = train_state.Players(config_lib.tiny_config(), tf.distribute.get_strategy(),
                           probe=False)
  init = base.model.get_weights()
  ref, ref_metrics = steps_from("float32", init, batches)
  got, metrics = steps_from(precision, init, batches)
  start = {v.path: w for v, w in zip(base.model.weights, init)}

  def update(players):
    vs = players.model.discriminator_variables + players.model.repair_variables
    return np.concatenate([(v.numpy() - start[v.path]).ravel() for v in vs])
  d_ref, d_got = update(ref), update(got)
  cosine = float(d_ref @ d_got / (np.linalg.norm(d_ref) * np.linalg.norm(d_got)))
  return ref, got, ref_metrics, metrics, cosine


def _rel(a, b):
  return abs(a - b) / max(abs(b), 1e-12)


def main(argv):
  del argv
  rows = []
  for precision in FLAGS.precisions:
    for seed in range(FLAGS.seeds):
      _, _, ref, got, cosine = drift(precision, seed)
      rows.append({"precision": precision, "seed": seed, "update_cosine": cosine,
                   "first_step_rel": {k: _rel(got[0][k], ref[0][k]) for k in LOSSES},
                   "third_step_rel": {k: _rel(got[2][k], ref[2][k]) for k in LOSSES}})
      print(precision, seed, f"cosine {cosine:.3f}", flush=True)
  m = machine()
  tag = machine_tag(m)
  command = (f"python -m benchmarks.mixed_precision_drift --seeds={FLAGS.seeds} "
             f"--precisions={','.join(FLAGS.precisions)}")
  report = {"machine": m, "tag": tag, "date": time.strftime("%Y-%m-%d"),
            "command": command, "rows": rows}
  lines = [f"# Mixed precision vs. float32 over 3 adversarial steps ({tag})", "",
           f"Machine: {m['cpu']} ({tag}), TensorFlow {m['tensorflow']}; "
           f"{report['date']}. Reproduce: `{command}`. Model: "
           "`config.tiny_config()` (16x16), batch 8, 2 autoencoder + 3 "
           "adversarial steps from the same weights.", "",
           "| precision | seed | max rel. loss diff, step 1 | max rel. loss diff, "
           "step 3 | C+R update cosine |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['precision']} | {r['seed']} | "
                 f"{max(r['first_step_rel'].values()):.4f} | "
                 f"{max(r['third_step_rel'].values()):.4f} | {r['update_cosine']:.3f} |")
  for precision in FLAGS.precisions:
    mine = [r for r in rows if r["precision"] == precision]
    lines += ["", f"{precision}: over {len(mine)} seeds, step-1 loss differences up to "
              f"{max(max(r['first_step_rel'].values()) for r in mine):.4f}, step-3 up to "
              f"{max(max(r['third_step_rel'].values()) for r in mine):.4f}; update "
              f"cosine at least {min(r['update_cosine'] for r in mine):.3f}."]
  write_report(FLAGS.out_dir, f"mixed_precision_drift_{tag}", report, lines)
  print("\n".join(lines))


if __name__ == "__main__":
  define_flags()
  app.run(main)
