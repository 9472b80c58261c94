"""Benchmark code: FLOP counts against hand counts, throughput variants and
windows, machine info, the budget curve, mixed precision against float32,
and no import circle among the benchmark modules."""

import ast
import glob
import json
import os
import statistics

import keras
import pytest
import tensorflow as tf

from artifact_spotting import config as config_lib
from artifact_spotting import train_state
from artifact_spotting.models.discriminator import Discriminator
from benchmarks import flops, throughput
from conftest import tiny_config


def test_forward_flops_of_a_dense_layer():
  dense = tf.keras.layers.Dense(7, use_bias=False)
  count = flops.forward_flops(dense, tf.TensorSpec([3, 5], tf.float32))
  assert count == 2 * 3 * 5 * 7


def test_discriminator_flops_match_a_hand_count():
  c = tiny_config()
  model = train_state.Players(c, tf.distribute.get_strategy(), probe=False).model
  f = flops.model_flops(model, 16, 1, 0.5, True)
  # tiny discriminator: five 3x3 convs of 8 filters at 16, 8, 4, 4, 4 pixels
  # (pools after conv1 and conv2), inputs 1, 8, 8, 8, 8 channels.
  convs = sum(2 * s * s * 9 * cin * 8
              for s, cin in ((16, 1), (8, 8), (4, 8), (4, 8), (4, 8)))
  fc = 2 * (4 * 4 * 8) * 16 + 2 * 16   # fc1 and the class head
  mask_head = 2 * 4 * 4 * 9 * 8
  matmul_flops = convs + fc + mask_head
  got = f["forward_per_image"]["discriminator"]
  # The profiler also counts elementwise work (bias, batch norm, activations).
  assert matmul_flops <= got <= 1.3 * matmul_flops
  step = f["step_per_image"]
  assert step["spotter"] > 7 * got   # 2.5 views x (forward + 2x backward) + R's pass
  assert step["features"] == got


def test_traced_flops_leave_out_what_the_runtime_prunes():
  a = tf.ones([3, 5])
  w, unused = tf.Variable(tf.ones([5, 7])), tf.Variable(tf.ones([5, 11]))

  def step(x):
    with tf.GradientTape() as tape:
      y = tf.matmul(x, w)
      tf.matmul(x, unused)               # feeds nothing: pruned
      loss = tf.reduce_sum(y)
    w.assign_sub(tape.gradient(loss, w))  # kept: a state update
    return {"y": y}

  step(a)
  per_image, by_type, nested = flops.step_flops(step, a)
  # forward x @ w, and w's gradient x^T @ dy; x's gradient is never asked for.
  assert by_type["MatMul"] * 3 == 2 * (2 * 3 * 5 * 7)
  assert per_image * 3 == pytest.approx(2 * (2 * 3 * 5 * 7), rel=0.01)
  assert nested == []
  # A called tf.function's body is counted; a loop body is reported instead.
  inner = tf.function(lambda x: tf.matmul(x, w))
  per_image, by_type, nested = flops.step_flops(lambda x: {"y": inner(x)}, a)
  assert by_type["MatMul"] * 3 == 2 * 3 * 5 * 7 and nested == []
  loop = lambda x: {"y": tf.while_loop(lambda i, y: i < 2, lambda i, y: (i + 1, y * 2.0),
                                       (0, tf.matmul(x, w)))[1]}
  assert flops.step_flops(loop, a)[2] in (["While"], ["StatelessWhile"])


