"""Shapes, gating, mask alignment, damage, history and serialization."""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from artifact_spotting import config as config_lib
from artifact_spotting.models.autoencoder import Decoder, Encoder, NoiseGenerator
from artifact_spotting.models.damage_repair import (Damage, RepairBlock,
                                                    sample_keep_mask, upsample_mask)
from artifact_spotting.models.blocks import LocalResponseNorm
from artifact_spotting.models.discriminator import Discriminator
from artifact_spotting.models.history import HistoryBuffer
from artifact_spotting.models.spotter import ArtifactSpotter
from conftest import tiny_config


def _randomize(layer, seed=0):
  rng = np.random.default_rng(seed)
  for w in layer.weights:
    if "moving_variance" in w.path:
      w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    elif w.dtype == "float32":
      w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))


@pytest.mark.parametrize("name,arg,res,grid,channels", [
    ("fashion_mnist", "smoke", 32, 4, 1),
    ("fashion_mnist", "smoke,grid=8", 32, 8, 1),
    ("stl10", "smoke", 96, 6, 3), ("imagenet", "smoke", 96, 6, 3),
    ("image_folder", "smoke", 96, 6, 3)])
@pytest.mark.slow
def test_output_shapes_per_config(name, arg, res, grid, channels):
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  c.discriminator.fc_units = 8
  model = ArtifactSpotter(**config_lib.spotter_kwargs(c))
  model.build()
  assert model.grid == (grid, grid)
  x = tf.random.uniform([2, res, res, channels], -1, 1)
  assert model.autoencode(x).shape == (2, res, res, channels)
  keep = sample_keep_mask([0, 1], 2, model.grid, 0.5)
  fake = model.make_fakes(x, keep)
  assert fake.shape == (2, res, res, channels)
  out = model(fake)
  assert out["logits"].shape == (2,)
  assert out["mask_logits"].shape == (2, grid, grid)
  for k in ("conv1", "conv2", "conv3", "conv4", "conv5"):
    assert out[k].shape[0] == 2 and out[k].shape.rank == 4
  assert out["conv5"].shape[1:3] == (grid, grid)
  assert len(model.repair_blocks) == len(c.autoencoder.widths) + 1


def test_repair_block_gating_leaves_kept_cells_untouched():
  block = RepairBlock(6, 5, gated=True)
  h = tf.random.normal([3, 8, 8, 6])
  keep = sample_keep_mask([1, 2], 3, (4, 4), 0.5)
  block(h, keep, training=False)
  _randomize(block)
  out = block(h, keep, training=False)
  up = upsample_mask(keep, (8, 8)).numpy()
  diff = np.abs(out.numpy() - h.numpy())
  assert np.all(diff[np.broadcast_to(up, diff.shape) == 1] == 0)
  assert diff[np.broadcast_to(up, diff.shape) == 0].max() > 1e-3
  ungated = RepairBlock(6, 5, gated=False)
  ungated(h, keep)
  _randomize(ungated)
  diff = np.abs(ungated(h, keep).numpy() - h.numpy())
  assert diff[np.broadcast_to(up, diff.shape) == 1].max() > 1e-3


def test_repair_block_output_init():
  h = tf.random.normal([2, 8, 8, 6])
  keep = sample_keep_mask([1, 2], 2, (4, 4), 0.5)
  fresh = RepairBlock(6, 5, gated=True)
  np.testing.assert_array_equal(fresh(h, keep).numpy(), h.numpy())  # identity
  glorot = RepairBlock(6, 5, gated=True, out_initializer="glorot_uniform")
  assert np.abs(glorot(h, keep).numpy() - h.numpy()).max() > 1e-3
  again = RepairBlock.from_config(glorot.get_config())
  assert again.out_initializer == "glorot_uniform"
  c = tiny_config(**{"spotter.repair_init": "glorot_uniform"})
  model = ArtifactSpotter(**config_lib.spotter_kwargs(c))
  assert model.get_config()["repair_init"] == "glorot_uniform"
  assert all(b.out_initializer == "glorot_uniform" for b in model.repair_blocks)
  with pytest.raises(ValueError, match="repair_init"):
    config_lib.validate(tiny_config(**{"spotter.repair_init": "ones"}), pp=False)


