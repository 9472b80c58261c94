"""Evaluation: pooled features, folds, ridge and kNN against numpy, VOC07 AP
against a brute-force computation and hand-worked devkit values, the linear_eval binary, VOC and STL-10
fine-tuning paths under tfds mock_data. The quality benchmark's report is
tested in test_quality_report.py."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from artifact_spotting import config as config_lib
from artifact_spotting import evaluation
from artifact_spotting import loading
from artifact_spotting.data import pipeline

from conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ features
def test_pooled_dims_of_the_fashion_mnist_discriminator():
  c = config_lib.base_config()
  c.resolution = 32
  disc = loading.new_discriminator(c, seed=0)
  ex = evaluation.discriminator_extractor(disc, 9216)
  out = ex(np.zeros((2, 32, 32, 1), np.float32))
  # conv1 64 x 32x32 -> 12x12; conv2 128 x 16x16 -> 8x8; conv3 256 x 8x8 -> 6x6;
  # conv4/5 256 x 4x4 stay 4x4.
  assert {k: v.shape for k, v in out.items()} == {
      "conv1": (2, 9216), "conv2": (2, 8192), "conv3": (2, 9216),
      "conv4": (2, 4096), "conv5": (2, 4096)}


def test_pool_flatten_is_average_pooling_for_integer_ratios():
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  got = evaluation.pool_flatten(tf.constant(x), 4 * 4 * 3).numpy()
  want = x.reshape(2, 4, 2, 4, 2, 3).mean((2, 4)).reshape(2, -1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_random_discriminators_differ_by_seed_and_repeat_by_seed():
  c = tiny_config()
  w = lambda s: loading.new_discriminator(c, s).conv1.get_weights()[0]
  np.testing.assert_array_equal(w(1), w(1))
  assert not np.allclose(w(1), w(2))


def test_extract_with_indices_keeps_the_requested_order():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 8, 8, 1)).astype(np.uint8)
  labels = np.arange(40) % 10
  src = pipeline.Source(tf.data.Dataset.from_tensor_slices(
      {"image": images, "label": labels}), True)
  idx = np.array([17, 3, 39, 0, 3])
  feats, got_labels = evaluation.extract(
      evaluation.pixel_extractor(10_000), src, "value_range(0, 1)", idx, batch_size=3)
  np.testing.assert_array_equal(got_labels, labels[idx])
  np.testing.assert_allclose(feats["pixels"], images[idx].reshape(5, -1) / 255.0,
                             rtol=1e-6)


# --------------------------------------------------------------------- folds
def test_seeded_folds_are_disjoint_balanced_and_repeatable():
  labels = np.repeat(np.arange(4), 30)
  folds = evaluation.seeded_folds(labels, num_folds=5, per_class=6, seed=3)
  assert folds.shape == (5, 24)
  assert len(np.unique(folds)) == folds.size  # disjoint
  for f in folds:
    np.testing.assert_array_equal(np.bincount(labels[f]), [6] * 4)
  np.testing.assert_array_equal(folds, evaluation.seeded_folds(labels, 5, 6, 3))
  assert not np.array_equal(folds, evaluation.seeded_folds(labels, 5, 6, 4))
  with pytest.raises(ValueError, match="fewer than"):
    evaluation.seeded_folds(labels, num_folds=6, per_class=6, seed=0)


def test_validation_is_outside_the_folds_or_from_other_folds(tmp_path):
  folds = [np.arange(0, 10), np.arange(10, 20)]
  common = evaluation.validation_indices(100, folds, 30, seed=0)
  assert len(common) == 30 and not set(common) & set(range(20))
  # No free images left (STL-10): each fold validates on the other's images.
  none = evaluation.validation_indices(20, folds, 30, seed=0)
  assert len(none) == 0
  v0 = evaluation.fold_validation(0, folds, none, 5, seed=0)
  assert len(v0) == 5 and set(v0) <= set(range(10, 20))


def test_read_fold_indices(tmp_path):
  path = tmp_path / "fold_indices.txt"
  path.write_text("3 1 2\n0 4 5\n")
  folds = evaluation.read_fold_indices(str(path))
  assert [f.tolist() for f in folds] == [[3, 1, 2], [0, 4, 5]]
  with pytest.raises(FileNotFoundError, match="fold_indices.txt"):
    evaluation.read_fold_indices(str(tmp_path / "missing.txt"))


# ------------------------------------------------------- classifiers vs numpy
@pytest.mark.parametrize("n,d", [(30, 50), (50, 8)])
def test_ridge_matches_the_primal_closed_form(n, d):
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(n, d)), rng.integers(0, 3, n)
  xe = rng.normal(size=(20, d))
  lam = 0.3
  (pred,), = evaluation.ridge_fit_predict(x, y, [xe], 3, [lam])
  scale = np.mean(np.sum(x * x, 1))
  w = np.linalg.solve(x.T @ x + lam * scale * np.eye(d), x.T @ np.eye(3)[y])
  np.testing.assert_array_equal(pred, np.argmax(xe @ w, 1))


def test_knn_matches_brute_force():
  rng = np.random.default_rng(1)
  bank, labels = rng.normal(size=(60, 7)), rng.integers(0, 4, 60)
  queries = rng.normal(size=(25, 7))
  got = evaluation.knn_predict(bank, labels, queries, 4, k=5, temperature=0.1, chunk=7)
  nb = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  want = []
  for q in queries:
    sims = nb @ (q / np.linalg.norm(q))
    top = np.argsort(-sims)[:5]
    votes = np.zeros(4)
    for i in top:
      votes[labels[i]] += np.exp(sims[i] / 0.1)
    want.append(np.argmax(votes))
  np.testing.assert_array_equal(got, want)


def _devkit_recall_reaches(tp, positives, k):
  """Whether recall tp/positives reaches the devkit's k-th threshold, in exact
  arithmetic. The devkit's t for k = 3 is the double 3*0.1 =
  0.30000000000000004, just above 3/10: a recall of exactly 3/10 misses it,
  and no other fraction with a denominator below ~10**15 lies between 3/10
  and that double. Every other t is the double nearest k/10, which a fraction
  equal to k/10 rounds to as well.
  """
  from fractions import Fraction  # pylint: disable=g-import-not-at-top
  recall, t = Fraction(int(tp), int(positives)), Fraction(k, 10)
  return recall > t if k == 3 else recall >= t


def _brute_force_voc07_ap(scores, labels):
  """Independent: for each threshold, try every cut-off of the ranking
  (stable for ties), with exact fractions for recall and precision."""
  from fractions import Fraction  # pylint: disable=g-import-not-at-top
  order = sorted(range(len(scores)), key=lambda i: -scores[i])
  pos = sum(labels)
  total = Fraction(0)
  for k in range(11):
    best = Fraction(0)
    for cut in range(1, len(order) + 1):
      tp = sum(labels[i] for i in order[:cut])
      if _devkit_recall_reaches(tp, pos, k):
        best = max(best, Fraction(int(tp), cut))
    total += best
  return float(total / 11)


def _matlab_colon(a, d, b):
  """MATLAB's a:d:b for d > 0 and non-integer d (its documented colonop.m):
  n = round((b - a)/d) steps (one fewer if a + n*d overshoots b by more than
  2*eps*max(|a|, |b|)); the end point is b when a + n*d is within that
  tolerance of it; the first half of the elements is a + k*d, the second half
  last - k*d counted from the end, and an even n puts (a + last)/2 in the
  middle."""
  tol = 2.0 * np.finfo(float).eps * max(abs(a), abs(b))
  n = int(round((b - a) / d))
  if a + n * d - b > tol:
    n -= 1
  last = a + n * d
  if last - b > -tol:
    last = b
  out = [0.0] * (n + 1)
  for k in range(n // 2 + 1):
    out[k] = a + k * d
    out[n - k] = last - k * d
  if n % 2 == 0:
    out[n // 2] = (a + last) / 2
  return out


def test_voc07_thresholds_are_matlabs_colon_0_to_1_by_tenths():
  thresholds = evaluation.VOC07_RECALL_THRESHOLDS
  assert list(thresholds) == _matlab_colon(0.0, 0.1, 1.0)  # bit for bit
  # The fourth lies above 0.3, so a recall of exactly 3/10 misses it; the
  # others are the doubles nearest k/10 (np.arange's 0.6 and 0.7 are not).
  assert thresholds[3] > 0.3 and 3 / 10 < thresholds[3] and 6 / 20 < thresholds[3]
  assert [t == k / 10 for k, t in enumerate(thresholds)] == [k != 3 for k in range(11)]
  assert 6 / 10 >= thresholds[6] and 7 / 10 >= thresholds[7]
  assert np.arange(0.0, 1.1, 0.1)[6] > 6 / 10  # the Python port differs here


def test_voc07_ap_matches_brute_force_on_random_data():
  rng = np.random.default_rng(2)
  for trial in range(30):
    n = int(rng.integers(5, 60))
    scores = rng.normal(size=n)
    if trial % 2:
      # 10 or 20 positives, so that some cut-off has a recall of exactly 3/10.
      positives = int(rng.choice([10, 20]))
      n = max(n, positives + 5)
      scores = rng.normal(size=n)
      labels = np.zeros(n, int)
      labels[rng.choice(n, positives, replace=False)] = 1
    else:
      labels = rng.integers(0, 2, n)
      labels[0] = 1
    if trial % 3 == 0:
      scores = np.round(scores)  # ties: the ranking keeps the input order
    assert evaluation.voc07_average_precision(scores, labels) == pytest.approx(
        _brute_force_voc07_ap(list(scores), list(labels)), abs=1e-12)


def test_voc07_known_values_and_difficult_images_are_ignored():
  assert evaluation.voc07_average_precision([3, 2, 1], [1, 1, 0]) == pytest.approx(1.0)
  # Positive ranked last behind two negatives: precision 1/3 at every recall.
  assert evaluation.voc07_average_precision([3, 2, 1], [0, 0, 1]) == pytest.approx(1 / 3)
  # The same ranking with the negatives marked difficult counts as perfect.
  assert evaluation.voc07_average_precision(
      [3, 2, 1], [0, 0, 1], difficult=[1, 1, 0]) == pytest.approx(1.0)
  out = evaluation.voc07_map(np.array([[3, 1], [2, 2], [1, 3]]),
                             np.array([[1, 0], [1, 0], [0, 1]]))
  assert out["ap"] == pytest.approx([1.0, 1.0]) and out["map"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="without positives"):
    evaluation.voc07_average_precision([1, 2], [0, 0])


def test_voc07_recall_of_exactly_three_tenths_misses_the_devkit_threshold():
  # 10 positives ranked P P P N P P P P P P P (scores descending).
  # Cut-offs 1-3: recall 0.1, 0.2, 0.3 at precision 1; cut-off 4 (the
  # negative): recall 0.3, precision 3/4; cut-off c >= 5: recall (c-1)/10,
  # precision (c-1)/c, largest at c = 11: 10/11.
  # Devkit: t = 0, 0.1, 0.2 take precision 1. Recall 0.3 misses t =
  # 0.30000000000000004, so t = 0.3 ... 1.0 (8 thresholds) take the best
  # precision at recall >= 0.4: 10/11.
  # AP = (3 * 1 + 8 * 10/11) / 11 = 113/121 = 0.93388...
  # (Counting recall 0.3 at t = 0.3 would give (4 + 7 * 10/11) / 11 = 114/121.)
  labels = [1, 1, 1, 0] + [1] * 7
  scores = list(range(len(labels), 0, -1))
  assert evaluation.voc07_average_precision(scores, labels) == pytest.approx(
      113 / 121, abs=1e-12)
  # 10 positives ranked P P P, then 7 negatives, then 7 P. Recall 0.3 at
  # precision 1 (cut-offs 1-3); recall reaches 0.4 only at cut-off 11 (4/11),
  # then (c-7)/c for c = 11..17, largest at c = 17: 10/17.
  # AP = (3 * 1 + 8 * 10/17) / 11 = 131/187 = 0.70053...
  # (Counting recall 0.3 at t = 0.3: (4 + 7 * 10/17) / 11 = 138/187.)
  labels = [1] * 3 + [0] * 7 + [1] * 7
  scores = list(range(len(labels), 0, -1))
  assert evaluation.voc07_average_precision(scores, labels) == pytest.approx(
      131 / 187, abs=1e-12)
  # 20 positives: 6 P, then 6 N, then 14 P. Recall 6/20 = 0.3 (precision 1)
  # misses t = 0.3; recall 7/20 first at cut-off 13 (7/13); the best precision
  # at recall >= 0.35 is at the last cut-off, 26: 20/26 = 10/13.
  # AP = (3 * 1 + 8 * 10/13) / 11 = 119/143 = 0.83216...
  labels = [1] * 6 + [0] * 6 + [1] * 14
  scores = list(range(len(labels), 0, -1))
  assert evaluation.voc07_average_precision(scores, labels) == pytest.approx(
      119 / 143, abs=1e-12)


def test_voc07_difficult_images_anywhere_in_the_ranking_change_nothing():
  # The first case above with difficult images put first (where the devkit's
  # precision is 0/0), between the positives and last: still 113/121.
  # Difficult images may carry either label; they are left out either way.
  labels = [1, 1, 1, 1, 0, 0] + [1] * 7 + [1]
  difficult = [1, 0, 0, 0, 1, 0] + [0] * 7 + [1]
  # Without the difficult rows: P P P N P P P P P P P, as above.
  scores = list(range(len(labels), 0, -1))
  assert evaluation.voc07_average_precision(
      scores, labels, difficult=difficult) == pytest.approx(113 / 121, abs=1e-12)
  # voc07_map takes the difficult flags per class.
  out = evaluation.voc07_map(np.array([scores, scores]).T,
                             np.array([labels, [1] * len(labels)]).T,
                             np.array([difficult, [0] * len(labels)]).T)
  assert out["ap"] == pytest.approx([113 / 121, 1.0], abs=1e-12)


# ------------------------------------------------------------ the binary
def _run(args, **kw):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m"] + args, cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, **kw)


def _eval_flags(idx_dir):
  return ["--config=configs/eval/fashion_mnist_folds.py:smoke",
          f"--config.dataset.path={idx_dir}", "--config.dataset.auto_install=False",
          "--config.dataset.tfds_fallback=False",
          "--config.pp_eval=resize(16)|value_range(-1, 1)"]


@pytest.mark.slow
def test_linear_eval_binary_writes_per_layer_results(idx_dir, tmp_path):
  out = tmp_path / "eval"
  r = _run(["trainers.linear_eval"] + _eval_flags(idx_dir) + [
      "--features=random", "--pretrain_config=configs/fashion_mnist.py:tiny",
      f"--output={out}"])
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((out / "eval_results.json").read_text())
  assert res["layers"] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
  for layer in res["layers"]:
    folds = res["folds"][layer]
    assert len(folds["linear"]["per_fold"]) == 2 and len(folds["knn"]["per_fold"]) == 2
    assert 0.0 <= folds["linear"]["mean"] <= 1.0
    assert folds["linear"]["mean"] == pytest.approx(np.mean(folds["linear"]["per_fold"]))
    full = res["full"]
    scores = full["validation_accuracy"][layer]
    # The kept epoch is the best held-out one; it stops at max_epochs or
    # one epoch (patience 1) after the best.
    assert full["selected_epoch"][layer] == 1 + int(np.argmax(scores))
    assert len(scores) == 3 or len(scores) == full["selected_epoch"][layer] + 1
  assert (res["full"]["train_images"], res["full"]["validation_size"]) == (224, 32)
  assert res["folds_setup"] == {"num_folds": 2, "fold_size": 30,
                                "validation_size": 20, "test_images": 64}
  assert any(p.name.startswith("events") for p in (out / "tensorboard").iterdir())
  assert res["output"] == str(out) and "--features=random" in res["command"]


@pytest.mark.slow
def test_linear_eval_names_bad_inputs(idx_dir, tmp_path):
  r = _run(["trainers.linear_eval"] + _eval_flags(idx_dir) + [
      "--features=keras", f"--keras_file={tmp_path}/nope.keras", f"--output={tmp_path}/o"])
  assert r.returncode == 2 and "--keras_file" in r.stderr
  r = _run(["trainers.linear_eval"] + _eval_flags(idx_dir) + [
      "--features=discriminator", f"--workdir={tmp_path}/nothing"])
  assert r.returncode == 2 and "does not exist" in r.stderr
  assert not os.path.exists(f"{tmp_path}/nothing")


@pytest.mark.slow
def test_linear_eval_records_the_checkpoint_it_evaluated(idx_dir, tmp_path):
  """eval_results.json and the console name the checkpoint evaluated and
  both phases' steps (done and configured): an evaluation of a mid-training
  checkpoint (adversarial step 2 of 4) is told from the final one (4 of 4)."""
  import shutil  # pylint: disable=g-import-not-at-top
  from artifact_spotting import train_lib  # pylint: disable=g-import-not-at-top
  from conftest import tiny_idx_config  # pylint: disable=g-import-not-at-top
  final = str(tmp_path / "final")
  train_lib.train(tiny_idx_config(idx_dir), final)
  ckpts = os.path.join(final, "checkpoints")
  # ckpt-3: adversarial step 2; ckpt-4: step 4 (checkpoint_every=2).
  assert tf.train.latest_checkpoint(ckpts).endswith("ckpt-4")
  mid = str(tmp_path / "mid")
  shutil.copytree(final, mid)
  for f in os.listdir(os.path.join(mid, "checkpoints")):
    if f.startswith("ckpt-4."):
      os.remove(os.path.join(mid, "checkpoints", f))
  procs = {name: subprocess.Popen(
      [sys.executable, "-m", "trainers.linear_eval"] + _eval_flags(idx_dir) + [
          f"--workdir={workdir}", "--config.protocols=('folds',)"],
      cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for name, workdir in (("final", final), ("mid", mid))}
  outs = {name: p.communicate(timeout=600) for name, p in procs.items()}
  for name, (ckpt, adv) in (("final", ("ckpt-4", 4)), ("mid", ("ckpt-3", 2))):
    assert procs[name].returncode == 0, outs[name][1][-3000:]
    workdir = final if name == "final" else mid
    res = json.loads(open(os.path.join(
        workdir, "eval", "fashion_mnist_folds", "eval_results.json")).read())
    path = os.path.join(os.path.abspath(workdir), "checkpoints", ckpt)
    assert res["checkpoint"] == {
        "path": path, "autoencoder_step": 4, "autoencoder_steps": 4,
        "adversarial_step": adv, "adversarial_steps": 4,
        "finished": adv == 4}, name
    line = next(l for l in outs[name][0].splitlines() if l.startswith("checkpoint "))
    assert path in line and f"adversarial step {adv}/4" in line, line
    assert "autoencoder step 4/4" in line, line
    assert ("mid-training" in line) == (adv < 4), line

# ------------------------------------------ fine-tuning under tfds mock_data
def _mock_finetune_config(name, **updates):
  import importlib
  cfg = importlib.import_module(f"configs.finetune.{name}").get_config("smoke")
  cfg.channels = 1
  cfg.pp_train = cfg.pp_eval = "resize(16)|to_gray|value_range(-1, 1)"
  cfg.update(updates)
  return cfg


@pytest.mark.slow
def test_voc07_finetune_under_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  from artifact_spotting import finetune
  from artifact_spotting.data import sources
  c = _mock_finetune_config("voc07")
  with tfds.testing.mock_data(num_examples=12):
    src = sources.tfds_source(c.dataset, "test", False)
    ds, has_label = src.dataset, src.has_label
    raw = tfds.load("voc/2007", split="test")
    for ex, raw_ex in zip(ds.take(6), raw.take(6)):
      label = ex["label"].numpy()
      assert has_label and label.shape == (20,) and set(label) <= {-1.0, 0.0, 1.0}
      clear = set(raw_ex["labels_no_difficult"].numpy())
      every = set(raw_ex["labels"].numpy())
      assert set(np.flatnonzero(label == 1)) == clear
      assert set(np.flatnonzero(label == -1)) == every - clear
    _, result = finetune.finetune(c, "random:configs/fashion_mnist.py:tiny",
                                  str(tmp_path / "voc"))
  assert 0.0 <= result["eval_map"] <= 1.0
  assert result["eval_map"] == pytest.approx(np.mean(list(result["eval_ap"].values())))
  assert os.path.exists(tmp_path / "voc" / "final.keras")


@pytest.mark.slow
def test_stl10_folds_finetune_under_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  from artifact_spotting import finetune
  fold_file = tmp_path / "fold_indices.txt"
  fold_file.write_text("0 1 2 3 4 5\n6 7 8 9 10 11\n")
  c = _mock_finetune_config("stl10_folds", fold_file=str(fold_file))
  with tfds.testing.mock_data(num_examples=12):
    _, result = finetune.finetune(c, "random:configs/fashion_mnist.py:tiny",
                                  str(tmp_path / "stl"))
  assert result["folds"] == [0, 1]
  assert len(result["eval_accuracy_per_fold"]) == 2
  assert result["eval_accuracy_mean"] == pytest.approx(
      np.mean(result["eval_accuracy_per_fold"]))
  for f in (0, 1):
    assert os.path.exists(tmp_path / "stl" / f"fold_{f}" / "finetune_results.json")
  c.fold = "7"
  with pytest.raises(ValueError, match="outside the 2 folds"):
    finetune.finetune(c, "random:configs/fashion_mnist.py:tiny", str(tmp_path / "x"))


def test_subset_keeps_exactly_the_fold_and_leaves_the_source_alone():
  from artifact_spotting import finetune
  src = pipeline.Source(tf.data.Dataset.from_tensor_slices(
      {"image": np.zeros((10, 2, 2, 1)), "label": np.arange(10)}), True)
  fold = finetune.subset(src, [7, 2, 5])
  assert sorted(int(ex["label"]) for ex in fold.dataset) == [2, 5, 7]
  assert len(list(src.dataset)) == 10
  assert finetune.num_examples(src) == 10
  assert finetune.num_examples(fold) == 3  # counted: a filter's size is unknown


def test_hold_out_splits_disjointly_and_by_seed():
  from artifact_spotting import finetune
  indices = np.arange(100, 200)
  train, held = finetune.hold_out(indices, 30, seed=0)
  assert len(held) == 30 and len(train) == 70
  assert not set(train) & set(held)
  assert sorted(set(train) | set(held)) == list(indices)
  again, held_again = finetune.hold_out(indices, 30, seed=0)
  assert np.array_equal(held, held_again) and np.array_equal(train, again)
  assert not np.array_equal(held, finetune.hold_out(indices, 30, seed=1)[1])
  with pytest.raises(ValueError, match="leaves no training images"):
    finetune.hold_out(np.arange(5), 5, seed=0)


def test_best_epoch_keeps_the_best_and_its_choice_survives_a_resume(tmp_path):
  from artifact_spotting import finetune
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

  def epoch_end(cb, epoch, value, weight):
    model.set_weights([np.full((2, 1), weight, np.float32), np.zeros(1, np.float32)])
    cb.set_model(model)
    cb.on_epoch_end(epoch, {"val_accuracy": value})
    return model.stop_training

  model.stop_training = False
  cb = finetune.BestEpoch(str(tmp_path), "val_accuracy", "max", patience=2)
  assert not epoch_end(cb, 0, 0.5, 1.0)
  assert not epoch_end(cb, 1, 0.7, 2.0)    # best so far: epoch 2
  # Killed here; BackupAndRestore resumes at epoch 3 with a new callback.
  cb = finetune.BestEpoch(str(tmp_path), "val_accuracy", "max", patience=2)
  assert cb.state["best_epoch"] == 2
  assert not epoch_end(cb, 2, 0.6, 3.0)
  assert epoch_end(cb, 3, 0.65, 4.0)       # two epochs without improvement
  best = keras.saving.load_model(str(tmp_path / "best.keras"))
  assert np.all(best.get_weights()[0] == 2.0)
  assert cb.state["scores"] == {"1": 0.5, "2": 0.7, "3": 0.6, "4": 0.65}
  loss = finetune.BestEpoch(str(tmp_path / "l"), "val_loss", "min", patience=0)
  os.makedirs(tmp_path / "l")
  model.stop_training = False
  for epoch, value in enumerate([3.0, 1.0, 2.0, 2.5, 2.7]):
    model.set_weights([np.full((2, 1), epoch, np.float32), np.zeros(1, np.float32)])
    loss.set_model(model)
    loss.on_epoch_end(epoch, {"val_loss": value})
  assert loss.state["best_epoch"] == 2 and not model.stop_training


@pytest.mark.slow
def test_finetune_chooses_the_epoch_on_held_out_training_images(idx_dir, tmp_path):
  from artifact_spotting import finetune
  from configs.finetune import fashion_mnist as ft
  c = ft.get_config("smoke")
  c.dataset.update(path=str(idx_dir), auto_install=False, tfds_fallback=False,
                   shuffle_buffer=64)
  c.pp_train = c.pp_eval = "resize(16)|value_range(-1, 1)"
  c.update(freeze_up_to="conv4", batch_size=8, steps_per_epoch=3, epochs=4,
           validation_size=24, early_stopping_patience=0)
  model, result = finetune.finetune(c, "random:configs/fashion_mnist.py:tiny",
                                    str(tmp_path / "ft"))
  scores = result["validation_per_epoch"]
  assert len(scores) == result["epochs_run"] == 4
  assert result["selected_epoch"] == int(np.argmax(scores)) + 1
  assert result["validation_best"] == max(scores)
  # The reported test accuracy is the chosen model's, read back in a fresh load.
  best = keras.saving.load_model(str(tmp_path / "ft" / "best.keras"))
  test = finetune._supervised(pipeline.make_dataset(
      pipeline.open_source(c.dataset, 1, split="test", training=False),
      c.pp_eval, 8, training=False, drop_remainder=False))
  assert best.evaluate(test, verbose=0)[1] == pytest.approx(result["eval_accuracy"])
  # Held out of the train split: together the two are the whole split.
  train, held = finetune.training_sources(c)
  assert finetune.num_examples(held) == 24
  assert finetune.num_examples(train) == finetune.num_examples(
      pipeline.open_source(c.dataset, 1, split="train")) - 24
  labels = lambda s: [int(ex["label"]) for ex in s.dataset]
  assert len(labels(train)) + len(labels(held)) == len(labels(
      pipeline.open_source(c.dataset, 1, split="train", training=False)))


def test_ridge_standardize_folds_the_affine_map_into_the_classifier():
  rng = np.random.default_rng(3)
  x = rng.normal(2.0, 3.0, size=(40, 12)) * rng.uniform(0.1, 5, 12)
  y, xe = rng.integers(0, 4, 40), rng.normal(2.0, 3.0, size=(30, 12))
  mean, std = x.mean(0), x.std(0) + 1e-6
  want = evaluation.ridge_fit_predict((x - mean) / std, y, [(xe - mean) / std], 4, [0.1])
  got = evaluation.ridge_fit_predict(x, y, [xe], 4, [0.1], standardize=True)
  np.testing.assert_array_equal(got[0][0], want[0][0])


def test_folds_from_a_fold_file_as_for_stl10(idx_dir, tmp_path):
  """The STL-10 protocol's shape: folds read from a file and covering the
  whole training split, so each fold validates on the other folds' images."""
  from configs.eval import fashion_mnist_folds, stl10_folds
  fold_file = tmp_path / "fold_indices.txt"
  fold_file.write_text("0 1 2 3 4 5 6 7\n8 9 10 11 12 13 14 15\n")
  c = fashion_mnist_folds.get_config("smoke,folds_only")
  c.dataset.update(path=idx_dir, auto_install=False, tfds_fallback=False)
  c.folds.update(kind="file", file=str(fold_file), validation_size=4)
  c.pp_eval = "resize(16)|value_range(-1, 1)"
  c.max_test_images = 10
  ex = evaluation.pixel_extractor(9216)
  # 256 training images: 240 are in no fold, so validation comes from them.
  res = evaluation.evaluate(c, ex, log=lambda m: None)
  assert res["folds_setup"] == {"num_folds": 2, "fold_size": 8,
                                "validation_size": 4, "test_images": 10}
  assert len(res["folds"]["pixels"]["linear"]["per_fold"]) == 2
  c.folds.file = ""
  with pytest.raises(ValueError, match="config.folds.file"):
    evaluation.evaluate(c, ex, log=lambda m: None)
  stl = stl10_folds.get_config("")
  assert (stl.folds.kind, stl.dataset.name, stl.channels) == ("file", "stl10", 3)


