"""XLA with several replicas and with mixed precision (models/replica.py).

On the 2 logical CPU devices conftest sets up: steps with XLA equal the same
steps without XLA, 2 replicas equal 1 on the same global batch where batch
norm allows it, the trainer binary with --config.distribute.logical_cpus, and
the config fields and refusals around them.
"""

import itertools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from artifact_spotting import config as config_lib
from artifact_spotting import distribute
from artifact_spotting import train_state
from artifact_spotting import train_lib
from artifact_spotting.models import replica
from conftest import tiny_config, tiny_idx_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH = 8


_GROUPS = itertools.count(1)


def _mirrored():
  """MirroredStrategy on the 2 logical CPUs, with collective keys of its own.

  TensorFlow gives every MirroredStrategy of a process the same collective
  group key unless ``_collective_key_base`` ("only set this in tests") says
  otherwise, and its runtime remembers each collective's shape by key: a
  second strategy whose first all-reduce has another shape then fails with
  "Shape mismatch in the collective instance 100".
  """
  cls = tf.distribute.MirroredStrategy
  before = cls._collective_key_base  # pylint: disable=protected-access
  cls._collective_key_base = 10_000 + 100 * next(_GROUPS)  # pylint: disable=protected-access
  try:
    return cls(["/cpu:0", "/cpu:1"])
  finally:
    cls._collective_key_base = before  # pylint: disable=protected-access


def _batches(steps, seed=0):
  rng = np.random.default_rng(seed)
  n = steps * GLOBAL_BATCH
  return {"image": rng.uniform(-1, 1, (n, 16, 16, 1)).astype(np.float32),
          "label": rng.integers(0, 10, n)}


def _initial_weights(config):
  return [w.numpy() for w in
          train_state.Players(config, tf.distribute.get_strategy()).model.weights]


def _train(config, strategy, init, xla, batch_norm="sync", ae_steps=2,
           adv_steps=3):
  """Players starting from weights ``init`` after ``ae_steps`` autoencoder and
  ``adv_steps`` adversarial steps on fixed global batches, each split into
  contiguous parts over the replicas (as the steps' per-replica mask offsets
  assume); returns (players, each phase's metrics averaged over replicas and
  steps (a list per phase, one dict per step)). The steps run under the mode train_lib.make_loop sets, one
  tf.function per phase (one trace per replica; the loop itself is tested
  through the binary below and in test_train)."""
  players = train_state.Players(config, strategy)
  for v, value in zip(players.model.weights, init):
    v.assign(value)
  for opt in (players.ae_opt, players.discriminator_opt, players.repair_opt):
    if isinstance(opt, keras.optimizers.LossScaleOptimizer):
      # Below the default 2**15, which overflows in the first float16 steps
      # and (correctly) skips them; here every step should apply.
      opt.dynamic_scale.assign(256.0)
  model = players.model
  n = strategy.num_replicas_in_sync
  per = GLOBAL_BATCH // n

  def split(batch):
    if n == 1:
      return batch
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: v[ctx.replica_id_in_sync_group * per:
                          (ctx.replica_id_in_sync_group + 1) * per]
                     for k, v in batch.items()})

  phases = {
      "ae": (ae_steps, lambda b: model.autoencoder_step(b, players.ae_opt)),
      "adv": (adv_steps, lambda b: model.adversarial_step(
          b, players.discriminator_opt, players.repair_opt, players.probe_opt)),
  }
  metrics = {}
  for seed, (name, (steps, step)) in enumerate(phases.items()):
    if not steps:
      continue

    @tf.function
    def run(batch, step=step):
      with replica.step_mode(xla=xla, batch_norm=batch_norm):
        out = strategy.run(step, args=(batch,))
      return {k: strategy.reduce("MEAN", v, axis=None) for k, v in out.items()}

    data = _batches(steps, seed)
    metrics[name] = []
    for i in range(steps):
      batch = {k: tf.constant(v[i * GLOBAL_BATCH:(i + 1) * GLOBAL_BATCH])
               for k, v in data.items()}
      metrics[name].append({k: float(v) for k, v in run(split(batch)).items()})
  return players, metrics


