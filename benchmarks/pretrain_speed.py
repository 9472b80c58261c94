r"""Images/s of each pretraining phase, with and without XLA.

  python -m benchmarks.pretrain_speed                       # all variants
  python -m benchmarks.pretrain_speed --config=configs/fashion_mnist.py --windows=5

Each variant runs in its own process (so XLA and non-XLA do not share
caches or thread pools): build the model for the config, feed the config's
real input pipeline, warm up (tracing/compilation), then time ``--windows``
windows of ``--steps`` steps each and report the median images/s. Writes
results/pretrain_speed.json and .md with the machine it ran on. Run it on an
otherwise idle machine.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.machine import machine

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/fashion_mnist.py", "Config file.")
flags.DEFINE_integer("steps", 10, "Steps per timed window.")
flags.DEFINE_integer("windows", 5, "Timed windows (median reported).")
flags.DEFINE_string("variant", "", "Internal: run one variant and print JSON.")
flags.DEFINE_string("out", "results/pretrain_speed", "Output path prefix.")

VARIANTS = [("autoencoder", False), ("autoencoder", True),
            ("spotter", False), ("spotter", True)]


def run_variant(phase, jit):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting import train_lib
  from artifact_spotting.data import pipeline
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", FLAGS.config)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config("")
  strategy = tf.distribute.get_strategy()
  source = pipeline.open_source(config.dataset, config.channels)
  players = train_lib.Players(config, strategy, probe=source.has_label)
  model = players.model
  if phase == "autoencoder":
    batch = config.autoencoder.batch_size
    fn = lambda b: model.autoencoder_step(b, players.ae_opt)
  else:
    batch = config.spotter.batch_size
    fn = lambda b: model.adversarial_step(b, players.c_opt, players.r_opt,
                                          players.probe_opt)
  ds = pipeline.distributed_dataset(strategy, source, config.pp, batch,
                                    shuffle_buffer=config.dataset.shuffle_buffer)
  it = iter(ds)
  loop = train_lib.make_loop(strategy, fn, jit)
  n = tf.constant(FLAGS.steps, tf.int32)
  t0 = time.perf_counter()
  loop(it, n)  # warm-up: trace (and compile)
  warmup = time.perf_counter() - t0
  rates = []
  for _ in range(FLAGS.windows):
    t0 = time.perf_counter()
    out = loop(it, n)
    float(next(iter(out.values())))
    rates.append(FLAGS.steps * batch / (time.perf_counter() - t0))
  params = {
      "autoencoder": int(sum(v.numpy().size for v in model.autoencoder_variables)),
      "discriminator": int(sum(v.numpy().size for v in model.discriminator_variables)),
      "repair": int(sum(v.numpy().size for v in model.generator_variables)),
  }
  return {"phase": phase, "jit_compile": jit, "batch_size": batch,
          "resolution": config.resolution, "images_per_second": statistics.median(rates),
          "window_rates": rates, "warmup_seconds": warmup, "params": params}


def main(argv):
  del argv
  if FLAGS.variant:
    phase, jit = FLAGS.variant.split(":")
    print("RESULT " + json.dumps(run_variant(phase, jit == "xla")))
    return
  results = []
  for phase, jit in VARIANTS:
    cmd = [sys.executable, "-m", "benchmarks.pretrain_speed",
           f"--config={FLAGS.config}", f"--steps={FLAGS.steps}",
           f"--windows={FLAGS.windows}",
           f"--variant={phase}:{'xla' if jit else 'noxla'}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode or not line:
      print(r.stderr[-3000:], file=sys.stderr)
      raise SystemExit(f"variant {phase} jit={jit} failed")
    res = json.loads(line[0][7:])
    print(f"{phase:12s} xla={jit!s:5s} batch={res['batch_size']:4d} "
          f"{res['images_per_second']:8.1f} img/s")
    results.append(res)
  report = {"machine": machine(), "config": FLAGS.config, "steps_per_window": FLAGS.steps,
            "windows": FLAGS.windows, "results": results,
            "date": time.strftime("%Y-%m-%d")}
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  with open(FLAGS.out + ".json", "w") as f:
    json.dump(report, f, indent=2)
  m = report["machine"]
  lines = [f"# Pretraining speed ({FLAGS.config})", "",
           f"Machine: {m['cpu']}, {m['cores']} cores, {m['gpus']} GPUs, "
           f"TensorFlow {m['tensorflow']}, Python {m['python']}; {report['date']}.",
           f"Median of {FLAGS.windows} windows of {FLAGS.steps} steps after a warm-up "
           "window, real input pipeline, one process per row. Reproduce: "
           "`python -m benchmarks.pretrain_speed`.", "",
           "| phase | XLA | resolution | global batch | images/s | warm-up s | params (AE / C / R) |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    p = r["params"]
    lines.append(f"| {r['phase']} | {'on' if r['jit_compile'] else 'off'} | "
                 f"{r['resolution']} | {r['batch_size']} | {r['images_per_second']:.1f} | "
                 f"{r['warmup_seconds']:.1f} | {p['autoencoder']:,} / "
                 f"{p['discriminator']:,} / {p['repair']:,} |")
  with open(FLAGS.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
