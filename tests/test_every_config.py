"""Every shipped config runs through its binary, end to end.

The configs are discovered, not listed: a new file under ``configs/`` (a
pretraining config), ``configs/eval/`` (trainers.linear_eval) or
``configs/finetune/`` (trainers.finetune) is covered without editing this
file. Each runs with its ``smoke`` argument, as a user would run it, in a
fresh process of its real binary:

- pretraining: both phases (trainers.pretrain), then trainers.export;
- evaluation: trainers.linear_eval on the workdir of a pretraining config
  with the same dataset (else the same channels);
- fine-tuning: trainers.finetune from that workdir's export.

Data: tfds datasets under ``tfds.testing.mock_data`` (tests/mock_tfds_main.py
runs the binary inside it), IDX datasets from generated IDX files, image
folders from a generated folder of JPEG and PNG files of several sizes.
"""

import glob
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_idx_dir

# Slow as a whole (binaries, several processes): the full suite only.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_EXAMPLES = 24


def _discover(folder):
  found = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", folder, "*.py"))):
    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    if hasattr(importlib.import_module(module), "get_config"):
      found.append(os.path.relpath(path, ROOT))
  return found


PRETRAIN = _discover("")
EVAL = _discover("eval")
FINETUNE = _discover("finetune")


def _load(path, arg="smoke"):
  module = importlib.import_module(path[:-3].replace(os.sep, "."))
  return module.get_config(arg)


def test_configs_are_discovered():
  assert {"configs/fashion_mnist.py", "configs/stl10.py"} <= set(PRETRAIN)
  assert "configs/eval/fashion_mnist_folds.py" in EVAL
  assert "configs/finetune/voc07.py" in FINETUNE
  assert "configs/datasets.py" not in PRETRAIN   # shared blocks, no get_config


# ---------------------------------------------------------------- data
def _idx_dir(root):
  path = os.path.join(root, "idx")
  if not os.path.isdir(path):
    make_idx_dir(path, train=300, test=100)
  return path


def _image_folder(root):
  """JPEG and PNG photos-to-be of several sizes and aspect ratios."""
  import tensorflow as tf
  path = os.path.join(root, "images")
  if not os.path.isdir(path):
    os.makedirs(os.path.join(path, "trip"))
    rng = np.random.default_rng(1)
    for i in range(12):
      h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
      image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      if i % 2:
        data = tf.io.encode_jpeg(image).numpy()
        name = f"trip/img{i}.jpg"
      else:
        data = tf.io.encode_png(image).numpy()
        name = f"img{i}.png"
      with open(os.path.join(path, name), "wb") as f:
        f.write(data)
  return path


def _fold_file(root, num_folds=2, per_fold=6):
  path = os.path.join(root, "fold_indices.txt")
  with open(path, "w") as f:
    for k in range(num_folds):
      f.write(" ".join(str(k * per_fold + i) for i in range(per_fold)) + "\n")
  return path


def _data_flags(dataset, root, prefix="--config.dataset"):
  """(flags, uses_tfds) that point a config's dataset at test data."""
  if dataset.source == "idx":
    return [f"{prefix}.path={_idx_dir(root)}", f"{prefix}.auto_install=False",
            f"{prefix}.tfds_fallback=False"], False
  if dataset.source == "image_folder":
    return [f"{prefix}.path={_image_folder(root)}"], False
  assert dataset.source == "tfds", dataset.source
  return [], True


def _run(module, flags, uses_tfds, timeout=600):
  if uses_tfds:
    cmd = [sys.executable, os.path.join(ROOT, "tests", "mock_tfds_main.py"),
           str(MOCK_EXAMPLES), module] + flags
  else:
    cmd = [sys.executable, "-m", module] + flags
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, (
      f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stderr[-4000:]}")
  return proc


# ---------------------------------------------------------- pretraining
_PRETRAINED = {}


def _pretrained(path, root):
  """Pretrains ``path:smoke`` (both phases) and exports it, once per session;
  returns (workdir, export version folder, config)."""
  if path in _PRETRAINED:
    return _PRETRAINED[path]
  config = _load(path)
  name = os.path.splitext(os.path.basename(path))[0]
  workdir = os.path.join(root, "pretrain_" + name)
  flags, uses_tfds = _data_flags(config.dataset, root)
  _run("trainers.pretrain", [f"--config={path}:smoke", f"--workdir={workdir}"]
       + flags, uses_tfds)
  with open(os.path.join(workdir, "train_summary.json")) as f:
    summary = json.load(f)
  assert summary["autoencoder"]["steps"] == config.autoencoder.steps
  assert summary["spotter"]["steps"] == config.spotter.steps
  for phase in ("autoencoder", "spotter"):
    assert all(np.isfinite(v) for v in summary[phase]["metrics"].values())
  export = os.path.join(root, "export_" + name)
  proc = _run("trainers.export", [f"--workdir={workdir}", f"--output={export}"], False)
  version = os.path.join(export, str(config.spotter.steps))
  assert os.path.exists(os.path.join(version, "saved_model.pb")), proc.stdout
  assert os.path.exists(os.path.join(version, "discriminator.keras"))
  _PRETRAINED[path] = (workdir, version, config)
  return _PRETRAINED[path]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("every_config"))


