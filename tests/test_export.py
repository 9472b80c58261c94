"""SavedModel / .keras export: fresh-process loading, signatures, errors."""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from artifact_spotting import export as export_lib
from artifact_spotting import loading
from artifact_spotting import checkpoints
from artifact_spotting import train_state
from artifact_spotting import workdir as workdir_lib
from artifact_spotting import train_lib
from conftest import tiny_idx_config

LOADER = r'''
import json, sys
import numpy as np
import tensorflow as tf
path, images, keep, out = sys.argv[1:5]
m = tf.saved_model.load(path)
x = tf.constant(np.load(images))
k = tf.constant(np.load(keep))
res = {}
for name, kwargs in (("serving_default", {"images": x}), ("features", {"images": x}),
                     ("repair", {"images": x, "keep_mask": k})):
  for key, val in m.signatures[name](**kwargs).items():
    res[f"{name}/{key}"] = val.numpy()
# a different batch size and a different resolution are accepted
m.signatures["serving_default"](images=tf.zeros([5, 20, 24, x.shape[-1]], tf.uint8))
np.savez(out, **res)
print(json.dumps(sorted(sys.modules.keys() & {"artifact_spotting", "keras"})))
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  from conftest import make_idx_dir
  idx = make_idx_dir(root / "idx", train=64, test=8)
  workdir = str(root / "work")
  train_lib.train(tiny_idx_config(idx), workdir)
  return workdir, root


@pytest.mark.slow
def test_export_loads_in_a_fresh_process_and_matches(trained, tmp_path):
  workdir, _ = trained
  path = export_lib.export(workdir, str(tmp_path / "serving"))
  assert os.path.basename(path) == "4"  # version = adversarial step
  assert sorted(os.listdir(tmp_path / "serving")) == ["4"]
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
  keep = (rng.uniform(size=(3, 4, 4)) > 0.5).astype(np.float32)
  np.save(tmp_path / "images.npy", images)
  np.save(tmp_path / "keep.npy", keep)
  script = tmp_path / "load.py"
  script.write_text(LOADER)
  r = subprocess.run([sys.executable, str(script), path, str(tmp_path / "images.npy"),
                      str(tmp_path / "keep.npy"), str(tmp_path / "out.npz")],
                     cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                     env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "artifact_spotting" not in r.stdout.splitlines()[-1]
  got = np.load(tmp_path / "out.npz")

  # In-process reference from the restored model.
  _, players = loading.spotter(workdir)
  module = export_lib.ServingModule(players.model, 16, 1)
  ref = {}
  for name, out in (("serving_default", module.serve(tf.constant(images))),
                    ("features", module.features(tf.constant(images))),
                    ("repair", module.repair(tf.constant(images), tf.constant(keep)))):
    for key, val in out.items():
      ref[f"{name}/{key}"] = val.numpy()
  assert sorted(got.files) == sorted(ref)
  for key in ref:
    tol = 1 if ref[key].dtype == np.uint8 else 1e-5
    np.testing.assert_allclose(got[key].astype(np.float64), ref[key].astype(np.float64),
                               atol=tol, err_msg=key)
  assert got["serving_default/artifact_probability"].shape == (3,)
  assert got["serving_default/artifact_mask"].shape == (3, 4, 4)
  assert got["serving_default/embedding"].shape == (3, 8)
  assert got["repair/repaired"].dtype == np.uint8
  # Kept cells stay as the clean decode would leave them far from any dropped
  # cell: where the whole image is kept, damaged == repaired.
  all_keep = np.ones_like(keep)
  out = module.repair(tf.constant(images), tf.constant(all_keep))
  np.testing.assert_array_equal(out["damaged"].numpy(), out["repaired"].numpy())


SIZES = r'''
import sys
import numpy as np
import tensorflow as tf
path, images, out = sys.argv[1:4]
m = tf.saved_model.load(path)
x = np.load(images)
res = {}
for name in ("serving_default", "features"):
  # An empty batch, at the training size and at another size.
  for shape in ((0, 16, 16, x.shape[-1]), (0, 20, 24, x.shape[-1])):
    for key, val in m.signatures[name](images=tf.zeros(shape, tf.uint8)).items():
      res[f"{name}/{key}/empty{shape[1]}x{shape[2]}"] = val.numpy()
  for key, val in m.signatures[name](images=tf.constant(x)).items():
    res[f"{name}/{key}"] = val.numpy()
