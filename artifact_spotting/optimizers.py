"""Adam with a fused per-variable update."""

from __future__ import annotations

import keras
import tensorflow as tf

from artifact_spotting.models.blocks import PACKAGE


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
