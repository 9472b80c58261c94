"""The quality benchmark (benchmarks/quality.py, its report
benchmarks/quality_report.py and its plan benchmarks/quality_plan.py): gap
closure, margins, ablation verdicts, seed replicates, provenance, the runs it
plans and its flags, on fake evaluation results; and the report of fixed
inputs byte for byte."""

import dataclasses
import json
import os

import pytest

from benchmarks import quality_plan, quality_report
from benchmarks.quality_plan import Options


def _fake_eval(path, layer_means, full=True, std=0.01):
  folds = {l: {"dims": 10, "linear": {"mean": m, "std": std, "per_fold": [m - std, m + std]},
               "penalty_per_fold": [1.0, 1.0]} for l, m in layer_means.items()}
  if full:  # as benchmarks.quality runs it: kNN and full probe together
    for l, m in layer_means.items():
      folds[l]["knn"] = {"mean": m - 0.05, "std": std,
                         "per_fold": [m - 0.05 - std, m - 0.05 + std]}
  res = {"folds": folds, "layers": list(layer_means),
         "folds_setup": {"num_folds": 2, "fold_size": 1000, "validation_size": 50,
                         "test_images": 100}}
  if full:
    res["full"] = {"accuracy": {l: m + 0.05 for l, m in layer_means.items()},
                   "max_epochs": 50, "patience": 5, "validation_size": 5000,
                   "train_images": 55000}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(res, f)


