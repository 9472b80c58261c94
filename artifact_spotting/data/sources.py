"""Where images come from: IDX files, tfds builders, a folder of images.

Every source function returns a ``Source``: a ``tf.data.Dataset`` whose
elements, after the source's ``decode`` map (None: they are decoded already),
are ``{"image": uint8 [H, W, C], "label": int64 or float32 [K]}`` (no "label"
when the source has none). A Source is never changed in place: ``take`` and
``subset`` give new ones. Sources are sharded by the caller (one shard per
input pipeline).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import struct
import sys
import tempfile
import time
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# What installs it (as root); named in the errors, never run here.
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
# Before a tfds download the fallback checks that the download server answers
# an HTTP request within this many seconds (tfds itself retries with back-off
# for minutes offline). PROBE_ENV (a URL) names another server to ask.
PROBE_SECONDS = 3.0
PROBE_ENV = "ARTIFACT_SPOTTING_DOWNLOAD_PROBE"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class Source:
  """A resolved data source: the undecoded dataset, whether it has labels,
  how to decode an element (``decode`` must not fail on an element of
  ``dataset``; None: nothing to decode) and what is known about it
  (``info``: "images", the count, where known; "skipped", files an image
  folder left out and why)."""

  def __init__(self, dataset, has_label: bool, decode=None, info=None):
    self.dataset = dataset
    self.has_label = has_label
    self.decode = decode
    self.info = dict(info or {})

  def with_dataset(self, dataset, **info) -> "Source":
    """A new Source over ``dataset`` (a transformation of this one's)."""
    return Source(dataset, self.has_label, self.decode, {**self.info, **info})

  def take(self, count: int) -> "Source":
    """The first ``count`` elements."""
    info = {"images": min(count, self.info["images"])} if "images" in self.info else {}
    return self.with_dataset(self.dataset.take(count), **info)


class DataUnavailableError(RuntimeError):
  """The data is not here and could not be fetched; the message says what to run."""


class FashionMnistMissingError(DataUnavailableError):
  """Debian's Fashion-MNIST folder (``path``) lacks the IDX files and tfds
  did not provide them: typically a first run on a machine without the
  dataset-fashion-mnist package."""

  def __init__(self, message: str, path: str):
    super().__init__(message)
    self.path = path


# ----------------------------------------------------------------------- IDX
def _open(path):
  if os.path.exists(path):
    return open(path, "rb")
  if os.path.exists(path + ".gz"):
    return gzip.open(path + ".gz", "rb")
  raise FileNotFoundError(path)


def write_idx(path: str, array):
  """Writes a uint8 array as a gzipped IDX file ``path + ".gz"`` (the format
  read_idx reads; for generated test and benchmark data)."""
  array = np.asarray(array, np.uint8)
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
      ">" + "I" * array.ndim, *array.shape)
  with gzip.open(path + ".gz", "wb") as f:
    f.write(header + array.tobytes())


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


def idx_source(path: str, split: str) -> Source:
  """The split's IDX files, read into memory."""
  images_file, labels_file = IDX_FILES[split]
  images = read_idx(os.path.join(path, images_file))
  labels = read_idx(os.path.join(path, labels_file)).astype(np.int64)
  if images.ndim == 3:
    images = images[..., None]
  if len(images) != len(labels):
    raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
  ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
  return Source(ds, True, info={"images": len(images)})