def _assert_same_weights(a, b, rtol, atol):
  """Every weight of two players' models: trainable ones, batch-norm moving
  statistics and the history buffer."""
  paths = [w.path for w in a.model.weights]
  assert any("moving_mean" in p for p in paths) and "history/images" in paths
  for x, y in zip(a.model.weights, b.model.weights):
    assert x.path == y.path
    np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=rtol, atol=atol,
                               err_msg=x.path)


def _assert_same_metrics(ref, got, rel=1e-4, grad_norms=True):
  """Every step's metrics: losses and accuracies within ``rel`` (measured:
  1.5e-6); gradient norms within 1e-2: in the third adversarial step on one
  device R's gradient norm differed by 1.5e-3 (relative) on this machine,
  while the first two agreed to 3e-6 (rounding differences of the weights
  move a max pool's or leaky ReLU's choice of input)."""
  for phase, steps in ref.items():
    for i, metrics in enumerate(steps):
      for k, v in metrics.items():
        if k.endswith("grad_norm") and not grad_norms:
          continue
        tol = 1e-2 if k.endswith("grad_norm") else rel
        assert got[phase][i][k] == pytest.approx(v, rel=tol, abs=1e-5), (phase, i, k)


@pytest.mark.slow
def test_xla_steps_match_non_xla_steps_on_one_replica():
  """Two autoencoder and three adversarial steps with the compute compiled by
  XLA equal the same steps without XLA (weights, batch-norm moving
  statistics, history buffer, metrics). Every weight within rtol 1e-4 and
  atol 5e-5: XLA fuses and reorders float32 sums, and three adversarial steps
  amplify that; on this machine weights differed by at most 1.6e-5 (a repair
  conv kernel), statistics and history by 1.3e-6."""
  c = tiny_config()
  init = _initial_weights(c)
  single = tf.distribute.get_strategy()
  ref, ref_m = _train(c, single, init, xla=False)
  got, got_m = _train(c, single, init, xla=True)
  _assert_same_weights(ref, got, rtol=1e-4, atol=5e-5)
  assert int(got.model.history.count.numpy()) == 3 * GLOBAL_BATCH
  _assert_same_metrics(ref_m, got_m)


@pytest.mark.slow
def test_xla_steps_match_non_xla_steps_on_two_replicas():
  """The same for three adversarial steps on 2 replicas with per-replica
  batch norm (synchronized batch norm is refused under XLA with several
  replicas: test_sync_batch_norm_with_xla_on_replicas_is_refused). Same
  tolerances and reason (measured here: weights within 2e-7 beyond rtol).
  The repair network's and the discriminator's batch
  norms train here, so their moving statistics are per-replica updates
  averaged outside XLA: both replicas' copies stay equal. (The autoencoder
  step on 2 replicas with XLA runs in the binary test.)"""
  c = tiny_config()
  init = _initial_weights(c)
  mirrored = _mirrored()
  ref, ref_m = _train(c, mirrored, init, xla=False, batch_norm="per_replica",
                      ae_steps=0)
  got, got_m = _train(c, mirrored, init, xla=True, batch_norm="per_replica",
                      ae_steps=0)
  _assert_same_weights(ref, got, rtol=1e-4, atol=5e-5)
  _assert_same_metrics(ref_m, got_m)
  initial = {w.path: v for w, v in zip(got.model.weights, init)}
  stats = [w for w in got.model.discriminator.weights if "moving_" in w.path]
  assert len(stats) >= 4
  for w in stats:
    copies = [v.numpy() for v in w.value.values]
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1], err_msg=w.path)
    assert not np.allclose(copies[0], initial[w.path]), w.path  # it trained


