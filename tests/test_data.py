"""Sources (IDX, tfds under mock_data, image folders) and preprocessing ops."""

import glob
import gzip
import importlib
import logging
import os
import struct
import threading
import time

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from artifact_spotting.data import pipeline, pp, sources
from conftest import write_idx


def test_read_idx_roundtrip_and_errors(tmp_path):
  arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  write_idx(str(tmp_path / "a"), arr)
  np.testing.assert_array_equal(sources.read_idx(str(tmp_path / "a")), arr)
  with gzip.open(tmp_path / "a.gz", "rb") as f:
    data = f.read()
  (tmp_path / "b").write_bytes(data[:-5])
  with pytest.raises(ValueError, match="truncated"):
    sources.read_idx(str(tmp_path / "b"))
  (tmp_path / "c").write_bytes(b"\x01\x02\x03\x04rest")
  with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
    sources.read_idx(str(tmp_path / "c"))


def test_missing_idx_names_the_command(tmp_path):
  cfg = ml_collections.ConfigDict(dict(
      path=str(tmp_path), split="train", auto_install=False,
      tfds_fallback=False, name="fashion_mnist"))
  with pytest.raises(sources.DataUnavailableError,
                     match="sudo apt-get install dataset-fashion-mnist"):
    sources.resolve_idx(cfg)



def test_user_idx_path_without_files_fails_at_once(tmp_path, monkeypatch):
  """A config.dataset.path the user gave that lacks the IDX files is an
  immediate error naming the path and the files, even with tfds_fallback on
  (tfds would retry a download for minutes offline)."""
  def no_fallback(*args, **kwargs):
    raise AssertionError("must not download for a user path")
  monkeypatch.setattr(sources, "_tfds_problem", no_fallback)
  for path, state in ((str(tmp_path / "typo"), "does not exist"),
                      (str(tmp_path), "lacks them")):
    cfg = ml_collections.ConfigDict(dict(
        path=path, split="train", auto_install=True, tfds_fallback=True,
        name="fashion_mnist", data_dir=""))
    t0 = time.time()
    with pytest.raises(sources.DataUnavailableError) as e:
      sources.resolve_idx(cfg)
    assert time.time() - t0 < 5
    message = str(e.value)
    assert f"config.dataset.path={path!r}" in message and state in message
    assert "train-images-idx3-ubyte[.gz]" in message
    assert "train-labels-idx1-ubyte[.gz]" in message


def test_missing_debian_idx_installs_nothing(tmp_path, monkeypatch):
  """Debian's folder without the IDX files: tfds is tried when allowed, then
  FashionMnistMissingError (with the folder and the apt-get command); the
  library runs no process (no apt-get)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  def no_process(*args, **kwargs):
    raise AssertionError(f"the library must not run {args[:1]}")
  monkeypatch.setattr(subprocess, "Popen", no_process)
  monkeypatch.setattr(os, "system", no_process)
  debian = str(tmp_path / "fashion-mnist")
  monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
  tried = []
  monkeypatch.setattr(sources, "_tfds_problem",
                      lambda cfg: tried.append(cfg.name) or "no network")
  for fallback, tfds_tried in ((False, []), (True, ["fashion_mnist"])):
    tried.clear()
    cfg = ml_collections.ConfigDict(dict(
        path=debian, split="train", auto_install=True, tfds_fallback=fallback,
        name="fashion_mnist", data_dir=""))
    with pytest.raises(sources.FashionMnistMissingError) as e:
      sources.resolve_idx(cfg)
    assert tried == tfds_tried
    assert e.value.path == debian
    assert "sudo apt-get install dataset-fashion-mnist" in str(e.value)
    assert ("tfds could not fetch them: no network" in str(e.value)) == fallback
  assert not hasattr(sources, "install_fashion_mnist")


def test_tfds_fallback_probes_the_download_host_first(tmp_path, monkeypatch):
  """Debian's folder empty, tfds data not prepared: with the download server
  answering (a local HTTP server stands in for it) tfds downloads and the
  fallback is taken; with its port closed, or a server that takes the
  connection but never answers, no download is tried and the answer comes
  within the probe's seconds."""
  import http.server  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top
  debian = str(tmp_path / "fashion-mnist")
  monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
  downloads = []
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      lambda self, **kw: downloads.append(self.name))
  cfg = ml_collections.ConfigDict(dict(
      path=debian, split="train", auto_install=True, tfds_fallback=True,
      name="fashion_mnist", data_dir=str(tmp_path / "tfds")))
  server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  port = server.server_address[1]
  try:
    monkeypatch.setenv(sources.PROBE_ENV, f"http://127.0.0.1:{port}/")
    assert sources.resolve_idx(cfg) == ("", "tfds")  # it answers 501 to HEAD
  finally:
    server.shutdown()
    server.server_close()
  assert downloads == ["fashion_mnist"]
  silent = socket.socket()
  silent.bind(("127.0.0.1", 0))
  silent.listen(8)  # takes connections, never answers
  try:
    for url in (f"http://127.0.0.1:{port}/",   # closed now
                f"http://127.0.0.1:{silent.getsockname()[1]}/"):
      monkeypatch.setenv(sources.PROBE_ENV, url)
      t0 = time.monotonic()
      with pytest.raises(sources.FashionMnistMissingError,
                         match="tfds could not fetch them: no network"):
        sources.resolve_idx(cfg)
      assert time.monotonic() - t0 < sources.PROBE_SECONDS + 1, url
  finally:
    silent.close()
  assert downloads == ["fashion_mnist"]