def _traced_and_hand(phase, onednn, monkeypatch):
  """The traced and hand FLOP counts of one tiny step, with the layers'
  kernel formulations chosen as on a CPU with (``onednn=True``) or without
  TensorFlow's oneDNN kernels (models/blocks.py picks by
  ``hardware.onednn_enabled()``, which differs between AVX-512 and AVX2-only
  machines). The traced graph is the same on every machine for a given
  choice, so the counts do not depend on where the test runs."""
  from artifact_spotting.models import blocks
  monkeypatch.setattr(blocks, "onednn_enabled", lambda: onednn)
  c = tiny_config()
  players = train_state.Players(c, tf.distribute.get_strategy(), probe=False)
  m = players.model
  batch = {"image": tf.random.uniform([8, 16, 16, 1], -1, 1)}
  fn = {"spotter": lambda b: m.adversarial_step(b, players.discriminator_opt, players.repair_opt),
        "autoencoder": lambda b: m.autoencoder_step(b, players.ae_opt)}[phase]
  tf.function(fn)(batch)
  traced, by_type, nested = flops.step_flops(fn, batch)
  hand = flops.model_flops(m, 16, 1, c.spotter.history_fraction, True)
  assert nested == []
  return traced, by_type, hand


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["spotter", "autoencoder"])
def test_traced_step_flops_match_the_hand_count(phase, monkeypatch):
  """Two independent counts of a training step: the traced graph (what the
  runtime runs) and forward FLOPs composed by hand (what the step needs).
  They agree only if the hand count knows that C's batch norm couples the
  views (R's gradient runs back through every row, not the fakes alone).
  The hand count prices a backward pass as forward passes, which is the
  formulation taken with oneDNN (plain max pool, whose gradient searches
  each window again); it is pinned here so that the answer is the same on
  every instruction set (the other formulation: the next test)."""
  traced, by_type, hand = _traced_and_hand(phase, True, monkeypatch)
  assert by_type["Conv2D"] > 0.5 * traced
  rel = {"spotter": 0.02, "autoencoder": 0.05}[phase]
  assert traced == pytest.approx(hand["step_per_image"][phase], rel=rel)
  if phase == "spotter":  # a count of R's pass on the fakes alone would fail
    f = hand["forward_per_image"]
    coupling = 1.5 * (f["discriminator"] - f["discriminator_conv1"])
    assert coupling > 2 * rel * traced


@pytest.mark.slow
def test_traced_step_flops_of_the_formulation_without_onednn(monkeypatch):
  """Without oneDNN the layers take TF's own input gradient for conv1 (one
  input channel) instead of a matmul plus shifted sums, and find each max
  pool's argmax once instead of searching its windows again in the
  backward pass. The traced count sees exactly that: conv1's input gradient
  costs the same either way, the argmax pool ops replace the plain ones, and
  the shifted sums and the second window search are gone."""
  with_dnn, dnn_types, hand = _traced_and_hand("spotter", True, monkeypatch)
  plain, plain_types, _ = _traced_and_hand("spotter", False, monkeypatch)
  assert plain_types["Conv2DBackpropInput"] == pytest.approx(
      dnn_types["MatMul"] - plain_types["MatMul"])
  assert "Conv2DBackpropInput" not in dnn_types
  assert {"MaxPool", "MaxPoolGrad"} <= set(dnn_types)
  assert not {"MaxPool", "MaxPoolGrad"} & set(plain_types)
  # Each pool searches its windows once either way; the plain gradient
  # searches them again (MaxPoolGrad), the argmax one scatters one value
  # per pooled element.
  assert plain_types["MaxPoolWithArgmax"] == dnn_types["MaxPool"]
  assert 0 < plain_types["MaxPoolGradWithArgmax"] < dnn_types["MaxPoolGrad"]
  assert plain < with_dnn < hand["step_per_image"]["spotter"]


def test_cpu_info_names_the_isa(tmp_path):
  from benchmarks.machine import cpu_info, isa_tag
  path = tmp_path / "cpuinfo"
  path.write_text("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\n"
                  "model\t\t: 17\nflags\t\t: fpu avx2 avx512f avx512_bf16 sse\n\n"
                  "processor\t: 1\nflags\t\t: fpu\n")
  m = cpu_info(str(path))
  assert (m["cpu"], m["cpu_family"], m["cpu_model"]) == ("AMD EPYC", 25, 17)
  assert m["cpu_flags"] == ["avx512_bf16", "avx512f", "avx2"]
  assert isa_tag(m) == "avx512_bf16"
  assert isa_tag(cpu_info(str(tmp_path / "missing"))) == ""


