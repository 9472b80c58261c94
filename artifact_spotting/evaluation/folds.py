"""Few-label evaluation: folds of the training split, and the classifiers fit
on each (ridge regression and kNN).

The folds are either the official ones (STL-10's ``fold_indices.txt``) or
seeded, class-balanced and disjoint (Fashion-MNIST: 10 folds of 100 images per
class). For every layer and fold a linear classifier is fit on the fold's
features and tested on the whole test split; the mean and std over folds are
reported. The classifier is ridge regression on one-hot targets over
standardized features, solved exactly in the dual (n_fold x n_fold), its
penalty chosen per layer on labelled *training* images outside the fold (never
on the test split). kNN (cosine similarity, votes weighted by exp(sim / T),
k = 20) uses the same folds as memory banks.
"""

from __future__ import annotations

import errno
from typing import Callable, Dict, List, Sequence

import numpy as np
import tensorflow as tf


def seeded_folds(labels: np.ndarray, num_folds: int, per_class: int,
                 seed: int) -> np.ndarray:
  """[num_folds, per_class * classes] disjoint, class-balanced index folds."""
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  folds = [[] for _ in range(num_folds)]
  for c in classes:
    idx = rng.permutation(np.flatnonzero(labels == c))
    if len(idx) < num_folds * per_class:
      raise ValueError(f"class {c} has {len(idx)} images, fewer than "
                       f"{num_folds} folds x {per_class}")
    for f in range(num_folds):
      folds[f].extend(idx[f * per_class:(f + 1) * per_class])
  return np.stack([rng.permutation(np.asarray(f, np.int64)) for f in folds])