def test_quality_report_arithmetic(tmp_path):
  opts = Options(ablations=("full", "k"), random_seeds=2)
  root = str(tmp_path)
  conv = lambda *m: dict(zip(["conv1", "conv2", "conv3", "conv4", "conv5"], m))
  _fake_eval(quality_plan.eval_path(root, "ours"), conv(.70, .80, .85, .84, .83))
  _fake_eval(quality_plan.eval_path(root, "ablation_k"), conv(.70, .75, .76, .77, .73))  # kNN
  _fake_eval(quality_plan.eval_path(root, "random_seed0"), conv(.70, .72, .74, .73, .72))
  _fake_eval(quality_plan.eval_path(root, "random_seed1"), conv(.70, .72, .76, .73, .72), False)
  _fake_eval(quality_plan.eval_path(root, "autoencoder"),
             {"stem": .7, "stage1": .75, "stage2": .78, "stage3": .77})
  _fake_eval(quality_plan.eval_path(root, "pixels"), {"pixels": .72})
  _fake_eval(quality_plan.eval_path(root, "supervised"), conv(.75, .85, .90, .92, .93))
  _fake_eval(quality_plan.eval_path(root, "rotnet"), conv(.70, .79, .81, .80, .78))
  os.makedirs(quality_plan.ablation_dir(root, "full"))
  with open(os.path.join(quality_plan.ablation_dir(root, "full"), "config.json"), "w") as f:
    json.dump({"autoencoder": {"batch_size": 128},
               "spotter": {"batch_size": 64, "lr": 1e-3, "repair_lr": 1e-3, "drop_rate": 0.7},
               "resolution": 32}, f)
  with open(os.path.join(quality_plan.ablation_dir(root, "full"), "train_summary.json"), "w") as f:
    json.dump({"spotter": {"steps": 300, "metrics": {
        "c/real_accuracy": 0.52, "c/fake_accuracy": 0.55, "c/mask_accuracy": 0.31,
        "r/adversarial": 0.7}}}, f)
  os.makedirs(os.path.join(root, "supervised"))
  with open(os.path.join(root, "supervised", "finetune_results.json"), "w") as f:
    json.dump({"selected_epoch": 2, "epochs_run": 6, "validation_size": 5000,
               "validation_best": 0.91, "validation_per_epoch": [
                   0.88, 0.91, 0.90, 0.905, 0.9, 0.89], "eval_accuracy": 0.905}, f)
  out = str(tmp_path / "results" / "quality")
  quality_report.write(root, out, opts)
  rep = json.loads(open(out + ".json").read())
  assert rep["supervised_bound"]["selected_epoch"] == 2
  assert "taken at epoch 2 of 6 run (held-out accuracy 0.9100" in open(out + ".md").read()
  assert rep["ablations"]["full"]["game_at_end"] == {
      "real_accuracy": 0.52, "fake_accuracy": 0.55, "mask_accuracy": 0.31,
      "steps": 300, "keep_rate": pytest.approx(0.3)}
  assert "game_at_end" not in rep["ablations"]["k"]  # no train_summary.json
  assert "| full | 300 | 0.520 | 0.550 | 0.310 | 0.300 |" in open(out + ".md").read()
  assert rep["best_layer"] == "conv3"
  # random at conv3 = mean of seeds (.74, .76) = .75; supervised .90.
  assert rep["gap_closure"] == pytest.approx((0.85 - 0.75) / (0.90 - 0.75))
  # Per layer: random is the seeds' mean there (conv5: .72, supervised .93).
  assert rep["closure_per_layer"]["conv5"] == pytest.approx((0.83 - 0.72) / (0.93 - 0.72))
  assert rep["closure_per_layer"]["conv1"] == pytest.approx(0.0)
  # Best against best: ours .85, random's best layer .75 (conv3), bound .93.
  assert rep["closure_best_vs_best"] == pytest.approx((0.85 - 0.75) / (0.93 - 0.75))
  assert rep["autoencoder_closure_best_vs_best"] == pytest.approx(
      (0.78 - 0.75) / (0.93 - 0.75))
  assert "| closure of ours | 0.00 | 0.62 | 0.67 | 0.58 | 0.52 |" in open(out + ".md").read()
  assert rep["models"]["random"]["conv3"]["best_seed_mean"] == pytest.approx(0.76)
  assert rep["models"]["random"]["conv3"]["knn_mean"] == pytest.approx(0.74 - 0.05)
  assert rep["margin_over_best_random_seed_in_stds"] == pytest.approx(0.09 / 0.01)
  assert rep["margin_over_autoencoder_in_stds"] == pytest.approx(0.07 / 0.01)
  # (l) was not asked for: the ablation target is not measured, not "met".
  assert rep["targets"] == {"beats_random_and_autoencoder_by_3_std": True,
                            "best_vs_best_closure_at_least_0.71": False,
                            "k_and_l_clearly_below_full": None,
                            "beats_peer_by_3_std_under_every_probe": True,
                            "full_probe_best_vs_best_closure_at_least_0.71": False}
  # Every probe: fakes give full = linear + .05 and kNN = linear - .05; the
  # random row's full and kNN come from seed 0 (conv3 .74), the only one
  # evaluated with them.
  probes = rep["probes"]
  assert rep["headline_probe"] == "full" and set(probes) == {"full", "linear", "knn"}
  assert probes["linear"]["closure_best_vs_best"] == pytest.approx(rep["closure_best_vs_best"])
  assert probes["full"]["closure_best_vs_best"] == pytest.approx((.90 - .79) / (.98 - .79))
  assert probes["knn"]["closure_per_layer"]["conv3"] == pytest.approx((.80 - .69) / (.85 - .69))
  assert probes["full"]["best_layer"] == {"ours": "conv3", "rotnet": "conv3",
                                          "random": "conv3", "autoencoder": "stage2",
                                          "pixels": "pixels", "supervised": "conv5"}
  # Ours .85 against RotNet .81 at conv3 under every probe: 0.04 in fold
  # stds of 0.01 (the full probe borrows the linear probe's).
  for p in probes.values():
    assert p["ours_vs_peer"]["difference"] == pytest.approx(0.04)
    assert p["ours_vs_peer"]["in_noise_units"] == pytest.approx(4.0)
  assert probes["full"]["ours_vs_peer"]["noise_unit_from"] == "linear"
  assert probes["full"]["ours_vs_peer"]["peer_closure_best_vs_best"] == pytest.approx(
      (.86 - .79) / (.98 - .79))
  md = open(out + ".md").read()
  assert "Headline probe: **full**" in md
  assert "| rotnet | 0.7500 | 0.8400 | **0.8600** | 0.8500 | 0.8300 | conv3 0.8600 |" in md
  # k's best layer is conv4 (.77): 0.08 below ours' best.
  assert rep["ablations"]["k"]["below_full_in_stds"] == pytest.approx(0.08 / 0.01)
  # kNN at ours' best kNN layer (conv3: .80), k there .71.
  assert rep["ablations"]["k"]["knn_layer"] == "conv3"
  assert rep["ablations"]["k"]["knn_below_full_in_stds"] == pytest.approx(0.09 / 0.01)
  assert "| k | conv4 | 0.7700 +- 0.0100 | 0.7600 | 8.0 | 0.7100 +- 0.0100 | 9.0 |" in (
      open(out + ".md").read())
  for model in ("ours", "random", "autoencoder", "pixels", "supervised"):
    for layer, v in rep["models"][model].items():
      assert {"mean", "std"} <= set(v)
  assert os.path.getsize(out + ".png") > 1000
  assert "best layer against best layer" in open(out + ".md").read()
  # A partial run: (l) asked for but not evaluated -> listed, target open;
  # then evaluated -> the target is decided.
  opts = dataclasses.replace(opts, ablations=("full", "k", "l"))
  quality_report.write(root, out, opts)
  rep = json.loads(open(out + ".json").read())
  assert rep["ablations_missing"] == ["l"] and "l" not in rep["ablations"]
  assert rep["targets"]["k_and_l_clearly_below_full"] is None
  assert "Not trained/evaluated in this report (partial run): l." in open(out + ".md").read()
  _fake_eval(quality_plan.eval_path(root, "ablation_l"), conv(.70, .80, .84, .84, .83),
             False)
  quality_report.write(root, out, opts)
  rep = json.loads(open(out + ".json").read())
  assert rep["ablations_missing"] == []
  assert rep["targets"]["k_and_l_clearly_below_full"] is False  # l: 1 std below
  os.remove(quality_plan.eval_path(root, "pixels"))
  with pytest.raises(RuntimeError, match="pixels"):
    quality_report.write(root, out, opts)


