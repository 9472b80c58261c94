r"""How fast the discriminator's kernels run, against the machine's matmul rate.

  python -m benchmarks.kernel_rates            # ~1 min on 2 CPU cores

The utilisation in results/throughput_<machine>.md compares a whole step with
large square matmuls. This script asks, one layer at a time and at the shapes
the adversarial step uses (C sees real + fake + history rows: batch x (2 +
history fraction) images), how far each kernel is from that rate:

- ``forward``: the conv (``blocks.Conv2D``, as C calls it);
- ``input_grad``: its input gradient, as ``blocks.Conv2D`` computes it;
- ``filter_grad``: its kernel gradient (TensorFlow's Conv2DBackpropFilter);
- ``matmul``: a plain matmul with the conv's FLOPs ([N*H*W, k*k*Cin] x
  [k*k*Cin, Cout], what an im2col conv would run), i.e. the best a conv of
  this shape could hope for from the matmul kernel;
- ``bn_act``: batch norm (training mode, ``blocks.BatchNorm``) + leaky ReLU on
  the conv's output, forward and backward, as ``blocks.ConvBlock`` runs them:
  memory-bound work with few FLOPs, in ms.

Also times one optimizer update of the adversarial step's trained variables
(C and R) with keras' Adam and with ``optimizers.FusedAdam`` (one kernel per
variable), in ms.

Writes results/kernel_rates_<machine>.{json,md}.
"""

from __future__ import annotations

import time

from absl import app, flags

from artifact_spotting.evaluation import load_pretrain_config as load_config
from benchmarks.machine import (best_matmul_rate, machine, machine_tag,
                                median_seconds, write_report)

FLAGS = flags.FLAGS


def define_flags():
  """Flags of the binary (defined when run, so that tests can import the
  module beside others that define flags of the same names)."""
  flags.DEFINE_string("config", "configs/fashion_mnist.py", "Pretraining config.")
  flags.DEFINE_integer("repeats", 15, "Timed calls per case (median reported).")
  flags.DEFINE_string("out_dir", "results", "Output folder.")

CASES = ("forward", "input_grad", "filter_grad", "matmul")