# ------------------------------------------------------------ config checks
def _eval_config():
  import importlib
  return importlib.import_module("configs.eval.fashion_mnist_folds").get_config("smoke")


@pytest.mark.parametrize("field,value,needle", [
    ("knn.k", 0, "config.knn.k=0 must be an integer >= 1"),
    ("knn.temperature", 0.0, "config.knn.temperature=0.0 must be"),
    ("knn.temperature", float("nan"), "config.knn.temperature=nan"),
    ("pooled_dims", 0, "config.pooled_dims=0 must be an integer >= 1"),
    ("batch_size", -3, "config.batch_size=-3 must be an integer >= 1"),
    ("num_classes", 1, "config.num_classes=1 must be an integer >= 2"),
    ("folds.num_folds", 0, "config.folds.num_folds=0"),
    ("folds.per_class", 0, "config.folds.per_class=0"),
    ("folds.validation_size", 0, "config.folds.validation_size=0"),
    ("folds.kind", "nope", "config.folds.kind='nope'"),
    ("ridge_penalties", (1.0, 0.0), "config.ridge_penalties=(1.0, 0.0)"),
    ("ridge_penalties", (), "config.ridge_penalties=()"),
    ("full.max_epochs", 0, "config.full.max_epochs=0"),
    ("full.patience", -1, "config.full.patience=-1"),
    ("full.validation_size", 0, "config.full.validation_size=0"),
    ("full.batch_size", 0, "config.full.batch_size=0"),
    ("full.lr", float("inf"), "config.full.lr=inf"),
    ("full.weight_decay", -1.0, "config.full.weight_decay=-1.0"),
    ("full.max_train_images", -1, "config.full.max_train_images=-1"),
    ("max_test_images", -1, "config.max_test_images=-1"),
    ("protocols", ("folds", "nope"), "config.protocols="),
    ("pp_eval", "resize(-1)", "config.pp_eval='resize(-1)'"),
])
def test_eval_config_fields_are_range_checked(field, value, needle):
  c = _eval_config()
  node, key = c, field
  if "." in field:
    parent, key = field.split(".")
    node = c[parent]
  node[key] = value
  with pytest.raises(ValueError) as e:
    evaluation.validate_eval_config(c)
  assert needle in str(e.value), str(e.value)