def test_quality_report_names_what_another_root_made(tmp_path):
  """Runs and evaluations copied in from another root (a shared autoencoder or
  baseline) are listed with where they were made; evaluations that do not
  record it are listed as such; what this root made is not listed."""
  opts = Options(ablations=("full", "k"), random_seeds=1)
  root = str(tmp_path)
  def marker(workdir, made_in):
    os.makedirs(workdir, exist_ok=True)
    with open(quality_plan.done_marker(workdir), "w") as f:
      json.dump({"seconds_last_run": 5.0, "command": [
          "python", "-m", "trainers.pretrain", f"--workdir={made_in}"]}, f)
  marker(quality_plan.autoencoder_dir(root), "/other/pretrain/autoencoder")
  marker(quality_plan.ablation_dir(root, "k"), "/other/pretrain/k")
  marker(quality_plan.ablation_dir(root, "full"), quality_plan.ablation_dir(root, "full"))
  for name in quality_plan.models(root, opts):
    _fake_eval(quality_plan.eval_path(root, name), {"conv3": .8})
  for name, made in (("ours", quality_plan.eval_path(root, "ours")),
                     ("random_seed0", "/other/eval/random_seed0/eval_results.json")):
    path = quality_plan.eval_path(root, name)
    res = json.load(open(path))
    res["output"] = os.path.dirname(made)
    json.dump(res, open(path, "w"))
  got = quality_report.provenance(root, quality_report.done_markers(root),
                                  quality_report.load_results(root, opts))
  assert got["copied"] == {
      "pretrain/autoencoder": "/other/pretrain/autoencoder",
      "pretrain/k": "/other/pretrain/k",
      "eval/random_seed0": "/other/eval/random_seed0"}
  assert got["unrecorded"] == sorted(
      f"eval/{n}" for n in quality_plan.models(root, opts)
      if n not in ("ours", "random_seed0"))
  lines = quality_report.provenance_lines(got)
  assert "pretrain/k (made in /other/pretrain/k)" in lines
  assert "eval/ablation_k" in lines
  assert quality_report.provenance_lines({"copied": {}, "unrecorded": []}) == (
      "Every training run and evaluation was made in this root.")


def test_quality_longer_ours_run_is_separate_from_the_full_row(tmp_path):
  from benchmarks import quality
  opts = Options(ablations=("full", "k"), spotter_steps=700, ours_steps=2000)
  names = quality_plan.models(str(tmp_path), opts)
  assert {"ours", "ablation_full", "ablation_k"} <= set(names)
  assert f"--workdir={tmp_path}/pretrain/full_2000" in names["ours"][0]
  assert f"--workdir={tmp_path}/pretrain/full" in names["ablation_full"][0]
  cmd = quality.pretrain_cmd(opts, "ablation=k", "/w", [("spotter.steps", 7)],
                             ["spotter.lr=0.001"])
  assert cmd[-2:] == ["--config.spotter.steps=7", "--config.spotter.lr=0.001"]


def test_quality_config_arg_reaches_every_model_built_from_the_config(
    tmp_path, monkeypatch):
  """--config_arg=grid=8: the pretraining runs, the random baselines and the
  supervised bound all get it (a random baseline with the 4x4-grid
  discriminator beside 8x8-grid rows would compare different networks)."""
  from benchmarks import quality
  opts = Options(ablations=("full", "k"), config_arg="grid=8")
  spec = "configs/fashion_mnist.py:grid=8"
  assert quality_plan.config_spec(opts) == spec
  cmd = quality.pretrain_cmd(opts, "ablation=k", "/w", [])
  assert "--config=configs/fashion_mnist.py:ablation=k,grid=8" in cmd
  names = quality_plan.models(str(tmp_path), opts)
  for seed in range(opts.random_seeds):
    assert f"--pretrain_config={spec}" in names[f"random_seed{seed}"][0]
  seen = []
  monkeypatch.setattr(quality, "train_once", lambda n, c, w, r: seen.append(c))
  quality.stage_supervised(str(tmp_path), opts)
  assert f"--init=random:{spec}" in seen[0]
  opts = dataclasses.replace(opts, config_arg="")
  assert quality_plan.config_spec(opts, "ablation=k") == "configs/fashion_mnist.py:ablation=k"