@pytest.mark.slow
def test_two_replicas_with_xla_match_one_replica():
  """2 replicas with XLA equal one device without XLA on the same global
  batches, for adversarial steps without batch norm in training mode (no
  repair network, ablation k; a discriminator with LRN or no norm): the
  gradient all-reduce, the history all-gather and update and the probe run
  outside the compiled compute and give the single-device result. (With
  batch norm in training, per-replica statistics differ from one device's by
  design: the test above.) Tolerances as above, rounding only (measured:
  weights within 6e-8, metrics within 4e-7). Gradient norms are not
  compared: each replica reports the norm of its own part, averaged."""
  c = tiny_config(**{"spotter.repair": False, "discriminator.fc_norm": False})
  c.discriminator.convs = tuple(
      dict(conv, norm="none" if conv["norm"] == "batch" else conv["norm"])
      for conv in c.discriminator.convs)
  init = _initial_weights(c)
  ref, ref_m = _train(c, tf.distribute.get_strategy(), init, xla=False,
                      ae_steps=0)
  got, got_m = _train(c, _mirrored(), init, xla=True, batch_norm="per_replica",
                      ae_steps=0)
  _assert_same_weights(ref, got, rtol=1e-4, atol=5e-5)
  assert int(got.model.history.count.numpy()) == 3 * GLOBAL_BATCH
  _assert_same_metrics(ref_m, got_m, grad_norms=False)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_xla_matches_its_non_xla_run(precision):
  """Three adversarial steps in mixed precision with XLA against the same
  precision without XLA, on one device (mirrored + XLA + mixed_float16 runs
  end to end in the binary test; the float32 test above checks the
  2-replica path numerically). The adversarial step is the one that did not
  compile before (R's gradient through the decoder's upsampling, see
  autoencoder.Decoder).

  Looser than float32: XLA keeps elementwise chains in float32 where
  TensorFlow's kernels round to bfloat16/float16 after each op, so
  activations differ by about the half-precision epsilon (2**-8 / 2**-11),
  later steps' losses part (a tiny GAN's trajectories), and Adam turns
  near-zero gradient differences into full-size ones. So, as
  test_mixed_precision_tracks_float32 does against float32: the first
  step's losses within 2% (measured here: at most 0.7%), the weight updates
  of the three steps pointing the same way (cosine > 0.8; measured 0.99),
  and the moving statistics and history within 5e-2 (measured at most
  2.1e-2)."""
  c = tiny_config(**{"train.precision": precision})
  init = _initial_weights(c)
  single = tf.distribute.get_strategy()
  ref, ref_m = _train(c, single, init, xla=False, ae_steps=0)
  got, got_m = _train(c, single, init, xla=True, ae_steps=0)
  conv = got.model.discriminator.conv2.conv
  assert conv.compute_dtype == precision.split("_")[1]
  for k in ("c/class_loss", "c/mask_loss", "r/adversarial"):
    assert got_m["adv"][0][k] == pytest.approx(ref_m["adv"][0][k], rel=0.02), k
  ups = {"ref": [], "got": []}
  for a, b, start in zip(ref.model.weights, got.model.weights, init):
    if a.trainable:
      ups["ref"].append((a.numpy() - start).ravel())
      ups["got"].append((b.numpy() - start).ravel())
    elif "moving_" in a.path or "history" in a.path:
      np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=5e-2,
                                 err_msg=a.path)
  u, v = np.concatenate(ups["ref"]), np.concatenate(ups["got"])
  assert np.linalg.norm(u) > 0
  assert u @ v / (np.linalg.norm(u) * np.linalg.norm(v)) > 0.8


def test_sync_batch_norm_with_xla_on_replicas_is_refused(idx_dir, tmp_path):
  c = tiny_idx_config(idx_dir, **{"train.jit_compile": "on",
                                  "distribute.batch_norm": "sync"})
  with pytest.raises(train_lib.SetupError,
                     match="needs config.distribute.batch_norm='per_replica'"):
    train_lib.train(c, str(tmp_path / "w"), strategy=_mirrored())
  assert not os.path.exists(tmp_path / "w" / "config.json")
  # The step refuses it too (a caller bypassing train()).
  mirrored = _mirrored()
  players = train_state.Players(c, mirrored)
  data = tf.data.Dataset.from_tensor_slices(_batches(1)).batch(
      GLOBAL_BATCH, drop_remainder=True)
  loop = train_lib.make_loop(
      mirrored, lambda b: players.model.autoencoder_step(b, players.ae_opt),
      True, "sync")
  with pytest.raises(ValueError, match="XLA with synchronized batch norm on several"):
    loop(iter(mirrored.experimental_distribute_dataset(data)), tf.constant(1))