def test_gating_at_every_decoder_stage_of_the_model():
  model = ArtifactSpotter(**config_lib.spotter_kwargs(tiny_config()))
  model.build()
  for block in model.repair_blocks:
    _randomize(block, seed=3)
  x = tf.random.uniform([2, 16, 16, 1], -1, 1)
  keep = sample_keep_mask([5, 6], 2, model.grid, 0.5)
  phi = model.damage(model.encoder(x), keep)
  repair = model.repair_fn(keep, training=False)
  seen = []

  def spy(i, h):
    out = repair(i, h)
    seen.append((h.numpy(), out.numpy()))
    return out
  model.decoder(phi, stage_fn=spy)
  assert len(seen) == len(model.repair_blocks) == 3
  for before, after in seen:
    up = np.broadcast_to(upsample_mask(keep, before.shape[1:3]).numpy(), before.shape)
    assert np.array_equal(before[up == 1], after[up == 1])
    assert np.abs(before[up == 0] - after[up == 0]).max() > 1e-3


def test_fashion_mnist_unknown_grid_is_refused():
  fashion_mnist = importlib.import_module("configs.fashion_mnist")
  with pytest.raises(ValueError, match="grid=6"):
    fashion_mnist.get_config("grid=6")


@pytest.mark.parametrize("arg,match", [
    ("tiny,grid=8", "tiny has a 4x4 grid only"),
    ("abaltion=k", r"unknown argument\(s\) \['abaltion'\]"),
])
def test_fashion_mnist_refuses_arguments_it_would_ignore(arg, match):
  fashion_mnist = importlib.import_module("configs.fashion_mnist")
  with pytest.raises(ValueError, match=match):
    fashion_mnist.get_config(arg)
  assert fashion_mnist.get_config("tiny,ablation=k").spotter.repair is False


def test_fashion_mnist_width_scales_the_discriminator_only():
  fashion_mnist = importlib.import_module("configs.fashion_mnist")
  base = fashion_mnist.get_config("grid=8")
  wide = fashion_mnist.get_config("grid=8,width=2,ablation=k")
  assert [c["filters"] * 2 for c in base.discriminator.convs] == [
      c["filters"] for c in wide.discriminator.convs]
  assert [dict(c, filters=0) for c in base.discriminator.convs] == [
      dict(c, filters=0) for c in wide.discriminator.convs]
  assert wide.discriminator.fc_units == 2 * base.discriminator.fc_units
  assert wide.autoencoder.to_dict() == base.autoencoder.to_dict()
  assert wide.spotter.repair is False
  half = fashion_mnist.get_config("tiny,width=0.5")
  assert [c["filters"] for c in half.discriminator.convs] == [4] * 5
  model = ArtifactSpotter(**config_lib.spotter_kwargs(half))
  model.build()
  out = model(tf.zeros([1, 16, 16, 1]))
  assert out["conv5"].shape[-1] == 4
  for bad in ("width=0", "width=-1", "width=wide"):
    with pytest.raises(ValueError, match=r"configs/fashion_mnist.py: width=.* must "
                       r"be a positive number"):
      fashion_mnist.get_config(bad)