def test_idx_pipeline_batches(idx_dir):
  cfg = ml_collections.ConfigDict(dict(
      source="idx", path=idx_dir, split="train", auto_install=False,
      tfds_fallback=False, name="fashion_mnist"))
  src = pipeline.open_source(cfg, 1)
  ds = pipeline.make_dataset(src, "resize(32)|value_range(-1, 1)", 16,
                             training=True, shuffle_buffer=32)
  batch = next(iter(ds))
  assert batch["image"].shape == (16, 32, 32, 1)
  assert batch["image"].dtype == tf.float32
  assert -1.0 <= float(tf.reduce_min(batch["image"])) <= float(
      tf.reduce_max(batch["image"])) <= 1.0
  assert batch["label"].shape == (16,)


def test_sharding_splits_examples_between_pipelines(idx_dir):
  cfg = ml_collections.ConfigDict(dict(
      source="idx", path=idx_dir, split="test",
      auto_install=False, tfds_fallback=False, name="fashion_mnist"))
  src = pipeline.open_source(cfg, 1)
  seen = []
  for pid in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                     num_replicas_in_sync=2)
    ds = pipeline.make_dataset(src, "value_range(0, 255)", 64, training=False,
                               input_context=ctx, drop_remainder=False)
    seen.append(np.concatenate([b["image"].numpy() for b in ds]))
  assert len(seen[0]) == len(seen[1]) == 32
  flat = [tuple(x.ravel()[:20]) for x in np.concatenate(seen)]
  assert len(set(flat)) == 64


@pytest.mark.parametrize("name,split,labels,shape", [
    ("fashion_mnist", "train", True, (28, 28, 1)),
    ("cifar10", "train", True, (32, 32, 3)),
    ("stl10", "unlabelled", False, (96, 96, 3)),
    ("imagenet2012", "train", True, None)])
def test_tfds_sources_under_mock_data(name, split, labels, shape):
  cfg = ml_collections.ConfigDict(dict(source="tfds", name=name, split=split,
                                       data_dir="", manual_dir="/tmp/none"))
  with tfds.testing.mock_data(num_examples=6):
    src = pipeline.open_source(cfg, 3 if name != "fashion_mnist" else 1)
    assert src.has_label == labels
    ex = next(iter(src.dataset))
    assert ex["image"].dtype == tf.uint8
    if shape:
      assert tuple(ex["image"].shape) == shape
    ds = pipeline.make_dataset(src, "resize(32)|value_range(-1, 1)", 4,
                               training=True, shuffle_buffer=8)
    batch = next(iter(ds))
  assert batch["image"].shape[:3] == (4, 32, 32)
  assert ("label" in batch) == labels


def _write_png(path, size=(20, 24)):
  img = np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)
  tf.io.write_file(path, tf.io.encode_png(img))


def _write_jpeg(path):
  img = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
  tf.io.write_file(path, tf.io.encode_jpeg(img))


