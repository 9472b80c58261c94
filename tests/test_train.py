"""Training: end to end, resume, MirroredStrategy equivalence, error paths."""

import json
import os
import shutil
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from artifact_spotting import config as config_lib
from artifact_spotting import events
from artifact_spotting import loading
from artifact_spotting import checkpoints
from artifact_spotting import distribute
from artifact_spotting import optimizers
from artifact_spotting import precision as precision_lib
from artifact_spotting import train_state
from artifact_spotting import workdir as workdir_lib
from artifact_spotting import train_lib
from artifact_spotting.data.sources import DEBIAN_FASHION_MNIST
from conftest import tiny_idx_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_train_end_to_end_then_resume(idx_dir, tmp_path):
  workdir = str(tmp_path / "run")
  c = tiny_idx_config(idx_dir)
  results = train_lib.train(c, workdir)
  assert results["autoencoder"]["steps"] == 4
  assert results["spotter"]["steps"] == 4
  assert json.load(open(os.path.join(workdir, "config.json")))["spotter"]["steps"] == 4
  ckpts = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
  assert ckpts is not None
  scalars, images = events.read_events(os.path.join(workdir, "tensorboard"))
  for tag in ("ae/loss", "c/class_loss", "c/mask_loss", "c/real_accuracy",
              "c/fake_accuracy", "c/mask_accuracy", "r/adversarial",
              "c/grad_norm", "r/grad_norm", "lr/discriminator", "lr/repair",
              "lr/autoencoder", "probe/accuracy", "perf/spotter_images_per_second"):
    assert tag in scalars, tag
  assert [s for s, _ in scalars["c/class_loss"]] == [2, 4]
  montages = [v for t, v in images.items() if t.startswith("montage/")]
  assert montages and [s for s, _ in montages[0]] == [0, 2, 4]
  # An encoded PNG of 2 rows x 5 panels of 16x16: width 80, height 32.
  png = tf.io.decode_png(montages[0][-1][1][2])
  assert png.shape[:2] == (32, 80)

  # Rerunning with more spotter steps resumes where it stopped (more
  # autoencoder steps are refused once phase 2 has started: tests/test_workdir).
  c.spotter.steps = 6
  results = train_lib.train(c, workdir)
  assert "autoencoder" not in results
  assert results["spotter"]["steps"] == 6
  scalars, _ = events.read_events(os.path.join(workdir, "tensorboard"))
  assert [s for s, _ in scalars["c/class_loss"]] == [2, 4, 6]
  # Nothing left to do: a third run trains no step.
  assert train_lib.train(c, workdir) == {}


@pytest.mark.slow
def test_resume_restores_phase_two_weights_exactly(idx_dir, tmp_path):
  workdir = str(tmp_path / "run")
  c = tiny_idx_config(idx_dir)
  train_lib.train(c, workdir)
  players = train_state.Players(c, tf.distribute.get_strategy())
  keeper = checkpoints.Keeper(players.checkpoint, workdir,
                                      tf.distribute.get_strategy())
  assert keeper.restore() is not None
  assert players.ae_step == 4 and players.adv_step == 4
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
  names = [n for n, _ in tf.train.list_variables(os.path.join(workdir, "checkpoints"))]
  hist = [n for n in names if "history" in n and "images" in n]
  assert hist, "history buffer is checkpointed"
  np.testing.assert_array_equal(reader.get_tensor(hist[0]),
                                players.model.history.images.numpy())


def test_config_seed_fixes_initial_weights(idx_dir):
  """config.seed decides every initial weight: the same seed gives the same
  weights (discriminator, repair network, autoencoder), another seed others."""
  c = tiny_idx_config(idx_dir)
  strategy = tf.distribute.get_strategy()

  def weights(seed):
    c.seed = seed
    return [w.numpy() for w in train_state.Players(c, strategy).model.trainable_weights]

  a, b, other = weights(3), weights(3), weights(4)
  # Conv kernels drawn at random (the repair blocks' last convs start at zero).
  kernels = [i for i, w in enumerate(a) if w.ndim == 4 and w.std() > 0]
  assert len(kernels) > 5
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  for i in kernels:
    assert not np.array_equal(a[i], other[i])


