"""benchmarks/feature_diagnostics.py: the views it reads a discriminator in
(exact small checks), and the script end to end on a tiny pretraining run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_disc(seed=0):
  from artifact_spotting import config as config_lib, loading
  c = config_lib.base_config()
  c.resolution, c.channels = 32, 1
  config_lib.make_tiny(c)
  return loading.new_discriminator(c, seed)


def test_pre_activation_is_the_features_before_the_leaky_relu():
  import tensorflow as tf
  # Imported beside another benchmark that defines --root and --report, as
  # in one pytest process: the diagnostics' flags must not clash with them.
  from benchmarks import quality  # noqa: F401  pylint: disable=unused-import
  from benchmarks import feature_diagnostics as fd
  disc = _tiny_disc()
  x = tf.random.stateless_uniform((4, 16, 16, 1), (1, 2), -1, 1)
  pre = fd.pre_activation_features(disc, x)
  post = disc.features(x, training=False)
  for layer in fd.LAYERS:
    np.testing.assert_allclose(
        tf.nn.leaky_relu(pre[layer], disc.negative_slope).numpy(),
        post[layer].numpy(), rtol=1e-5, atol=1e-6)
    # Not the same tensor: the negative part differs.
    assert np.min(pre[layer].numpy()) < np.min(post[layer].numpy())


def test_recalibrated_batch_norm_normalises_the_calibration_images():
  import tensorflow as tf
  from benchmarks import feature_diagnostics as fd
  disc = _tiny_disc()
  # Images far from what the (untrained) statistics assume: mean 0.5, wide.
  images = 0.5 + 3.0 * tf.random.stateless_normal((64, 16, 16, 1), (3, 4)).numpy()
  before = disc.blocks[0].bn.moving_variance.numpy().copy()
  fd.recalibrate_batch_norm(disc, images, batch_size=24)  # uneven batches
  assert not np.allclose(before, disc.blocks[0].bn.moving_variance.numpy())
  h = images
  for block, pool in zip(disc.blocks, disc.pools):
    z = block.conv(h).numpy().reshape(-1, block.filters).astype(np.float64)
    mean, var = block.bn.moving_mean.numpy(), block.bn.moving_variance.numpy()
    np.testing.assert_allclose(mean, z.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, z.var(0), rtol=1e-3, atol=1e-5)
    h = block(h, training=False)
    if pool is not None:
      h = pool(h, training=False)


@pytest.mark.slow
def test_feature_diagnostics_end_to_end(tmp_path):
  """A tiny pretraining run, then the script: every view and an earlier
  checkpoint evaluated, a report written; the earlier checkpoint differs
  from the newest, the as-trained view matches trainers.linear_eval."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  wd = tmp_path / "wd"
  subprocess.run([sys.executable, "-m", "trainers.pretrain",
                  "--config=configs/fashion_mnist.py:tiny", f"--workdir={wd}",
                  "--config.spotter.steps=6"], cwd=ROOT, env=env, check=True,
                 capture_output=True)
  report = tmp_path / "rep"
  evals = "configs/eval/fashion_mnist_folds.py:smoke,folds_only"
  subprocess.run([sys.executable, "-m", "benchmarks.feature_diagnostics",
                  f"--workdir={wd}", f"--root={tmp_path / 'root'}",
                  f"--report={report}", f"--eval_config={evals}", "--steps=2",
                  "--recalibrate_images=64", f"--also=again={wd}"], cwd=ROOT, env=env, check=True,
                 capture_output=True)
  rep = json.loads((tmp_path / "rep.json").read_text())
  names = set(rep["rows"])
  assert names == {f"{m}_{v}" for m in ("ours", "random") for v in
                   ("as_trained", "pre_activation", "bn_raw", "autoencoded")
                   } | {"ours_step2_as_trained", "again_as_trained"}
  assert "ours_bn_raw" in (tmp_path / "rep.md").read_text()
  rows = rep["rows"]
  assert rows["ours_step2_as_trained"]["linear"] != rows["ours_as_trained"]["linear"]
  # --also: the same workdir under another name reads the same discriminator.
  assert rows["again_as_trained"]["linear"] == rows["ours_as_trained"]["linear"]
  assert "Run `again`" in (tmp_path / "rep.md").read_text()
  out = tmp_path / "le"
  subprocess.run([sys.executable, "-m", "trainers.linear_eval", f"--workdir={wd}",
                  f"--config={evals}", f"--output={out}"], cwd=ROOT, env=env,
                 check=True, capture_output=True)
  le = json.loads((out / "eval_results.json").read_text())
  for layer in ("conv1", "conv5"):
    assert rows["ours_as_trained"]["linear"][layer][0] == pytest.approx(
        le["folds"][layer]["linear"]["mean"], abs=1e-9)