def test_image_folder_skips_and_counts_bad_files(tmp_path):
  root = tmp_path / "imgs"
  (root / "cats").mkdir(parents=True)
  (root / "dogs").mkdir()
  _write_png(str(root / "cats" / "a.png"))
  _write_jpeg(str(root / "cats" / "b.jpg"))
  _write_png(str(root / "dogs" / "c.png"))
  (root / "dogs" / "notes.txt").write_text("ignored: not an image extension")
  (root / "dogs" / "fake.jpg").write_text("this is text, not a JPEG")
  good = (root / "cats" / "b.jpg").read_bytes()
  (root / "dogs" / "cut.jpg").write_bytes(good[: len(good) // 2])
  (root / "dogs" / "empty.png").write_bytes(b"")
  paths, labels, classes, skipped = sources.scan_image_folder(str(root))
  assert len(paths) == 3
  assert classes == ["cats", "dogs"]
  assert labels.tolist() == [0, 0, 1]
  assert skipped == {"not an image": 2, "truncated": 1}
  cfg = ml_collections.ConfigDict(dict(source="image_folder", path=str(root),
                                       name="mine", split="train"))
  src = pipeline.open_source(cfg, 3)
  assert src.info["skipped"] == skipped
  ds = pipeline.make_dataset(src, "resize(16)|value_range(-1, 1)", 3,
                             training=False, drop_remainder=False)
  batches = list(ds)
  assert sum(b["image"].shape[0] for b in batches) == 3



def _no_marker(data, marker=b"\xff\xd9"):
  """``data`` with every ``marker`` (and a trailing 0xff) broken up."""
  data = data.replace(marker, b"\xfe\xd9")
  return data[:-1] + b"\x00" if data.endswith(b"\xff") else data


def test_image_folder_keeps_jpegs_with_bytes_after_the_end_marker(tmp_path):
  """A JPEG followed by other bytes (a motion photo's MP4, camera padding)
  is kept and decodes; a JPEG header followed by garbage that holds an end
  marker is corrupt (its decode fails), and one with no end marker at all is
  truncated."""
  root = tmp_path / "imgs"
  root.mkdir()
  _write_jpeg(str(root / "plain.jpg"))
  jpeg = (root / "plain.jpg").read_bytes()
  rng = np.random.default_rng(5)
  video = _no_marker(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00isommp42"
                     + rng.bytes(300_000))
  (root / "motion.jpg").write_bytes(jpeg + video)
  (root / "padded.jpg").write_bytes(jpeg + b"\x00" * 4096)
  garbage = _no_marker(rng.bytes(50_000))
  (root / "garbage.jpg").write_bytes(
      b"\xff\xd8\xff" + garbage[:20_000] + b"\xff\xd9" + garbage[20_000:])
  (root / "no_end.jpg").write_bytes(b"\xff\xd8\xff" + garbage)
  (root / "cut.jpg").write_bytes(_no_marker(jpeg[:-2]))
  assert sources.check_image_file(str(root / "motion.jpg")) is None
  paths, _, _, skipped = sources.scan_image_folder(str(root))
  assert sorted(os.path.basename(p) for p in paths) == [
      "motion.jpg", "padded.jpg", "plain.jpg"]
  assert skipped == {sources.CORRUPT: 1, sources.TRUNCATED: 2}
  plain = sources.decode_file(str(root / "plain.jpg"), 3).numpy()
  for name in ("motion.jpg", "padded.jpg"):
    np.testing.assert_array_equal(
        sources.decode_file(str(root / name), 3).numpy(), plain)

def test_image_folder_decode_errors_do_not_end_the_epoch(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  _write_png(str(root / "a.png"))
  _write_png(str(root / "b.png"))
  # Valid header and trailer, corrupt body: fails to decode, so the scan
  # drops it and the decode step in the pipeline never sees it.
  data = bytearray((root / "b.png").read_bytes())
  data[40:80] = b"\x00" * 40
  (root / "b.png").write_bytes(bytes(data))
  cfg = ml_collections.ConfigDict(dict(source="image_folder", path=str(root),
                                       name="mine", split="train"))
  src = pipeline.open_source(cfg, 3)
  assert src.info["skipped"] == {sources.CORRUPT: 1}
  ds = pipeline.make_dataset(src, "resize(8)", 1, training=False,
                             drop_remainder=False)
  assert len(list(ds)) == 1


def test_missing_image_folder_is_a_clear_error(tmp_path):
  with pytest.raises(sources.DataUnavailableError, match="not a directory"):
    sources.scan_image_folder(str(tmp_path / "nope"))


def _finishes_within(seconds, fn):
  """fn()'s result; fails the test when fn runs longer than ``seconds`` (fn
  runs in a daemon thread, so a hang fails the test instead of blocking it)."""
  out = {}

  def run():
    try:
      out["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      out["error"] = e
  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"still running after {seconds} s"
  if "error" in out:
    raise out["error"]
  return out["value"]


def _folder_cfg(root):
  return ml_collections.ConfigDict(dict(source="image_folder", path=str(root),
                                        name="mine", split="train"))


def _epoch(src, size=8):
  """The images of one pass over ``src`` through make_dataset."""
  ds = pipeline.make_dataset(src, f"resize({size})|value_range(0, 1)", 4,
                             training=False, drop_remainder=False)
  return np.concatenate([b["image"].numpy() for b in ds])


def test_image_folder_reads_each_file_once(tmp_path):
  """Symlinked folders are followed, but a loop, a second link to a folder,
  a symlink to a file and a hard link do not add images."""
  root = tmp_path / "imgs"
  (root / "cats").mkdir(parents=True)
  (root / "dogs").mkdir()
  outside = tmp_path / "elsewhere" / "birds"
  outside.mkdir(parents=True)
  _write_png(str(root / "cats" / "a.png"))
  _write_png(str(root / "dogs" / "b.png"), size=(9, 11))
  _write_png(str(outside / "c.png"), size=(13, 7))
  os.symlink(".", root / "loop")
  os.symlink("..", root / "cats" / "up")
  os.symlink(outside, root / "birds")
  os.symlink(outside, root / "birds_again")
  os.symlink("a.png", root / "cats" / "a_alias.png")
  os.link(root / "dogs" / "b.png", root / "dogs" / "b_hard.png")
  paths, labels, classes, skipped = _finishes_within(
      30, lambda: sources.scan_image_folder(str(root)))
  assert len(paths) == len({os.path.realpath(p) for p in paths}) == 3
  assert classes == ["birds", "cats", "dogs"]
  assert labels.tolist() == [0, 1, 2]
  assert skipped == {sources.DUPLICATE: 2}
  assert len(_epoch(pipeline.open_source(_folder_cfg(root), 3))) == 3


def test_image_folder_skips_special_files_without_opening_them(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  _write_png(str(root / "a.png"))
  not_utf8 = os.fsdecode(b"b\xff.png")   # a name that is not valid UTF-8
  (root / not_utf8).write_bytes((root / "a.png").read_bytes())
  os.mkfifo(root / "pipe.jpg")        # opening it would wait for a writer
  os.symlink("missing.png", root / "dangling.png")
  paths, _, _, skipped = _finishes_within(
      30, lambda: sources.scan_image_folder(str(root)))
  assert [os.path.basename(p) for p in paths] == ["a.png", not_utf8]
  assert skipped == {sources.NOT_A_FILE: 1, sources.UNREADABLE: 1}
  assert len(_epoch(pipeline.open_source(_folder_cfg(root), 1))) == 2


def _corrupt_jpeg(path, seed):
  """A JPEG's first 20 bytes (SOI, APP0) and end marker around a random body."""
  img = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  good = tf.io.encode_jpeg(img).numpy()
  body = np.random.default_rng(seed).integers(0, 256, len(good) - 22, np.uint8)
  path.write_bytes(good[:20] + body.tobytes() + b"\xff\xd9")


def test_image_folder_names_and_counts_files_that_fail_to_decode(tmp_path, caplog):
  root = tmp_path / "imgs"
  root.mkdir()
  _write_png(str(root / "a.png"))
  _write_jpeg(str(root / "b.jpg"))
  _corrupt_jpeg(root / "bad.jpg", 0)
  _write_png(str(root / "bad.png"))
  data = bytearray((root / "bad.png").read_bytes())
  data[40:80] = b"\x00" * 40
  (root / "bad.png").write_bytes(bytes(data))
  assert sources.check_image_file(str(root / "bad.jpg")) is None  # header, trailer ok
  with caplog.at_level(logging.INFO):
    src = pipeline.open_source(_folder_cfg(root), 3)
  assert src.info == {"images": 2, "skipped": {sources.CORRUPT: 2}}
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warned) == 1, warned
  assert f"skipped 2 files ({sources.CORRUPT}: 2)" in warned[0]
  for name in ("bad.jpg", "bad.png"):
    assert f"{root / name} ({sources.CORRUPT})" in warned[0]
  assert len(_epoch(src)) == 2


def test_all_corrupt_folder_stops_fast_with_one_error(tmp_path, caplog):
  """No decodable file: one DataUnavailableError naming the folder and the
  counts by reason, the first MAX_LOGGED files named, no per-image flood."""
  root = tmp_path / "imgs"
  root.mkdir()
  n = sources.MAX_LOGGED + 5
  for i in range(n):
    _corrupt_jpeg(root / f"bad{i:02d}.jpg", i)
  (root / "cut.png").write_bytes(tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy()[:30])

  def first_batch():
    src = pipeline.open_source(_folder_cfg(root), 3)
    return next(iter(pipeline.make_dataset(src, "resize(8)", 2, training=True,
                                           shuffle_buffer=4)))
  start = time.monotonic()
  with caplog.at_level(logging.INFO):
    with pytest.raises(sources.DataUnavailableError) as error:
      _finishes_within(30, first_batch)
  assert time.monotonic() - start < 30
  message = str(error.value)
  assert str(root) in message
  assert f"'{sources.CORRUPT}': {n}" in message and f"'{sources.TRUNCATED}': 1" in message
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warned) == 1, warned
  assert warned[0].count(f"({sources.CORRUPT})") == sources.MAX_LOGGED - 1
  assert f"and {n + 1 - sources.MAX_LOGGED} more" in warned[0]
  assert len(caplog.records) < 10



def _png_header_only(width, height):
  """A PNG whose header claims width x height 8-bit grey pixels, with one
  tiny IDAT (a decoder would allocate the whole image before finding the
  data short)."""
  import zlib  # pylint: disable=g-import-not-at-top

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))
  return (b"\x89PNG\r\n\x1a\n"
          + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_image_folder_skips_images_over_the_pixel_cap(tmp_path, caplog):
  """A file whose header gives more than dataset.max_pixels pixels is
  skipped before any decode (a 50000 x 50000 PNG header under the default
  cap), counted and named with its size in the one warning line."""
  root = tmp_path / "imgs"
  root.mkdir()
  _write_png(str(root / "small.png"), size=(20, 24))           # 480 pixels
  _write_jpeg(str(root / "big.jpg"))                           # 20 x 30 = 600
  _write_png(str(root / "big.png"), size=(40, 30))             # 1200
  (root / "bomb.png").write_bytes(_png_header_only(50_000, 50_000))
  with caplog.at_level(logging.INFO):
    paths, _, _, skipped = _finishes_within(
        30, lambda: sources.scan_image_folder(str(root), 3, max_pixels=500))
  assert [os.path.basename(p) for p in paths] == ["small.png"]
  assert skipped == {sources.TOO_LARGE: 3}
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warned) == 1, warned
  for name, size in (("big.jpg", "20x30"), ("big.png", "30x40"),
                     ("bomb.png", "50000x50000")):
    assert f"{root / name} ({sources.TOO_LARGE}: {size}" in warned[0], warned[0]
  assert "max_pixels=500" in warned[0]
  # Through the config (the field's default cap: the bomb alone is skipped).
  src = _finishes_within(60, lambda: pipeline.open_source(_folder_cfg(root), 3))
  assert src.info == {"images": 3, "skipped": {sources.TOO_LARGE: 1}}
  cfg = _folder_cfg(root)
  cfg.max_pixels = 0  # no cap: the bomb fails to decode instead
  assert pipeline.open_source(cfg, 3).info["skipped"] == {sources.CORRUPT: 1}


def test_image_size_reads_every_format_from_its_header(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  files = _format_files(root)
  for name, (want, _) in files.items():
    assert sources.image_size(str(root / name)) == (want.shape[1], want.shape[0]), name
  (root / "text.jpg").write_text("not an image")
  assert sources.image_size(str(root / "text.jpg")) is None


def _warning_jpegs(root):
  """Two JPEGs that decode but make libjpeg warn, and a clean one."""
  img = np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8)
  good = tf.io.encode_jpeg(img).numpy()
  (root / "good.jpg").write_bytes(good)
  flipped = bytearray(good)
  i = len(flipped) // 2
  while 0xff in (flipped[i - 1], flipped[i], flipped[i + 1]):
    i += 1
  flipped[i] ^= 0x55
  flipped[i + 1] ^= 0x33
  (root / "flipped.jpg").write_bytes(bytes(flipped))   # bad scan data
  (root / "short.jpg").write_bytes(good[:len(good) // 2] + b"\xff\xd9")
  for name in ("flipped.jpg", "short.jpg"):
    sources.decode_file(str(root / name), 3)  # decodes


def test_image_folder_skips_jpegs_that_decode_with_libjpeg_warnings(tmp_path, capfd,
                                                                    caplog):
  """JPEGs that decode but make libjpeg print "Corrupt JPEG data: ..." are
  skipped and counted (training would print that line every epoch); the
  warning line names them with libjpeg's message, and libjpeg's own lines
  stay off the console."""
  root = tmp_path / "imgs"
  root.mkdir()
  _warning_jpegs(root)
  _write_png(str(root / "a.png"))
  capfd.readouterr()
  with caplog.at_level(logging.INFO):
    src = pipeline.open_source(_folder_cfg(root), 3)
  assert src.info == {"images": 2, "skipped": {sources.JPEG_WARNINGS: 2}}
  err = capfd.readouterr().err
  assert "Corrupt JPEG data" not in err, err
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warned) == 1, warned
  for name in ("flipped.jpg", "short.jpg"):
    assert f"{root / name} ({sources.JPEG_WARNINGS}: Corrupt JPEG data" in warned[0]
  assert len(_epoch(src)) == 2
  assert "Corrupt JPEG data" not in capfd.readouterr().err

# Image files written byte by byte (TensorFlow encodes only PNG and JPEG).

def _cmyk_jpeg(blocks):
  """A baseline JPEG of 8x8 blocks side by side, 4 components stored as
  Adobe (inverted) CMYK, each block one flat colour: blocks = [(c, m, y, k)]."""
  def segment(marker, payload):
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload
  width = 8 * len(blocks)
  out = b"\xff\xd8"
  out += segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))  # transform 0
  out += segment(0xDB, b"\x00" + b"\x01" * 64)  # all quantizers 1
  out += segment(0xC0, struct.pack(">BHHB", 8, 8, width, 4) + b"".join(
      bytes([i + 1, 0x11, 0]) for i in range(4)))
  # DC table: categories 0..11, 4-bit codes; AC table: EOB only, code "0".
  out += segment(0xC4, b"\x00" + bytes([0, 0, 0, 12] + [0] * 12) + bytes(range(12)))
  out += segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\x00")
  out += segment(0xDA, bytes([4]) + b"".join(bytes([i + 1, 0]) for i in range(4))
                 + bytes([0, 63, 0]))
  bits = []
  pred = [0] * 4
  for block in blocks:
    for comp, value in enumerate(block):
      dc = 8 * (value - 128)      # DC of a flat block after the level shift
      diff, pred[comp] = dc - pred[comp], dc
      size = abs(diff).bit_length()
      bits += [int(b) for b in format(size, "04b")]
      if size:
        v = diff if diff > 0 else diff + (1 << size) - 1
        bits += [int(b) for b in format(v, f"0{size}b")]
      bits.append(0)              # EOB
  bits += [1] * (-len(bits) % 8)
  data = bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))
  return out + data.replace(b"\xff", b"\xff\x00") + b"\xff\xd9"