@pytest.mark.parametrize("module,documented", [
    ("configs.stl10", "smoke,ablation=k"),
    ("configs.imagenet", "smoke,ablation=k"),
    ("configs.image_folder", "smoke,res=64"),
    ("configs.eval.fashion_mnist_folds", "smoke,folds_only"),
    ("configs.eval.stl10_folds", "smoke,full_only"),
    ("configs.finetune.fashion_mnist", "smoke,supervised,epochs=3"),
    ("configs.finetune.stl10_folds", "smoke,fold=3"),
    ("configs.finetune.voc07", "smoke,res=64"),
])
def test_every_config_refuses_arguments_it_would_ignore(module, documented):
  """Each config takes its documented arguments and names itself and the
  typo in the error otherwise (a config built on another one included:
  image_folder's ``res`` is not stl10's)."""
  get_config = importlib.import_module(module).get_config
  get_config(documented)
  where = module.replace(".", "/") + ".py"
  with pytest.raises(ValueError, match=rf"^{where}: unknown argument\(s\) \['smok'\]"):
    get_config("smok")
  if module not in ("configs.image_folder", "configs.finetune.voc07"):
    with pytest.raises(ValueError, match=r"\['res'\]"):
      get_config("res=64")


def test_mask_cells_line_up_with_image_patches():
  """Bottleneck cell (i, j) sees the f x f image patch (i, j) (plus the 3x3
  stem's one-pixel border), and upsampling puts the mask on that patch."""
  enc = Encoder(4, (8, 8), kernel_size=2)
  x = tf.random.uniform([1, 16, 16, 1])
  enc(x)
  _randomize(enc)
  f = 4
  for i, j in [(0, 0), (1, 2), (3, 3)]:
    with tf.GradientTape() as tape:
      tape.watch(x)
      phi = enc(x, training=False)
      y = tf.reduce_sum(phi[0, i, j, :] ** 2)
    g = np.abs(tape.gradient(y, x).numpy()[0, :, :, 0]) > 0
    rows, cols = np.nonzero(g)
    assert rows.min() >= i * f - 1 and rows.max() <= (i + 1) * f
    assert cols.min() >= j * f - 1 and cols.max() <= (j + 1) * f
    assert g[i * f:(i + 1) * f, j * f:(j + 1) * f].all()
    keep = np.ones([1, 4, 4, 1], np.float32)
    keep[0, i, j, 0] = 0
    up = upsample_mask(tf.constant(keep), (16, 16)).numpy()[0, :, :, 0]
    expected = np.ones([16, 16])
    expected[i * f:(i + 1) * f, j * f:(j + 1) * f] = 0
    assert np.array_equal(up, expected)