def test_shipped_eval_and_finetune_configs_pass_their_checks():
  import importlib
  from artifact_spotting import finetune
  for name in ("fashion_mnist_folds", "stl10_folds"):
    for arg in ("", "smoke"):
      evaluation.validate_eval_config(
          importlib.import_module(f"configs.eval.{name}").get_config(arg))
  for name in ("fashion_mnist", "stl10_folds", "voc07"):
    for arg in ("", "smoke"):
      c = importlib.import_module(f"configs.finetune.{name}").get_config(arg)
      if c.get("fold", ""):
        c.fold_file = "folds.txt"
      finetune.validate_finetune_config(c)


def test_early_stopping_needs_held_out_images_not_the_test_split():
  from artifact_spotting import finetune
  from configs.finetune import fashion_mnist as ft
  c = ft.get_config("smoke")
  c.validation_size = 0
  with pytest.raises(ValueError, match="early_stopping_patience=3 needs "
                     "config.validation_size > 0"):
    finetune.validate_finetune_config(c)
  c.early_stopping_patience = 0
  finetune.validate_finetune_config(c)


@pytest.mark.parametrize("field,value,needle", [
    ("batch_size", 0, "config.batch_size=0 must be an integer >= 1"),
    ("epochs", 0, "config.epochs=0"),
    ("steps_per_epoch", -1, "config.steps_per_epoch=-1"),
    ("lr", 0.0, "config.lr=0.0 must be a finite number > 0"),
    ("lr", float("nan"), "config.lr=nan"),
    ("early_stopping_patience", -1, "config.early_stopping_patience=-1"),
    ("validation_size", -1, "config.validation_size=-1"),
    ("num_classes", 1, "config.num_classes=1"),
    ("freeze_up_to", "conv9", "config.freeze_up_to='conv9'"),
    ("head_dropout", 1.0, "config.head_dropout=1.0"),
    ("fold", "x", "config.fold='x'"),
    ("fold", "all", "config.fold='all' needs config.fold_file"),
    ("pp_train", "resize(0)", "config.pp_train='resize(0)'"),
])
def test_finetune_config_fields_are_range_checked(field, value, needle):
  import importlib
  from artifact_spotting import finetune
  c = importlib.import_module("configs.finetune.fashion_mnist").get_config("smoke")
  c[field] = value
  with pytest.raises(ValueError) as e:
    finetune.validate_finetune_config(c)
  assert needle in str(e.value), str(e.value)