def layer_shapes(config):
  """(batch, size, in channels, out channels, kernel) of C's conv1..conv5 in
  the adversarial step of ``config`` (stride-1 layers, square inputs)."""
  s = config.spotter
  batch = s.batch_size * 2 + (round(s.history_fraction * s.batch_size)
                              if s.history_size else 0)
  size, cin, out = config.resolution, config.channels, []
  for spec in config.discriminator.convs:
    if int(spec["stride"]) != 1:
      raise SystemExit("kernel_rates covers stride-1 discriminators only")
    out.append((batch, size, cin, int(spec["filters"]), int(spec["kernel"])))
    cin = int(spec["filters"])
    if spec.get("pool", False):
      size = -(-size // 2)
  return out


def time_layer(n, size, cin, cout, k, repeats):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting.models import blocks  # pylint: disable=g-import-not-at-top
  conv = blocks.Conv2D(cout, k, padding="same", use_bias=False)
  conv.build((None, size, size, cin))
  x = tf.random.stateless_normal([n, size, size, cin], seed=(1, 2))
  dy = tf.random.stateless_normal([n, size, size, cout], seed=(3, 4))
  a = tf.random.stateless_normal([n * size * size, k * k * cin], seed=(5, 6))
  b = tf.random.stateless_normal([k * k * cin, cout], seed=(7, 8))

  def grads(wrt_input):
    @tf.function
    def fn(x, dy):
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(conv(x) * dy)
      return tape.gradient(loss, x if wrt_input else conv.kernel)
    return fn

  bn = blocks.BatchNorm(momentum=0.9, epsilon=1e-5)  # as in blocks.ConvBlock
  act = keras.layers.LeakyReLU(0.2)
  bn.build((None, size, size, cout))

  @tf.function
  def bn_act(h, dy):
    with tf.GradientTape() as tape:
      tape.watch(h)
      loss = tf.reduce_sum(act(bn(h, training=True)) * dy)
    return tape.gradient(loss, [h] + bn.trainable_weights)

  seconds = {
      "forward": median_seconds(tf.function(lambda x: conv(x)), (x,), repeats),
      "input_grad": median_seconds(grads(True), (x, dy), repeats),
      "filter_grad": median_seconds(grads(False), (x, dy), repeats),
      "matmul": median_seconds(tf.function(tf.matmul), (a, b), repeats),
      "bn_act": median_seconds(bn_act, (dy, dy), repeats),
  }
  return {"shape": [n, size, cin, cout, k], "flops": 2.0 * n * size * size * k * k * cin * cout,
          "seconds": seconds}


def time_optimizers(config, repeats):
  """ms of one Adam update of C's and R's variables: keras' and ours."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting import train_lib  # pylint: disable=g-import-not-at-top
  from artifact_spotting.optimizers import FusedAdam  # pylint: disable=g-import-not-at-top
  model = train_lib.Players(config, tf.distribute.get_strategy(), probe=False).model
  variables = model.discriminator_variables + model.generator_variables
  grads = [tf.random.stateless_normal(v.shape, seed=(i, 0)) * 1e-3
           for i, v in enumerate(variables)]
  out = {"variables": len(variables),
         "parameters": int(sum(v.numpy().size for v in variables))}
  for name, cls in (("keras_adam", keras.optimizers.Adam), ("fused_adam", FusedAdam)):
    opt = cls(1e-4)
    opt.build(variables)

    @tf.function
    def updates(n, opt=opt):
      for _ in tf.range(n):
        opt.apply_gradients(zip(grads, variables))
      return opt.iterations
    out[name + "_ms"] = 1e3 * median_seconds(updates, (tf.constant(10),), repeats) / 10
  return out


def conv_work(rows, fake_share):
  """C's conv work in one adversarial step at the measured rates: (FLOPs,
  seconds). Per layer: the forward, the filter gradient, and the input
  gradient twice (C's loss and R's loss each run back through C), except
  conv1's input gradient, needed for R's loss on the fakes only."""
  flops = seconds = 0.0
  for i, r in enumerate(rows):
    passes = {"forward": 1.0, "filter_grad": 1.0,
              "input_grad": fake_share if i == 0 else 2.0}
    for case, n in passes.items():
      flops += n * r["flops"]
      seconds += n * r["seconds"][case]
  return flops, seconds


def main(argv):
  del argv
  from artifact_spotting.hardware import onednn_enabled  # pylint: disable=g-import-not-at-top
  config = load_config(FLAGS.config)
  peak = best_matmul_rate("float32")
  rows = [time_layer(*shape, FLAGS.repeats) for shape in layer_shapes(config)]
  optimizers = time_optimizers(config, FLAGS.repeats)
  for r in rows:
    r["fraction_of_matmul_peak"] = {c: r["flops"] / r["seconds"][c] / peak for c in CASES}
  s = config.spotter
  flops, seconds = conv_work(rows, s.batch_size / rows[0]["shape"][0])
  c_convs = {"flops": flops, "seconds": seconds,
             "fraction_of_matmul_peak": flops / seconds / peak}
  m = machine()
  tag = machine_tag(m)
  command = f"python -m benchmarks.kernel_rates --config={FLAGS.config}"
  report = {"machine": m, "tag": tag, "date": time.strftime("%Y-%m-%d"),
            "command": command, "config": FLAGS.config, "onednn": onednn_enabled(),
            "matmul_peak_flops_per_second": peak, "rows": rows,
            "optimizer_update": optimizers, "c_conv_work_per_step": c_convs}
  lines = [
      f"# Discriminator kernels against the matmul rate, float32 ({FLAGS.config})", "",
      f"Machine: {m['cpu']} ({tag}), TensorFlow {m['tensorflow']}, oneDNN "
      f"{'on' if report['onednn'] else 'off'}; {report['date']}. Reproduce: `{command}`.",
      f"Matmul peak (best square matmul, same run): {peak / 1e9:.1f} GFLOP/s. "
      f"Median of {FLAGS.repeats} calls. Each cell: GFLOP/s (fraction of the peak); "
      "`matmul` is a plain matmul with the conv's FLOPs (its im2col shape); "
      "`bn_act` is batch norm + leaky ReLU forward and backward on the conv's "
      "output, in ms.", "",
      "| batch, size, in, out, kernel | GFLOP | " + " | ".join(CASES) + " | bn_act ms |",
      "|---|---|" + "---|" * (len(CASES) + 1)]
  for r in rows:
    cells = [f"{r['flops'] / r['seconds'][c] / 1e9:.0f} ({r['fraction_of_matmul_peak'][c]:.2f})"
             for c in CASES]
    lines.append(f"| {tuple(r['shape'])} | {r['flops'] / 1e9:.2f} | " + " | ".join(cells)
                 + f" | {r['seconds']['bn_act'] * 1e3:.1f} |")
  lines += ["", f"C's conv work in one adversarial step at these rates (forward, "
            "filter gradient, input gradient for C's loss and for R's loss; "
            f"conv1's for the fakes only): {flops / 1e9:.1f} GFLOP in "
            f"{seconds * 1e3:.0f} ms, {c_convs['fraction_of_matmul_peak']:.2f} of the "
            "matmul peak: what C's part of the step could reach if nothing "
            "else took time."]
  o = optimizers
  lines += ["", f"One Adam update of C's and R's {o['variables']} variables "
            f"({o['parameters']:,} parameters): keras Adam {o['keras_adam_ms']:.2f} ms, "
            f"FusedAdam {o['fused_adam_ms']:.2f} ms."]
  write_report(FLAGS.out_dir, f"kernel_rates_{tag}", report, lines)
  print("\n".join(lines))


if __name__ == "__main__":
  define_flags()
  app.run(main)
