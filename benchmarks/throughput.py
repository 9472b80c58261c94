r"""Throughput and hardware utilisation of pretraining and feature extraction.

  python -m benchmarks.throughput                 # ~30 min on 2 idle CPU cores
  python -m benchmarks.throughput --quick         # 6 variants, shorter windows

For each variant (phase x global batch x XLA x precision x replicas), in its
own process: build the config's model, feed the config's real input pipeline, warm up
(trace / compile), then time ``--windows`` windows of ``--steps`` steps and take
the median images/s; with ``--rounds`` (default 2) every variant runs once
per round, interleaved, and its figure is the median over all its windows (on
a shared machine a slow spell then hits every variant alike instead of
skewing a ratio such as the mixed-precision speed-up). Each timed window on
the real input pipeline is paired with a window of the same step on one
cached batch repeated (no input pipeline), alternating which of the two goes
first, so

  input_wait_share = 1 - median over pairs of (real-input images/s) /
                                              (cached-batch images/s)

is the share of step time spent waiting for data (0 when the pipeline keeps
up; clipped at 0) and a drift of the machine's speed hits both sides of a
pair alike (before 2026-11-23 all real windows ran first, then all cached
ones, and the host's drift read as input wait). The input pipeline is also
timed alone (no model), which says how much of the CPU feeding a step at a
given rate takes.

FLOPs per image are counted twice:

- from the traced step (``flops_per_image``, used for the utilisation): the
  step function is traced once more on the variant's batch shape, the ops the
  runtime prunes (those no output or state update depends on, e.g. the weight
  gradients of the frozen decoder) are dropped by walking back from the
  graph's outputs and control outputs, and the FLOPs TensorFlow registers for
  each kept op (convolutions, their gradients, matmuls, elementwise math) are
  summed, into called functions' bodies too. Ops the registry does not cover
  (batch norm, pooling gradients' bookkeeping, casts) count zero.
  (The counters are benchmarks/flops.py's.)
- by hand (``flops_per_image_by_hand``, a cross-check): each network's
  forward FLOPs from TensorFlow's profiler, composed by what the step needs:
  a backward pass costs one forward for the input gradients plus one for the
  weight gradients, the first layer's input gradient is not needed, frozen
  networks only pass input gradients through. R's loss is on the fakes, but C
  runs its batch norm in training mode on [real, fake, history] together, so
  the batch statistics couple the rows and the exact gradient needs C's input
  gradients on every view (counts before 2026-11-23 took the fakes only).

Work the implementation does beyond what the traced step needs shows up as
lower utilisation, which is the point:

  utilisation = images/s * FLOPs per image / measured matmul FLOP/s

where the matmul rate (float32 and bfloat16, large square matmuls) is measured
in the same run on the same device, before and after the variants, the better
of the two taken (a shared host can halve one measurement). Writes
results/throughput_<machine>.json and .md; never mix figures of two machines
in one ratio.

Two kinds of rows beside our step on one device:

- ``keras_fit``: the same adversarial step written the plain way a Keras
  user would (benchmarks/keras_plain.py: stock layers, a ``train_step``
  override, keras' Adam, ``Model.fit`` with its defaults), float32, the
  spotter batch, timed by a callback over the same windows and rounds (each
  window a ``fit`` call: ``steps // 2`` untimed steps, then ``--steps``
  timed from the end of the last untimed batch). The report gives ours /
  plain images/s for the same batch and precision on this machine: what the
  kernels, the fused optimizer and the multi-step loop buy, measured. Same
  parameters per network, traced FLOPs per image within about 1% of ours.
- ``...:r2``: our step mirrored over 2 logical CPU devices of the same cores
  (distribute.logical_cpus=2), batch norm per replica with XLA (config.distribute.batch_norm's
  "auto"), synchronized without; FLOPs counted on the replicas' steps traced
  with the whole batch each, divided by the images they took.
"""

from __future__ import annotations

import statistics
import sys
import time

from absl import app, flags

from artifact_spotting.loading import pretrain_config as load_config
from benchmarks import child
from benchmarks.flops import model_flops, step_flops, step_flops_by_hand
from benchmarks.machine import (MATMUL_SIZES, best_matmul_rate, machine,
                                machine_tag, write_report)