def _bmp(rgb):
  """24-bit BMP of an [H, W, 3] uint8 array (bottom-up rows, BGR, 4-byte aligned)."""
  h, w, _ = rgb.shape
  row = w * 3 + (-w * 3) % 4
  pixels = b"".join(rgb[y, :, ::-1].tobytes() + b"\0" * (row - w * 3)
                    for y in range(h - 1, -1, -1))
  header = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
  return b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + header + pixels


def _gif(indices, palette):
  """GIF89a of [H, W] palette indices (< 256) and a [256, 3] palette. LZW with
  a clear code every 100 codes, so every code stays 9 bits wide."""
  h, w = indices.shape
  codes = []
  for i, px in enumerate(indices.ravel().tolist()):
    if i % 100 == 0:
      codes.append(256)
    codes.append(px)
  codes.append(257)
  acc, nbits, stream = 0, 0, bytearray()
  for code in codes:
    acc |= code << nbits
    nbits += 9
    while nbits >= 8:
      stream.append(acc & 0xFF)
      acc >>= 8
      nbits -= 8
  if nbits:
    stream.append(acc)
  blocks = b"".join(bytes([len(stream[i:i + 255])]) + bytes(stream[i:i + 255])
                    for i in range(0, len(stream), 255))
  return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0xF7, 0, 0) + palette.tobytes()
          + b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x08" + blocks
          + b"\x00\x3b")