def test_throughput_variant_strings():
  from benchmarks.variants import parse_variant
  assert parse_variant("spotter:64:noxla:float32") == ("spotter", 64, False, "float32")
  assert parse_variant("features:256:xla:mixed_bfloat16") == (
      "features", 256, True, "mixed_bfloat16")
  for bad in ("spotter:64:noxla", "gan:64:noxla:float32", "spotter:x:noxla:float32",
              "spotter:64:jit:float32", "spotter:64:noxla:float64"):
    with pytest.raises(SystemExit, match="bad variant"):
      parse_variant(bad)


def test_input_wait_pairs_alternating_windows_against_drift():
  # The machine slows down 2x halfway through; the pipeline costs 10% of
  # each real window. Pairs see the drift alike, so the 10% is recovered.
  speed = iter([100, 100, 100, 100, 50, 50, 50, 50])
  calls = []

  def real():
    calls.append("real")
    return 1.0 / (next(speed) * 0.9)

  def cached():
    calls.append("cached")
    return 1.0 / next(speed)

  rates, cached_rates = throughput.alternate_windows(4, 1.0, real, cached)
  assert calls == ["real", "cached", "cached", "real"] * 2
  assert throughput.input_wait(rates, cached_rates) == pytest.approx(0.1)
  # All real windows first, then all cached ones (the old order), on the
  # same drift: real at 90 img/s, cached at 50 -> the 10% wait is hidden.
  assert throughput.input_wait([90.0] * 4, [50.0] * 4) == 0.0


def test_throughput_rounds_merge_to_the_median_window():
  runs = [{"images_per_second": 10.0, "window_rates": [9.0, 10.0, 11.0],
           "cached_window_rates": [9.0, 12.0, 11.0], "phase": "spotter"},
          {"images_per_second": 20.0, "window_rates": [19.0, 20.0, 30.0],
           "cached_window_rates": [19.0, 25.0, 30.0], "phase": "spotter"}]
  for r in runs:
    r["cached_batch_images_per_second"] = statistics.median(r["cached_window_rates"])
    r["input_wait_share"] = throughput.input_wait(r["window_rates"],
                                                  r["cached_window_rates"])
  out = throughput.merge_rounds(runs)
  assert out["images_per_second"] == 15.0  # median of the six windows
  assert out["cached_batch_images_per_second"] == 15.5
  # Pair ratios 1, 10/12, 1, 1, 0.8, 1: median 1 -> no wait, although the
  # medians of the two sides differ only through which pairs they come from.
  assert out["input_wait_share"] == 0.0
  assert [r["images_per_second"] for r in out["rounds"]] == [10.0, 20.0]
  assert out["phase"] == "spotter"


@pytest.mark.slow
def test_throughput_variant_child_pairs_its_windows():
  # The real child process on the tiny config: both sides of every pair
  # timed, the step's FLOPs counted, input wait from the pairs.
  from benchmarks import child
  r = child.run(["benchmarks.throughput", "--config=configs/fashion_mnist.py:tiny",
                 "--variant=spotter:8:noxla:float32", "--steps=2", "--windows=3"],
                "tiny throughput variant")
  assert len(r["window_rates"]) == len(r["cached_window_rates"]) == 3
  assert r["images_per_second"] == statistics.median(r["window_rates"])
  assert r["input_wait_share"] == throughput.input_wait(r["window_rates"],
                                                        r["cached_window_rates"])
  assert 0.0 <= r["input_wait_share"] < 1.0
  assert r["flops_per_image"] > 0 and r["resolution"] == 16