@pytest.mark.slow
def test_changed_architecture_does_not_silently_resume(idx_dir, tmp_path):
  workdir = str(tmp_path / "run")
  c = tiny_idx_config(idx_dir)
  train_lib.train(c, workdir)
  c.discriminator.fc_units = 32
  c.spotter.steps = 8
  before = open(os.path.join(workdir, "config.json")).read()
  with pytest.raises(train_lib.SetupError, match="discriminator.fc_units: 16 -> 32"):
    train_lib.train(c, workdir)
  # The workdir's resolved config is not overwritten by the rejected one.
  assert open(os.path.join(workdir, "config.json")).read() == before
  # Checkpoints without that record: refused, nothing to check against.
  os.remove(os.path.join(workdir, "config.json"))
  with pytest.raises(train_lib.SetupError, match="holds checkpoints but no config.json"):
    train_lib.train(c, workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  # A record that matches the new config: the checkpoint itself still
  # refuses another model, and the record stays as it was.
  workdir_lib.write_config(c, workdir)
  before = open(os.path.join(workdir, "config.json")).read()
  with pytest.raises(train_lib.SetupError, match="does not match"):
    train_lib.train(c, workdir)
  assert open(os.path.join(workdir, "config.json")).read() == before


def test_unknown_dataset_fails_before_training(tmp_path):
  c = tiny_idx_config("/nonexistent")
  c.dataset.source = "s3"
  with pytest.raises(ValueError, match="config.dataset.source"):
    train_lib.train(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
  c = tiny_idx_config("/nonexistent", resolution=18)
  with pytest.raises(ValueError, match="config.resolution=18"):
    train_lib.train(c, str(tmp_path / "w"))
  c = tiny_idx_config("/nonexistent")
  c.dataset.update(source="tfds", name="stl_10")
  with pytest.raises(ValueError, match="config.dataset.name='stl_10'"):
    train_lib.train(c, str(tmp_path / "w"))


def _copy_weights(src, dst):
  for a, b in zip(src.weights, dst.weights):
    assert a.path == b.path
    b.assign(a.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("fill,lr_fraction", [("average", 0.0), ("blur", 0.5)])
def test_mirrored_step_matches_single_device(idx_dir, fill, lr_fraction):
  """Two replicas on 2 logical CPUs, each with half of a global batch of 8,
  reach the same weights, BN statistics and history as one device.

  With fill="average" to float32 precision. With the default fill ("blur")
  the repair network has gradients near zero from the first step, and Adam
  turns their float32 summation-order differences (synchronised batch norm,
  the loss reductions) into a sizeable part of an update step: measured, the
  losses agree to 1e-6 for two steps and part by 1.4e-4 at the third, and
  weights differ by up to 9.2e-5, a third of one step of the learning rate
  3e-4. So there weights may differ by ``lr_fraction`` of the adversarial
  phase's learning rate (half a step), and losses by 1e-3."""
  c = tiny_idx_config(idx_dir, **{"spotter.fill": fill})
  step_atol = lr_fraction * max(c.spotter.lr, c.spotter.repair_lr)
  loss_rtol = 1e-3 if lr_fraction else 1e-4
  single = tf.distribute.get_strategy()
  mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  assert mirrored.num_replicas_in_sync == 2
  p1 = train_state.Players(c, single)
  p2 = train_state.Players(c, mirrored)
  _copy_weights(p1.model, p2.model)
  rng = np.random.default_rng(0)
  batches = [{"image": tf.constant(rng.uniform(-1, 1, (8, 16, 16, 1)), tf.float32),
              "label": tf.constant(rng.integers(0, 10, 8), tf.int64)}
             for _ in range(3)]

  def split(batch):
    return mirrored.experimental_distribute_values_from_function(
        lambda ctx: {k: v[ctx.replica_id_in_sync_group * 4:
                          (ctx.replica_id_in_sync_group + 1) * 4]
                     for k, v in batch.items()})

  steps = {  # the trainer's steps: counted in the train state
      "ae": lambda p: p.autoencoder_step,
      "adv": lambda p: (lambda b: p.adversarial_step(b, p.probe_opt)),
  }
  for name in ("ae", "adv"):
    f1 = tf.function(steps[name](p1))
    f2 = tf.function(lambda b, f=steps[name](p2): mirrored.run(f, args=(b,)))
    for batch in batches:
      m1 = f1(batch)
      m2 = f2(split(batch))
      loss_key = "ae/loss" if name == "ae" else "c/class_loss"
      total = mirrored.reduce("MEAN", m2[loss_key], axis=None)
      np.testing.assert_allclose(float(total), float(m1[loss_key]), rtol=loss_rtol)
  checked = 0
  for a, b in zip(p1.model.weights, p2.model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4,
                               atol=max(1e-5, step_atol), err_msg=a.path)
    checked += 1
  names = " ".join(w.path for w in p1.model.weights)
  assert "moving_mean" in names and "history/images" in names
  assert int(p2.model.history.count.numpy()) == 24
  assert checked == len(p1.model.weights)
  # One count per global step, not per replica.
  assert (p1.ae_step, p1.adv_step) == (p2.ae_step, p2.adv_step) == (3, 3)


@pytest.mark.slow
def test_smoke_config_end_to_end_binary(tmp_path, fashion_mnist):
  """The README command with the smoke config on real Fashion-MNIST."""
  workdir = str(tmp_path / "smoke")
  cmd = [sys.executable, "-m", "trainers.pretrain",
         "--config=configs/fashion_mnist.py:smoke", f"--workdir={workdir}"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "autoencoder: 60 steps" in r.stdout and "spotter: 30 steps" in r.stdout
  assert "img/s ETA" in r.stdout
  summary = json.load(open(os.path.join(workdir, "train_summary.json")))
  assert summary["spotter"]["images_per_second"] > 0
  # Rerun: both phases complete, nothing to do, exit 0.
  r = subprocess.run(cmd + ["--config.spotter.steps=40"], cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "spotter: 40 steps" in r.stdout and "autoencoder:" not in r.stdout


@pytest.mark.slow
def test_pretrain_binary_names_the_install_command_on_a_first_run(tmp_path):
  """Debian's Fashion-MNIST folder empty and no tfds: one error line naming
  the apt-get command, exit status 2; nothing is installed (the library runs
  no process: tests/test_data.py)."""
  debian = str(tmp_path / "fashion-mnist")
  code = ("import runpy; from artifact_spotting.data import sources; "
          f"sources.DEBIAN_FASHION_MNIST = {debian!r}; "
          "runpy.run_module('trainers.pretrain', run_name='__main__')")
  cmd = [sys.executable, "-c", code, "--config=configs/fashion_mnist.py:smoke",
         f"--workdir={tmp_path / 'run'}", f"--config.dataset.path={debian}",
         "--config.dataset.tfds_fallback=False"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Fashion-MNIST is not installed"), last
  assert f"no IDX files in {debian}" in last
  assert "sudo apt-get install dataset-fashion-mnist" in last
  assert "Traceback" not in r.stderr


def _closed_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]  # nothing listens there once closed


@pytest.mark.slow
def test_offline_first_run_stops_fast_naming_the_install_command(tmp_path):
  """Debian's Fashion-MNIST folder empty, the tfds fallback on (the default)
  and its download host unreachable (the probe pointed at a closed local
  port): pretrain, linear_eval and finetune each stop within 10 s (or
  TensorFlow's import time plus 4 s on a machine where the import alone
  takes over 6 s), from start to exit, with one error line naming the apt-get command, without
  tfds' download retries or a warning naming the download host, and leave
  no output folder."""
  debian = str(tmp_path / "fashion-mnist")
  os.makedirs(debian)
  code = ("import runpy, sys; from artifact_spotting.data import sources; "
          f"sources.DEBIAN_FASHION_MNIST = {debian!r}; "
          "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")
  tfds_dir = f"--config.dataset.data_dir={tmp_path / 'tfds'}"
  out = tmp_path / "out"
  commands = {
      "pretrain": ["trainers.pretrain", "--config=configs/fashion_mnist.py:smoke",
                   f"--workdir={out}", tfds_dir],
      "linear_eval": ["trainers.linear_eval",
                      "--config=configs/eval/fashion_mnist_folds.py:smoke",
                      "--features=pixels", f"--output={out}", tfds_dir],
      "finetune": ["trainers.finetune", "--config=configs/finetune/fashion_mnist.py:smoke",
                   "--init=random:configs/fashion_mnist.py:tiny", f"--workdir={out}",
                   tfds_dir],
  }
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
             ARTIFACT_SPOTTING_DOWNLOAD_PROBE=f"http://127.0.0.1:{_closed_port()}/")
  # Each binary imports TensorFlow before it reads its config (7.8-8.4 s on
  # a 2-core AVX2-only AMD EPYC, less on avx512 machines): the bound is 10 s,
  # or that import plus 4 s where the import alone takes more than 6 s.
  t0 = time.monotonic()
  subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, check=True,
                 capture_output=True, timeout=120)
  bound = max(10.0, time.monotonic() - t0 + 4.0)
  for name, args in commands.items():
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code] + args, cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert r.returncode == 2, (name, r.stderr[-3000:])
    assert last.startswith("error: Fashion-MNIST is not installed"), (name, last)
    assert "sudo apt-get install dataset-fashion-mnist" in last, (name, last)
    assert elapsed < bound, (name, elapsed, bound)
    for noise in ("Traceback", "Retrying", "amazonaws", "Dl Completed"):
      assert noise not in r.stderr, (name, noise, r.stderr[-3000:])
    assert not os.path.exists(out), name

@pytest.mark.slow
def test_binary_reports_bad_config_field(tmp_path):
  cmd = [sys.executable, "-m", "trainers.pretrain",
         "--config=configs/fashion_mnist.py:smoke", f"--workdir={tmp_path}",
         "--config.resolution=30"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  assert "config.resolution=30" in r.stderr


@pytest.mark.slow
def test_jit_compile_option_trains(idx_dir, tmp_path):
  c = tiny_idx_config(idx_dir)
  c.train.jit_compile = "on"
  c.autoencoder.steps = 2
  c.spotter.steps = 2
  results = train_lib.train(c, str(tmp_path / "xla"))
  assert results["spotter"]["steps"] == 2
  assert all(np.isfinite(v) for v in results["spotter"]["metrics"].values())
  # Several replicas with XLA: tests/test_distribute_xla.py. Synchronized
  # batch norm is what stays refused there.
  c.distribute.batch_norm = "sync"
  mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with pytest.raises(train_lib.SetupError,
                     match="needs config.distribute.batch_norm='per_replica'"):
    train_lib.train(c, str(tmp_path / "xla2"), strategy=mirrored)


def test_jit_auto_follows_the_device_kind_table(monkeypatch):
  """"auto" reads AUTO_JIT for the kind of device the replicas run on (its
  entries are the measured choices); an explicit mode passes through."""
  one = tf.distribute.get_strategy()
  mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  assert set(distribute.AUTO_JIT) == {"CPU", "GPU", "TPU"}
  for choice in ("spotter", "on", "off"):
    monkeypatch.setitem(distribute.AUTO_JIT, "CPU", choice)
    monkeypatch.setitem(distribute.AUTO_JIT, "GPU", "bogus")  # never read here
    assert distribute.resolve_jit("auto", one) == choice
    assert distribute.resolve_jit("auto", mirrored) == choice
  for mode in ("off", "on", "spotter"):
    assert distribute.resolve_jit(mode, one) == mode
  from artifact_spotting import config as config_lib
  from conftest import tiny_config
  with pytest.raises(ValueError, match="jit_compile='fast' must be one of"):
    config_lib.validate(tiny_config(**{"train.jit_compile": "fast"}))
  # Mixed precision compiles with XLA (tests/test_distribute_xla.py).
  config_lib.validate(tiny_config(**{"train.jit_compile": "spotter",
                                     "train.precision": "mixed_bfloat16"}))


def test_lr_schedule_stays_ours_not_keras_polynomial_decay():
  """make_adam's LinearDecay and keras' PolynomialDecay(power=1) draw the
  same line but round differently in float32: over every step of the
  default schedule keras' value is more than 1 ulp off at some steps, so
  swapping it in would change every run's learning rates (make_adam's
  comment). Both agree to float32 precision otherwise."""
  import math  # pylint: disable=g-import-not-at-top
  from artifact_spotting import config as config_lib  # pylint: disable=g-import-not-at-top
  from artifact_spotting.schedules import LinearDecay  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  o, lr, steps = c.optimizer, c.spotter.lr, c.spotter.steps
  adam = optimizers.make_adam(lr, steps, o, "probe_schedule")
  ours = adam._learning_rate  # pylint: disable=protected-access
  assert isinstance(ours, LinearDecay)
  decay = int(math.ceil(o.decay_fraction * steps))
  assert ours.decay_steps == decay
  keras_lr = keras.optimizers.schedules.PolynomialDecay(
      lr, decay, lr * o.end_lr_ratio, power=1.0)
  at = tf.range(steps + 2, dtype=tf.int64)
  a, b = np.asarray(ours(at)), np.asarray(keras_lr(at))
  assert a.dtype == b.dtype == np.float32
  ulps = np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))
  assert ulps.max() > 1
  np.testing.assert_allclose(a, b, rtol=1e-5)
  assert a[0] == np.float32(lr) and np.all(a[decay:] == a[decay])


@pytest.mark.slow
def test_init_from_reuses_a_finished_autoencoder(idx_dir, tmp_path):
  from artifact_spotting import export
  source = str(tmp_path / "ae")
  c = tiny_idx_config(idx_dir, **{"spotter.steps": 0})
  assert list(train_lib.train(c, source)) == ["autoencoder"]
  # Several spotter runs (here: ablation k, no repair) start from it.
  c2 = tiny_idx_config(idx_dir, **{"autoencoder.init_from": source,
                                   "spotter.repair": False,
                                   "train.jit_compile": "spotter"})
  results = train_lib.train(c2, str(tmp_path / "k"))
  assert list(results) == ["spotter"] and results["spotter"]["steps"] == 4
  _, a = loading.spotter(source, require_spotter=False)
  _, b = loading.spotter(str(tmp_path / "k"))
  assert b.ae_step == c2.autoencoder.steps
  for va, vb in zip(a.model.encoder.variables + a.model.decoder.variables,
                    b.model.encoder.variables + b.model.decoder.variables):
    np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=va.path)
  # A different autoencoder, or an unfinished one, is refused by name.
  bad = tiny_idx_config(idx_dir, **{"autoencoder.init_from": source,
                                    "autoencoder.stem_filters": 6})
  with pytest.raises(train_lib.SetupError, match="stem_filters=4"):
    train_lib.train(bad, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "config.json")
  unfinished = tiny_idx_config(idx_dir, **{"autoencoder.init_from": source,
                                           "autoencoder.steps": 9})
  with pytest.raises(train_lib.SetupError, match="has 4 steps, fewer than 9"):
    train_lib.train(unfinished, str(tmp_path / "unfinished"))
  # A mixed_float16 autoencoder keeps its step count in the loss-scale
  # optimizer's inner optimizer; it is read there (not taken for 0 steps).
  source16 = str(tmp_path / "ae16")
  train_lib.train(tiny_idx_config(idx_dir, **{"spotter.steps": 0,
                                              "train.precision": "mixed_float16"}),
                  source16)
  from16 = tiny_idx_config(idx_dir, **{"autoencoder.init_from": source16})
  assert list(train_lib.train(from16, str(tmp_path / "from16"))) == ["spotter"]