@pytest.mark.parametrize("path", PRETRAIN)
def test_pretraining_config_trains_both_phases_and_exports(path, root):
  workdir, version, config = _pretrained(path, root)
  assert os.path.exists(os.path.join(workdir, "config.json"))
  # The export serves the config's resolution and channels.
  import tensorflow as tf
  loaded = tf.saved_model.load(version)
  images = tf.zeros([2, config.resolution, config.resolution, config.channels],
                    tf.uint8)
  out = loaded.signatures["serving_default"](images=images)
  assert out["artifact_probability"].shape == (2,)


def _pretraining_for(config):
  """The pretraining config whose workdir an eval or fine-tuning config reads:
  the same dataset if one trains on it, else the same number of channels."""
  same_channels = [p for p in PRETRAIN if _load(p).channels == config.channels]
  same_data = [p for p in same_channels
               if _load(p).dataset.name == config.dataset.name]
  assert same_channels, "no pretraining config has this config's channels"
  return (same_data or same_channels)[0]


def _eval_data_flags(config, root):
  flags, uses_tfds = _data_flags(config.dataset, root)
  if config.get("folds") is not None and config.folds.kind == "file":
    flags.append(f"--config.folds.file={_fold_file(root)}")
  return flags, uses_tfds


@pytest.mark.parametrize("path", EVAL)
def test_eval_config_evaluates_a_pretrained_workdir(path, root):
  config = _load(path)
  workdir, _, _ = _pretrained(_pretraining_for(config), root)
  output = os.path.join(root, "eval_" + os.path.basename(path)[:-3])
  flags, uses_tfds = _eval_data_flags(config, root)
  _run("trainers.linear_eval", [f"--config={path}:smoke", f"--workdir={workdir}",
                                f"--output={output}"] + flags, uses_tfds)
  with open(os.path.join(output, "eval_results.json")) as f:
    result = json.load(f)
  for protocol in config.protocols:
    assert protocol in result, sorted(result)
  text = json.dumps(result)
  assert "conv1" in text and "conv5" in text


@pytest.mark.parametrize("path", FINETUNE)
def test_finetune_config_trains_from_an_export(path, root):
  config = _load(path)
  _, version, _ = _pretrained(_pretraining_for(config), root)
  workdir = os.path.join(root, "finetune_" + os.path.basename(path)[:-3])
  flags, uses_tfds = _data_flags(config.dataset, root)
  if config.fold not in ("",) and not config.fold_file:
    flags.append(f"--config.fold_file={_fold_file(root)}")
  _run("trainers.finetune", [f"--config={path}:smoke", f"--init={version}",
                             f"--workdir={workdir}"] + flags, uses_tfds)
  with open(os.path.join(workdir, "finetune_results.json")) as f:
    result = json.load(f)
  metric = "eval_map" if config.multilabel else "eval_accuracy"
  value = result[metric] if metric in result else result[metric + "_mean"]
  assert 0.0 <= value <= 1.0
  assert glob.glob(os.path.join(workdir, "**", "final.keras"), recursive=True)


def test_fashion_mnist_grid8_pretrains_and_its_bound_trains(root):
  """``configs/fashion_mnist.py:grid=8`` (no pool after conv3: conv3-conv5 on
  8x8, an 8x8 mask grid), the stack of docs/results.md's depth-and-pooling
  report: both phases through trainers.pretrain, and its supervised bound
  through trainers.finetune from random weights, as benchmarks.quality runs
  them."""
  import tensorflow as tf
  from artifact_spotting import loading
  path = "configs/fashion_mnist.py"
  config = _load(path, "smoke,grid=8")
  flags, uses_tfds = _data_flags(config.dataset, root)
  workdir = os.path.join(root, "pretrain_fashion_mnist_grid8")
  _run("trainers.pretrain", [f"--config={path}:smoke,grid=8",
                             f"--workdir={workdir}"] + flags, uses_tfds)
  with open(os.path.join(workdir, "train_summary.json")) as f:
    summary = json.load(f)
  assert summary["spotter"]["steps"] == config.spotter.steps
  feats = loading.discriminator(workdir).features(tf.zeros([1, 32, 32, 1]))
  assert [tuple(feats[l].shape[1:3]) for l in ("conv2", "conv3", "conv4", "conv5")
          ] == [(16, 16), (8, 8), (8, 8), (8, 8)]

  finetune = "configs/finetune/fashion_mnist.py"
  ft_flags, ft_tfds = _data_flags(_load(finetune).dataset, root)
  bound = os.path.join(root, "supervised_grid8")
  _run("trainers.finetune", [f"--config={finetune}:supervised,smoke",
                             f"--init=random:{path}:grid=8",
                             f"--workdir={bound}"] + ft_flags, ft_tfds)
  with open(os.path.join(bound, "finetune_results.json")) as f:
    result = json.load(f)
  assert 1 <= result["selected_epoch"] <= result["epochs_run"]
  assert 0.0 <= result["eval_accuracy"] <= 1.0
  assert os.path.exists(os.path.join(bound, "best.keras"))