def _luma(rgb):
  return np.round(rgb.astype(float) @ [0.2989, 0.587, 0.114])[..., None]


def _format_files(root):
  """Writes one file of every supported kind; -> {name: (expected uint8
  [H, W, 1 or 3] as stored, largest error allowed)}."""
  rng = np.random.default_rng(4)
  rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
  grey16 = rng.integers(0, 65536, (9, 7, 1), dtype=np.uint16)
  rgb16 = rng.integers(0, 65536, (6, 8, 3), dtype=np.uint16)
  rgba = rng.integers(0, 256, (7, 9, 4), dtype=np.uint8)
  yy, xx = np.mgrid[0:24, 0:32]
  smooth = np.stack([yy * 8, xx * 6, 255 - yy * 4 - xx * 3], -1).astype(np.uint8)
  palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
  indices = rng.integers(0, 256, (11, 13), dtype=np.uint8)
  files = {
      "rgb.PNG": (tf.io.encode_png(rgb), rgb, 0),
      "grey16.png": (tf.io.encode_png(grey16), (grey16 >> 8).astype(np.uint8), 0),
      "rgb16.png": (tf.io.encode_png(rgb16), (rgb16 >> 8).astype(np.uint8), 0),
      "rgba.png": (tf.io.encode_png(rgba), rgba[..., :3], 0),
      "grey.png": (tf.io.encode_png(rgb[..., :1]), rgb[..., :1], 0),
      "progressive.JPG": (tf.io.encode_jpeg(smooth, quality=95, progressive=True),
                          smooth, 12),
      "grey.jpeg": (tf.io.encode_jpeg(smooth[..., 1:2], quality=95),
                    smooth[..., 1:2], 12),
      # Adobe CMYK is stored inverted: RGB = K * (C, M, Y) / 255.
      "cmyk.jpg": (_cmyk_jpeg([(255, 128, 0, 255), (64, 200, 255, 128)]),
                   np.repeat(np.repeat(np.array([[[255, 128, 0], [32, 100, 128]]],
                                                np.uint8), 8, 1), 8, 0), 1),
      "palette.gif": (_gif(indices, palette), palette[indices], 0),
      "rgb.BMP": (_bmp(rgb[:, :9]), rgb[:, :9], 0),
  }
  out = {}
  for name, (data, want, tol) in files.items():
    (root / name).write_bytes(data.numpy() if hasattr(data, "numpy") else data)
    out[name] = (want, tol)
  return out


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_decodes_every_format(tmp_path, channels):
  root = tmp_path / "imgs"
  root.mkdir()
  files = _format_files(root)
  paths, _, _, skipped = sources.scan_image_folder(str(root), channels)
  assert skipped == {}
  assert sorted(os.path.basename(p) for p in paths) == sorted(files)
  for name, (want, tol) in files.items():
    got = sources.decode_file(str(root / name), channels).numpy()
    if want.shape[-1] != channels:
      want, tol = (np.repeat(want, 3, -1), tol) if channels == 3 else (_luma(want), tol + 1)
    assert got.dtype == np.uint8 and got.shape == want.shape, name
    assert np.abs(got.astype(int) - want).max() <= tol, name
  images = _epoch(pipeline.open_source(_folder_cfg(root), channels))
  assert images.shape == (len(files), 8, 8, channels) and images.dtype == np.float32


