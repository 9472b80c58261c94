r"""Input gradient of a stride-1 'same' conv: TF's kernel vs. our formulations.

  python -m benchmarks.conv_input_grad        # ~1 min on 2 CPU cores

For the discriminator's conv shapes at the Fashion-MNIST config (batch 160 =
the adversarial step's real + fake + history images at batch 64), times
dL/dx of one conv three ways, in float32, each with oneDNN off and on
(TF_ENABLE_ONEDNN_OPTS=0/1, one process each):

- ``tf``: ``tf.nn.conv2d``'s own gradient (Conv2DBackpropInput);
- ``forward_conv``: :func:`artifact_spotting.models.blocks.conv2d_same`;
- ``matmul_shift``: :func:`artifact_spotting.models.blocks.conv2d_few_channels`.

Only dL/dx is asked for, so the kernel gradient is pruned from each graph.
Writes results/conv_input_grad_<machine>.{json,md}; blocks.Conv2D picks its
formulation per shape and oneDNN state from these timings.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from benchmarks import child
from benchmarks.machine import machine, machine_tag, median_seconds, write_report

FLAGS = flags.FLAGS
flags.DEFINE_bool("child", False, "Internal: time in this process, print JSON.")
flags.DEFINE_integer("repeats", 15, "Timed calls per case (median reported).")
flags.DEFINE_string("out_dir", "results", "Output folder.")

# (batch, size, in channels, out channels, kernel): conv1..conv5 of
# config.small_alexnet on 32x32 grayscale (conv4 and conv5 share a shape).
SHAPES = ((160, 32, 1, 64, 5), (160, 16, 64, 128, 3), (160, 8, 128, 256, 3),
          (160, 4, 256, 256, 3))
METHODS = ("tf", "forward_conv", "matmul_shift")


def time_case(method, n, size, cin, cout, k, repeats):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting.models import blocks  # pylint: disable=g-import-not-at-top
  conv = {"tf": lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"),
          "forward_conv": blocks.conv2d_same,
          "matmul_shift": blocks.conv2d_few_channels}[method]
  x = tf.random.stateless_normal([n, size, size, cin], seed=(1, 2))
  w = tf.random.stateless_normal([k, k, cin, cout], seed=(3, 4))
  dy = tf.random.stateless_normal([n, size, size, cout], seed=(5, 6))

  @tf.function
  def dx(x, w, dy):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(conv(x, w) * dy)
    return tape.gradient(loss, x)
  ref = dx(x, w, dy).numpy()
  return median_seconds(dx, (x, w, dy), repeats), ref


def time_all():
  import numpy as np  # pylint: disable=g-import-not-at-top
  from artifact_spotting.hardware import onednn_enabled  # pylint: disable=g-import-not-at-top
  rows = []
  for shape in SHAPES:
    ref = None
    for method in METHODS:
      seconds, out = time_case(method, *shape, FLAGS.repeats)
      ref = out if ref is None else ref
      rows.append({"shape": shape, "method": method, "ms": seconds * 1e3,
                   "max_abs_diff_vs_tf": float(np.max(np.abs(out - ref)))})
  return {"onednn": onednn_enabled(), "rows": rows}


def main(argv):
  del argv
  if FLAGS.child:
    child.emit(time_all())
    return
  runs = []
  for flag in ("0", "1"):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag)
    runs.append(child.run(["benchmarks.conv_input_grad", "--child",
                           f"--repeats={FLAGS.repeats}"],
                          f"TF_ENABLE_ONEDNN_OPTS={flag} run", env=env))
  m = machine()
  tag = machine_tag(m)
  report = {"machine": m, "tag": tag, "date": time.strftime("%Y-%m-%d"),
            "command": "python -m benchmarks.conv_input_grad", "runs": runs}
  lines = [f"# Conv input gradient, float32: ms per call (median of {FLAGS.repeats})",
           "", f"Machine: {m['cpu']} ({tag}), TensorFlow {m['tensorflow']}; "
           f"{report['date']}. Reproduce: `{report['command']}`.", "",
           "| oneDNN | batch, size, in, out, kernel | " + " | ".join(METHODS) + " |",
           "|---|---|" + "---|" * len(METHODS)]
  for run in runs:
    for shape in SHAPES:
      cells = [next(r for r in run["rows"] if r["method"] == meth
                    and tuple(r["shape"]) == shape) for meth in METHODS]
      lines.append(f"| {'on' if run['onednn'] else 'off'} | {shape} | "
                   + " | ".join(f"{c['ms']:.2f}" for c in cells) + " |")
  worst = max(r["max_abs_diff_vs_tf"] for run in runs for r in run["rows"])
  lines += ["", f"Largest |difference| from tf's gradient over all cases: {worst:.2e} "
            "(inputs and kernels standard normal)."]
  write_report(FLAGS.out_dir, f"conv_input_grad_{tag}", report, lines)
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