def _quality_root(tmp_path, name, steps, folds, ae_bytes=b"ae", lr=1e-3, knn=False):
  """A finished benchmarks.quality root: per row, its per-fold accuracies
  (same at every layer; kNN 0.1 lower) and its pretraining config."""
  root = tmp_path / name
  ae = root / "pretrain" / "autoencoder" / "checkpoints"
  ae.mkdir(parents=True)
  (ae / "ckpt-1.index").write_bytes(ae_bytes)
  for (row, seed), accs in folds.items():
    ev = "ours" if row == "full" and not seed else (
        f"ablation_{row}" if not seed else f"ablation_{row}_s{seed}")
    layers = {l: {"dims": 4, "linear": {"per_fold": accs}}
              for l in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    if knn:
      for r in layers.values():
        r["knn"] = {"per_fold": [a - 0.1 for a in accs]}
    (root / "eval" / ev).mkdir(parents=True)
    (root / "eval" / ev / "eval_results.json").write_text(json.dumps({"folds": layers}))
    wd = root / "pretrain" / (row if not seed else f"{row}_s{seed}")
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "config.json").write_text(json.dumps({
        "seed": seed, "resolution": 32, "ablation": row,
        "autoencoder": {"init_from": str(ae.parent)},
        "train": {"precision": "float32", "checkpoint_every": 100},
        "spotter": {"steps": steps, "batch_size": 60, "lr": lr, "repair_lr": lr,
                    "drop_rate": 0.7}}))
  return str(root)


def test_budget_curve_pairs_folds_and_checks_roots(tmp_path):
  from benchmarks import budget_curve
  short = _quality_root(tmp_path, "short", 100, {
      ("full", 0): [0.80, 0.82], ("k", 0): [0.79, 0.80],
      ("full", 1): [0.81, 0.83], ("k", 1): [0.80, 0.81]}, knn=True)
  long = _quality_root(tmp_path, "long", 300, {
      ("full", 0): [0.90, 0.80], ("k", 0): [0.80, 0.70]})
  report = budget_curve.build([long, short], ["full", "k"])
  assert report["metrics"] == ["linear"]  # kNN only where every root has it
  b100, b300 = report["budgets"]  # sorted by budget
  assert (b100["spotter_steps"], b300["spotter_steps"]) == (100, 300)
  assert b100["epochs"] == pytest.approx(0.1)
  knn = budget_curve.build([short], ["full", "k"])
  assert knn["metrics"] == ["linear", "knn"]
  assert knn["budgets"][0]["metrics"]["knn"]["rows"]["k"]["conv2"]["mean"] == pytest.approx(0.70)
  b100, b300 = b100["metrics"]["linear"], b300["metrics"]["linear"]
  g = b100["gaps"]["k"]["conv3"]
  # Pairs (seed, fold): 0.01, 0.02, 0.01, 0.02 -> mean 0.015; the floor is
  # the largest of fold stds (0.01, 0.005) and seed spreads (0.00707, 0.00707).
  assert g["gap"] == pytest.approx(0.015)
  assert g["pairs"] == 4 and g["folds_below_full"] == 4
  assert g["noise_floor"] == pytest.approx(0.01)
  assert g["in_noise_units"] == pytest.approx(1.5)
  assert b100["rows"]["full"]["conv3"]["seed_means"] == pytest.approx([0.81, 0.82])
  g = b300["gaps"]["k"]["conv3"]
  assert g["gap"] == pytest.approx(0.10) and g["in_noise_units"] == pytest.approx(2.0)
  lines = budget_curve.markdown(report)
  assert "| linear | 300 (0.3) | conv1 | +0.1000 (2.0) |" in lines
  assert any(l.startswith("| 300 (0.3) | conv1 (best of full) |") for l in lines)
  # Roots that differ in more than the budget are refused, naming the field.
  other_lr = _quality_root(tmp_path, "lr", 200, {("full", 0): [0.8], ("k", 0): [0.7]},
                           lr=3e-4)
  with pytest.raises(ValueError, match="spotter.lr"):
    budget_curve.build([short, other_lr], ["full", "k"])
  other_ae = _quality_root(tmp_path, "ae", 200, {("full", 0): [0.8], ("k", 0): [0.7]},
                           ae_bytes=b"another autoencoder")
  with pytest.raises(ValueError, match="autoencoder checkpoint"):
    budget_curve.build([short, other_ae], ["full", "k"])
  with pytest.raises(ValueError, match="no finished evaluation of row 'l'"):
    budget_curve.build([short], ["full", "k", "l"])
  with pytest.raises(ValueError, match="same budget"):
    budget_curve.build([short, short], ["full", "k"])
  # A root with a longer headline run: 'ours' is that run, the full row at
  # the common budget is 'ablation_full'.
  headline = tmp_path / "short" / "eval" / "ours" / "eval_results.json"
  (tmp_path / "short" / "eval" / "ablation_full").mkdir()
  os.replace(headline, tmp_path / "short" / "eval" / "ablation_full" / "eval_results.json")
  longer = {"folds": {l: {"linear": {"per_fold": [0.99, 0.99]}}
                      for l in ("conv1", "conv2", "conv3", "conv4", "conv5")}}
  headline.write_text(json.dumps(longer))
  assert budget_curve.eval_names(short, "full") == {0: "ablation_full", 1: "ablation_full_s1"}
  again = budget_curve.build([short], ["full", "k"])["budgets"][0]["metrics"]["linear"]
  assert again["rows"]["full"]["conv3"]["seed_means"] == pytest.approx([0.81, 0.82])