# ------------------------------------------------------------------- pp ops
DETERMINISTIC = ["resize(12)", "central_crop(0.85, size=10)", "to_rgb",
                 "to_gray", "value_range(-1, 1)",
                 "to_rgb|to_gray|resize(8, method='bicubic')|value_range(0, 2)"]
# Random ops pinned by their arguments: the whole 20x16 image (area 1, its
# aspect ratio), no brightness change, saturation times 1 (to within 1e-6).
PINNED_RANDOM = ["random_resized_crop(8, area=(1.0, 1.0), ratio=(16/20, 16/20))",
                 "color_jitter(brightness=0.0, saturation=(1.0, 1.0 + 1e-6))"
                 "|value_range(-1, 1)"]


def _unknown_size_dataset(images):
  """{"image": uint8 [None, None, C]}: heights and widths unknown until run
  time (as for decoded files), channels known."""
  channels = images[0].shape[-1]
  return tf.data.Dataset.from_generator(
      lambda: ({"image": im} for im in images),
      output_signature={"image": tf.TensorSpec([None, None, channels], tf.uint8)})


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("spec", DETERMINISTIC + PINNED_RANDOM)
def test_pp_ops_eager_equals_tf_data(spec, channels):
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (20, 16, channels), dtype=np.uint8)
  fn = pp.parse(spec)
  eager = fn({"image": tf.constant(img)})["image"].numpy()
  for ds in (tf.data.Dataset.from_tensors({"image": img}),
             _unknown_size_dataset([img])):
    ds = ds.map(fn)
    graph = next(iter(ds))["image"].numpy()
    np.testing.assert_allclose(eager, graph, atol=1e-5)
    assert ds.element_spec["image"].shape.is_compatible_with(eager.shape)
    assert ds.element_spec["image"].shape[-1] == eager.shape[-1]


# Every registered op, with the side of its square output (None: unchanged).
OP_SHAPES = [
    ("resize(12)", 12), ("resize((12, 12), method='area')", 12),
    ("random_resized_crop(16)", 16),
    ("random_resized_crop(96, area=(1/3, 1.0), ratio=(3/4, 4/3))", 96),
    ("central_crop(0.85, size=10)", 10), ("central_crop(0.5)", None),
    ("flip_lr", None), ("color_jitter", None),
    ("color_jitter(brightness=32/255, saturation=(0.5, 1.5))", None),
    ("to_rgb", None), ("to_gray", None), ("value_range(-1, 1)", None)]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("spec,size", OP_SHAPES)
def test_pp_ops_keep_static_shapes(spec, size, channels):
  """In tf.data, on images of unknown height and width: an op with a size
  gives [size, size, C], every op keeps C (to_rgb/to_gray set it)."""
  assert {n for s, _ in OP_SHAPES for n, _, _ in pp._calls(s)} == set(pp.known_ops())
  img = np.random.default_rng(2).integers(0, 256, (30, 22, channels), dtype=np.uint8)
  want_c = {"to_rgb": 3, "to_gray": 1}.get(spec, channels)
  ds = _unknown_size_dataset([img]).map(pp.parse(spec))
  shape = ds.element_spec["image"].shape
  assert shape.as_list() == [size, size, want_c]
  out = next(iter(ds))["image"]
  assert out.shape[-1] == want_c and shape.is_compatible_with(out.shape)