def resolve_idx(dataset_cfg) -> Tuple[str, Optional[str]]:
  """Finds the IDX folder. Installs nothing: Debian's dataset-fashion-mnist
  package is installed by the user (the pretraining binary prints the
  command on a first run) or by .ci/run.

  Returns (path, None), or ("", "tfds") when the caller should use tfds (its
  data prepared, or downloaded now; offline that is known within
  PROBE_SECONDS).
  The tfds fallback applies to the default Debian folder only: a folder
  named in config.dataset.path must hold the files. Raises
  FashionMnistMissingError (the default folder) or DataUnavailableError (a
  folder the user named) with the command to run otherwise.
  ``dataset_cfg.auto_install`` is not read here.
  """
  path = dataset_cfg.path or DEBIAN_FASHION_MNIST
  split = dataset_cfg.split
  if idx_present(path, split):
    return path, None
  if os.path.normpath(path) != DEBIAN_FASHION_MNIST:
    # A folder the user named: no download (tfds retries for minutes
    # offline) would put the files there, so say what is missing.
    images, labels = IDX_FILES[split]
    state = "does not exist" if not os.path.isdir(path) else "lacks them"
    raise DataUnavailableError(
        f"config.dataset.path={path!r} must hold {images}[.gz] and "
        f"{labels}[.gz] (the {split} split's IDX files); it {state}. Point it "
        f"at such a folder, or leave it at {DEBIAN_FASHION_MNIST} (Debian's: "
        f"{FASHION_MNIST_INSTALL}).")
  tried_tfds = dataset_cfg.tfds_fallback and dataset_cfg.name == "fashion_mnist"
  problem = _tfds_problem(dataset_cfg) if tried_tfds else None
  if tried_tfds and problem is None:
    return "", "tfds"
  images, labels = IDX_FILES[split]
  raise FashionMnistMissingError(
      f"Fashion-MNIST is not installed (no IDX files in {path}"
      f"{f'; tfds could not fetch them: {problem}' if tried_tfds else ''}); "
      f"install it with: {FASHION_MNIST_INSTALL} (or point "
      f"--config.dataset.path at a folder holding {images}[.gz] and "
      f"{labels}[.gz])", path)


def _download_url(builder) -> str:
  """What the fallback probes before ``builder`` downloads: PROBE_ENV when
  set, else the builder's ``URL`` (fashion_mnist's download folder)."""
  return (os.environ.get(PROBE_ENV, "")
          or getattr(type(builder), "URL", "") or "https://storage.googleapis.com/")


def reachable(url: str, seconds: float = PROBE_SECONDS) -> bool:
  """Whether ``url``'s server answers an HTTP HEAD request within ``seconds``
  (with any status: it answered); name lookup, connection and reply all
  count towards the time (the request runs in a thread waited on that long)."""
  import threading  # pylint: disable=g-import-not-at-top
  import urllib.error  # pylint: disable=g-import-not-at-top
  import urllib.request  # pylint: disable=g-import-not-at-top
  answer = []

  def ask():
    try:
      request = urllib.request.Request(url, method="HEAD")
      urllib.request.urlopen(request, timeout=seconds).close()
      answer.append(True)
    except urllib.error.HTTPError:
      answer.append(True)   # a status, so the server is there
    except (OSError, ValueError):
      answer.append(False)  # no name, no route, refused, timed out
  thread = threading.Thread(target=ask, daemon=True)
  thread.start()
  thread.join(seconds)
  return bool(answer and answer[0])


