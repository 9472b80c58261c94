"""models/blocks.py's layers keep their serialized names, and the kernels
they dispatch to live in models/kernels.py (numerics: tests/test_models.py)."""

import keras
import numpy as np
import tensorflow as tf

from artifact_spotting.models import blocks, kernels


def test_layers_keep_their_registered_names_and_module():
  """Saved .keras files name these layers by package>class (and module);
  both must stay what older files hold."""
  for cls in (blocks.Conv2D, blocks.BatchNorm, blocks.MaxPool,
              blocks.ConvBlock, blocks.LocalResponseNorm):
    assert keras.saving.get_registered_name(cls) == f"artifact_spotting>{cls.__name__}"
    assert cls.__module__ == "artifact_spotting.models.blocks"
    assert keras.saving.get_registered_object(
        f"artifact_spotting>{cls.__name__}") is cls


def test_blocks_dispatches_to_the_kernels_module():
  assert blocks.conv2d_same is kernels.conv2d_same
  assert blocks.conv2d_few_channels is kernels.conv2d_few_channels
  conv = blocks.Conv2D(4, 3, padding="same")
  x = tf.zeros([1, 6, 6, blocks.FAST_INPUT_GRAD_MIN_CHANNELS])
  assert conv._fast_grad(x) is kernels.conv2d_same  # pylint: disable=protected-access


def test_convblock_keras_file_round_trip(tmp_path):
  keras.utils.set_random_seed(0)
  inp = keras.Input((8, 8, 3))
  h = blocks.ConvBlock(8, 3, norm="batch", name="cb")(inp)
  h = blocks.MaxPool(3, 2, padding="same", name="mp")(h)
  h = blocks.ConvBlock(8, 3, norm="lrn", name="lrn")(h)
  model = keras.Model(inp, h)
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert [type(l) for l in loaded.layers[1:]] == [blocks.ConvBlock, blocks.MaxPool,
                                                 blocks.ConvBlock]
  x = np.random.RandomState(0).randn(2, 8, 8, 3).astype("float32")
  np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
