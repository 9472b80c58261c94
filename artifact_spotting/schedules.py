"""Learning-rate schedules (serializable)."""

from __future__ import annotations

import keras
from keras import ops

from artifact_spotting.models.blocks import PACKAGE


@keras.saving.register_keras_serializable(PACKAGE)
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear from ``initial`` to ``initial * end_ratio`` over ``decay_steps``,
  then constant (released code: 3e-4 -> 3e-6 over 90% of the steps)."""

  def __init__(self, initial: float, decay_steps: int, end_ratio: float = 0.01):
    self.initial = float(initial)
    self.decay_steps = max(1, int(decay_steps))
    self.end_ratio = float(end_ratio)

  def __call__(self, step):
    t = ops.minimum(ops.cast(step, "float32") / self.decay_steps, 1.0)
    return self.initial * (1.0 - t * (1.0 - self.end_ratio))

  def get_config(self):
    return dict(initial=self.initial, decay_steps=self.decay_steps,
                end_ratio=self.end_ratio)