def _tfds_problem(dataset_cfg) -> Optional[str]:
  """None when tfds has the data prepared or downloads and prepares it, else
  why not (in a few words). A download is tried only when its host answers
  (``reachable``), so an offline machine gets its answer within
  PROBE_SECONDS instead of after tfds' retries."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(dataset_cfg.name, data_dir=dataset_cfg.data_dir or None)
    if builder.is_prepared():
      return None
    if not reachable(_download_url(builder)):
      return "no network"
    builder.download_and_prepare()
    return None
  except Exception as e:  # pylint: disable=broad-except
    text = str(e).strip().splitlines()
    logging.info("tfds fallback for %s failed: %s", dataset_cfg.name, e)
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


# ---------------------------------------------------------------------- tfds
def tfds_source(dataset_cfg, split: str, shuffle_files: bool) -> Source:
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
  return Source(ds.map(to_features, num_parallel_calls=tf.data.AUTOTUNE),
                has_label)


# -------------------------------------------------------------- image folder
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# (format, magic numbers, end-of-image marker or None). The format is read from
# the content, not the extension, as tf.io.decode_image does.
_FORMATS = (
    ("jpeg", (b"\xff\xd8\xff",), b"\xff\xd9"),
    ("png", (b"\x89PNG\r\n\x1a\n",), b"IEND\xaeB`\x82"),
    ("gif", (b"GIF87a", b"GIF89a"), None),
    ("bmp", (b"BM",), None),
)
# Why a file is skipped; DataUnavailableError and the log count by these.
NOT_AN_IMAGE = "not an image"
TRUNCATED = "truncated"
CORRUPT = "corrupt (decode failed)"
TOO_LARGE = "too large"              # followed by its size and the cap
JPEG_WARNINGS = "corrupt (libjpeg warnings)"  # followed by libjpeg's first line
NOT_A_FILE = "not a regular file"
DUPLICATE = "duplicate (same file as another path)"
UNREADABLE = "unreadable"            # followed by the OS error, e.g. "(Permission denied)"
UNREADABLE_FOLDER = "unreadable folder"
MAX_LOGGED = 20                      # skipped files named in the warning line
# config.dataset.max_pixels' default: files with more pixels (width x height,
# read from the header) are skipped before any decode. Decoded RGB takes 3
# bytes a pixel, so one such image is 192 MB and several decode at once; the
# largest common camera sensors (61 MP) stay under it, decompression bombs
# (a small file whose header claims billions of pixels) do not.
DEFAULT_MAX_PIXELS = 64_000_000
_PROGRESS_SECONDS = 30               # progress line while decoding large folders


# How far check_image_file searches a file for its end-of-image marker. Files
# are decoded whole at scan time anyway; this bounds the search on huge ones.
MAX_MARKER_SEARCH = 256 << 20
_SEARCH_CHUNK = 1 << 20


def _has_marker(f, marker: bytes, start: int, size: int) -> bool:
  """Whether ``marker`` occurs in ``f`` at or after ``start``: first in the
  last 64 bytes (where a plain file ends), then in chunks from ``start``
  (bytes may follow the image: a motion photo's video, camera padding)."""
  f.seek(max(start, size - 64))
  if marker in f.read():
    return True
  f.seek(start)
  carry, read = b"", 0
  while read < MAX_MARKER_SEARCH:
    chunk = f.read(_SEARCH_CHUNK)
    if not chunk:
      return False
    if marker in carry + chunk:
      return True
    carry, read = chunk[-(len(marker) - 1):], read + len(chunk)
  return False


def check_image_file(path: str) -> Optional[str]:
  """None when the file looks like a whole image, else why it does not.

  Reads the first bytes (a magic number of a supported format) and, for JPEG
  and PNG, looks for the end-of-image marker anywhere after the header (a
  truncated download lacks it; data after it, as in motion photos, is
  allowed). Whether the body decodes is checked by ``scan_image_folder``.
  """
  try:
    with open(path, "rb") as f:
      head = f.read(8)
      f.seek(0, os.SEEK_END)
      size = f.tell()
      for _, magics, trailer in _FORMATS:
        magic = next((m for m in magics if head.startswith(m)), None)
        if magic is not None:
          if trailer and not _has_marker(f, trailer, len(magic), size):
            return TRUNCATED
          return None
  except OSError as e:
    return f"{UNREADABLE} ({e.strerror})"
  return NOT_AN_IMAGE


# JPEG start-of-frame markers (SOF0..SOF15 but DHT, JPG and DAC): the frame
# header after them holds the image's height and width.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, 0xD8] + list(range(0xD0, 0xD8)))


def _jpeg_size(f) -> Optional[Tuple[int, int]]:
  """(width, height) from a JPEG's frame header, reading marker segments
  from the file's start (seeking over their bodies); None when none is found
  before the scan data or the segments do not follow each other."""
  f.seek(2)
  while True:
    byte = f.read(1)
    if byte != b"\xff":  # bytes between segments: corrupt, the decoder decides
      return None
    while byte == b"\xff":  # fill bytes
      byte = f.read(1)
    if not byte:
      return None
    marker = byte[0]
    if marker in _JPEG_STANDALONE:
      continue
    if marker in (0xD9, 0xDA):        # end of image or scan data: no frame
      return None
    head = f.read(2)
    if len(head) < 2:
      return None
    length = struct.unpack(">H", head)[0]
    if marker in _JPEG_SOF:
      frame = f.read(5)
      if len(frame) < 5:
        return None
      height, width = struct.unpack(">HH", frame[1:5])
      return width, height
    f.seek(length - 2, os.SEEK_CUR)


def image_size(path: str) -> Optional[Tuple[int, int]]:
  """(width, height) of an image file as its header states it, without
  decoding: PNG's IHDR, GIF's logical screen, BMP's DIB header, JPEG's frame
  header. None when the file is not one of those or its header is cut."""
  try:
    with open(path, "rb") as f:
      head = f.read(26)
      if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
      if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
      if head.startswith(b"BM") and len(head) >= 26:
        if struct.unpack("<I", head[14:18])[0] == 12:  # BITMAPCOREHEADER
          return struct.unpack("<HH", head[18:22])
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)   # a negative height: top-down rows
      if head.startswith(b"\xff\xd8\xff"):
        return _jpeg_size(f)
  except (OSError, struct.error):
    return None
  return None