empty = m.signatures["repair"](images=tf.zeros((0, 16, 16, x.shape[-1]), tf.uint8),
                               keep_mask=tf.zeros([0, 4, 4]))
for key, val in empty.items():
  res[f"repair/{key}/empty"] = val.numpy()
try:
  m.signatures["serving_default"](images=tf.zeros([1, 0, 5, x.shape[-1]], tf.uint8))
except tf.errors.InvalidArgumentError as e:
  res["zero_height_error"] = np.array(e.message)
np.savez(out, **res)
'''


@pytest.mark.slow
def test_signatures_take_empty_batches_and_resize_other_sizes(trained, tmp_path):
  """In a fresh process: an empty batch (0, H, W, C) gives empty outputs
  shaped as a batch's, at the training size or another; images of another
  size (20x24 for a 16x16 model) are resized to 16x16 as documented
  (bilinear, antialiased, aspect ratio not kept) before the network; an
  image of height 0 is refused naming the problem."""
  workdir, _ = trained
  path = export_lib.export(workdir, str(tmp_path / "serving"))
  images = np.random.default_rng(2).integers(0, 256, (3, 20, 24, 1), dtype=np.uint8)
  np.save(tmp_path / "images.npy", images)
  script = tmp_path / "sizes.py"
  script.write_text(SIZES)
  r = subprocess.run([sys.executable, str(script), path, str(tmp_path / "images.npy"),
                      str(tmp_path / "out.npz")], cwd=str(tmp_path), capture_output=True,
                     text=True, timeout=300,
                     env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert r.returncode == 0, r.stderr[-3000:]
  got = np.load(tmp_path / "out.npz")
  _, restored = loading.spotter(workdir)
  disc = restored.model.discriminator
  x = tf.image.resize(tf.cast(images, tf.float32) / 127.5 - 1.0, [16, 16],
                      method="bilinear", antialias=True)
  out = disc(x, training=False)
  ref = {"serving_default/embedding": tf.reduce_mean(out["conv5"], [1, 2]),
         "serving_default/artifact_probability": tf.sigmoid(-out["logits"]),
         "serving_default/artifact_mask": tf.sigmoid(-out["mask_logits"]),
         **{f"features/conv{i}": out[f"conv{i}"] for i in range(1, 6)}}
  for key, val in ref.items():
    np.testing.assert_allclose(got[key], val.numpy(), atol=1e-5, err_msg=key)
    for size in ("16x16", "20x24"):
      empty = got[f"{key}/empty{size}"]
      assert empty.shape == (0,) + val.shape[1:] and empty.dtype == np.float32, (key, size)
  for key in ("damaged", "repaired"):
    empty = got[f"repair/{key}/empty"]
    assert empty.shape == (0, 16, 16, 1) and empty.dtype == np.uint8, key
  assert "height and width must be at least 1" in str(got["zero_height_error"])

@pytest.mark.slow
def test_saved_model_cli_lists_signatures(trained, tmp_path):
  workdir, _ = trained
  path = export_lib.export(workdir, str(tmp_path / "serving"), version=7)
  cli = shutil.which("saved_model_cli") or "saved_model_cli"
  r = subprocess.run([cli, "show", "--all", "--dir", path], capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  text = r.stdout
  for sig in ("serving_default", "features", "repair"):
    assert f"signature_def['{sig}']" in text
  for out in ("embedding", "artifact_probability", "artifact_mask", "conv1",
              "conv5", "damaged", "repaired"):
    assert f"outputs['{out}']" in text
  assert "dtype: DT_UINT8" in text and "shape: (-1, -1, -1, 1)" in text
  mask = text[text.index("outputs['artifact_mask']"):][:200]
  assert "shape: (-1, 4, 4)" in mask


@pytest.mark.slow
def test_keras_file_loads_in_safe_mode(trained, tmp_path):
  workdir, _ = trained
  path = export_lib.export(workdir, str(tmp_path / "serving"))
  model = keras.saving.load_model(os.path.join(path, "discriminator.keras"),
                                  safe_mode=True)
  _, players = loading.spotter(workdir)
  x = tf.random.uniform([2, 16, 16, 1], -1, 1)
  a = model(x)
  b = players.model.discriminator(x, training=False)
  for k in ("conv3", "conv5", "logits", "mask_logits"):
    np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-5)


@pytest.mark.slow
def test_bad_inputs_fail_at_the_signature(trained, tmp_path):
  workdir, _ = trained
  path = export_lib.export(workdir, str(tmp_path / "serving"))
  sig = tf.saved_model.load(path).signatures["serving_default"]
  with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError),
                     match="expected to be a uint8 tensor"):
    sig(images=tf.zeros([1, 16, 16, 1], tf.float32))
  expected = r"images must be uint8 \[batch, height, width, 1\]"
  errors = (TypeError, ValueError, tf.errors.InvalidArgumentError)
  with pytest.raises(errors, match=expected + "; got another channel count"):
    sig(images=tf.zeros([1, 16, 16, 3], tf.uint8))
  with pytest.raises(errors, match="must be 4-dimensional"):
    sig(images=tf.zeros([16, 16, 1], tf.uint8))


@pytest.mark.slow
def test_bad_workdirs_name_what_is_missing(trained, tmp_path):
  workdir, _ = trained
  with pytest.raises(loading.LoadError, match="does not exist"):
    export_lib.export(str(tmp_path / "nope"), str(tmp_path / "out"))
  half = tmp_path / "half"
  half.mkdir()
  with pytest.raises(loading.LoadError, match="config.json is missing"):
    export_lib.export(str(half), str(tmp_path / "out"))
  shutil.copy(os.path.join(workdir, "config.json"), half / "config.json")
  with pytest.raises(loading.LoadError, match="no checkpoint in"):
    export_lib.export(str(half), str(tmp_path / "out"))
  (half / "config.json").write_text('{"resolution": 16, "chan')
  with pytest.raises(loading.LoadError, match="not valid JSON"):
    export_lib.export(str(half), str(tmp_path / "out"))
  # An existing version is never overwritten, and nothing half-written is left.
  out = tmp_path / "serving"
  first = export_lib.export(workdir, str(out))
  stamp = os.path.getmtime(os.path.join(first, "saved_model.pb"))
  with pytest.raises(export_lib.ExportError, match="exists already"):
    export_lib.export(workdir, str(out))
  assert os.path.getmtime(os.path.join(first, "saved_model.pb")) == stamp
  assert sorted(os.listdir(out)) == ["4"]


def test_failed_export_leaves_nothing(trained, tmp_path, monkeypatch):
  workdir, _ = trained
  def boom(*a, **k):
    raise RuntimeError("disk full")
  monkeypatch.setattr(export_lib, "backbone_model", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    export_lib.export(workdir, str(tmp_path / "serving"))
  assert os.listdir(tmp_path / "serving") == []


@pytest.mark.slow
def test_export_binary(trained, tmp_path):
  workdir, _ = trained
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-m", "trainers.export", f"--workdir={workdir}",
                      f"--output={tmp_path / 'srv'}"], cwd=root, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "exported" in r.stdout and os.path.isdir(tmp_path / "srv" / "4")
  r = subprocess.run([sys.executable, "-m", "trainers.export",
                      f"--workdir={tmp_path / 'missing'}", f"--output={tmp_path / 'srv2'}"],
                     cwd=root, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "does not exist" in r.stderr
  assert not os.path.exists(tmp_path / "srv2")


def _ft_config(idx_path):
  from configs.finetune import fashion_mnist as ft
  c = ft.get_config("smoke")
  c.dataset.update(path=idx_path, auto_install=False, tfds_fallback=False,
                   shuffle_buffer=64)
  c.pp_train = "resize(16)|value_range(-1, 1)"
  c.pp_eval = "resize(16)|value_range(-1, 1)"
  c.freeze_up_to = "conv3"
  c.batch_size = 8
  c.steps_per_epoch = 3
  c.lock()  # as the binary's --config flag delivers it
  return c


@pytest.mark.slow
@pytest.mark.parametrize("source", ["keras_file", "workdir"])
def test_finetune_starts_from_export_or_workdir(trained, tmp_path, source):
  from artifact_spotting import finetune as ft_lib
  workdir, root = trained
  init = workdir
  if source == "keras_file":
    init = os.path.join(export_lib.export(workdir, str(tmp_path / "srv")),
                        "discriminator.keras")
  backbone = loading.backbone(init)
  before = {w.path: w.numpy().copy() for w in backbone.weights}
  c = _ft_config(str(root / "idx"))
  model, result = ft_lib.finetune(c, init, str(tmp_path / "ft"))
  assert 0.0 <= result["eval_accuracy"] <= 1.0
  assert result["epochs_run"] == 2
  disc = loading.discriminator_of(model.layers[1])
  changed = {}
  for name in ("conv1", "conv3", "conv4", "conv5"):
    kernel = getattr(disc, name).conv.kernel
    match = [v for k, v in before.items() if k.endswith(f"{name}/conv/kernel")]
    changed[name] = not np.array_equal(match[0], kernel.numpy())
  assert changed == {"conv1": False, "conv3": False, "conv4": True, "conv5": True}
  for f in ("best.keras", "finetune_results.json"):
    assert os.path.exists(tmp_path / "ft" / f)
  assert os.listdir(tmp_path / "ft" / "tensorboard")
  best = keras.saving.load_model(str(tmp_path / "ft" / "best.keras"), safe_mode=True)
  assert best.output_shape == (None, 10)


def test_loading_restores_only_the_network_asked_for(trained, tmp_path):
  workdir, _ = trained
  # The reference: everything restored the way the trainer restores it.
  config = loading.workdir_config(workdir)
  restored = train_state.Players(config, tf.distribute.get_strategy(),
                               probe=bool(config.probe.enabled))
  checkpoints.restore_latest(restored.checkpoint,
                           os.path.join(workdir, workdir_lib.CHECKPOINT_DIR))
  full = restored.model
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(
      a.get_weights(), b.get_weights())) and len(a.get_weights()) == len(b.get_weights())
  disc = loading.discriminator(workdir)
  assert same(disc, full.discriminator)
  fresh = loading.new_discriminator(loading.workdir_config(workdir), seed=0)
  assert not same(fresh, full.discriminator)  # so the check above can fail
  assert same(loading.encoder(workdir), full.encoder)
  _, spotter = loading.spotter(workdir)
  assert spotter.adv_step == 4
  for name in ("encoder", "decoder", "discriminator"):
    assert same(getattr(spotter.model, name), getattr(full, name)), name
  backbone = loading.backbone(workdir)
  assert same(loading.discriminator_of(backbone), full.discriminator)
  # Nothing else is read: a checkpoint holds optimizers, history, probe.
  alone = loading.restore(workdir, discriminator=fresh)
  assert (alone.ae_step, alone.adv_step) == (restored.ae_step, 4)
  assert alone.path == spotter.path
  assert same(fresh, full.discriminator)
  with pytest.raises(loading.LoadError, match="does not exist"):
    loading.discriminator(str(tmp_path / "missing"))
  with pytest.raises(loading.LoadError, match="config.json is missing"):
    loading.discriminator(str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_loading_spotter_builds_the_model_and_step_counters_only(trained, tmp_path,
                                                                 precision):
  """loading.spotter restores what the trainer's Players restore (weights,
  step counts) without building Players: no optimizer moments, and no
  repair or probe optimizer. mixed_float16 wraps each optimizer in a
  LossScaleOptimizer, whose step count is its inner optimizer's."""
  workdir, root = trained
  if precision != "float32":
    workdir = str(tmp_path / "work")
    train_lib.train(tiny_idx_config(str(root / "idx"),
                                    **{"train.precision": precision}), workdir)
  config, restored = loading.spotter(workdir)
  players = train_state.Players(config, tf.distribute.get_strategy(),
                              probe=bool(config.probe.enabled))
  checkpoints.restore_latest(players.checkpoint,
                           os.path.join(workdir, workdir_lib.CHECKPOINT_DIR))
  assert (restored.ae_step, restored.adv_step) == (players.ae_step, players.adv_step)
  assert restored.adv_step == config.spotter.steps
  assert len(restored.model.weights) == len(players.model.weights)
  for a, b in zip(restored.model.weights, players.model.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
  assert restored.path == checkpoints.newest_readable(
      os.path.join(workdir, workdir_lib.CHECKPOINT_DIR))
  # The discriminator alone (evaluation, fine-tuning), in the run's precision.
  disc = loading.discriminator(workdir)
  assert disc.compute_dtype == players.model.discriminator.compute_dtype
  for a, b in zip(disc.weights, players.model.discriminator.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