def test_discriminator_views_skip_the_input_gradient_of_undifferentiated_views():
  """C on a list of views: the traced gradient with respect to one view does
  no conv1 input-gradient work for the other (tests/test_models.py checks
  that views and their concatenation give the same outputs and gradients)."""
  disc = Discriminator(config_lib.small_alexnet(), fc_units=16, dropout=0.0,
                       fc_norm=True)
  disc.build((None, 32, 32, 1))
  real, fake = (tf.random.stateless_normal([n, 32, 32, 1], seed=(n, 1)) for n in (3, 2))
  count = {}
  for views in (True, False):
    graph = tf.function(lambda r, f, v=views: tf.gradients(
        tf.reduce_sum(disc([r, f] if v else tf.concat([r, f], 0), training=True)["logits"]),
        f)).get_concrete_function(real, fake).graph
    count[views] = flops.graph_flops(graph)[0]
  conv1_input_grad_of_real = 2 * 3 * 32 * 32 * 5 * 5 * 1 * 64
  assert conv1_input_grad_of_real <= count[False] - count[True] <= 1.2 * conv1_input_grad_of_real


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_tracks_float32(precision):
  """Bounds: benchmarks/mixed_precision_drift.py measures their spread over
  initialisations (results/mixed_precision_drift_*.md)."""
  from benchmarks.mixed_precision_drift import drift
  ref, got, ref_metrics, metrics, cosine = drift(precision, seed=0)
  conv = got.model.discriminator.conv2.conv
  assert conv.compute_dtype == precision.split("_")[1] and conv.kernel.dtype == "float32"
  if precision == "mixed_float16":
    assert isinstance(got.discriminator_opt, keras.optimizers.LossScaleOptimizer)
  assert got.adv_step == ref.adv_step == 3
  # The first adversarial step's losses (weights apart only by the two
  # autoencoder steps and rounding). Later steps' losses are not compared: a
  # tiny GAN's trajectories part quickly.
  for k in ("c/class_loss", "c/mask_loss", "r/adversarial"):
    assert metrics[0][k] == pytest.approx(ref_metrics[0][k], rel=0.02), k
  # C's and R's weights moved the same way over the three steps: their
  # updates point in nearly the same direction (Adam's per-weight
  # normalisation turns the rounding of near-zero gradients into full-size
  # differences, so the check is on the whole update, not weight by weight).
  assert cosine > 0.8


