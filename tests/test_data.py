"""Sources (IDX, tfds under mock_data, image folders) and preprocessing ops."""

import gzip

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
                     match="apt-get install -y dataset-fashion-mnist"):
    sources.resolve_idx(cfg)


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


def test_image_folder_decode_errors_do_not_end_the_epoch(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  _write_png(str(root / "a.png"))
  _write_png(str(root / "b.png"))
  # Valid header and trailer, corrupt body: passes the scan, fails to decode.
  data = bytearray((root / "b.png").read_bytes())
  data[40:80] = b"\x00" * 40
  (root / "b.png").write_bytes(bytes(data))
  cfg = ml_collections.ConfigDict(dict(source="image_folder", path=str(root),
                                       name="mine", split="train"))
  src = pipeline.open_source(cfg, 3)
  ds = pipeline.make_dataset(src, "resize(8)", 1, training=False,
                             drop_remainder=False)
  assert len(list(ds)) == 1


def test_missing_image_folder_is_a_clear_error(tmp_path):
  with pytest.raises(sources.DataUnavailableError, match="not a directory"):
    sources.scan_image_folder(str(tmp_path / "nope"))


# ------------------------------------------------------------------- pp ops
DETERMINISTIC = ["resize(12)", "central_crop(0.85, size=10)", "to_rgb",
                 "to_gray", "value_range(-1, 1)",
                 "to_rgb|to_gray|resize(8, method='bicubic')|value_range(0, 2)"]


@pytest.mark.parametrize("spec", DETERMINISTIC)
def test_pp_ops_eager_equals_tf_data(spec):
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (20, 16, 3 if "to_gray" in spec and "to_rgb" not in spec else 1),
                     dtype=np.uint8)
  fn = pp.parse(spec)
  eager = fn({"image": tf.constant(img)})["image"].numpy()
  graph = next(iter(tf.data.Dataset.from_tensors({"image": img}).map(fn)))["image"].numpy()
  np.testing.assert_allclose(eager, graph, atol=1e-6)


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