def decode_file(path, channels: int):
  """uint8 [H, W, channels] of an image file, ``channels`` 1 or 3.

  Reads JPEG (grey, YCbCr or CMYK; baseline or progressive), PNG (grey, grey +
  alpha, palette, RGB, RGBA; 8 or 16 bits: 16-bit samples keep their high
  byte, as tf.image.convert_image_dtype does), GIF (the first frame) and BMP.
  Alpha is dropped. Grey images are repeated into RGB; colour ones become grey
  by tf.image.rgb_to_grayscale (TensorFlow's GIF, BMP and CMYK JPEG decoders
  cannot produce one channel themselves).
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, not {channels!r}")
  data = tf.io.read_file(path)
  if channels == 3:
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
  else:
    image = tf.io.decode_image(data, channels=0, expand_animations=False)
    # As stored: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA.
    image = tf.cond(tf.shape(image)[-1] >= 3,
                    lambda: tf.image.rgb_to_grayscale(image[..., :3]),
                    lambda: image[..., :1])
  image.set_shape([None, None, channels])
  return image


def _path_tensor_values(paths):
  """Paths as bytes for tf.string: file names need not be valid UTF-8."""
  return np.array([os.fsencode(p) for p in paths], dtype=object)


def _shown(path: str) -> str:
  """``path`` printable whatever bytes its name holds."""
  return path.encode("utf-8", "backslashreplace").decode("utf-8")


class _Skips:
  """Files skipped, by reason: counted all, named up to MAX_LOGGED."""

  def __init__(self):
    self.counts = {}
    self.named = []
    self.total = 0

  def add(self, path: str, reason: str, detail: str = ""):
    self.counts[reason] = self.counts.get(reason, 0) + 1
    self.total += 1
    if len(self.named) < MAX_LOGGED:
      self.named.append((_shown(path), reason + detail))

  def log(self, root: str):
    """One warning line: the counts by reason, then the first MAX_LOGGED
    files with why."""
    if not self.total:
      return
    counts = ", ".join(f"{reason}: {n}" for reason, n in self.counts.items())
    named = "; ".join(f"{path} ({why})" for path, why in self.named)
    more = (f"; and {self.total - len(self.named)} more"
            if self.total > len(self.named) else "")
    logging.warning("Image folder %s: skipped %d files (%s): %s%s",
                    _shown(root), self.total, counts, named, more)


def _list_image_files(root: str, skips: _Skips):
  """Paths of the files with an image extension under ``root`` (sorted walk),
  and the number of other files.

  Symlinked folders are followed, but no folder is listed twice: a link back
  to an ancestor (a loop) or a second path to a folder already listed is not
  entered, by (st_dev, st_ino). A file reached by several paths (hard links,
  symlinks to files) is kept once, at the first path found.
  """
  st = os.stat(root)
  seen_dirs = {(st.st_dev, st.st_ino)}
  seen_files = {}
  paths, others, repeated_dirs = [], 0, []

  def onerror(e):
    skips.add(e.filename, UNREADABLE_FOLDER, f" ({e.strerror})")

  for dirpath, dirnames, filenames in os.walk(root, onerror=onerror,
                                              followlinks=True):
    keep = []
    for name in sorted(dirnames):
      full = os.path.join(dirpath, name)
      try:
        st = os.stat(full)
      except OSError as e:
        skips.add(full, UNREADABLE_FOLDER, f" ({e.strerror})")
        continue
      key = (st.st_dev, st.st_ino)
      if key in seen_dirs:
        repeated_dirs.append(full)
      else:
        seen_dirs.add(key)
        keep.append(name)
    dirnames[:] = keep
    for name in sorted(filenames):
      full = os.path.join(dirpath, name)
      if not name.lower().endswith(IMAGE_EXTENSIONS):
        others += 1
        continue
      try:
        st = os.stat(full)
      except OSError as e:  # e.g. a dangling symlink
        skips.add(full, UNREADABLE, f" ({e.strerror})")
        continue
      if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read
        skips.add(full, NOT_A_FILE)
        continue
      key = (st.st_dev, st.st_ino)
      if key in seen_files:
        skips.add(full, DUPLICATE, f": {_shown(seen_files[key])}")
        continue
      seen_files[key] = full
      paths.append(full)
  if repeated_dirs:
    logging.info("Image folder %s: not entering %d paths to folders already "
                 "listed (symlink loops or second links), e.g. %s", root,
                 len(repeated_dirs), repeated_dirs[:3])
  return paths, others


@contextlib.contextmanager
def _stderr_captured():
  """Sends file descriptor 2 (where libjpeg prints its warnings, from any
  thread) to a temporary file while inside; yields a list that holds the
  captured text once the block is left."""
  text = []
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield text
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      sink.seek(0)
      text.append(sink.read().decode("utf-8", "replace"))


def _decode_all(paths, channels: int, progress: bool = True):
  """(indices of ``paths`` that decode_file cannot decode, what the decodes
  printed on stderr).

  Decodes every file once, in parallel inside tf.data; a failing element is
  dropped without a log line and found by its missing index.
  """
  if not paths:
    return np.zeros([0], np.int64), ""
  ds = tf.data.Dataset.from_tensor_slices(_path_tensor_values(paths)).enumerate()
  ds = ds.map(lambda i, p: (i, tf.shape(decode_file(p, channels))),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.ignore_errors(log_warning=False).batch(1024)
  ok = np.zeros(len(paths), bool)
  start = last = time.monotonic()
  done = 0
  with _stderr_captured() as printed:
    for index, _ in ds:
      ok[index.numpy()] = True
      done += len(index)
      if progress and time.monotonic() - last > _PROGRESS_SECONDS:
        last = time.monotonic()
        logging.info("Decoded %d of %d images (%.0f s)", done, len(paths),
                     last - start)
  return np.flatnonzero(~ok), printed[0]


def _undecodable(paths, channels: int):
  """(indices of ``paths`` that decode_file cannot decode, {index: libjpeg's
  first line} for the JPEGs that decode but make libjpeg warn).

  libjpeg prints its warnings ("Corrupt JPEG data: ...") on stderr, named
  by no file; they are captured here. When the decode of every file printed
  one, the JPEGs are decoded again in halves, and halves of the halves that
  print, down to the single files (a few decodes per such file). Anything
  else the decodes printed is passed on to stderr.
  """
  bad, printed = _decode_all(paths, channels)
  warned = {}
  if not printed.strip():
    return bad, warned
  failed = set(bad.tolist())
  jpegs = [i for i, p in enumerate(paths) if i not in failed and
           _format_of(p) == "jpeg"]
  explained = set()

  def visit(group):
    _, text = _decode_all([paths[i] for i in group], channels, progress=False)
    if not text.strip():
      return
    if len(group) == 1:
      lines = [l.strip() for l in text.splitlines() if l.strip()]
      warned[group[0]] = lines[0]
      explained.update(lines)
      return
    visit(group[:len(group) // 2])
    visit(group[len(group) // 2:])
  if jpegs:
    visit(jpegs)
  rest = [l for l in printed.splitlines() if l.strip() and l.strip() not in explained]
  if rest:
    print("\n".join(rest), file=sys.stderr, flush=True)
  return bad, warned


def _format_of(path: str) -> Optional[str]:
  """The format _FORMATS reads from the file's magic number, or None."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError:
    return None
  for name, magics, _ in _FORMATS:
    if any(head.startswith(m) for m in magics):
      return name
  return None