def test_quality_report_seed_replicates(tmp_path):
  """--row_seeds=2: per-fold paired gaps against the full row of the same
  seed, seed spreads, and a verdict against the larger noise."""
  opts = Options(ablations=("full", "k", "l", "a"), random_seeds=1, row_seeds=2,
                 replicate=("full", "k", "l"))
  root = str(tmp_path)
  conv = lambda c3: dict(zip(["conv1", "conv2", "conv3", "conv4", "conv5"],
                             (.70, .80, c3, .84, .83)))
  _fake_eval(quality_plan.eval_path(root, "ours"), conv(.85))
  _fake_eval(quality_plan.eval_path(root, "random_seed0"), conv(.74))
  _fake_eval(quality_plan.eval_path(root, "autoencoder"), {"stem": .7})
  _fake_eval(quality_plan.eval_path(root, "pixels"), {"pixels": .72})
  _fake_eval(quality_plan.eval_path(root, "supervised"), conv(.90))
  _fake_eval(quality_plan.eval_path(root, "rotnet"), conv(.82))
  names = quality_plan.models(root, opts)
  assert "ablation_a_s1" not in names and "ablation_k_s1" in names
  for name, c3 in [("ablation_k", .76), ("ablation_l", .76), ("ablation_a", .85),
                   ("ablation_full_s1", .83), ("ablation_l_s1", .81)]:
    _fake_eval(quality_plan.eval_path(root, name), conv(c3), False)
  os.makedirs(quality_plan.ablation_dir(root, "full"))
  with open(os.path.join(quality_plan.ablation_dir(root, "full"), "config.json"), "w") as f:
    json.dump({"autoencoder": {"batch_size": 128},
               "spotter": {"batch_size": 64, "lr": 1e-3, "repair_lr": 1e-3,
                           "drop_rate": 0.7}, "resolution": 32}, f)
  out = str(tmp_path / "q")
  quality_report.write(root, out, opts)
  rep = json.loads(open(out + ".json").read())
  assert quality_plan.ablation_dir(root, "k", 1).endswith(os.path.join("pretrain", "k_s1"))
  # k's second seed is missing: listed, and without it no seed-aware verdict.
  assert rep["ablations_missing"] == ["k_s1"]  # a is not replicated
  assert "seeds" not in rep["ablations"]["a"]
  assert rep["targets"]["k_and_l_clearly_below_full"] is None
  l = rep["ablations"]["l"]
  assert l["seed_means_at_conv3"] == pytest.approx([.76, .81])
  # Per-fold differences: seed 0 (.84-.75, .86-.77), seed 1 (.82-.80, .84-.82).
  assert l["paired_gap_at_conv3"] == pytest.approx((.09 + .09 + .02 + .02) / 4)
  assert l["paired_gap_fold_std_at_conv3"] == pytest.approx(0.035)
  full_spread = rep["ablations"]["full"]["seed_std_at_conv3"]
  assert full_spread == pytest.approx(0.02 / 2 ** 0.5)
  assert l["seed_std_at_conv3"] == pytest.approx(0.05 / 2 ** 0.5)
  assert l["noise_floor"] == pytest.approx(0.05 / 2 ** 0.5)  # l's spread is the largest
  assert l["below_full_in_noise"] == pytest.approx(0.055 / (0.05 / 2 ** 0.5))
  _fake_eval(quality_plan.eval_path(root, "ablation_k_s1"), conv(.77), False)
  quality_report.write(root, out, opts)
  rep = json.loads(open(out + ".json").read())
  assert rep["ablations_missing"] == []
  # k: gap (.09 + .06) / 2 over full's seed spread -> 5.3; l: 1.6 -> missed.
  assert rep["ablations"]["k"]["below_full_in_noise"] == pytest.approx(
      0.075 / (0.02 / 2 ** 0.5))
  # The one-seed figure compares best layers (l's is conv4, .84).
  assert rep["ablations"]["l"]["below_full_in_stds"] == pytest.approx(0.01 / 0.01)
  assert rep["targets"]["k_and_l_clearly_below_full"] is False
  md = open(out + ".md").read()
  assert "### Seed replicates at conv3 (--row_seeds=2)" in md
  assert "| l | 0,1 | 0.7600, 0.8100 |" in md
  k_units = 0.075 / (0.02 / 2 ** 0.5)
  l_units = rep["ablations"]["l"]["below_full_in_noise"]
  assert (f"- ablations (k) and (l) more than 3 noise units below full (k: "
          f"{k_units:.1f} noise units, see seed replicates; l: {l_units:.1f} noise "
          "units, see seed replicates): MISSED") in md