def test_bf16_warning_on_cpus_without_bf16_units(tmp_path, monkeypatch):
  from artifact_spotting import hardware
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("flags\t\t: fpu avx2 fma\n")
  assert hardware.cpu_has_bf16_units(str(cpuinfo)) is False
  cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
  assert hardware.cpu_has_bf16_units(str(cpuinfo)) is True
  assert hardware.cpu_has_bf16_units(str(tmp_path / "none")) is None
  monkeypatch.setattr(hardware, "cpu_has_bf16_units", lambda: False)
  assert "without bfloat16 units" in precision_lib.warn_slow_precision("mixed_bfloat16")
  assert precision_lib.warn_slow_precision("float32") is None
  monkeypatch.setattr(hardware, "cpu_has_bf16_units", lambda: True)
  assert precision_lib.warn_slow_precision("mixed_bfloat16") is None


@pytest.mark.slow
def test_auto_precision_resolves_once_and_resumes_as_recorded(idx_dir, tmp_path,
                                                             monkeypatch):
  from artifact_spotting import hardware
  monkeypatch.setattr(hardware, "cpu_has_bf16_units", lambda: False)
  assert precision_lib.auto_precision()[0] == "float32"
  monkeypatch.setattr(hardware, "cpu_has_bf16_units", lambda: True)
  assert precision_lib.auto_precision()[0] == "mixed_bfloat16"
  assert precision_lib.resolve_precision("auto", "float32") == "float32"
  assert precision_lib.resolve_precision("mixed_float16", "float32") == "mixed_float16"
  assert config_lib.base_config().train.precision == "auto"
  # A new run records what auto picked on this machine ...
  new = str(tmp_path / "new")
  c = tiny_idx_config(idx_dir, **{"train.precision": "auto", "spotter.steps": 2})
  train_lib.train(c, new)
  with open(os.path.join(new, "config.json")) as f:
    assert json.load(f)["train"]["precision"] == "mixed_bfloat16"
  # ... and a run recorded in float32 (as every workdir made before auto
  # was the default) resumes in float32 under auto, where this CPU would
  # pick mixed_bfloat16 for a new run.
  old = str(tmp_path / "old")
  train_lib.train(tiny_idx_config(idx_dir, **{"spotter.steps": 2}), old)
  more = tiny_idx_config(idx_dir, **{"train.precision": "auto", "spotter.steps": 4})
  assert list(train_lib.train(more, old)) == ["spotter"]
  with open(os.path.join(old, "config.json")) as f:
    assert json.load(f)["train"]["precision"] == "float32"
  # An explicit other precision is another run: refused, naming the field.
  with pytest.raises(train_lib.SetupError, match="train.precision"):
    train_lib.train(tiny_idx_config(idx_dir, **{"train.precision": "mixed_bfloat16",
                                                "spotter.steps": 6}), old)