def read_fold_indices(path: str) -> List[np.ndarray]:
  """STL-10's fold_indices.txt: one line per fold, 0-based train indices."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        errno.ENOENT, f"fold file {path!r} does not exist; STL-10's fold_indices.txt comes "
        f"with the binary release (stl10_binary.tar.gz, see README)")
  with tf.io.gfile.GFile(path) as f:
    folds = [np.array(line.split(), np.int64) for line in f if line.strip()]
  if not folds:
    raise ValueError(f"fold file {path!r} holds no folds")
  return folds


def validation_indices(num_train: int, folds: Sequence[np.ndarray], size: int,
                       seed: int) -> np.ndarray:
  """``size`` seeded train indices in no fold, for choosing the ridge penalty;
  empty when fewer are left (STL-10's folds overlap and cover the whole train
  split: ``fold_validation`` then draws from the other folds' images)."""
  rng = np.random.default_rng(seed + 1)
  used = np.zeros(num_train, bool)
  for f in folds:
    used[f] = True
  free = np.flatnonzero(~used)
  if len(free) >= size:
    return np.sort(rng.choice(free, size, replace=False))
  return np.empty([0], np.int64)


def fold_validation(f: int, folds: Sequence[np.ndarray], common: np.ndarray,
                    size: int, seed: int) -> np.ndarray:
  """Validation indices for fold f: the common set, else images of other folds."""
  if len(common):
    return common
  others = np.setdiff1d(np.concatenate(list(folds)), folds[f])
  rng = np.random.default_rng(seed + 2 + f)
  return np.sort(rng.choice(others, min(size, len(others)), replace=False))


# --------------------------------------------------------- linear (folds)
def ridge_fit_predict(x_train, y_train, x_evals: Sequence, num_classes: int,
                      penalties: Sequence[float], standardize: bool = False):
  """Ridge regression on one-hot targets, exact in the dual.

  Returns, per penalty, the predicted classes of every array in ``x_evals``.
  Penalties are relative to the mean squared feature norm (so one grid fits
  layers of any width). ``standardize``: fit on features standardized with
  the training rows' mean and std; the map is folded into the classifier, so
  the (large) evaluation arrays are never copied.
  """
  # Products in float32 (the features' own precision); the small n x n
  # eigendecomposition in float64.
  x = tf.constant(x_train, tf.float32)
  mean = std = None
  if standardize:
    mean = tf.reduce_mean(x, 0, keepdims=True)
    std = tf.math.reduce_std(x, 0, keepdims=True) + 1e-6
    x = (x - mean) / std
  y = tf.one_hot(y_train, num_classes, dtype=tf.float64)
  gram = tf.cast(tf.matmul(x, x, transpose_b=True), tf.float64)
  scale = float(tf.reduce_mean(tf.linalg.diag_part(gram)))
  s, u = tf.linalg.eigh(gram)
  uty = tf.matmul(u, y, transpose_a=True)
  evals = [tf.convert_to_tensor(e, tf.float32) for e in x_evals]
  out = []
  for lam in penalties:
    alpha = tf.cast(tf.matmul(u, uty / (s[:, None] + lam * scale)), tf.float32)
    w = tf.matmul(x, alpha, transpose_a=True)  # back to the primal: [D, classes]
    bias = 0.0
    if standardize:  # ((e - mean) / std) w = e (w / std) - (mean / std) w
      w = w / tf.transpose(std)
      bias = -tf.matmul(mean, w)
    out.append([tf.argmax(tf.matmul(e, w) + bias, -1).numpy() for e in evals])
  return out


def knn_predict(bank, bank_labels, queries, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 2048,
                queries_normalized: bool = False):
  """Weighted kNN (Wu et al. 2018): cosine similarity, votes exp(sim / T)."""
  b = tf.math.l2_normalize(tf.constant(bank, tf.float32), -1)
  onehot = tf.one_hot(bank_labels, num_classes)
  k = min(k, len(bank))
  queries = tf.convert_to_tensor(queries, tf.float32)
  preds = []
  for start in range(0, int(queries.shape[0]), chunk):
    q = queries[start:start + chunk]
    if not queries_normalized:
      q = tf.math.l2_normalize(q, -1)
    sims, idx = tf.math.top_k(tf.matmul(q, b, transpose_b=True), k)
    votes = tf.reduce_sum(tf.gather(onehot, idx) * tf.exp(sims / temperature)[..., None], 1)
    preds.append(tf.argmax(votes, -1).numpy())
  return np.concatenate(preds)


def folds_protocol(train_feats: Dict[str, np.ndarray], train_labels: np.ndarray,
                   positions: Sequence[np.ndarray], val_positions: Sequence[np.ndarray],
                   test_feats: Dict[str, np.ndarray], test_labels: np.ndarray,
                   num_classes: int, penalties: Sequence[float], knn_k: int,
                   knn_temperature: float, log: Callable = print,
                   knn: bool = True) -> Dict:
  """Per layer: ridge (penalty by validation) and kNN accuracy per fold.

  ``positions[f]`` / ``val_positions[f]`` index rows of ``train_feats``.
  """
  result = {}
  for layer, feats in train_feats.items():
    linear, knn_acc, chosen = [], [], []
    test = tf.constant(test_feats[layer], tf.float32)
    test_unit = tf.math.l2_normalize(test, -1) if knn else None
    for pos, vpos in zip(positions, val_positions):
      preds = ridge_fit_predict(feats[pos], train_labels[pos], [feats[vpos], test],
                                num_classes, penalties, standardize=True)
      val_acc = [float(np.mean(p[0] == train_labels[vpos])) for p in preds]
      best = int(np.argmax(val_acc))
      chosen.append(penalties[best])
      linear.append(float(np.mean(preds[best][1] == test_labels)))
      if knn:
        knn_acc.append(float(np.mean(knn_predict(
            feats[pos], train_labels[pos], test_unit, num_classes, knn_k,
            knn_temperature, queries_normalized=True) == test_labels)))
    result[layer] = {"dims": int(feats.shape[1]), "linear": _summary(linear),
                     "penalty_per_fold": chosen}
    line = (f"  {layer} ({feats.shape[1]} dims): linear {np.mean(linear):.4f} "
            f"+- {np.std(linear):.4f}")
    if knn:
      result[layer]["knn"] = _summary(knn_acc)
      line += f", kNN {np.mean(knn_acc):.4f} +- {np.std(knn_acc):.4f}"
    log(line)
  return result


def _summary(values):
  return {"mean": float(np.mean(values)), "std": float(np.std(values)),
          "per_fold": [float(v) for v in values]}