def test_quality_evaluates_ablation_rows_again_for_knn(tmp_path, monkeypatch):
  """A finished ablation evaluation without kNN is run again (with kNN),
  one with kNN is kept; --noablation_knn keeps both."""
  from benchmarks import quality
  root = str(tmp_path)
  conv = dict(zip(["conv1", "conv2", "conv3", "conv4", "conv5"], (.7, .8, .85, .84, .83)))
  _fake_eval(quality_plan.eval_path(root, "ablation_k"), conv, full=False)  # no kNN
  _fake_eval(quality_plan.eval_path(root, "ablation_l"), conv, full=True)   # kNN
  for row in ("k", "l"):
    os.makedirs(quality_plan.ablation_dir(root, row))
    open(quality_plan.done_marker(quality_plan.ablation_dir(root, row)), "w").close()
  for knn, expected in ((True, ["eval_ablation_k"]), (False, [])):
    opts = Options(ablations=("k", "l"), ablation_knn=knn)
    rows = {n: v for n, v in quality_plan.models(root, opts).items()
            if n.startswith("ablation_")}
    calls = []
    monkeypatch.setattr(quality, "models", lambda r, o, m=rows: m)
    monkeypatch.setattr(quality, "run_logged",
                        lambda name, cmd, root, calls=calls: calls.append((name, cmd)))
    quality.stage_evaluate(root, opts)
    monkeypatch.undo()
    assert [name for name, _ in calls] == expected
    assert all("--config.knn.enabled=False" not in cmd for _, cmd in calls)


def test_ablation_verdict_judges_an_unreplicated_row_on_its_fold_stds():
  """--replicate=full,k with --row_seeds=2: (l) has one seed, so its fold-std
  gap decides, not "rows missing"."""
  k = {"below_full_in_stds": 4.0, "below_full_in_noise": 3.5}
  assert quality_report._ablation_verdict({"k": k, "l": {"below_full_in_stds": 0.7}}) is False
  assert quality_report._ablation_verdict({"k": k, "l": {"below_full_in_stds": 3.1}}) is True
  assert quality_report._ablation_verdict(
      {"k": {"below_full_in_stds": 4.0, "below_full_in_noise": 2.9},
       "l": {"below_full_in_stds": 3.1}}) is False
  assert quality_report._ablation_verdict({"k": k}) is None
  # The report's verdict line names each row's figure in the unit judged on.
  assert quality_report._gap_words({"k": k, "l": {"below_full_in_stds": 0.7}}) == (
      "k: 3.5 noise units, see seed replicates; l: 0.7 fold stds")
  assert quality_report._gap_words({"k": k}).endswith("l: not run")
  # A planned seed not yet run (of l, or of full, which the paired gaps
  # need): no verdict until it is.
  for row in ("l", "full"):
    assert quality_report._ablation_verdict(
        {"k": k, "l": {"below_full_in_stds": 3.1}}, {row}) is None


# ------------------------------------------------- the report, byte for byte
# Two fixed fake roots and the report files the report code wrote from them
# (tests/data/quality_report/<scenario>.{json,md}, written at commit 36be140,
# before benchmarks/quality.py was split). The machine, the date and the
# command line are fixed too, so every byte of both files is the report
# code's. A deliberate change to the report rewrites them; nothing else may.
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "quality_report")
GOLDEN_MACHINE = {"cpu": "Test CPU", "cpu_family": 25, "cpu_model": 1,
                  "cpu_flags": ["avx2"], "cores": 2, "gpus": 0,
                  "platform": "Linux-test", "python": "3.11.7",
                  "tensorflow": "2.99.0"}
GOLDEN_DATE = "2026-01-02"
# Each scenario: its command line (flags as benchmarks.quality takes them).
GOLDEN_ARGS = {
    # Peer, kNN on an ablation row, the game at the end, a supervised bound
    # chosen on held-out images, runs and evaluations copied from another
    # root, one row without kNN.
    "peer": ["--ablations=full,k,l", "--random_seeds=2"],
    # A longer headline run, seed replicates (one not evaluated yet), a row
    # asked for but not evaluated, no peer, no held-out bound, a config
    # argument and an override.
    "seeds": ["--ablations=full,k,l,a,g", "--random_seeds=1", "--row_seeds=2",
              "--replicate=full,k,l", "--spotter_steps=700", "--ours_steps=2000",
              "--config_arg=grid=8", "--override=spotter.lr=0.001", "--nopeer"],
}
# ... and the options they stand for (test_quality_flags_give_the_options
# checks that the command line gives them).
GOLDEN_OPTIONS = {
    "peer": Options(ablations=("full", "k", "l"), random_seeds=2),
    "seeds": Options(ablations=("full", "k", "l", "a", "g"), random_seeds=1,
                     row_seeds=2, replicate=("full", "k", "l"), spotter_steps=700,
                     ours_steps=2000, config_arg="grid=8",
                     override=("spotter.lr=0.001",), peer=False),
}
CONV = ("conv1", "conv2", "conv3", "conv4", "conv5")