def test_damage_fill_modes():
  phi = tf.random.normal([2, 4, 4, 3])
  keep = sample_keep_mask([7, 8], 2, (4, 4), 0.5)
  k = keep.numpy()
  zeros = Damage("zeros")(phi, keep).numpy()
  assert np.array_equal(zeros, phi.numpy() * k)
  avg = Damage("average")(phi, keep).numpy()
  assert np.allclose(avg[np.broadcast_to(k, avg.shape) == 1],
                     phi.numpy()[np.broadcast_to(k, avg.shape) == 1])
  p = phi.numpy()
  for b, i, j in zip(*np.nonzero(k[..., 0] == 0)):
    i0, i1, j0, j1 = max(i - 1, 0), min(i + 2, 4), max(j - 1, 0), min(j + 2, 4)
    w = k[b, i0:i1, j0:j1, 0]
    expect = (p[b, i0:i1, j0:j1] * w[..., None]).sum((0, 1)) / max(w.sum(), 1)
    np.testing.assert_allclose(avg[b, i, j], expect, rtol=1e-5, atol=1e-6)
  # The paper's damage: a dropped cell is the 3x3 average of the clean
  # features, its own included (border cells average the cells inside).
  blur = Damage("blur")(phi, keep).numpy()
  for b, i, j in zip(*np.nonzero(k[..., 0] == 0)):
    i0, i1, j0, j1 = max(i - 1, 0), min(i + 2, 4), max(j - 1, 0), min(j + 2, 4)
    np.testing.assert_allclose(blur[b, i, j], p[b, i0:i1, j0:j1].mean((0, 1)),
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(blur * k, p * k)
  # Unlike "average", an isolated dropped cell keeps its own content.
  one = np.ones([1, 4, 4, 1], np.float32)
  one[0, 1, 1, 0] = 0
  ramp = np.arange(16, dtype=np.float32).reshape([1, 4, 4, 1])
  assert Damage("blur")(ramp, one).numpy()[0, 1, 1, 0] == ramp[0, :3, :3].mean()
  with pytest.raises(ValueError, match="fill"):
    Damage("noise")


def test_keep_mask_rate_and_replica_slices():
  full = sample_keep_mask([3, 4], 512, (6, 6), 0.7).numpy()
  assert abs(1 - full.mean() - 0.7) < 0.02
  part = sample_keep_mask([3, 4], 128, (6, 6), 0.7, offset=256, total_batch=512)
  assert np.array_equal(part.numpy(), full[256:384])


def test_history_buffer_fills_in_order_then_replaces():
  hb = HistoryBuffer(4, (2, 2, 1), (1, 1))
  imgs = tf.reshape(tf.range(8, dtype=tf.float32), [8, 1, 1, 1]) * tf.ones([8, 2, 2, 1])
  masks = tf.ones([8, 1, 1, 1])
  fallback = -tf.ones([3, 2, 2, 1])
  out, _ = hb.sample([0, 0], 2, 0, 2, fallback, masks)
  assert np.all(out.numpy() == -1)  # empty: current fakes are used
  hb.update([0, 1], imgs[:2], masks[:2])
  hb.update([0, 2], imgs[2:4], masks[2:4])
  assert np.array_equal(hb.images.numpy()[:, 0, 0, 0], [0, 1, 2, 3])
  hb.update([0, 3], imgs[4:6], masks[4:6])
  stored = sorted(hb.images.numpy()[:, 0, 0, 0].tolist())
  assert 4 in stored and 5 in stored and len(set(stored)) == 4
  out, _ = hb.sample([1, 1], 3, 0, 3, fallback, masks)
  assert set(out.numpy()[:, 0, 0, 0].tolist()) <= set(stored)


def _roundtrip(layer, *inputs):
  cfg = layer.get_config()
  clone = layer.__class__.from_config(cfg)
  assert clone.get_config() == cfg
  ser = keras.saving.serialize_keras_object(layer)
  clone2 = keras.saving.deserialize_keras_object(ser)
  assert type(clone2) is type(layer)
  if inputs:
    clone(*inputs)
    clone.set_weights(layer.get_weights())
    a, b = layer(*inputs), clone(*inputs)
    for u, v in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
      np.testing.assert_allclose(u.numpy(), v.numpy(), atol=1e-6)


def test_serialization_round_trips():
  x = tf.random.uniform([2, 16, 16, 1])
  enc = Encoder(4, (8, 8), 2)
  enc(x)
  _roundtrip(enc, x)
  dec = Decoder((8, 4), 1)
  z = tf.random.normal([2, 4, 4, 8])
  dec(z)
  _roundtrip(dec, z)
  keep = sample_keep_mask([0, 0], 2, (4, 4), 0.5)
  _roundtrip(Damage("average"), z, keep)
  rb = RepairBlock(8, 4, gated=False)
  rb(z, keep)
  _roundtrip(rb, z, keep)
  c = tiny_config()
  disc = Discriminator(**config_lib.discriminator_kwargs(c))
  disc(x)
  _roundtrip(disc, x)
  _roundtrip(LocalResponseNorm(), tf.random.normal([1, 2, 2, 8]))
  g = NoiseGenerator(6, (4, 4), 8, (8, 4), 1)
  n = tf.random.normal([2, 6])
  g(n)
  _roundtrip(g, n)
  _roundtrip(HistoryBuffer(4, (16, 16, 1), (4, 4)))
  model = ArtifactSpotter(**config_lib.spotter_kwargs(c))
  model.build()
  clone = ArtifactSpotter.from_config(model.get_config())
  clone.build()
  assert clone.get_config() == model.get_config()
  clone.set_weights(model.get_weights())
  np.testing.assert_allclose(clone(x)["logits"].numpy(), model(x)["logits"].numpy(),
                             atol=1e-6)



def test_the_config_holds_every_model_default():
  """ArtifactSpotter has no defaults of its own (config.py is the one place
  they live) and config.spotter_kwargs gives every argument it takes; so do
  the layers for the fields the config sets."""
  import inspect  # pylint: disable=g-import-not-at-top
  params = inspect.signature(ArtifactSpotter.__init__).parameters
  named = {k for k, p in params.items()
           if p.kind == p.KEYWORD_ONLY}
  assert all(params[k].default is inspect.Parameter.empty for k in named)
  assert set(config_lib.spotter_kwargs(tiny_config())) == named
  disc = inspect.signature(Discriminator.__init__).parameters
  assert set(config_lib.discriminator_kwargs(tiny_config())) == {
      k for k, p in disc.items() if p.default is inspect.Parameter.empty
      and p.kind not in (p.VAR_KEYWORD,) and k != "self"}
  # The model's config is its arguments, and builds the same model.
  kwargs = config_lib.spotter_kwargs(tiny_config())
  model = ArtifactSpotter(**kwargs)
  stored = model.get_config()
  assert set(named) <= set(stored)
  assert stored["resolution"] == [16, 16] and stored["probe_classes"] == 10
  assert ArtifactSpotter.from_config(stored).get_config() == stored
  no_probe = config_lib.spotter_kwargs(tiny_config(), probe=False)
  assert no_probe["probe_classes"] == 0
  assert ArtifactSpotter(**no_probe).probe is None


def test_tiny_is_one_definition():
  """configs/fashion_mnist.py:tiny and config.tiny_config are the same tiny
  model (config.make_tiny); they differ only in what is listed here."""
  fashion_mnist = importlib.import_module("configs.fashion_mnist")
  a = fashion_mnist.get_config("tiny").to_dict()
  b = tiny_config().to_dict()
  assert a["resolution"] == b["resolution"] == 16
  for key in ("stem_filters", "widths", "decoder_widths", "steps", "batch_size"):
    assert a["autoencoder"][key] == b["autoencoder"][key], key
  for key in ("steps", "batch_size", "history_size"):
    assert a["spotter"][key] == b["spotter"][key], key
  strip = lambda convs: [dict(c, norm=None) for c in convs]
  assert strip(a["discriminator"]["convs"]) == strip(b["discriminator"]["convs"])
  assert [c["norm"] for c in b["discriminator"]["convs"]] == [
      "batch", "batch", "lrn", "none", "batch"]  # every norm, for the tests
  for key in ("log_every", "summary_every", "checkpoint_every", "montage_size"):
    assert a["train"][key] == b["train"][key], key

def test_bad_geometry_fails_with_field_names():
  c = tiny_config()
  c.resolution = 18
  with pytest.raises(ValueError, match="resolution"):
    config_lib.validate(c)
  kwargs = config_lib.spotter_kwargs(tiny_config())
  kwargs["resolution"] = (18, 18)
  with pytest.raises(ValueError, match="encoder_widths"):
    ArtifactSpotter(**kwargs)
  kwargs = config_lib.spotter_kwargs(tiny_config())
  kwargs["discriminator"]["convs"][2]["pool"] = True
  with pytest.raises(ValueError, match="discriminator.convs"):
    ArtifactSpotter(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(config_lib.ABLATIONS))
def test_every_ablation_row_builds_and_steps(row):
  c = tiny_config()
  config_lib.apply_ablation(c, row)
  model = ArtifactSpotter(**config_lib.spotter_kwargs(c))
  model.build()
  opts = [keras.optimizers.Adam(1e-3) for _ in range(3)]
  x = {"image": tf.random.uniform([4, 16, 16, 1], -1, 1),
       "label": tf.constant([0, 1, 2, 3], tf.int64)}
  before = [v.numpy().copy() for v in model.discriminator_variables]
  m = model.adversarial_step(x, opts[0], opts[1], opts[2])
  assert all(np.isfinite(float(v)) for v in m.values())
  after = model.discriminator_variables
  assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, after))
  if row == "k":
    assert model.repair_variables == []
  if row == "l":
    assert model.generator is not None and not model.repair_blocks
  if row == "b":
    assert len({b.filters for b in model.repair_blocks}) == 1