def _one_error_line(r, needle):
  last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
  assert r.returncode == 2, r.stderr[-3000:]
  assert last.startswith("error: ") and needle in last, r.stderr[-3000:]
  assert "Traceback" not in r.stderr, r.stderr[-3000:]


@pytest.mark.slow
def test_eval_and_finetune_binaries_reject_bad_fields_in_one_line(idx_dir, tmp_path):
  out = tmp_path / "eval"
  r = _run(["trainers.linear_eval"] + _eval_flags(idx_dir) + [
      "--features=random", "--pretrain_config=configs/fashion_mnist.py:tiny",
      f"--output={out}", "--config.knn.k=0"])
  _one_error_line(r, "config.knn.k=0 must be an integer >= 1")
  assert not out.exists()
  ft = tmp_path / "ft"
  r = _run(["trainers.finetune", "--config=configs/finetune/fashion_mnist.py:smoke",
            "--init=random:configs/fashion_mnist.py:tiny", f"--workdir={ft}",
            "--config.batch_size=0"])
  _one_error_line(r, "config.batch_size=0 must be an integer >= 1")
  assert not ft.exists()


# ------------------------------------------------ the full-label probe
def test_full_probe_chooses_the_epoch_on_held_out_images_and_stops():
  from artifact_spotting.evaluation import probe
  train, held = probe.held_out_split(100, 20, seed=3)
  assert len(train) == 80 and len(held) == 20 and not set(train) & set(held)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(100))
  with pytest.raises(ValueError, match="validation_size=100"):
    probe.held_out_split(100, 100, seed=0)
  x = np.random.default_rng(1).normal(3, 2, (1000, 7)).astype(np.float16)
  mean, std = probe._moments(x, chunk=99)
  np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, x.astype(np.float64).std(0), rtol=1e-5)
  # Two Gaussian classes: held-out accuracy climbs from the first epoch.
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(2, 16)).astype(np.float32)
  def data(n):
    y = rng.integers(0, 2, n)
    return (centers[y] + 1.5 * rng.normal(size=(n, 16))).astype(np.float16), y
  x, y = data(2000)
  xv, yv = data(500)
  xt, yt = data(500)
  accuracy, scores, kept = probe.train_layer(
      x, y, xv, yv, 2, max_epochs=40, patience=3, batch_size=64, lr=1e-2,
      weight_decay=0.0)
  assert kept == 1 + int(np.argmax(scores))
  assert len(scores) < 40 and len(scores) == kept + 3   # stopped early
  assert max(scores) > 0.8
  # The test split is scored with the kept epoch's weights.
  assert accuracy(xv, yv) == max(scores)
  assert accuracy(xt, yt) > 0.8