def _golden_eval(path, layer_means, full=True, knn=True, output=None):
  """A linear_eval result with three folds of unequal spread."""
  folds = {}
  for i, (l, m) in enumerate(layer_means.items()):
    per_fold = [m - 0.0071 * (i + 1), m + 0.0023, m + 0.0048 + 0.0013 * i]
    mean = sum(per_fold) / 3
    std = (sum((a - mean) ** 2 for a in per_fold) / 3) ** 0.5
    folds[l] = {"dims": 9216 // (i + 1), "linear": {"mean": mean, "std": std,
                                                    "per_fold": per_fold},
                "penalty_per_fold": [10.0, 100.0, 10.0]}
    if knn:
      k = [a - 0.0317 for a in per_fold]
      folds[l]["knn"] = {"mean": sum(k) / 3, "std": std * 1.1, "per_fold": k}
  res = {"folds": folds, "layers": list(layer_means),
         "folds_setup": {"num_folds": 3, "fold_size": 1000, "validation_size": 5000,
                         "test_images": 10000}}
  if full:
    res["full"] = {"accuracy": {l: m + 0.0413 for l, m in layer_means.items()},
                   "max_epochs": 50, "patience": 5, "validation_size": 5000,
                   "train_images": 55000}
  if output is not None:
    res["output"] = output
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(res, f)


def _golden_marker(workdir, seconds, made_in):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "train_done.json"), "w") as f:
    json.dump({"seconds_last_run": seconds, "command": [
        "python", "-m", "trainers.pretrain", f"--workdir={made_in}"]}, f)


def _golden_config(workdir, drop_rate=0.7):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"autoencoder": {"batch_size": 128},
               "spotter": {"batch_size": 64, "lr": 2e-4, "repair_lr": 5e-4,
                           "drop_rate": drop_rate}, "resolution": 32}, f)


def _golden_summary(workdir, real, fake, mask, steps):
  with open(os.path.join(workdir, "train_summary.json"), "w") as f:
    json.dump({"spotter": {"steps": steps, "metrics": {
        "c/real_accuracy": real, "c/fake_accuracy": fake, "c/mask_accuracy": mask,
        "r/adversarial": 0.7}}}, f)


def golden_root(root, scenario):
  """Writes ``scenario``'s fake root (evaluations, markers, configs) under
  ``root`` (a path whose name does not reach the report)."""
  conv = lambda *m: dict(zip(CONV, m))
  ev = lambda name: os.path.join(root, "eval", name, "eval_results.json")
  pre = lambda name: os.path.join(root, "pretrain", name)
  if scenario == "peer":
    _golden_eval(ev("ours"), conv(.7012, .8034, .8517, .8391, .8288),
                 output=os.path.join(root, "eval", "ours"))
    _golden_eval(ev("ablation_k"), conv(.6987, .7522, .7613, .7708, .7344), full=False)
    _golden_eval(ev("ablation_l"), conv(.7001, .7977, .8420, .8436, .8301),
                 full=False, knn=False)
    _golden_eval(ev("random_seed0"), conv(.6954, .7212, .7409, .7333, .7187),
                 output="/other/eval/random_seed0")
    _golden_eval(ev("random_seed1"), conv(.6961, .7230, .7587, .7301, .7204),
                 full=False, knn=False)
    _golden_eval(ev("autoencoder"), {"stem": .7033, "stage1": .7511, "stage2": .7804,
                                     "stage3": .7719})
    _golden_eval(ev("pixels"), {"pixels": .7222})
    _golden_eval(ev("supervised"), conv(.7514, .8533, .9011, .9187, .9302))
    _golden_eval(ev("rotnet"), conv(.7021, .7903, .8122, .8004, .7811))
    _golden_config(pre("full"))
    _golden_summary(pre("full"), 0.5213, 0.5544, 0.3107, 300)
    _golden_config(pre("k"), drop_rate=0.5)
    _golden_summary(pre("k"), 0.6102, 0.4871, 0.5120, 300)
    _golden_marker(pre("autoencoder"), 612.4, "/other/pretrain/autoencoder")
    _golden_marker(pre("full"), 1503.6, pre("full"))
    _golden_marker(pre("k"), 1498.2, pre("k"))
    _golden_marker(pre("l"), 1511.9, pre("l"))
    os.makedirs(os.path.join(root, "supervised"), exist_ok=True)
    with open(os.path.join(root, "supervised", "finetune_results.json"), "w") as f:
      json.dump({"selected_epoch": 6, "epochs_run": 10, "validation_size": 5000,
                 "validation_best": 0.9222, "validation_per_epoch": [
                     0.8812, 0.9013, 0.9107, 0.9154, 0.9188, 0.9222, 0.9201,
                     0.9199, 0.9215, 0.9190], "eval_accuracy": 0.9111}, f)
    _golden_marker(os.path.join(root, "supervised"), 3001.0,
                   os.path.join(root, "supervised"))
  elif scenario == "seeds":
    c3 = lambda v: conv(.7012, .8034, v, .8391, .8288)
    _golden_eval(ev("ours"), c3(.8611))
    _golden_eval(ev("ablation_full"), c3(.8517), full=False)
    _golden_eval(ev("ablation_full_s1"), c3(.8473), full=False, knn=False)
    _golden_eval(ev("ablation_k"), c3(.7613), full=False)
    _golden_eval(ev("ablation_l"), c3(.7699), full=False)
    _golden_eval(ev("ablation_l_s1"), c3(.8102), full=False, knn=False)
    _golden_eval(ev("ablation_a"), c3(.8488), full=False)
    _golden_eval(ev("random_seed0"), c3(.7409))
    _golden_eval(ev("autoencoder"), {"stem": .7033, "stage1": .7511})
    _golden_eval(ev("pixels"), {"pixels": .7222})
    _golden_eval(ev("supervised"), c3(.9011))
    _golden_config(pre("full_2000"))
    _golden_config(pre("full"))
    _golden_summary(pre("full"), 0.5013, 0.5102, 0.3011, 700)
    _golden_marker(pre("autoencoder"), 611.0, pre("autoencoder"))
    _golden_marker(pre("full_2000"), 4012.5, pre("full_2000"))
  else:
    raise ValueError(scenario)


