"""Full-label evaluation: one softmax classifier per layer on frozen features."""

from __future__ import annotations

from typing import Callable, Dict

import tensorflow as tf

from artifact_spotting.data import pipeline
from artifact_spotting.evaluation.features import Extractor


def full_probe(extractor: Extractor, train_source, test_source, pp_train: str,
               pp_eval: str, num_classes: int, epochs: int, batch_size: int,
               lr: float, weight_decay: float, seed: int = 0,
               log: Callable = print, writer=None) -> Dict:
  """One softmax classifier per layer on frozen features, all trained in one
  pass per epoch (the backbone runs once per batch); test accuracy per layer.

  A hand-written loop rather than Model.fit on a multi-output model: that
  port (heads as a keras.Model, stop-gradient features, the same data order
  and schedule) moved the committed report's full-probe accuracies by up to
  0.0017 (float32 summation order), so adopting it means re-evaluating every
  model of a report, not a refactor."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  probe = {}
  for layer in extractor.layers:
    norm = keras.layers.BatchNormalization(center=False, scale=False,
                                           name=f"{layer}_norm")
    dense = keras.layers.Dense(num_classes, name=f"{layer}_linear",
                               kernel_regularizer=keras.regularizers.L2(weight_decay))
    probe[layer] = (norm, dense)
  train = pipeline.make_dataset(train_source, pp_train, batch_size, training=True,
                                seed=seed, repeat=False)
  steps_per_epoch = None
  total = None
  optimizer = None
  variables = None

  def heads(feats, training):
    return {k: n_d[1](n_d[0](feats[k], training=training))
            for k, n_d in probe.items()}

  @tf.function
  def step(images, labels):
    feats = extractor._fn(images)  # pylint: disable=protected-access
    with tf.GradientTape() as tape:
      logits = heads(feats, True)
      losses = {k: tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
          labels, v, from_logits=True)) for k, v in logits.items()}
      reg = tf.add_n([tf.add_n(p[1].losses) for p in probe.values()])
      loss = tf.add_n(list(losses.values())) + reg
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables))
    return losses

  history = []
  for epoch in range(epochs):
    losses = None
    for batch in train:
      if optimizer is None:
        heads(extractor(batch["image"]), False)  # build the heads
        variables = [v for n, d in probe.values() for v in d.trainable_variables]
        steps_per_epoch = steps_per_epoch or sum(1 for _ in train)
        total = steps_per_epoch * epochs
        optimizer = keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(lr, total))
      losses = step(batch["image"], batch["label"])
    history.append({k: float(v) for k, v in losses.items()})
    log(f"  full probe epoch {epoch + 1}/{epochs}: " +
        " ".join(f"{k}={v:.3f}" for k, v in history[-1].items()))
  correct = {k: 0 for k in probe}
  count = 0
  for batch in pipeline.make_dataset(test_source, pp_eval, batch_size,
                                     training=False, drop_remainder=False):
    logits = heads(extractor(batch["image"]), False)
    for k, v in logits.items():
      correct[k] += int(tf.reduce_sum(tf.cast(
          tf.argmax(v, -1) == tf.cast(batch["label"], tf.int64), tf.int32)))
    count += int(batch["image"].shape[0])
  accuracy = {k: correct[k] / count for k in probe}
  if writer is not None:
    with writer.as_default(step=epochs):
      for k, v in accuracy.items():
        tf.summary.scalar(f"full_probe/{k}", v)
  return {"accuracy": accuracy, "train_loss": history, "test_images": count}