def test_pp_arguments_allow_numbers_and_arithmetic_only():
  spec = ("random_resized_crop(96, area=(1/3, 1.0), ratio=[3/4, 4/3])|"
          "value_range(-1, +2 - 1)|resize(2*4, method='area')|central_crop(-(-0.5))")
  assert pp._calls(spec) == [
      ("random_resized_crop", [96], {"area": (1 / 3, 1.0), "ratio": [3 / 4, 4 / 3]}),
      ("value_range", [-1, 1], {}), ("resize", [8], {"method": "area"}),
      ("central_crop", [0.5], {})]
  pp.parse(spec)
  for bad in ["resize(__import__('os').getpid())", "resize(2 ** 4)",
              "resize(size)", "resize('8' * 2)", "value_range(0, 1 / 0)",
              "resize(-True)", "resize(8j)", "resize(*[8])",
              "resize(**{'size': 8})", "resize(8, nope=1)", "resize(8"]:
    name = bad.split("(")[0]
    with pytest.raises(ValueError, match=f"preprocessing op '{name}"):
      pp.parse(f"flip_lr|{bad}")


def _config_pp_cases():
  """(module, field) for every shipped config with a get_config and each of
  its pp, pp_train and pp_eval strings (with the ``smoke`` argument)."""
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs")
  cases = []
  for sub in ("", "eval", "finetune"):
    for path in sorted(glob.glob(os.path.join(root, sub, "*.py"))):
      name = ".".join(filter(None, ["configs", sub,
                                    os.path.splitext(os.path.basename(path))[0]]))
      module = importlib.import_module(name)
      if hasattr(module, "get_config"):
        c = module.get_config("smoke")
        cases += [(name, f) for f in ("pp", "pp_train", "pp_eval") if f in c]
  return cases


CONFIG_PP = _config_pp_cases()


def _pretraining_resolution(c):
  """The config's resolution; for evaluation and fine-tuning configs (which
  run at the pretraining resolution) that of the pretraining config of the
  same dataset, else configs/imagenet.py's (VOC 2007 fine-tunes from it)."""
  if "resolution" in c:
    return c.resolution
  pretraining = [importlib.import_module(m).get_config("smoke")
                 for m, f in CONFIG_PP if f == "pp"]
  same = [p.resolution for p in pretraining if p.dataset.name == c.dataset.name]
  return same[0] if same else importlib.import_module(
      "configs.imagenet").get_config("smoke").resolution


def test_config_pp_cases_cover_the_shipped_configs():
  modules = {m for m, _ in CONFIG_PP}
  assert {"configs.stl10", "configs.imagenet", "configs.image_folder",
          "configs.fashion_mnist", "configs.eval.stl10_folds",
          "configs.finetune.voc07"} <= modules
  assert len(CONFIG_PP) >= 12


@pytest.mark.parametrize("module,field", CONFIG_PP)
def test_shipped_config_pp_gives_static_float_batches(module, field):
  """Each shipped pp string parses and, on images of several sizes, gives
  float32 batches of fully static shape [B, res, res, channels]."""
  c = importlib.import_module(module).get_config("smoke")
  res, channels = _pretraining_resolution(c), c.channels
  rng = np.random.default_rng(3)
  images = [rng.integers(0, 256, hw + (channels,), dtype=np.uint8)
            for hw in [(120, 90), (50, 70), (96, 96), (33, 41), (200, 150)]]
  ds = tf.data.Dataset.from_generator(
      lambda: ({"image": im, "label": np.int64(i)} for i, im in enumerate(images)),
      output_signature={"image": tf.TensorSpec([None, None, channels], tf.uint8),
                        "label": tf.TensorSpec([], tf.int64)})
  src = pipeline.Source(ds, True)
  batches = pipeline.make_dataset(src, c[field], 4, training=field != "pp_eval",
                                  shuffle_buffer=8)
  spec = batches.element_spec["image"]
  assert spec.dtype == tf.float32
  assert spec.shape.as_list() == [4, res, res, channels]
  batch = next(iter(batches))["image"]
  assert batch.shape == (4, res, res, channels) and batch.dtype == tf.float32
  assert -1.0 <= float(tf.reduce_min(batch)) <= float(tf.reduce_max(batch)) <= 1.0


@pytest.mark.parametrize("spec", ["random_resized_crop(16)", "flip_lr",
                                  "color_jitter", "random_resized_crop(8)|color_jitter"])
def test_random_pp_ops_shapes_and_range(spec):
  img = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
  fn = pp.parse(spec)
  eager = fn({"image": tf.constant(img)})["image"]
  graph = next(iter(tf.data.Dataset.from_tensors({"image": img}).map(fn)))["image"]
  assert eager.shape == graph.shape
  for out in (eager, graph):
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0


def test_flip_lr_flips_sometimes():
  img = np.arange(4 * 4, dtype=np.uint8).reshape(4, 4, 1)
  fn = pp.parse("flip_lr|value_range(0, 255)")
  outs = {tuple(fn({"image": tf.constant(img)})["image"].numpy().ravel().round())
          for _ in range(30)}
  assert outs == {tuple(img.ravel().astype(float)),
                  tuple(img[:, ::-1].ravel().astype(float))}