def golden_command(scenario):
  """The command line a report of ``scenario`` names."""
  return " ".join(["python -m benchmarks.quality"] + GOLDEN_ARGS[scenario])


def test_report_of_fixed_inputs_is_byte_identical(tmp_path):
  """The report of a fixed root regenerates identically: the .json and .md
  written from each golden root equal the committed ones byte for byte."""
  for scenario, opts in GOLDEN_OPTIONS.items():
    root = str(tmp_path / scenario)
    golden_root(root, scenario)
    out = str(tmp_path / "out" / scenario)
    quality_report.write(root, out, opts, command=golden_command(scenario),
                         machine_info=dict(GOLDEN_MACHINE), date=GOLDEN_DATE)
    for ext in (".json", ".md"):
      with open(out + ext, "rb") as f, open(os.path.join(GOLDEN, scenario + ext), "rb") as g:
        assert f.read() == g.read(), scenario + ext
    assert os.path.getsize(out + ".png") > 1000
    # Written twice, the same bytes (nothing read from the clock or flags).
    again = str(tmp_path / "again" / scenario)
    quality_report.write(root, again, opts, command=golden_command(scenario),
                         machine_info=dict(GOLDEN_MACHINE), date=GOLDEN_DATE)
    for ext in (".json", ".md", ".png"):
      with open(out + ext, "rb") as f, open(again + ext, "rb") as g:
        assert f.read() == g.read(), scenario + ext


def _quality_flag_values():
  """A private copy of benchmarks.quality's flags (parsing it leaves the
  process' FLAGS alone)."""
  import copy
  from absl import flags
  from benchmarks import quality
  fv = flags.FlagValues()
  for flag in flags.FLAGS.get_key_flags_for_module(quality):
    fv[flag.name] = copy.deepcopy(flag)
  return fv


def test_quality_flags_are_the_options():
  """Every Options field is a flag of benchmarks.quality with the same
  default; the other flags say where to work, what to write and which
  stages to run."""
  fv = _quality_flag_values()
  fields = {f.name for f in dataclasses.fields(Options)}
  assert set(fv) == fields | {"root", "report", "stages", "archive"}
  for name in fields:
    default = fv[name].default
    assert (tuple(default) if isinstance(default, list) else default) == getattr(
        Options(), name), name
  assert fv["stages"].default == "pretrain,ours,peer,supervised,evaluate,report"
  assert fv["root"].default == "/tmp/as_quality"
  assert fv["report"].default == "results/quality_fashion_mnist"


def test_quality_flags_give_the_options():
  """The command line of each golden scenario gives its options, and the
  report names that command line (less --root and --stages); no flags: the
  defaults."""
  from benchmarks import quality
  for scenario, args in GOLDEN_ARGS.items():
    fv = _quality_flag_values()
    fv(["quality", "--root=/r", "--stages=report"] + args)
    assert quality.options_from_flags(fv) == GOLDEN_OPTIONS[scenario]
    assert quality.command_line(
        ["--root=/r"] + args + ["--stages=report"]) == golden_command(scenario)
  fv = _quality_flag_values()
  fv(["quality"])
  assert quality.options_from_flags(fv) == Options()
  assert quality.command_line([]) == "python -m benchmarks.quality"