@pytest.mark.parametrize("row", ["full", "l"])
def test_checkpoint_holds_every_weight(tmp_path, row):
  """TF checkpoints must see every variable, BN statistics included (layers
  kept in Python lists would be silently left out)."""
  c = tiny_config()
  config_lib.apply_ablation(c, row)
  model = ArtifactSpotter(**config_lib.spotter_kwargs(c))
  model.build()
  for w in model.weights:
    if w.dtype == "float32":
      w.assign(tf.random.normal(w.shape))
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  saved = [n for n, _ in tf.train.list_variables(path) if n.startswith("model/")]
  assert len(saved) == len(model.weights)
  clone = ArtifactSpotter(**config_lib.spotter_kwargs(c))
  clone.build()
  tf.train.Checkpoint(model=clone).read(path).assert_existing_objects_matched()
  for a, b in zip(model.weights, clone.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("kernel,cin,stride,fast", [
    (3, 16, 1, "same"), (5, 8, 1, "same"), (3, 3, 1, "few"), (5, 1, 1, "few"),
    (2, 16, 2, None), (3, 16, 2, None), (3, 1, 2, None)])
def test_conv_fast_input_gradient_matches_keras(kernel, cin, stride, fast, onednn,
                                                monkeypatch):
  """blocks.Conv2D: same forward and gradients as keras' Conv2D, and its own
  input gradient is taken exactly where it applies (few-channel inputs only
  with oneDNN, whose kernel for them is the slow one)."""
  from artifact_spotting.models import blocks
  monkeypatch.setattr(blocks, "onednn_enabled", lambda: onednn)
  if fast == "few" and not onednn:
    fast = None
  x = tf.random.stateless_normal([4, 12, 12, cin], seed=(1, 2))
  ours = blocks.Conv2D(6, kernel, strides=stride, padding="same")
  ref = keras.layers.Conv2D(6, kernel, strides=stride, padding="same")
  ours.build(x.shape)
  ref.build(x.shape)
  ref.set_weights(ours.get_weights())
  want_fn = {"same": blocks.conv2d_same, "few": blocks.conv2d_few_channels,
             None: None}[fast]
  assert ours._fast_grad(x) is want_fn
  dy = tf.random.stateless_normal(ours.compute_output_shape(x.shape), seed=(3, 4))
  grads = []
  for layer in (ours, ref):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x)
      loss = tf.reduce_sum(y * dy)
    grads.append([y] + tape.gradient(loss, [x] + layer.trainable_variables))
  for a, b in zip(*grads):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
  graph = tf.function(lambda t: tf.gradients(tf.reduce_sum(ours(t) * dy), t)
                      ).get_concrete_function(x).graph
  types = {op.type for op in graph.get_operations()}
  assert ("Conv2DBackpropInput" not in types) == (fast is not None), types


