"""The players' optimizers: Adam with a fused per-variable update, its
learning-rate schedule, and the optimizer the trainer makes for each player."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from artifact_spotting import precision as precision_lib
from artifact_spotting.models.blocks import PACKAGE
from artifact_spotting.schedules import LinearDecay


@keras.saving.register_keras_serializable(PACKAGE)
class FusedAdam(keras.optimizers.Adam):
  """keras Adam whose update of each variable is one TensorFlow kernel.

  keras' ``Adam.update_step`` builds about fifteen small ops per variable
  (casts, powers, the moment updates, the step), each a kernel launch and a
  pass over the variable's memory; TensorFlow's ``ResourceApplyAdam`` does the
  same update (m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, var -= lr
  sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps), keras' formula) in one
  kernel and one pass. Same variables, slots, config and checkpoints as
  ``keras.optimizers.Adam``; falls back to it for amsgrad, sparse gradients
  and other backends.
  """

  def update_step(self, gradient, variable, learning_rate):
    if (self.amsgrad or keras.backend.backend() != "tensorflow"
        or isinstance(gradient, tf.IndexedSlices)):
      return super().update_step(gradient, variable, learning_rate)
    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
    index = self._get_variable_index(variable)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=self._momentums[index].handle,
        v=self._velocities[index].handle,
        beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
        lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
        epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype),
        use_locking=False)


def make_adam(lr: float, steps: int, opt_cfg, name: str, precision="float32"):
  """FusedAdam with the learning rate decaying linearly from ``lr`` to
  ``lr * end_lr_ratio`` over ``decay_fraction`` of ``steps``, then constant;
  with loss scaling for mixed_float16."""
  # Our LinearDecay, not keras' PolynomialDecay(power=1): the same line, but
  # keras computes (lr - end) * (1 - t) + end where we compute
  # lr * (1 - t * (1 - ratio)), and in float32 the two differ by up to tens
  # of ulps at most steps of the schedule (tests/test_train.py compares
  # them), which would change every run's numerics.
  schedule = LinearDecay(lr, int(math.ceil(opt_cfg.decay_fraction * steps)),
                         opt_cfg.end_lr_ratio)
  adam = FusedAdam(learning_rate=schedule, beta_1=opt_cfg.beta1,
                   beta_2=opt_cfg.beta2, epsilon=opt_cfg.epsilon, name=name)
  if precision == "mixed_float16":  # float16 gradients need loss scaling
    return keras.optimizers.LossScaleOptimizer(adam, name=name)
  return adam


def player_optimizer(config, name: str):
  """The optimizer the trainer makes for ``name`` (ae_optimizer: the
  autoencoder; c_optimizer / r_optimizer: the discriminator / the repair
  network) from ``config``, unbuilt (mixed_float16: wrapped in a
  loss-scale optimizer)."""
  lr, steps = {"ae_optimizer": (config.autoencoder.lr, config.autoencoder.steps),
               "c_optimizer": (config.spotter.lr, config.spotter.steps),
               "r_optimizer": (config.spotter.repair_lr, config.spotter.steps),
               }[name]
  return make_adam(lr, steps, config.optimizer, name,
                   precision_lib.of_config(config))
