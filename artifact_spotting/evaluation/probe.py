"""Full-label evaluation: one softmax classifier per layer on frozen features,
trained until its accuracy on held-out training images stops improving.

The features of every training, held-out and test image are computed once
(``pp_eval``, no augmentation) and kept in memory as float16; each layer's
classifier (standardised features, one dense layer with an L2 penalty, Adam)
then trains on them epoch by epoch. After every epoch it is scored on
``validation_size`` training images held out from its training (a seeded
draw; never the test split); the epoch with the best held-out accuracy is
kept, training stops after ``patience`` epochs without improvement (at most
``max_epochs``), and the test split is scored once, on the kept epoch.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import tensorflow as tf

from artifact_spotting.evaluation.features import Extractor, extract


def held_out_split(n: int, size: int, seed: int):
  """(train, held-out) positions of ``n`` images: ``size`` drawn with
  ``seed`` are held out, each part in ascending order."""
  if not 0 < size < n:
    raise ValueError(f"config.full.validation_size={size} must be between 1 and "
                     f"{n - 1} (the training images available)")
  order = np.random.default_rng(seed).permutation(n)
  return np.sort(order[size:]), np.sort(order[:size])


def _moments(x, chunk: int = 4096):
  """Per-feature mean and std (+1e-6) of ``x`` [N, D], in float64 over
  chunks of rows, so no float64 copy of ``x`` is made."""
  total = np.zeros(x.shape[1], np.float64)
  square = np.zeros(x.shape[1], np.float64)
  for i in range(0, len(x), chunk):
    part = x[i:i + chunk].astype(np.float64)
    total += part.sum(0)
    square += np.square(part).sum(0)
  mean = total / len(x)
  var = np.maximum(square / len(x) - np.square(mean), 0.0)
  return mean.astype(np.float32), (np.sqrt(var) + 1e-6).astype(np.float32)


def train_layer(x_train, y_train, x_val, y_val, num_classes: int, *,
                max_epochs: int, patience: int, batch_size: int, lr: float,
                weight_decay: float, seed: int = 0):
  """One layer's classifier on cached features; returns (predict function of
  the kept epoch, held-out accuracy per epoch, kept epoch (1-based))."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  x_train = np.asarray(x_train)
  mean, std = _moments(x_train)
  dense = keras.layers.Dense(num_classes)
  dense.build((None, x_train.shape[1]))
  optimizer = keras.optimizers.Adam(lr)
  optimizer.build(dense.trainable_variables)

  def logits(x):  # x: float32 (float16 batches are widened by numpy)
    return dense((x - mean) / std)

  @tf.function(reduce_retracing=True)
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
          y, logits(x), from_logits=True))
      loss += weight_decay * tf.reduce_sum(tf.square(dense.kernel))
    grads = tape.gradient(loss, dense.trainable_variables)
    optimizer.apply_gradients(zip(grads, dense.trainable_variables))

  predict = tf.function(lambda x: tf.argmax(logits(x), -1), reduce_retracing=True)

  def accuracy(x, y):
    hits = sum(int(np.sum(predict(x[i:i + 4096].astype(np.float32)).numpy()
                          == y[i:i + 4096]))
               for i in range(0, len(y), 4096))
    return hits / len(y)

  rng = np.random.default_rng(seed)
  scores, best, best_weights = [], -1.0, None
  for epoch in range(max_epochs):
    order = rng.permutation(len(y_train))
    for i in range(0, len(order) - batch_size + 1, batch_size):
      idx = np.sort(order[i:i + batch_size])
      step(x_train[idx].astype(np.float32), y_train[idx])
    scores.append(accuracy(x_val, y_val))
    if scores[-1] > best:
      best, best_weights = scores[-1], [w.numpy() for w in dense.weights]
      kept = epoch + 1
    elif patience and epoch + 1 - kept >= patience:
      break
  dense.set_weights(best_weights)
  return accuracy, scores, kept


def full_probe(extractor: Extractor, train_source, test_source, pp_eval: str,
               num_classes: int, *, max_epochs: int, patience: int,
               validation_size: int, batch_size: int, lr: float,
               weight_decay: float, seed: int = 0, log: Callable = print,
               writer=None, extract_batch: int = 256) -> Dict:
  """Test accuracy per layer of classifiers trained on every training label
  but ``validation_size`` held out to choose each layer's epoch."""
  feats, labels = extract(extractor, train_source, pp_eval, None, extract_batch,
                          dtype=np.float16)
  train, held = held_out_split(len(labels), validation_size, seed)
  test_feats, test_labels = extract(extractor, test_source, pp_eval, None,
                                    extract_batch, dtype=np.float16)
  out = {"accuracy": {}, "selected_epoch": {}, "validation_accuracy": {},
         "train_images": int(len(train)), "validation_size": int(len(held)),
         "test_images": int(len(test_labels)), "max_epochs": max_epochs,
         "patience": patience}
  for layer in extractor.layers:
    x = feats.pop(layer)
    accuracy, scores, kept = train_layer(
        x[train], labels[train], x[held], labels[held], num_classes,
        max_epochs=max_epochs, patience=patience, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, seed=seed)
    del x
    out["accuracy"][layer] = accuracy(test_feats.pop(layer), test_labels)
    out["selected_epoch"][layer] = kept
    out["validation_accuracy"][layer] = scores
    log(f"  full probe {layer}: epoch {kept} of {len(scores)} (held-out "
        f"{max(scores):.4f}), test {out['accuracy'][layer]:.4f}")
  if writer is not None:
    with writer.as_default(step=0):
      for k, v in out["accuracy"].items():
        tf.summary.scalar(f"full_probe/{k}", v)
  return out