def benchmark_imports(folder):
  """{module: benchmark modules it imports} of every benchmarks/*.py, read
  with ``ast`` (imports inside functions too: a deferred import closes a
  circle as well)."""
  paths = glob.glob(os.path.join(folder, "*.py"))
  names = {os.path.basename(p)[:-3] for p in paths}
  out = {}
  for path in paths:
    deps = set()
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps.update(a.name.split(".")[1] for a in node.names
                    if a.name.startswith("benchmarks."))
      elif isinstance(node, ast.ImportFrom):
        module = node.module or ""
        if module == "benchmarks" or (node.level and not module):
          deps.update(a.name for a in node.names)
        elif module.startswith("benchmarks."):
          deps.add(module.split(".")[1])
        elif node.level:
          deps.add(module.split(".")[0])
    name = os.path.basename(path)[:-3]
    out[name] = sorted(deps & names - {name})
  return out


def import_cycle(graph):
  """One import circle of ``graph`` as [a, b, ..., a], or None."""
  state = {}

  def visit(node, path):  # path: the open modules, ending with ``node``
    state[node] = "open"
    for dep in graph[node]:
      if state.get(dep) == "open":
        return path[path.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep, path + [dep])
        if found:
          return found
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [node])
      if found:
        return found
  return None


def test_no_import_circle_among_the_benchmarks():
  graph = benchmark_imports(os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "benchmarks"))
  assert "flops" in graph["throughput"] and "flops" in graph["keras_plain"]
  assert "throughput" not in graph["keras_plain"]
  # The quality report and plan know nothing of the script that runs them.
  assert "quality" not in graph["quality_report"] + graph["quality_plan"]
  assert import_cycle(graph) is None, import_cycle(graph)
  # The checker sees a circle, deferred imports included.
  assert import_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [
      "a", "b", "c", "a"]


def test_the_import_reader_sees_deferred_and_relative_imports(tmp_path):
  (tmp_path / "a.py").write_text("def f():\n  from benchmarks import b\n")
  (tmp_path / "b.py").write_text("from benchmarks.c import x\nimport benchmarks.a\n")
  (tmp_path / "c.py").write_text("from . import a\nfrom .b import y\nimport os\n")
  assert benchmark_imports(str(tmp_path)) == {"a": ["b"], "b": ["a", "c"],
                                              "c": ["a", "b"]}


@pytest.mark.slow
def test_fingerprints_binary_finds_a_changed_variable(tmp_path):
  """benchmarks.fingerprints end to end on the tiny default row: run twice,
  the second run compares identical (exit 0); against a record with one
  variable's hash changed it names the run and exits 1."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  first = tmp_path / "first.json"
  cmd = [sys.executable, "-m", "benchmarks.fingerprints", "--only=tiny_full"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  r = subprocess.run(cmd + [f"--out={first}"], cwd=root, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  record = json.loads(first.read_text())
  variables = record["runs"]["tiny_full"]["variables"]
  assert len(variables) > 100
  r = subprocess.run(cmd + [f"--compare={first}"], cwd=root, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and "1/1 runs identical" in r.stdout, r.stdout + r.stderr[-2000:]
  key = sorted(variables)[0]
  variables[key] = "0" * 16
  changed = tmp_path / "changed.json"
  changed.write_text(json.dumps(record))
  r = subprocess.run(cmd + [f"--compare={changed}"], cwd=root, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 1, r.stdout + r.stderr[-2000:]
  assert "DIFFERS tiny_full: 1 variables differ" in r.stdout, r.stdout


def test_fingerprint_compare_allows_only_the_named_new_variables():
  from benchmarks.checkpoint_hash import compare
  old = {"r": {"variables": {"w": "1", "save_counter/x": "5"}}}
  grown = {"r": {"variables": {"w": "1", "steps/adversarial": "3", "save_counter/x": "6"}}}
  assert compare(grown, old, allow_new=("steps/",)) == []
  assert compare(grown, old) == [
      "r: 0 variables differ, 1 new, 0 gone; e.g. ['steps/adversarial']"]
  # An allowed prefix excuses new variables only, never a changed one.
  moved = {"r": {"variables": {"w": "2", "steps/adversarial": "3"}}}
  assert compare(moved, old, allow_new=("steps/",)) == [
      "r: 1 variables differ, 0 new, 0 gone; e.g. ['w']"]
  assert compare({}, old) == ["r: only in old"]