def _fake_autoencoder_checkpoint(root, value, saves=1, **more):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  variables = {"v": tf.Variable([value, 2.0])} if value is not None else {}
  variables.update({k: tf.Variable(x) for k, x in more.items()})
  checkpoint = tf.train.Checkpoint(**variables)
  for _ in range(saves):
    checkpoint.save(os.path.join(quality_plan.autoencoder_dir(root),
                                 "checkpoints", "ckpt"))


def test_archive_restores_finished_runs_into_a_fresh_root(tmp_path, monkeypatch):
  """The archive of a root holds what its report reads, no checkpoint; a
  fresh root restored from it makes the same report, skips the finished
  runs, retrains the autoencoder and refuses one that differs or an archive
  of another machine kind."""
  from benchmarks import quality  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(quality, "log", lambda msg: None)
  opts = GOLDEN_OPTIONS["peer"]
  root, fresh, archive = (str(tmp_path / n) for n in ("root", "fresh", "archive"))
  golden_root(root, "peer")
  _fake_autoencoder_checkpoint(root, 1.0)
  quality.stage_archive(root, opts, archive, dict(GOLDEN_MACHINE))
  files = quality.report_inputs(root, opts)
  assert "eval/ours/eval_results.json" in files
  assert "pretrain/full/config.json" in files and "pretrain/k/train_done.json" in files
  assert "supervised/finetune_results.json" in files
  assert not [f for f in files if f.startswith("pretrain/autoencoder/")
              or "checkpoint" in f]
  assert "pretrain/l/train_done.json" in files
  other = dict(GOLDEN_MACHINE, cpu_flags=["avx512_bf16"])
  with pytest.raises(RuntimeError, match="2-core avx2 machine, this is a "
                     "2-core avx512_bf16 one"):
    quality.stage_restore(fresh, archive, other)
  assert not os.path.exists(fresh)
  quality.stage_restore(fresh, archive, dict(GOLDEN_MACHINE))
  for rel in files:
    with open(os.path.join(root, rel), "rb") as f, open(os.path.join(fresh, rel), "rb") as g:
      assert f.read() == g.read(), rel
  # The restored runs are finished: no training command is started for them.
  started = []
  monkeypatch.setattr(quality, "run_logged",
                      lambda name, cmd, r: started.append(name) or 1.0)
  quality.train_once("spotter_full", ["true"], quality_plan.ablation_dir(fresh, "full"),
                     fresh)
  assert started == []
  assert os.path.exists(os.path.join(quality_plan.ablation_dir(fresh, "full"),
                                     quality.RESTORED))
  # The autoencoder retrained in the fresh root must be the archived one
  # (saved once more, as a run stopped by a signal and resumed is: the same).
  _fake_autoencoder_checkpoint(fresh, 1.0, saves=2)
  quality.check_autoencoder(fresh)
  shutil_root = str(tmp_path / "fresh2")
  quality.stage_restore(shutil_root, archive, dict(GOLDEN_MACHINE))
  _fake_autoencoder_checkpoint(shutil_root, 1.5)
  with pytest.raises(RuntimeError, match="not the archived one"):
    quality.check_autoencoder(shutil_root)
  # A newer train state may hold more variables (step counters): accepted
  # while every archived one is there and equal; one missing is refused.
  for name, value, ok in (("grown", 1.0, True), ("shrunk", None, False)):
    other_root = str(tmp_path / name)
    quality.stage_restore(other_root, archive, dict(GOLDEN_MACHINE))
    _fake_autoencoder_checkpoint(other_root, value, steps=3)
    if ok:
      quality.check_autoencoder(other_root)
    else:
      with pytest.raises(RuntimeError, match="not the archived one"):
        quality.check_autoencoder(other_root)
  # Both roots give the same figures; the restored one names the runs it
  # did not make (and the autoencoder's time is the retrained one's).
  reports = {}
  for r, out in ((root, "a"), (fresh, "b")):
    quality_report.write(r, str(tmp_path / out), opts, command="c",
                         machine_info=dict(GOLDEN_MACHINE), date=GOLDEN_DATE)
    with open(tmp_path / (out + ".json")) as f:
      reports[out] = json.load(f)
  for report in reports.values():
    report["budget"]["train_seconds"].pop("pretrain/autoencoder", None)
  made = reports["b"].pop("provenance")
  assert "pretrain/full" in json.dumps(made) and root in json.dumps(made)
  reports["a"].pop("provenance", None)
  assert reports["a"] == reports["b"]
