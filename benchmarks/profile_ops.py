r"""Where a training step's time goes: TensorFlow op types, from the profiler.

  python -m benchmarks.profile_ops                                  # adversarial step
  python -m benchmarks.profile_ops --variant=features:256:noxla:float32

Builds the variant exactly as benchmarks/throughput.py times it (same model,
real input pipeline, multi-step tf.function loop), warms it up, then records
``--windows`` windows of ``--steps`` steps with ``tf.profiler`` and reads the
trace (the ``.xplane.pb`` TensorFlow writes; no TensorBoard plugin needed):

- per op type (Conv2D, Conv2DBackpropFilter, FusedBatchNormGradV3, ...): the
  op's wall time on TensorFlow's executor threads (time spent inside ops it
  nests excluded), per step and as a share of all op time, with its call count;
- the step's wall time, the executor threads' op time (over 1 when ops run
  side by side), and the busy time of the input pipeline's threads (tf.data),
  all per step.

Writes ``results/profile_<phase>_<machine>.{json,md}``. The profiler adds a
little overhead per op; the shares, not the absolute times, are the point
(absolute speed comes from benchmarks/throughput.py).
"""

from __future__ import annotations

import tempfile
import time

from absl import app, flags

from artifact_spotting.evaluation import load_pretrain_config as load_config
from benchmarks.machine import machine, machine_tag, write_report
from benchmarks.variants import build_variant, parse_variant
from benchmarks.xplane import breakdown, read_trace

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/fashion_mnist.py", "Pretraining config.")
flags.DEFINE_string("variant", "", "phase:global_batch:xla|noxla:precision; "
                    "default: the config's adversarial step, float32, no XLA.")
flags.DEFINE_integer("steps", 5, "Steps per profiled window.")
flags.DEFINE_integer("windows", 2, "Profiled windows.")
flags.DEFINE_integer("top", 25, "Op types listed in the markdown table.")
flags.DEFINE_string("out_dir", "results", "Output folder.")

def profile(config, variant: str, steps: int, windows: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  phase, batch, jit, precision = parse_variant(variant)
  _, loop, ds, _ = build_variant(config, phase, batch, jit, precision)
  iterator, n = iter(ds), tf.constant(steps, tf.int32)
  for _ in range(2):  # trace / compile, then one plain window
    float(next(iter(loop(iterator, n).values())))
  logdir = tempfile.mkdtemp(prefix="as_profile_")
  tf.profiler.experimental.start(logdir)
  t0 = time.perf_counter()
  for _ in range(windows):
    float(next(iter(loop(iterator, n).values())))
  seconds = time.perf_counter() - t0
  tf.profiler.experimental.stop()
  out = breakdown(read_trace(logdir), steps * windows)
  out.update(phase=phase, batch_size=batch, jit_compile=jit, precision=precision,
             resolution=config.resolution, steps=steps * windows,
             images_per_second_while_profiled=steps * windows * batch / seconds)
  return out


def markdown(report):
  r = report
  lines = [
      f"# Op-type profile: {r['phase']} step, batch {r['batch_size']}, "
      f"{r['precision']}, XLA {'on' if r['jit_compile'] else 'off'}, "
      f"{r['resolution']}x{r['resolution']}",
      "",
      f"Machine: {r['machine']['cpu']} ({r['tag']}), TensorFlow "
      f"{r['machine']['tensorflow']}; {r['date']}. Reproduce: `{r['command']}`.",
      "",
      f"Per step ({r['steps']} profiled steps): wall {r['wall_seconds_per_step'] * 1e3:.1f} ms, "
      f"op time on the executor threads {r['op_seconds_per_step'] * 1e3:.1f} ms, "
      f"input-pipeline threads busy {r['input_busy_seconds_per_step'] * 1e3:.1f} ms; "
      f"{r['images_per_second_while_profiled']:.1f} img/s while profiled "
      "(the profiler's overhead included; speed figures: benchmarks/throughput.py).",
      "",
      "| op type | ms / step | share | calls / step |",
      "|---|---|---|---|",
  ]
  items = list(r["op_types"].items())
  for k, v in items[:FLAGS.top]:
    lines.append(f"| {k} | {v['seconds_per_step'] * 1e3:.2f} | {v['share']:.3f} | "
                 f"{v['calls_per_step']:.0f} |")
  rest = items[FLAGS.top:]
  if rest:
    lines.append(f"| {len(rest)} other types | "
                 f"{sum(v['seconds_per_step'] for _, v in rest) * 1e3:.2f} | "
                 f"{sum(v['share'] for _, v in rest):.3f} | |")
  return lines


def main(argv):
  del argv
  config = load_config(FLAGS.config)
  variant = FLAGS.variant or f"spotter:{config.spotter.batch_size}:noxla:float32"
  report = profile(config, variant, FLAGS.steps, FLAGS.windows)
  m = machine()
  report.update(machine=m, tag=machine_tag(m), date=time.strftime("%Y-%m-%d"),
                config=FLAGS.config, variant=variant,
                command=f"python -m benchmarks.profile_ops --variant={variant} "
                        f"--steps={FLAGS.steps} --windows={FLAGS.windows}")
  path = write_report(FLAGS.out_dir, f"profile_{report['phase']}_{report['tag']}",
                      report, markdown(report))
  top = list(report["op_types"].items())[:8]
  print("\n".join(f"{k:32s} {v['share']:.3f}" for k, v in top))
  print(f"wrote {path}.json/.md")


if __name__ == "__main__":
  app.run(main)