from benchmarks.variants import Variant, build_variant, parse_row, variant_name

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/fashion_mnist.py", "Pretraining config.")
flags.DEFINE_integer("steps", 10, "Steps per timed window.")
flags.DEFINE_integer("windows", 5, "Timed windows (median reported).")
flags.DEFINE_bool("quick", False, "Fewer variants and windows.")
flags.DEFINE_integer("rounds", 2, "Interleaved rounds over the variants (each "
                     "variant once per round, in its own process); a variant's "
                     "images/s is the median over all its windows, so a slow "
                     "spell of a shared machine hits every variant alike.")
flags.DEFINE_string("variant", "", "Internal: run one variant (or 'pipeline': the "
                    "input pipeline alone), print JSON.")
flags.DEFINE_list("only", [], "Run just these variants, each "
                  "phase:batch:xla|noxla:precision[:rN] (phase spotter, "
                  "autoencoder, features or keras_fit: the plain Keras step "
                  "under Model.fit; rN: N logical CPU devices, mirrored), e.g. "
                  "spotter:64:noxla:float32,keras_fit:64:noxla:float32,"
                  "spotter:64:xla:float32:r2.")
flags.DEFINE_string("tag", "", "Machine tag for the output name (default: "
                    "cpu<cores> or the GPU's name).")
flags.DEFINE_string("out_dir", "results", "Output folder.")


