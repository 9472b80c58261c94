"""Where images come from: IDX files, tfds builders, a folder of images.

Every source returns a ``tf.data.Dataset`` of ``{"image": uint8 [H, W, C],
"label": int64}`` (no "label" when the source has none) plus whether it has
labels. Sources are sharded by the caller (one shard per input pipeline).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataUnavailableError(RuntimeError):
  """The data is not here and could not be fetched; the message says what to run."""


# ----------------------------------------------------------------------- IDX
def _open(path):
  if os.path.exists(path):
    return open(path, "rb")
  if os.path.exists(path + ".gz"):
    return gzip.open(path + ".gz", "rb")
  raise FileNotFoundError(path)


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally .gz) into a numpy array."""
  with _open(path) as f:
    data = f.read()
  if len(data) < 4:
    raise ValueError(f"{path}: not an IDX file (too short)")
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path}: not an unsigned-byte IDX file")
  shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(shape)):
    raise ValueError(f"{path}: truncated IDX file ({body.size} of "
                     f"{int(np.prod(shape))} values)")
  return body.reshape(shape)


def idx_present(path: str, split: str = "train") -> bool:
  images, labels = IDX_FILES[split]
  return all(os.path.exists(os.path.join(path, f)) or
             os.path.exists(os.path.join(path, f + ".gz"))
             for f in (images, labels))


def _can_apt() -> bool:
  return (hasattr(os, "geteuid") and os.geteuid() == 0 and
          shutil.which("apt-get") is not None)


def install_fashion_mnist() -> bool:
  """Installs Debian's dataset-fashion-mnist (root only). True on success."""
  if not _can_apt():
    return False
  logging.info("Installing Debian package dataset-fashion-mnist ...")
  env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
  for cmd in (["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"],
              ["apt-get", "update", "-q"],
              ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]):
    try:
      result = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
      logging.warning("%s failed: %s", " ".join(cmd), e)
      continue
    if cmd[1] == "install" and result.returncode == 0:
      return idx_present(DEBIAN_FASHION_MNIST)
  return idx_present(DEBIAN_FASHION_MNIST)


def idx_source(path: str, split: str):
  images_file, labels_file = IDX_FILES[split]
  images = read_idx(os.path.join(path, images_file))
  labels = read_idx(os.path.join(path, labels_file)).astype(np.int64)
  if images.ndim == 3:
    images = images[..., None]
  if len(images) != len(labels):
    raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
  return images, labels


def resolve_idx(dataset_cfg) -> Tuple[str, Optional[str]]:
  """Finds the IDX folder, installing Debian's package when allowed.

  Returns (path, None), or ("", "tfds") when the caller should use tfds.
  Raises DataUnavailableError with the exact command to run otherwise.
  """
  path = dataset_cfg.path or DEBIAN_FASHION_MNIST
  split = dataset_cfg.split
  if idx_present(path, split):
    return path, None
  if path == DEBIAN_FASHION_MNIST and dataset_cfg.auto_install:
    if install_fashion_mnist() and idx_present(path, split):
      return path, None
  if dataset_cfg.tfds_fallback and dataset_cfg.name == "fashion_mnist":
    if _tfds_available(dataset_cfg):
      return "", "tfds"
  raise DataUnavailableError(
      f"Fashion-MNIST IDX files not found in {path!r} and could not be "
      f"fetched. Run:\n  sudo apt-get update && sudo apt-get install -y "
      f"dataset-fashion-mnist\nor point --config.dataset.path at a folder "
      f"holding {IDX_FILES[split][0]}[.gz] and {IDX_FILES[split][1]}[.gz].")


