"""Test setup: two logical CPU devices (for MirroredStrategy tests) and helpers."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import pytest  # noqa: E402

from artifact_spotting import config as config_lib  # noqa: E402
from artifact_spotting.data import sources  # noqa: E402


tiny_config = config_lib.tiny_config


@pytest.fixture
def tiny():
  return tiny_config


write_idx = sources.write_idx


def make_idx_dir(path, train=256, test=64):
  """Writes a folder of Fashion-MNIST-format IDX files (random 28x28 images
  and labels) at ``path``; returns it as a string."""
  import numpy as np
  rng = np.random.default_rng(0)
  os.makedirs(path)
  for split, n in (("train", train), ("t10k", test)):
    write_idx(os.path.join(path, f"{split}-images-idx3-ubyte"),
              rng.integers(0, 256, (n, 28, 28)))
    write_idx(os.path.join(path, f"{split}-labels-idx1-ubyte"),
              rng.integers(0, 10, (n,)))
  return str(path)


@pytest.fixture
def idx_dir(tmp_path):
  """A folder of Fashion-MNIST-format IDX files with 256 random images."""
  return make_idx_dir(tmp_path / "idx")


def tiny_idx_config(idx_path, **overrides):
  c = tiny_config(**overrides)
  c.dataset.update(source="idx", name="fashion_mnist", path=idx_path,
                   auto_install=False, tfds_fallback=False)
  c.pp = "resize(16)|flip_lr|value_range(-1, 1)"
  return c


def require_fashion_mnist():
  """Skips the calling test when Debian's Fashion-MNIST IDX files are not
  installed, naming the command that installs them; under CI (CI set) it
  fails instead, so a machine without the data never looks green."""
  from artifact_spotting.data import sources
  from trainers._cli import FASHION_MNIST_INSTALL
  path = sources.DEBIAN_FASHION_MNIST
  if sources.idx_present(path, "train") and sources.idx_present(path, "test"):
    return
  msg = (f"Fashion-MNIST IDX files not in {path}; install them "
         f"with: {FASHION_MNIST_INSTALL}")
  if os.environ.get("CI"):
    pytest.fail(msg, pytrace=False)
  pytest.skip(msg)


@pytest.fixture(scope="session")
def fashion_mnist():
  """Use in a test that reads the real Fashion-MNIST (require_fashion_mnist)."""
  require_fashion_mnist()