def test_missing_fashion_mnist_fails_under_ci_and_skips_elsewhere(monkeypatch):
  from artifact_spotting.data import sources
  from conftest import require_fashion_mnist
  monkeypatch.setattr(sources, "idx_present", lambda path, split="train": False)
  monkeypatch.setenv("CI", "true")
  with pytest.raises(pytest.fail.Exception,
                     match="sudo apt-get install dataset-fashion-mnist"):
    require_fashion_mnist()
  monkeypatch.delenv("CI")
  with pytest.raises(pytest.skip.Exception, match="dataset-fashion-mnist"):
    require_fashion_mnist()



def _newest_checkpoint_values(workdir):
  path = checkpoints.checkpoint_paths(os.path.join(workdir, "checkpoints"))[0]
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
          if "save_counter" not in name and not name.startswith("_CHECKPOINTABLE")}


@pytest.mark.slow
def test_deterministic_run_killed_and_resumed_ends_as_the_uninterrupted_one(
    idx_dir, tmp_path):
  """train.deterministic=True: kill -9 in the adversarial phase, rerun the
  same command, and every variable of the final checkpoint (weights, batch
  norm statistics, optimizer slots, history, step counters) equals those of
  a run that was never interrupted."""
  import signal
  flags = ["--config=configs/fashion_mnist.py:tiny", f"--config.dataset.path={idx_dir}",
           "--config.dataset.tfds_fallback=False", "--config.train.deterministic=True",
           "--config.spotter.steps=16", "--config.train.checkpoint_every=5",
           "--config.train.log_every=1"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  cmd = lambda wd: [sys.executable, "-m", "trainers.pretrain", f"--workdir={wd}"] + flags
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  r = subprocess.run(cmd(whole), cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  p = subprocess.Popen(cmd(killed), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in p.stdout:
    seen.append(line)
    if "[spotter] 13/16" in line:
      p.send_signal(signal.SIGKILL)
      break
  p.wait(timeout=60)
  assert p.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
  r = subprocess.run(cmd(killed), cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resumed from" in r.stderr and "adversarial step 10" in r.stderr, r.stderr[-3000:]
  a, b = _newest_checkpoint_values(whole), _newest_checkpoint_values(killed)
  assert set(a) == set(b) and len(a) > 50
  differ = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not differ, differ[:10]


# A workdir written before the train state had step counters of its own
# (tiny config, deterministic, stopped at adversarial step 2 of 4; made by
# tests/data/workdir_before_step_counters/README.md's command).
BEFORE_STEP_COUNTERS = os.path.join(ROOT, "tests", "data", "workdir_before_step_counters")


def test_counters_are_checkpoint_variables_read_without_optimizers(idx_dir, tmp_path):
  """Each phase's step count is a variable of the checkpoint (steps/...),
  equal to its optimizer's iterations in float32, and what loading reads."""
  workdir = str(tmp_path / "run")
  train_lib.train(tiny_idx_config(idx_dir, **{"spotter.steps": 3}), workdir)
  path = checkpoints.checkpoint_paths(os.path.join(workdir, "checkpoints"))[0]
  reader = tf.train.load_checkpoint(path)
  value = lambda key: int(reader.get_tensor(key + "/.ATTRIBUTES/VARIABLE_VALUE"))
  assert (value("steps/autoencoder"), value("steps/adversarial")) == (4, 3)
  assert value("c_optimizer/_iterations") == 3
  assert checkpoints.has_step_counters(path)
  assert checkpoints.steps_of(path) == {"autoencoder": 4, "adversarial": 3}
  _, restored = loading.spotter(workdir)
  assert (restored.ae_step, restored.adv_step) == (4, 3)


def test_legacy_checkpoint_counts_come_from_its_optimizers(idx_dir, tmp_path):
  """A checkpoint without steps/ (written before the counters): steps_of
  reads its optimizers' iterations, and a resumed Players takes them."""
  path = os.path.join(BEFORE_STEP_COUNTERS, "checkpoints", "ckpt-3")
  assert not checkpoints.has_step_counters(path)
  assert checkpoints.steps_of(path) == {"autoencoder": 4, "adversarial": 2}
  workdir = str(tmp_path / "old")
  shutil.copytree(BEFORE_STEP_COUNTERS, workdir)
  config = loading.workdir_config(workdir)
  players = train_state.Players(config, tf.distribute.get_strategy())
  keeper = checkpoints.Keeper(players.checkpoint, workdir, tf.distribute.get_strategy(),
                              reader=players.reader)
  assert keeper.restore() == os.path.join(workdir, "checkpoints", "ckpt-3")
  assert (players.ae_step, players.adv_step) == (4, 2)  # from its optimizers
  _, restored = loading.spotter(workdir)
  assert (restored.ae_step, restored.adv_step) == (4, 2)


@pytest.mark.slow
def test_workdir_before_step_counters_resumes_as_the_uninterrupted_run(idx_dir, tmp_path):
  """The old workdir, rerun with the command that made it less its
  spotter.steps=2 (so 4), continues from adversarial step 2 and ends with
  every variable of the same two commands run wholly by today's code."""
  old = str(tmp_path / "old")
  shutil.copytree(BEFORE_STEP_COUNTERS, old)
  record = json.load(open(os.path.join(old, "config.json")))
  record["dataset"]["path"] = idx_dir  # the fixture's data, made here
  with open(os.path.join(old, "config.json"), "w") as f:
    json.dump(record, f)
  flags = ["--config=configs/fashion_mnist.py:tiny", f"--config.dataset.path={idx_dir}",
           "--config.train.deterministic=True"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  run = lambda wd, *extra: subprocess.run(
      [sys.executable, "-m", "trainers.pretrain", f"--workdir={wd}"] + flags + list(extra),
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  r = run(old)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "adversarial step 2)" in r.stderr and "steps 2 -> 4" in r.stderr, r.stderr[-3000:]
  whole = str(tmp_path / "whole")
  for extra in (["--config.spotter.steps=2"], []):
    r = run(whole, *extra)
    assert r.returncode == 0, r.stderr[-3000:]
  a, b = _newest_checkpoint_values(whole), _newest_checkpoint_values(old)
  assert set(a) == set(b) and "steps/adversarial/.ATTRIBUTES/VARIABLE_VALUE" in a
  differ = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not differ, differ[:10]