def _grads_of(layer, x, dy, **kw):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, **kw)
    loss = tf.reduce_sum(tf.cast(y, tf.float32) * dy)
  return [y] + tape.gradient(loss, [x] + layer.trainable_variables)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_matches_keras(dtype):
  """blocks.BatchNorm trains through FusedBatchNormV3 with keras' results:
  outputs, gradients (incl. through the batch statistics) and moving stats."""
  from artifact_spotting.models import blocks
  x = tf.random.stateless_normal([6, 5, 5, 8], seed=(5, 6)) * 3 + 1
  ours = blocks.BatchNorm(momentum=0.9, epsilon=1e-5, synchronized=True, dtype=dtype)
  ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                        synchronized=True, dtype=dtype)
  for layer in (ours, ref):
    layer.build(x.shape)
  _randomize(ours, 7)
  ref.set_weights(ours.get_weights())
  xin = tf.cast(x, ours.compute_dtype)
  dy = tf.random.stateless_normal(x.shape, seed=(8, 9))
  assert ours._fused(xin, True, None) and not ours._fused(xin, False, None)
  tol = 1e-4 if dtype == "float32" else 3e-2
  got, want = _grads_of(ours, xin, dy, training=True), _grads_of(ref, xin, dy, training=True)
  for a, b in zip(got, want):
    np.testing.assert_allclose(tf.cast(a, tf.float32).numpy(), tf.cast(b, tf.float32).numpy(),
                               rtol=tol, atol=tol)
  for a, b in zip(ours.non_trainable_weights, ref.non_trainable_weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
  # Inference: the parent's code, same result.
  np.testing.assert_allclose(tf.cast(ours(xin), tf.float32).numpy(),
                             tf.cast(ref(xin), tf.float32).numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32"])
def test_argmax_max_pool_matches_keras(dtype, monkeypatch):
  """Without oneDNN, blocks.MaxPool trains through the argmax pool (keras'
  results); with oneDNN it is keras' pool (oneDNN's is the faster one)."""
  from artifact_spotting.models import blocks
  monkeypatch.setattr(blocks, "onednn_enabled", lambda: True)
  pool = blocks.MaxPool(3, 2, padding="same", dtype=dtype)
  graph = tf.function(lambda t: tf.gradients(pool(t, training=True), t)
                      ).get_concrete_function(tf.TensorSpec([3, 8, 8, 4])).graph
  assert "MaxPoolGradWithArgmax" not in {op.type for op in graph.get_operations()}
  monkeypatch.setattr(blocks, "onednn_enabled", lambda: False)
  x = tf.cast(tf.random.stateless_normal([3, 8, 8, 4], seed=(1, 1)), dtype)
  dy = tf.random.stateless_normal([3, 4, 4, 4], seed=(2, 2))
  ours = blocks.MaxPool(3, 2, padding="same", dtype=dtype)
  ref = keras.layers.MaxPooling2D(3, 2, padding="same", dtype=dtype)
  for a, b in zip(_grads_of(ours, x, dy, training=True), _grads_of(ref, x, dy)):
    np.testing.assert_array_equal(tf.cast(a, tf.float32).numpy(),
                                  tf.cast(b, tf.float32).numpy())
  graph = tf.function(lambda t: tf.gradients(ours(t, training=True), t)
                      ).get_concrete_function(x).graph
  types = {op.type for op in graph.get_operations()}
  assert "MaxPoolGradWithArgmax" in types and "MaxPoolGrad" not in types
  # Under XLA (no MaxPoolWithArgmax there) it is the plain pool.
  xla = tf.function(lambda t: tf.gradients(ours(t, training=True), t)[0],
                    jit_compile=True)
  np.testing.assert_array_equal(
      tf.cast(xla(x), tf.float32).numpy(),
      tf.cast(_grads_of(ref, x, tf.ones_like(dy))[1], tf.float32).numpy())


def test_discriminator_views_match_their_concatenation():
  """C on a list of views == C on their concatenation (one batch norm over
  all rows), gradients included. That a view nobody differentiates gets no
  conv1 input gradient is a FLOP count, tested with the benchmark code
  (test_discriminator_views_skip_the_input_gradient_of_undifferentiated_views)."""
  disc = Discriminator(config_lib.small_alexnet(), fc_units=16, dropout=0.0,
                       fc_norm=True)
  disc.build((None, 32, 32, 1))
  _randomize(disc)
  real, fake = (tf.random.stateless_normal([n, 32, 32, 1], seed=(n, 1)) for n in (3, 2))

  def loss_and_grad(views):
    with tf.GradientTape() as tape:
      tape.watch(fake)
      out = disc([real, fake] if views else tf.concat([real, fake], 0), training=True)
      loss = tf.reduce_sum(out["logits"][3:]) + tf.reduce_sum(out["mask_logits"])
    return out, tape.gradient(loss, fake)

  (a, ga), (b, gb) = loss_and_grad(True), loss_and_grad(False)
  for k in a:
    np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=1e-4, atol=1e-5)