# ------------------------------------------------------------------ variant
def run_variant(phase: str, batch: int, jit: bool, precision: str,
                replicas: int = 1):
  if phase == "keras_fit":
    return run_keras_fit(batch, jit, precision)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting.data import pipeline  # pylint: disable=g-import-not-at-top
  config = load_config(FLAGS.config)
  model, loop, ds, (strategy, source, pp, step_fn) = build_variant(
      config, phase, batch, jit, precision, replicas)
  n = tf.constant(FLAGS.steps, tf.int32)
  settle = tf.constant(max(1, FLAGS.steps // 2), tf.int32)

  def window(iterator, steps=n):
    t0 = time.perf_counter()
    float(next(iter(loop(iterator, steps).values())))
    return time.perf_counter() - t0

  # The same step on one cached batch: no input pipeline in the way.
  one = next(iter(pipeline.make_dataset(source, pp, batch, training=True,
                                        shuffle_buffer=1000)))
  real = iter(ds)
  cached = iter(strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(one).repeat()))
  warm = window(real)  # warm-up: trace, compile
  window(cached)

  def real_window():
    # Untimed steps first: while the cached window ran, the input pipeline
    # refilled its prefetch buffer, which would flatter the next window.
    window(real, settle)
    return window(real)

  rates, rates_cached = alternate_windows(
      FLAGS.windows, FLAGS.steps * batch, real_window, lambda: window(cached))
  flops = model_flops(model, config.resolution, config.channels,
                      config.spotter.history_fraction, model.history is not None,
                      config.spotter.fakes)
  if replicas == 1:
    traced, traced_by_type, nested = step_flops(step_fn, one)
  else:  # every replica's step on the whole batch (a mirrored variable
    # updates from replica context only), per image of the replicas' batches
    traced, traced_by_type, nested = step_flops(
        lambda b: strategy.run(step_fn, args=(b,)), one)
    traced /= replicas
    traced_by_type = {k: v / replicas for k, v in traced_by_type.items()}
  params = {
      "autoencoder": int(sum(v.numpy().size for v in model.autoencoder_variables)),
      "discriminator": int(sum(v.numpy().size for v in model.discriminator_variables)),
      "repair": int(sum(v.numpy().size for v in model.repair_variables)),
      "probe": int(sum(v.numpy().size for v in model.probe_variables)),
  }
  return row_result(
      phase, batch, jit, precision, replicas, config.distribute.batch_norm,
      config.resolution, rates, rates_cached, warm,
      (traced, traced_by_type, nested), flops["step_per_image"][phase],
      flops["forward_per_image"], params)


def row_result(phase, batch, jit, precision, replicas, batch_norm, resolution,
               rates, rates_cached, warm, traced, by_hand, forward, params):
  """One row's result: its timed windows' rates and the FLOP counts
  (``traced``: step_flops' (per image, by op type, uncounted nested ops))."""
  flops, by_type, nested = traced
  return {"phase": phase, "batch_size": batch, "jit_compile": jit,
          "precision": precision, "replicas": replicas, "batch_norm": batch_norm,
          "resolution": resolution,
          "images_per_second": statistics.median(rates), "window_rates": rates,
          "cached_batch_images_per_second": statistics.median(rates_cached),
          "cached_window_rates": rates_cached,
          "input_wait_share": input_wait(rates, rates_cached),
          "warmup_seconds": warm,
          "flops_per_image": flops,
          "flops_per_image_by_type": by_type,
          "flops_uncounted_nested_ops": nested,
          "flops_per_image_by_hand": by_hand,
          "forward_flops_per_image": forward, "params": params}


def run_keras_fit(batch: int, jit: bool, precision: str):
  """The keras_fit row: benchmarks/keras_plain.py's plain step under
  Model.fit (default steps_per_execution, verbose=0), timed by a callback
  over the same windows as run_variant's: each real-input window is one fit
  of ``steps // 2`` untimed steps then ``--steps`` timed ones, each cached
  window one fit of 1 + ``--steps`` on one batch repeated, paired and
  alternated as in run_variant; the warm-up is a first fit of ``--steps``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting.data import pipeline  # pylint: disable=g-import-not-at-top
  from benchmarks import keras_plain  # pylint: disable=g-import-not-at-top
  config = load_config(FLAGS.config)
  source = pipeline.open_source(config.dataset, config.channels)
  assert precision == "float32", precision  # variants.parse_row refuses others
  model = keras_plain.build(config, jit, probe=source.has_label)
  real = pipeline.make_dataset(source, config.pp, batch, training=True,
                               shuffle_buffer=config.dataset.shuffle_buffer)
  one = next(iter(pipeline.make_dataset(source, config.pp, batch, training=True,
                                        shuffle_buffer=1000)))
  cached = tf.data.Dataset.from_tensors(one).repeat()
  t0 = time.perf_counter()
  model.fit(real, epochs=1, steps_per_epoch=FLAGS.steps, verbose=0)
  warm = time.perf_counter() - t0
  keras_plain.timed_fit(model, cached, 1, 1)  # the cached input's own trace
  settle = max(1, FLAGS.steps // 2)
  rates, rates_cached = alternate_windows(
      FLAGS.windows, FLAGS.steps * batch,
      lambda: keras_plain.timed_fit(model, real, settle, FLAGS.steps),
      lambda: keras_plain.timed_fit(model, cached, 1, FLAGS.steps))
  forward = keras_plain.forward_flops_per_image(model)
  hand = step_flops_by_hand(forward, config.spotter.history_fraction,
                            config.spotter.history_size > 0)["spotter"]
  return row_result("keras_fit", batch, jit, precision, 1, "sync",
                    config.resolution, rates, rates_cached, warm,
                    step_flops(model.train_step, one), hand, forward,
                    keras_plain.param_counts(model))


def alternate_windows(windows, images, real, cached):
  """Times ``windows`` pairs of a real-input and a cached-batch window,
  alternating which goes first (real, cached, cached, real, ...), so that a
  drift of the machine's speed hits both alike; ``real``/``cached`` time one
  window (seconds). Returns the two lists of images/s, pair by pair."""
  rates, rates_cached = [], []
  for w in range(windows):
    for kind in ("real", "cached") if w % 2 == 0 else ("cached", "real"):
      if kind == "real":
        rates.append(images / real())
      else:
        rates_cached.append(images / cached())
  return rates, rates_cached


def input_wait(rates, rates_cached):
  """Share of step time spent waiting for input, from paired windows: 1 - the
  median over pairs of real-input / cached-batch images/s (clipped at 0)."""
  return max(0.0, 1.0 - statistics.median(
      r / c for r, c in zip(rates, rates_cached)))


def variants(config, quick):
  ae_b, sp_b = config.autoencoder.batch_size, config.spotter.batch_size
  out = []
  for prec in ("float32", "mixed_bfloat16"):
    for jit in (False, True):
      if prec == "float32" or not jit:  # XLA + mixed precision: see config.validate
        out.append(Variant("spotter", sp_b, jit, prec))
      if not quick and (prec == "float32" or not jit):
        out.append(Variant("autoencoder", ae_b, jit, prec))
    out.append(Variant("features", 256, False, prec))
  if not quick:
    for b in (sp_b // 2, sp_b * 2):
      out.append(Variant("spotter", b, True, "float32"))
  # The same step written the plain Keras way, under Model.fit.
  out.append(Variant("keras_fit", sp_b, False, "float32"))
  if not quick:  # two logical CPU devices, mirrored (distribute.logical_cpus=2)
    for prec in ("float32", "mixed_bfloat16"):
      for jit in (False, True):
        out.append(Variant("spotter", sp_b, jit, prec, 2))
  return out


def command_line():
  """The command that wrote this report (output folder left out)."""
  args = [a for a in sys.argv[1:] if not a.startswith("--out_dir")]
  return " ".join(["python -m benchmarks.throughput"] + args)


def pipeline_rate(config, batch: int, seconds: float = 10.0):
  """Images/s the config's training input pipeline delivers on its own (no
  model), at ``batch``: what feeding the step costs in CPU time."""
  from artifact_spotting.data import pipeline  # pylint: disable=g-import-not-at-top
  source = pipeline.open_source(config.dataset, config.channels)
  it = iter(pipeline.make_dataset(source, config.pp, batch, training=True,
                                  shuffle_buffer=config.dataset.shuffle_buffer))
  for _ in range(20):  # fill the shuffle buffer, start the threads
    next(it)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += 1
  return n * batch / (time.perf_counter() - t0)


def matmul_rates():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rates = {"float32": best_matmul_rate(tf.float32),
           "bfloat16": best_matmul_rate(tf.bfloat16)}
  print(f"matmul: float32 {rates['float32'] / 1e9:.1f} GFLOP/s, "
        f"bfloat16 {rates['bfloat16'] / 1e9:.1f} GFLOP/s", flush=True)
  return rates


def tag_of(m):
  return FLAGS.tag or machine_tag(m)


def main(argv):
  del argv
  if FLAGS.variant == "pipeline":
    config = load_config(FLAGS.config)
    child.emit(pipeline_rate(config, config.autoencoder.batch_size))
    return
  if FLAGS.variant:
    child.emit(run_variant(*parse_row(FLAGS.variant)))
    return
  if FLAGS.quick:  # 6 variants, 3 windows of 5 steps: ~12 min on 2 cores
    FLAGS.windows = min(FLAGS.windows, 3)
    FLAGS.steps = min(FLAGS.steps, 5)
  config = load_config(FLAGS.config)
  before = matmul_rates()
  results = []
  chosen = variants(config, FLAGS.quick)
  if FLAGS.only:
    chosen = [parse_row(v) for v in FLAGS.only]
    if not any(v.phase == "spotter" and v.batch == config.spotter.batch_size
               and v.precision == "float32" and v.replicas == 1 for v in chosen):
      raise SystemExit(f"--only must include spotter:{config.spotter.batch_size}:"
                       "noxla:float32 (or :xla:): the report's headline row")
  pipe = run_child("pipeline")
  print(f"input pipeline alone: {pipe:.0f} img/s", flush=True)
  names = [variant_name(v) for v in chosen]
  rounds = {name: [] for name in names}
  for i in range(max(FLAGS.rounds, 1)):
    for name in names:
      rounds[name].append(run_child(name))
      print(f"round {i + 1} {name}: {rounds[name][-1]['images_per_second']:.1f} img/s",
            flush=True)
  # The peak: the better of two measurements, before and after the variants
  # (on this shared host one measurement has read half the bfloat16 rate).
  after = matmul_rates()
  rates = {k: max(before[k], after[k]) for k in before}
  rates["measured"] = {"before": before, "after": after}
  for (phase, batch, jit, prec, replicas), name in zip(chosen, names):
    res = merge_rounds(rounds[name])
    peak = rates["bfloat16" if prec == "mixed_bfloat16" else "float32"]
    res["utilisation"] = res["images_per_second"] * res["flops_per_image"] / peak
    res["utilisation_vs_fp32_matmul"] = (
        res["images_per_second"] * res["flops_per_image"] / rates["float32"])
    print(f"{phase:11s} b={batch:4d} xla={'on ' if jit else 'off'} {prec:14s} "
          f"r{replicas} "
          f"{res['images_per_second']:8.1f} img/s  util {res['utilisation']:.2f}  "
          f"input wait {res['input_wait_share']:.2f}", flush=True)
    results.append(res)
  write(config, rates, results, pipe)


def merge_rounds(runs):
  """One variant's result over rounds: images/s the median of every timed
  window (real input and cached batch alike), input wait from every pair of
  windows; the per-round figures kept."""
  out = dict(runs[0])
  for key, median_key in (("window_rates", "images_per_second"),
                          ("cached_window_rates", "cached_batch_images_per_second")):
    out[key] = [w for r in runs for w in r[key]]
    out[median_key] = statistics.median(out[key])
  out["input_wait_share"] = input_wait(out["window_rates"], out["cached_window_rates"])
  out["rounds"] = [{k: r[k] for k in ("images_per_second", "cached_batch_images_per_second",
                                      "input_wait_share")} for r in runs]
  return out


def run_child(variant):
  """Runs ``--variant=variant`` in its own process; its result."""
  return child.run(["benchmarks.throughput", f"--config={FLAGS.config}",
                    f"--steps={FLAGS.steps}", f"--windows={FLAGS.windows}",
                    f"--variant={variant}"], f"variant {variant}")


def pick(results, phase, precision, batch, jit=None):
  """The fastest one-replica row of ``phase`` at ``precision`` and ``batch``
  (with XLA as ``jit`` unless None), or None."""
  rows = [r for r in results if r["phase"] == phase and r["precision"] == precision
          and r["batch_size"] == batch and r.get("replicas", 1) == 1
          and (jit is None or r["jit_compile"] == jit)]
  return max(rows, key=lambda r: r["images_per_second"]) if rows else None


def keras_fit_ratios(results, tag):
  """Ours / plain Keras (Model.fit) images/s for each keras_fit row: against
  our one-replica spotter row with the same batch, precision and XLA setting,
  and against our fastest one at that batch and precision."""
  out = []
  for k in results:
    if k["phase"] != "keras_fit":
      continue
    same = pick(results, "spotter", k["precision"], k["batch_size"], k["jit_compile"])
    best = pick(results, "spotter", k["precision"], k["batch_size"])
    if best is None:
      continue
    plain = k["images_per_second"]
    out.append({
        "machine": tag, "batch_size": k["batch_size"], "precision": k["precision"],
        "keras_fit_jit_compile": k["jit_compile"], "keras_fit_img_s": plain,
        "ours_same_xla_img_s": same["images_per_second"] if same else None,
        "ours_over_keras_fit_same_xla": (same["images_per_second"] / plain
                                         if same else None),
        "ours_best_jit_compile": best["jit_compile"],
        "ours_best_img_s": best["images_per_second"],
        "ours_over_keras_fit": best["images_per_second"] / plain,
        "flops_plain_over_ours": (k["flops_per_image"] / best["flops_per_image"]),
        "params_equal": k["params"] == best["params"]})
  return out


def write(config, rates, results, pipe):
  m = machine()
  tag = tag_of(m)
  sp_b = config.spotter.batch_size
  fp32 = pick(results, "spotter", "float32", sp_b)
  mixed = pick(results, "spotter", "mixed_bfloat16", sp_b)
  ratios = keras_fit_ratios(results, tag)
  ours = [r for r in results if r["phase"] != "keras_fit"]
  report = {
      "machine": m, "tag": tag, "date": time.strftime("%Y-%m-%d"),
      "config": FLAGS.config, "resolution": config.resolution,
      "command": command_line(),
      "steps_per_window": FLAGS.steps, "windows": FLAGS.windows,
      "rounds": FLAGS.rounds,
      "matmul_flops_per_second": rates,
      "adversarial_fp32_img_s": fp32["images_per_second"],
      "adversarial_fp32_utilisation": fp32["utilisation"],
      "adversarial_fp32_jit_compile": fp32["jit_compile"],
      "adversarial_mixed_img_s": mixed["images_per_second"] if mixed else None,
      "adversarial_mixed_speedup": (mixed["images_per_second"] / fp32["images_per_second"]
                                    if mixed else None),
      "input_wait_share": max(r["input_wait_share"] for r in ours
                              if r["precision"] == "float32" and r["batch_size"] in (
                                  sp_b, config.autoencoder.batch_size)
                              and r["phase"] != "features"
                              and r.get("replicas", 1) == 1),
      "ours_over_keras_fit": ratios,
      "input_pipeline_img_s": pipe,
      "results": results,
  }
  lines = [
      f"# Throughput on {tag} ({FLAGS.config}, {config.resolution}x{config.resolution})", "",
      f"Machine: {m['cpu']} (family {m.get('cpu_family')}, model "
      f"{m.get('cpu_model')}, ISA flags {m.get('cpu_flags')}), {m['cores']} cores, "
      f"{m['gpus']} GPUs, TensorFlow {m['tensorflow']}; {report['date']}. "
      f"Reproduce: `{command_line()}`.",
      f"Measured matmul rate (best of {'/'.join(map(str, MATMUL_SIZES))}^3, same run, "
      "the better of a measurement before and one after the variants): float32 "
      f"{rates['float32'] / 1e9:.1f} GFLOP/s, bfloat16 {rates['bfloat16'] / 1e9:.1f} GFLOP/s "
      "(before / after: " + ", ".join(
          f"{k} {rates['measured']['before'][k] / 1e9:.0f} / "
          f"{rates['measured']['after'][k] / 1e9:.0f}" for k in ("float32", "bfloat16"))
      + ").",
      f"{FLAGS.rounds} interleaved rounds over the rows (one process per row "
      f"and round), each {FLAGS.windows} windows of {FLAGS.steps} steps after "
      "warm-up; images/s is the median over all windows of a row. "
      "Utilisation = images/s x FLOPs/image (counted on the traced step, ops "
      "the runtime prunes left out; the hand count composed from forward "
      "FLOPs as in the script's docstring beside it) / the matmul "
      "rate of the row's precision. Input wait = 1 - the median over pairs "
      "of windows (real input, then one cached batch repeated, alternating "
      "which goes first) of real-input / cached-batch images/s.", "",
      f"Adversarial step, float32, batch {sp_b}: **{fp32['images_per_second']:.1f} img/s, "
      f"utilisation {fp32['utilisation']:.2f}** (XLA {'on' if fp32['jit_compile'] else 'off'}); "
      + (f"mixed bfloat16: **{mixed['images_per_second']:.1f} img/s** "
         f"({report['adversarial_mixed_speedup']:.2f}x)." if mixed else ""), ""]
  for q in ratios:
    same = (f"; with XLA {'on' if q['keras_fit_jit_compile'] else 'off'} on both "
            f"{q['ours_over_keras_fit_same_xla']:.2f}x "
            f"({q['ours_same_xla_img_s']:.1f} img/s)"
            if q["ours_same_xla_img_s"] is not None
            and q["ours_best_jit_compile"] != q["keras_fit_jit_compile"] else "")
    lines += [
        f"Ours / plain Keras on {tag}, {q['precision']}, batch {q['batch_size']}: "
        f"**{q['ours_over_keras_fit']:.2f}x** (ours {q['ours_best_img_s']:.1f} img/s "
        f"with XLA {'on' if q['ours_best_jit_compile'] else 'off'}, the same step "
        f"written with stock Keras layers under Model.fit "
        f"{q['keras_fit_img_s']:.1f} img/s with XLA "
        f"{'on' if q['keras_fit_jit_compile'] else 'off'}{same}). The plain step "
        f"(benchmarks/keras_plain.py) has "
        f"{'the same' if q['params_equal'] else 'DIFFERENT'} parameters per network "
        f"and {q['flops_plain_over_ours']:.3f}x our traced FLOPs per image.", ""]
  lines += [
      f"Input pipeline alone (`{config.pp}`, batch {config.autoencoder.batch_size}, "
      f"no model): {pipe:.0f} img/s on the same cores; feeding a step at R img/s "
      "takes about R / that share of the CPU.", "",
      "Rows: keras_fit is the spotter step written the plain Keras way "
      "(benchmarks/keras_plain.py) under Model.fit; replicas 2 mirror the step "
      "over 2 logical CPU devices of the same cores (distribute.logical_cpus=2; "
      "batch norm per replica with XLA, synchronized without).", "",
      "| phase | batch | XLA | precision | replicas | images/s | GFLOP/image (traced) | "
      "GFLOP/image (by hand) | utilisation | input wait | warm-up s |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    lines.append(
        f"| {r['phase']} | {r['batch_size']} | {'on' if r['jit_compile'] else 'off'} | "
        f"{r['precision']} | {r.get('replicas', 1)} | {r['images_per_second']:.1f} | "
        f"{r['flops_per_image'] / 1e9:.3f} | "
        f"{r['flops_per_image_by_hand'] / 1e9:.3f} | {r['utilisation']:.2f} | "
        f"{r['input_wait_share']:.2f} | {r['warmup_seconds']:.0f} |")
  f = ours[0]["forward_flops_per_image"]
  p = ours[0]["params"]
  lines += ["", "Forward MFLOP per image: " + ", ".join(
      f"{k} {v / 1e6:.1f}" for k, v in f.items()) +
      f". Parameters: autoencoder {p['autoencoder']:,}, discriminator "
      f"{p['discriminator']:,}, repair {p['repair']:,}."]
  nested = sorted({f"{r['phase']}: {', '.join(r['flops_uncounted_nested_ops'])}"
                   for r in results if r.get("flops_uncounted_nested_ops")})
  if nested:
    lines += ["", "Traced steps holding nested graphs, whose FLOPs the traced "
              "count leaves out: " + "; ".join(nested) + "."]
  prefix = write_report(FLAGS.out_dir, f"throughput_{tag}", report, lines)
  print(f"wrote {prefix}.json/.md")


if __name__ == "__main__":
  app.run(main)
