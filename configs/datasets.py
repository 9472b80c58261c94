"""Dataset blocks shared by the evaluation and fine-tuning configs."""

import ml_collections

from artifact_spotting.data.sources import DEBIAN_FASHION_MNIST


def fashion_mnist(**splits):
  """Debian's Fashion-MNIST IDX files (installed on demand), tfds fallback."""
  return ml_collections.ConfigDict(dict(
      source="idx", name="fashion_mnist", path=DEBIAN_FASHION_MNIST,
      data_dir="", manual_dir="", auto_install=True, tfds_fallback=True,
      shuffle_buffer=10_000, **splits))


def tfds(name, **splits):
  return ml_collections.ConfigDict(dict(
      source="tfds", name=name, path="", data_dir="", manual_dir="",
      auto_install=False, tfds_fallback=False, shuffle_buffer=5000, **splits))