def _tfds_available(dataset_cfg) -> bool:
  """True when tfds has the data prepared or can download and prepare it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(dataset_cfg.name, data_dir=dataset_cfg.data_dir or None)
    if not builder.is_prepared():
      builder.download_and_prepare()
    return True
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("tfds fallback for %s failed: %s", dataset_cfg.name, e)
    return False


# ---------------------------------------------------------------------- tfds
def tfds_source(dataset_cfg, split: str, shuffle_files: bool):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  read_config = tfds.ReadConfig(try_autocache=False)
  kwargs = {}
  if dataset_cfg.manual_dir:
    kwargs["download_and_prepare_kwargs"] = {
        "download_config": tfds.download.DownloadConfig(
            manual_dir=dataset_cfg.manual_dir)}
  ds, info = tfds.load(dataset_cfg.name, split=split,
                       data_dir=dataset_cfg.data_dir or None,
                       shuffle_files=shuffle_files, read_config=read_config,
                       with_info=True, **kwargs)
  has_label = "label" in info.features
  # stl10's "unlabelled" split carries label -1 everywhere.
  if split.startswith("unlabelled"):
    has_label = False
  # VOC-style multi-label data: "labels" (every object) and
  # "labels_no_difficult". As in the VOC 2007 classification devkit, a class
  # is positive (1) when a non-difficult object shows it, "difficult" (-1,
  # ignored by losses and AP) when only difficult ones do, else negative (0).
  multilabel = not has_label and {"labels", "labels_no_difficult"} <= set(info.features)
  if multilabel:
    has_label = True
    num_classes = info.features["labels"].feature.num_classes

  def to_features(ex):
    out = {"image": ex["image"]}
    if multilabel:
      hot = lambda l: tf.minimum(tf.reduce_sum(
          tf.one_hot(tf.cast(l, tf.int32), num_classes), 0), 1.0)
      any_object = hot(ex["labels"])
      clear = hot(ex["labels_no_difficult"])
      out["label"] = clear - any_object * (1.0 - clear)  # 1 / 0 / -1
    elif has_label:
      out["label"] = tf.cast(ex["label"], tf.int64)
    return out
  return ds.map(to_features, num_parallel_calls=tf.data.AUTOTUNE), has_label


# -------------------------------------------------------------- image folder
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_MAGIC = {
    ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",),
    ".png": (b"\x89PNG\r\n\x1a\n",), ".gif": (b"GIF87a", b"GIF89a"),
    ".bmp": (b"BM",),
}
_TRAILER = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND\xaeB`\x82"}


def check_image_file(path: str) -> Optional[str]:
  """None when the file looks like a whole image, else why it does not.

  Reads only the first and last bytes: the magic number of the format its
  extension names, and the end-of-image marker for JPEG and PNG (a truncated
  download lacks it).
  """
  ext = os.path.splitext(path)[1].lower()
  try:
    with open(path, "rb") as f:
      head = f.read(8)
      f.seek(0, os.SEEK_END)
      size = f.tell()
      trailer = _TRAILER.get(ext)
      tail = b""
      if trailer:
        f.seek(max(0, size - 64))
        tail = f.read()
  except OSError as e:
    return f"unreadable ({e.strerror})"
  if not any(head.startswith(m) for m in _MAGIC[ext]):
    return "not an image"
  if trailer and trailer not in tail:
    return "truncated"
  return None


def scan_image_folder(root: str):
  """(paths, labels, class_names, skipped) for an image tree.

  Labels come from the first-level sub-folder names when every image is in
  one; otherwise there are none (labels is None). ``skipped`` maps a reason to
  the number of files skipped for it.
  """
  if not os.path.isdir(root):
    raise DataUnavailableError(
        f"config.dataset.path={root!r} is not a directory of images")
  paths, skipped, bad = [], {}, []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    for name in sorted(filenames):
      if not name.lower().endswith(IMAGE_EXTENSIONS):
        continue
      full = os.path.join(dirpath, name)
      reason = check_image_file(full)
      if reason is None:
        paths.append(full)
      else:
        skipped[reason] = skipped.get(reason, 0) + 1
        bad.append((full, reason))
  for full, reason in bad[:20]:
    logging.warning("Skipping %s: %s", full, reason)
  if not paths:
    raise DataUnavailableError(f"No readable images under {root!r} "
                               f"(skipped: {skipped or 'none found'})")
  rel = [os.path.relpath(p, root) for p in paths]
  class_names, labels = None, None
  if all(os.sep in r for r in rel):
    class_names = sorted({r.split(os.sep)[0] for r in rel})
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[r.split(os.sep)[0]] for r in rel], np.int64)
  return paths, labels, class_names, skipped


def decode_file(path, channels):
  data = tf.io.read_file(path)
  image = tf.io.decode_image(data, channels=channels, expand_animations=False)
  image.set_shape([None, None, channels])
  return image


def image_folder_source(dataset_cfg, channels: int):
  paths, labels, class_names, skipped = scan_image_folder(dataset_cfg.path)
  total_skipped = sum(skipped.values())
  logging.info("Image folder %s: %d images, %d classes, skipped %d files %s",
               dataset_cfg.path, len(paths), len(class_names or []),
               total_skipped, skipped)
  feats = {"path": np.array(paths)}
  if labels is not None:
    feats["label"] = labels
  ds = tf.data.Dataset.from_tensor_slices(feats)

  def load(ex):
    out = {"image": decode_file(ex["path"], channels)}
    if "label" in ex:
      out["label"] = ex["label"]
    return out
  return ds, labels is not None, load, {"images": len(paths), "skipped": skipped}