def test_config_fields_and_validation():
  validate = config_lib.validate
  base = config_lib.base_config()
  assert base.distribute.logical_cpus == 0 and base.distribute.batch_norm == "auto"
  for bad in (-1, True):  # ConfigDict itself refuses non-integers
    with pytest.raises(ValueError, match="config.distribute.logical_cpus"):
      validate(tiny_config(**{"distribute.strategy": "mirrored",
                              "distribute.logical_cpus": bad}))
  with pytest.raises(ValueError, match="applies to strategy='mirrored' only"):
    validate(tiny_config(**{"distribute.logical_cpus": 2}))
  with pytest.raises(ValueError, match="config.distribute.batch_norm='global'"):
    validate(tiny_config(**{"distribute.batch_norm": "global"}))
  validate(tiny_config(**{"distribute.strategy": "mirrored",
                          "distribute.logical_cpus": 2,
                          "distribute.batch_norm": "per_replica"}))
  # Mixed precision compiles with XLA (the float32 upsampling in Decoder).
  for precision in ("mixed_bfloat16", "mixed_float16"):
    for jit in ("on", "spotter"):
      validate(tiny_config(**{"train.precision": precision,
                              "train.jit_compile": jit}))


def test_split_cpu_refuses_a_different_count_once_initialised():
  # conftest split the CPU into 2 before the runtime started.
  distribute.split_cpu(2)
  with pytest.raises(ValueError, match="already initialised with 2 logical CPU"):
    distribute.split_cpu(3)


def test_resolve_jit_by_device_kind():
  class Fake:
    class extended:  # noqa: N801
      worker_devices = ()

  def fake(*devices):
    s = Fake()
    s.extended = type("E", (), {"worker_devices": devices})()
    return s

  assert distribute.device_kind(tf.distribute.get_strategy()) == "CPU"
  assert distribute.device_kind(_mirrored()) == "CPU"
  assert distribute.device_kind(fake("/job:worker/replica:0/task:0/device:GPU:0")) == "GPU"
  assert distribute.device_kind(fake("/job:worker/replica:0/task:0/device:TPU:0",
                                     "/job:worker/replica:0/task:0/device:CPU:0")) == "TPU"
  assert set(distribute.AUTO_JIT) == {"CPU", "GPU", "TPU"}
  for kind, devices in (("CPU", "/device:CPU:0"), ("GPU", "/device:GPU:0"),
                        ("TPU", "/device:TPU:0")):
    assert distribute.resolve_jit("auto", fake(devices)) == distribute.AUTO_JIT[kind] == "off"
    for mode in ("off", "on", "spotter"):
      assert distribute.resolve_jit(mode, fake(devices)) == mode


@pytest.mark.slow
def test_pretrain_binary_on_logical_cpus_with_xla(idx_dir, tmp_path):
  """The documented command on 2 logical CPUs: mirrored, XLA on (batch norm
  per replica by "auto", logged) and mixed_float16, the multi-GPU
  combination, both phases. The float16 loss scale starts at 2**15 and
  overflows in the first steps, so this also runs the skipped steps (which
  must be skipped on both replicas, replica.agree_on_overflow)."""
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "trainers.pretrain",
         "--config=configs/fashion_mnist.py:tiny", f"--workdir={workdir}",
         f"--config.dataset.path={idx_dir}", "--config.dataset.auto_install=False",
         "--config.dataset.tfds_fallback=False",
         "--config.distribute.strategy=mirrored",
         "--config.distribute.logical_cpus=2", "--config.train.jit_compile=on",
         "--config.train.precision=mixed_float16",
         "--config.autoencoder.steps=2", "--config.spotter.steps=2"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  out = r.stdout + r.stderr
  assert r.returncode == 0, out[-3000:]
  assert "MirroredStrategy with 2 replica(s); XLA: on" in out
  assert "batch norm per replica" in out
  assert "autoencoder: 2 steps" in r.stdout and "spotter: 2 steps" in r.stdout
  summary = json.load(open(os.path.join(workdir, "train_summary.json")))
  assert all(np.isfinite(v) for v in summary["spotter"]["metrics"].values())