def scan_image_folder(root: str, channels: int = 3,
                      max_pixels: int = DEFAULT_MAX_PIXELS):
  """(paths, labels, class_names, skipped) for an image tree.

  Every file with an image extension (any case) is read once (see
  _list_image_files). A file is skipped when it is unreadable, not an image
  (no known magic number), truncated (no end-of-image marker), too large
  (its header states more than ``max_pixels`` pixels, width x height; 0: no
  cap; checked before any decode), corrupt (decode_file fails on it with
  ``channels``) or, for a JPEG, decodes only with libjpeg warnings (corrupt
  data that libjpeg fills in; kept, it would print its warning in every
  epoch): every other file is decoded once here, in parallel, so training
  only sees files that decode cleanly. ``skipped`` maps each reason to its
  count; one warning line gives the counts and names the first MAX_LOGGED
  skipped files.

  Labels come from the first-level sub-folder names when every image is in
  one; otherwise there are none (labels is None). Raises DataUnavailableError
  when ``root`` is not a folder or holds no decodable image.
  """
  if not os.path.isdir(root):
    raise DataUnavailableError(
        f"config.dataset.path={root!r} is not a directory of images")
  skips = _Skips()
  found, others = _list_image_files(root, skips)
  paths = []
  for full in found:
    reason = check_image_file(full)
    size = image_size(full) if reason is None and max_pixels else None
    if reason is None and size and size[0] * size[1] > max_pixels:
      skips.add(full, TOO_LARGE, f": {size[0]}x{size[1]} = "
                f"{size[0] * size[1] / 1e6:.1f} MP > max_pixels={max_pixels}")
    elif reason is None:
      paths.append(full)
    elif reason.startswith(UNREADABLE):
      skips.add(full, UNREADABLE, reason[len(UNREADABLE):])
    else:
      skips.add(full, reason)
  failed, warned = _undecodable(paths, channels)
  bad = set(failed.tolist())
  for i in sorted(bad):
    skips.add(paths[i], CORRUPT)
  for i, line in sorted(warned.items()):
    skips.add(paths[i], JPEG_WARNINGS, f": {line}")
  bad |= set(warned)
  paths = [p for i, p in enumerate(paths) if i not in bad]
  skips.log(root)
  skipped = dict(skips.counts)
  if not paths:
    raise DataUnavailableError(
        f"No decodable images under {root!r}: {len(found)} files with an image "
        f"extension ({', '.join(IMAGE_EXTENSIONS)}), {others} other files; "
        f"skipped {skips.total}: {skipped or 'none'}")
  rel = [os.path.relpath(p, root) for p in paths]
  class_names, labels = None, None
  if all(os.sep in r for r in rel):
    class_names = sorted({r.split(os.sep)[0] for r in rel})
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[r.split(os.sep)[0]] for r in rel], np.int64)
  logging.info("Image folder %s: %d images, %d classes; skipped %d files %s; "
               "%d other files (no image extension) ignored", root, len(paths),
               len(class_names or []), skips.total, skipped, others)
  return paths, labels, class_names, skipped


def image_folder_source(dataset_cfg, channels: int) -> Source:
  """Dataset of {"path", "label"?} with a decode map to {"image", "label"?}.

  The scan has decoded every file once, so decoding does not fail in training
  unless a file is changed or removed afterwards; TensorFlow's error then
  stops the input pipeline.
  """
  paths, labels, _, skipped = scan_image_folder(
      dataset_cfg.path, channels,
      dataset_cfg.get("max_pixels", DEFAULT_MAX_PIXELS))
  feats = {"path": _path_tensor_values(paths)}
  if labels is not None:
    feats["label"] = labels
  ds = tf.data.Dataset.from_tensor_slices(feats)

  def load(ex):
    out = {"image": decode_file(ex["path"], channels)}
    if "label" in ex:
      out["label"] = ex["label"]
    return out
  return Source(ds, labels is not None, load,
                {"images": len(paths), "skipped": skipped})