@pytest.mark.parametrize("spec", [s for s in DETERMINISTIC if pp.batchable(s)])
def test_batched_pp_equals_per_image(spec):
  """pp.BATCHABLE ops give the same images on a batch as image by image."""
  rng = np.random.default_rng(1)
  cin = 3 if "to_gray" in spec and "to_rgb" not in spec else 1
  imgs = rng.integers(0, 256, (5, 20, 16, cin), dtype=np.uint8)
  fn = pp.parse(spec)
  batched = fn({"image": tf.constant(imgs)})["image"].numpy()
  single = np.stack([fn({"image": tf.constant(im)})["image"].numpy() for im in imgs])
  np.testing.assert_allclose(batched, single, atol=1e-5)


def test_batched_flip_lr_draws_per_image():
  img = np.arange(4 * 4, dtype=np.uint8).reshape(4, 4, 1)
  out = pp.parse("flip_lr|value_range(0, 255)")(
      {"image": tf.constant(np.stack([img] * 64))})["image"].numpy().round()
  flipped = [bool((o == img[:, ::-1]).all()) for o in out]
  assert all(f or (o == img).all() for f, o in zip(flipped, out))
  assert 0 < sum(flipped) < 64


def test_pipeline_batches_before_pp_only_where_it_may(idx_dir):
  """Same-shaped images + batchable pp: pp runs once per batch, with the
  same result as per image; other pp strings keep the per-image map."""
  assert pp.batchable("resize(32)|flip_lr|value_range(-1, 1)")
  assert not pp.batchable("random_resized_crop(32)|value_range(-1, 1)")
  cfg = ml_collections.ConfigDict(dict(
      source="idx", path=idx_dir, split="test", auto_install=False,
      tfds_fallback=False, name="fashion_mnist"))
  src = pipeline.open_source(cfg, 1)
  spec = "resize(32)|value_range(-1, 1)"
  got = next(iter(pipeline.make_dataset(src, spec, 8, training=False)))
  fn = pp.parse(spec)
  want = [fn(f)["image"].numpy() for f in src.dataset.take(8)]
  np.testing.assert_allclose(got["image"].numpy(), np.stack(want), atol=1e-6)
  labels = [int(f["label"]) for f in src.dataset.take(8)]
  assert got["label"].numpy().tolist() == labels


def test_pp_parse_errors_name_the_op():
  with pytest.raises(ValueError, match="Unknown preprocessing op 'blur'"):
    pp.parse("resize(8)|blur(3)")


@pytest.mark.parametrize("bad,needle", [
    ("__import__('os')", "Unknown preprocessing op '__import__'"),
    ("resize(2**30)", "'resize'"),
    ("resize(-1)", "size=-1"),
    ("resize(0)", "size=0"),
    ("resize(99999*99999)", "size=9999800001"),
    ("resize(16.5)", "size=16.5"),
    ("random_resized_crop(16, area=(0.0, 0))", "area=(0.0, 0)"),
    ("random_resized_crop(16, area=(0.9, 0.5))", "area=(0.9, 0.5)"),
    ("random_resized_crop(16, ratio=(-1, 2))", "ratio=(-1, 2)"),
    ("central_crop(0)", "fraction=0"),
    ("color_jitter(saturation=(1, 0))", "saturation=(1, 0)"),
    ("value_range(1, -1)", "low=1"),
    ("resize(16, method='nope')", "method='nope'"),
    ("resize(16, **{})", "**kwargs"),
    ("resize(16)|to_rgb", "gives float32 images of shape [16, 16, 3], the config "
                          "needs float32 [16, 16, 1]"),
    ("resize(32)|value_range(-1, 1)", "shape [32, 32, 1]"),
    ("", "gives uint8 images"),
])
def test_config_validate_checks_pp(tiny, bad, needle):
  """config.validate (which runs before a workdir is written) rejects a pp
  string that does not parse, has out-of-range arguments, or does not give
  float32 [resolution, resolution, channels] images; fast, reading no data."""
  from artifact_spotting import config as config_lib  # pylint: disable=g-import-not-at-top
  c = tiny()
  c.pp = bad
  t0 = time.time()
  with pytest.raises(ValueError) as e:
    config_lib.validate(c)
  assert str(e.value).startswith(f"config.pp={bad!r}"), str(e.value)
  assert needle in str(e.value), str(e.value)
  assert time.time() - t0 < 2


@pytest.mark.parametrize("good", ["resize(16)|flip_lr|value_range(-1, 1)",
                                  "value_range(-1, 1)",
                                  "random_resized_crop((16, 16))|color_jitter|value_range()",
                                  "central_crop(0.5, 16, method='area')|value_range()",
                                  "to_rgb|to_gray|resize(16)"])
def test_config_validate_accepts_good_pp(tiny, good):
  from artifact_spotting import config as config_lib  # pylint: disable=g-import-not-at-top
  c = tiny()
  c.pp = good
  config_lib.validate(c)


@pytest.mark.slow
def test_bad_pp_fails_before_the_workdir_is_written(idx_dir, tmp_path):
  """pretrain with a bad pp: exit 2, one `error:` line, no config.json (so
  the corrected rerun is not refused as another run)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import test_workdir  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  cmd = test_workdir._pretrain(idx_dir, workdir, "--config.pp=resize(-1)")  # pylint: disable=protected-access
  proc = subprocess.run(cmd, cwd=test_workdir.ROOT, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  test_workdir._one_line_error(proc.returncode, proc.stderr, "config.pp='resize(-1)'",  # pylint: disable=protected-access
                               "size=-1")
  assert not os.path.exists(os.path.join(workdir, "config.json"))
