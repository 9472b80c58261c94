"""FusedAdam: keras Adam's results, slots and checkpoints, one kernel per variable.

Under MirroredStrategy it is covered by tests/test_train.py
(test_mirrored_step_matches_single_device trains with it)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from artifact_spotting.optimizers import FusedAdam
from artifact_spotting.schedules import LinearDecay


def _run(make_opt, strategy=None, steps=6):
  strategy = strategy or tf.distribute.get_strategy()
  rng = np.random.default_rng(0)
  init = [rng.normal(size=s).astype("float32") for s in ((3, 3, 2, 4), (4,), (5, 7))]
  grads = [[rng.normal(size=w.shape).astype("float32") for w in init] for _ in range(steps)]
  with strategy.scope():
    variables = [keras.Variable(w) for w in init]
    opt = make_opt()
    opt.build(variables)

  @tf.function
  def step(g):
    def replica(g):
      opt.apply_gradients(zip(g, variables))
    strategy.run(replica, args=(g,))
  for g in grads:
    step([tf.constant(x) for x in g])
  return [v.numpy() for v in variables], opt


def _adam(cls, **kw):
  return lambda: cls(learning_rate=LinearDecay(1e-2, 4, 0.1), beta_1=0.5,
                     beta_2=0.999, epsilon=1e-5, **kw)


def test_fused_adam_matches_keras_adam():
  want, ref = _run(_adam(keras.optimizers.Adam))
  got, ours = _run(_adam(FusedAdam))
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(ours.variables, ref.variables):  # moments and step alike
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_fused_adam_uses_one_kernel_per_variable():
  opt = FusedAdam(1e-3)
  var = keras.Variable(np.zeros((4, 4), np.float32))
  opt.build([var])
  graph = tf.function(lambda g: opt.apply_gradients([(g, var)])).get_concrete_function(
      tf.TensorSpec([4, 4])).graph
  types = [op.type for op in graph.get_operations()]
  assert types.count("ResourceApplyAdam") == 1
  assert "AssignAddVariableOp" not in types[:types.index("ResourceApplyAdam")]
  amsgrad = FusedAdam(1e-3, amsgrad=True)  # not fused: keras' formula
  amsgrad.build([var])
  graph = tf.function(lambda g: amsgrad.apply_gradients([(g, var)])).get_concrete_function(
      tf.TensorSpec([4, 4])).graph
  assert "ResourceApplyAdam" not in {op.type for op in graph.get_operations()}


def test_fused_adam_reads_keras_adam_checkpoints(tmp_path):
  _, ref = _run(_adam(keras.optimizers.Adam))
  path = tf.train.Checkpoint(opt=ref).write(str(tmp_path / "ckpt"))
  fresh = _adam(FusedAdam)()
  fresh.build([keras.Variable(np.zeros(s, np.float32))
               for s in ((3, 3, 2, 4), (4,), (5, 7))])
  tf.train.Checkpoint(opt=fresh).read(path).assert_consumed()
  for a, b in zip(fresh.variables, ref.variables):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fused_adam_serializes():
  opt = FusedAdam(3e-4, beta_1=0.5, epsilon=1e-5, name="c_optimizer")
  back = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
  assert type(back) is FusedAdam
  assert back.get_config() == opt.get_config()


@pytest.mark.parametrize("cls", [keras.optimizers.Adam, FusedAdam])
def test_sparse_gradients_fall_back(cls):
  var = keras.Variable(np.ones((5, 2), np.float32))
  opt = cls(0.1)
  opt.build([var])
  grad = tf.IndexedSlices(tf.ones([1, 2]), tf.constant([3]), tf.constant([5, 2]))
  opt.apply_gradients([(grad, var)])
  changed = np.any(var.numpy() != 1.0, axis=1)
  assert changed.tolist() == [False, False, False, True, False]
