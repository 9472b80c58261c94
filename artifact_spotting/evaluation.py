"""Frozen-feature evaluation: per-layer features, folds, linear probes, kNN, AP.

Protocols (configs/eval/*.py pick one):

- ``folds``: few labels. The folds are either the official ones (STL-10's
  ``fold_indices.txt``) or seeded, class-balanced and disjoint (Fashion-MNIST:
  10 folds of 100 images per class). For every layer and fold a linear
  classifier is fit on the fold's features and tested on the whole test split;
  we report mean and std over folds. The classifier is ridge regression on
  one-hot targets over standardized features, solved exactly in the dual
  (n_fold x n_fold), its penalty chosen per layer on labelled *training* images
  outside the fold (never on the test split). kNN (cosine similarity, votes
  weighted by exp(sim / T), k = 20) uses the same folds as memory banks.
- ``full``: all training labels. One softmax classifier per layer on the
  frozen, average-pooled features (behind a non-affine batch norm), all
  trained together in each pass over the data, so the backbone runs once per
  batch for every layer.

Features: each layer's map is average-pooled (area interpolation, i.e.
adaptive average pooling) to the largest square grid whose flattened size
stays about ``pooled_dims`` (9,216 by default, the usual AlexNet probe recipe),
never above the map's own size.

Feature sources (``make_extractor``): the discriminator of a pretraining
workdir, a random-initialised discriminator of a pretraining config, the
frozen autoencoder's encoder stages, raw pixels, or the discriminator inside a
``.keras`` file (e.g. the supervised upper bound trained by trainers.finetune).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from artifact_spotting.config import real, whole  # field tests, shared with config.check_ranges
from artifact_spotting.data import pipeline
from artifact_spotting.models.discriminator import FEATURE_NAMES, Discriminator


# ------------------------------------------------------------ config checks
def check_fields(config, rules):
  """``rules``: (dotted field, test, what it must be). Fields the config
  lacks are skipped (configs may leave optional ones out); ValueError
  ``config.<field>=<value> must be <what>`` for the first failing one."""
  for dotted, ok, what in rules:
    node, present = config, True
    for part in dotted.split("."):
      if not hasattr(node, "get") or part not in node:
        present = False
        break
      node = node[part]
    if present and not ok(node):
      raise ValueError(f"config.{dotted}={node!r} must be {what}")


def check_pp(config, fields=("pp_train", "pp_eval")):
  """Each pp string parses and gives float32 images with config.channels
  channels (their size is the pretraining resolution, not known here)."""
  from artifact_spotting.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  for field in fields:
    if field in config:
      pp_lib.check(config[field], config.channels, None, field=field)


def validate_eval_config(config):
  """Checks every field of an evaluation config (configs/eval/*.py) before
  any data is read or features computed; ValueError naming the field."""
  positive = "an integer >= 1"
  check_fields(config, [
      ("seed", whole(0), "an integer >= 0"),
      ("channels", lambda v: v in (1, 3), "1 or 3"),
      ("num_classes", whole(2), "an integer >= 2"),
      ("protocols", lambda v: (isinstance(v, (list, tuple)) and len(v) > 0
                               and set(v) <= {"folds", "full"}),
       "a non-empty list of 'folds' and/or 'full'"),
      ("pooled_dims", whole(1), positive),
      ("batch_size", whole(1), positive),
      ("max_test_images", whole(0), "an integer >= 0 (0: the whole test split)"),
      ("dataset.shuffle_buffer", whole(1), positive),
      ("folds.kind", lambda v: v in ("seeded", "file"), "'seeded' or 'file'"),
      ("folds.num_folds", whole(1), positive),
      ("folds.per_class", whole(1), positive),
      ("folds.seed", whole(0), "an integer >= 0"),
      ("folds.validation_size", whole(1), positive),
      ("ridge_penalties", lambda v: (isinstance(v, (list, tuple)) and len(v) > 0
                                     and all(real(lambda x: x > 0)(p) for p in v)),
       "a non-empty list of finite numbers > 0"),
      ("knn.enabled", lambda v: isinstance(v, bool), "True or False"),
      ("knn.k", whole(1), positive),
      ("knn.temperature", real(lambda v: v > 0), "a finite number > 0"),
      ("full.epochs", whole(1), positive),
      ("full.batch_size", whole(1), positive),
      ("full.lr", real(lambda v: v > 0), "a finite number > 0"),
      ("full.weight_decay", real(lambda v: v >= 0), "a finite number >= 0"),
      ("full.max_train_images", whole(0),
       "an integer >= 0 (0: the whole training split)"),
  ])
  check_pp(config)
  return config


# ----------------------------------------------------------------- features
def pooled_side(height: int, channels: int, pooled_dims: int) -> int:
  """Side s of the s x s pooled grid: s*s*channels ~ pooled_dims, s <= height."""
  return int(max(1, min(height, round(math.sqrt(pooled_dims / channels)))))


def pool_flatten(fmap, pooled_dims: int):
  """[B, H, W, C] -> [B, s*s*C] by adaptive average pooling to s x s."""
  h, w, c = fmap.shape[1], fmap.shape[2], fmap.shape[3]
  side = pooled_side(min(h, w), c, pooled_dims)
  if (side, side) != (h, w):
    fmap = tf.image.resize(fmap, (side, side), method="area")
  return tf.reshape(fmap, [tf.shape(fmap)[0], side * side * c])


class Extractor:
  """images [B, H, W, C] in [-1, 1] -> {layer: [B, D]} (a tf.function)."""

  def __init__(self, name: str, layers: Sequence[str], fn: Callable, keep=None):
    self.name = name
    self.layers = tuple(layers)
    self._fn = tf.function(fn)
    self._keep = keep  # keeps the owning model alive

  def __call__(self, images) -> Dict[str, tf.Tensor]:
    return self._fn(tf.convert_to_tensor(images, tf.float32))


def discriminator_extractor(disc: Discriminator, pooled_dims: int, name="discriminator"):
  def fn(x):
    feats = disc.features(x, training=False)
    return {k: pool_flatten(feats[k], pooled_dims) for k in FEATURE_NAMES}
  return Extractor(name, FEATURE_NAMES, fn, keep=disc)


def encoder_extractor(encoder, pooled_dims: int, name="autoencoder"):
  names = ["stem"] + [f"stage{i + 1}" for i in range(len(encoder.stages))]

  def fn(x):
    out = {}
    h = encoder.stem(x, training=False)
    out["stem"] = pool_flatten(h, pooled_dims)
    for i, stage in enumerate(encoder.stages):
      h = stage(h, training=False)
      out[f"stage{i + 1}"] = pool_flatten(h, pooled_dims)
    return out
  return Extractor(name, names, fn, keep=encoder)


def pixel_extractor(pooled_dims: int, name="pixels"):
  return Extractor(name, ("pixels",), lambda x: {"pixels": pool_flatten(x, pooled_dims)})


def load_pretrain_config(spec: str):
  """A pretraining workdir, or ``configs/x.py[:arg]`` -> that pretraining config."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.isdir(spec):
    from artifact_spotting import export as export_lib  # pylint: disable=g-import-not-at-top
    return export_lib.load_config(spec)
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("pretrain_config", path)
  if module_spec is None:
    raise FileNotFoundError(f"pretraining config {path!r} does not exist")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


def random_discriminator(pretrain_config, seed: int) -> Discriminator:
  """A freshly initialised discriminator of a pretraining config (seeded)."""
  import keras  # pylint: disable=g-import-not-at-top
  from artifact_spotting import config as config_lib  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  spec = config_lib.model_spec(pretrain_config)["discriminator"]
  disc = Discriminator(**spec, name="discriminator")
  res = pretrain_config.resolution
  disc(tf.zeros((1, res, res, pretrain_config.channels)))
  return disc


def make_extractor(kind: str, source: str, pooled_dims: int, seed: int = 0) -> Extractor:
  """kind: discriminator (pretraining workdir) | random (a pretraining workdir
  or config file ``path[:arg]``) | autoencoder (pretraining workdir) | pixels |
  keras (a .keras file holding a discriminator)."""
  from artifact_spotting import export as export_lib  # pylint: disable=g-import-not-at-top
  from artifact_spotting import finetune as finetune_lib  # pylint: disable=g-import-not-at-top
  if kind == "discriminator":
    _, players = export_lib.restore_players(source)
    return discriminator_extractor(players.model.discriminator, pooled_dims, kind)
  if kind == "autoencoder":
    _, players = export_lib.restore_players(source, require_spotter=False)
    if players.ae_step == 0:
      raise export_lib.ExportError(f"{source}: the autoencoder is untrained")
    return encoder_extractor(players.model.encoder, pooled_dims, kind)
  if kind == "random":
    disc = random_discriminator(load_pretrain_config(source), seed)
    return discriminator_extractor(disc, pooled_dims, f"random_seed{seed}")
  if kind == "pixels":
    return pixel_extractor(pooled_dims)
  if kind == "keras":
    import keras  # pylint: disable=g-import-not-at-top
    disc = finetune_lib.discriminator_of(
        keras.saving.load_model(source, safe_mode=True, compile=False))
    return discriminator_extractor(disc, pooled_dims, kind)
  raise ValueError(f"feature kind {kind!r} is unknown; use discriminator, random, "
                   f"autoencoder, pixels or keras")


def extract(extractor: Extractor, source: pipeline.Source, pp: str,
            indices: Optional[np.ndarray] = None, batch_size: int = 256):
  """Features of the split's images (only ``indices``, in their order, when
  given) -> ({layer: float32 [N, D]}, labels [N])."""
  ds = source.dataset
  order = None
  if indices is not None:
    indices = np.asarray(indices, np.int64)
    wanted = np.unique(indices)
    ds = pipeline.keep_indices(ds, wanted)
    order = np.searchsorted(wanted, indices)  # positions in the filtered stream
  src = pipeline.Source(ds, source.has_label, source.decode, source.info)
  feats: Dict[str, List[np.ndarray]] = {k: [] for k in extractor.layers}
  labels = []
  for batch in pipeline.make_dataset(src, pp, batch_size, training=False,
                                     drop_remainder=False):
    out = extractor(batch["image"])
    for k in extractor.layers:
      feats[k].append(out[k].numpy())
    if "label" in batch:
      labels.append(batch["label"].numpy())
  result = {k: np.concatenate(v) for k, v in feats.items()}
  labels = np.concatenate(labels) if labels else None
  if order is not None:
    result = {k: v[order] for k, v in result.items()}
    labels = labels[order] if labels is not None else None
  return result, labels


# -------------------------------------------------------------------- folds
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
        f"fold file {path!r} does not exist; STL-10's fold_indices.txt comes "
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


# ------------------------------------------------------ linear (full labels)
def full_probe(extractor: Extractor, train_source, test_source, pp_train: str,
               pp_eval: str, num_classes: int, epochs: int, batch_size: int,
               lr: float, weight_decay: float, seed: int = 0,
               log: Callable = print, writer=None) -> Dict:
  """One softmax classifier per layer on frozen features, all trained in one
  pass per epoch (the backbone runs once per batch); test accuracy per layer."""
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


# ----------------------------------------------------------- VOC 2007 AP
# The recall thresholds of the VOC 2007 devkit (VOCevalcls.m), bit for bit:
# ``for t=0:0.1:1, p=max(prec(rec>=t)); if isempty(p), p=0; end; ap=ap+p/11; end``.
# MATLAB's colon a:d:b with n = round((b-a)/d) = 10 steps builds its elements
# symmetrically from both ends: a + k*d for k <= n/2, b - k*d for the rest,
# and (a+b)/2 in the middle. That gives k/10 (the doubles nearest to them)
# except the fourth, 3*0.1 = 0.30000000000000004, which lies above the double
# 0.3: a recall of exactly 3/10 (6/20, ...) does not reach t = 0.3. (The
# common Python port, np.arange(0, 1.1, 0.1), also has 0.30000000000000004 but
# builds 0.6 and 0.7 as 6*0.1 and 7*0.1, one ulp above 0.6 and 0.7, so it also
# drops recalls of exactly 6/10 and 7/10; the devkit does not.)
VOC07_RECALL_THRESHOLDS = tuple(
    [k * 0.1 for k in range(5)] + [(0.0 + 1.0) / 2] +
    [1.0 - k * 0.1 for k in range(4, -1, -1)])


def voc07_average_precision(scores: np.ndarray, labels: np.ndarray,
                            difficult: Optional[np.ndarray] = None) -> float:
  """VOC 2007 11-point interpolated AP for one class, as the devkit computes it.

  labels: 1 positive, 0 negative; ``difficult`` marks images left out (the
  VOC "0" label; the devkit keeps them in the ranking but counts them neither
  as true nor as false positives, which gives the same precision/recall
  points). AP = sum over the devkit's 11 thresholds t
  (``VOC07_RECALL_THRESHOLDS``) of the highest precision at recall >= t, each
  divided by 11; 0 for a t no recall reaches. Ties keep the input order, like
  MATLAB's stable ``sort(-confidence)``.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(bool)
  if difficult is not None:
    keep = ~np.asarray(difficult).astype(bool)
    scores, labels = scores[keep], labels[keep]
  positives = labels.sum()
  if positives == 0:
    raise ValueError("AP is undefined for a class without positives")
  order = np.argsort(-scores, kind="stable")
  hits = labels[order]
  tp = np.cumsum(hits).astype(np.float64)
  fp = np.cumsum(~hits).astype(np.float64)
  recall = tp / positives
  precision = tp / (tp + fp)
  ap = 0.0
  for t in VOC07_RECALL_THRESHOLDS:
    above = precision[recall >= t]
    ap += (above.max() if above.size else 0.0) / 11
  return float(ap)


def voc07_map(scores: np.ndarray, labels: np.ndarray,
              difficult: Optional[np.ndarray] = None) -> Dict:
  """Per-class VOC07 AP and their mean; scores/labels [N, classes]."""
  aps = [voc07_average_precision(scores[:, c], labels[:, c],
                                 None if difficult is None else difficult[:, c])
         for c in range(scores.shape[1])]
  return {"ap": aps, "map": float(np.mean(aps))}


# ------------------------------------------------------------ the protocol
def fold_indices(config, train_labels_fn: Callable[[], np.ndarray]):
  """The config's folds: [F] index arrays into the training split."""
  fc = config.folds
  if fc.kind == "file":
    if not fc.file:
      raise ValueError("config.folds.kind='file' needs config.folds.file (the "
                       "path of STL-10's fold_indices.txt, see README)")
    return read_fold_indices(fc.file)
  if fc.kind == "seeded":
    return list(seeded_folds(train_labels_fn(), fc.num_folds, fc.per_class, fc.seed))
  raise ValueError(f"config.folds.kind={fc.kind!r} must be 'seeded' or 'file'")


def split_labels(source: pipeline.Source) -> np.ndarray:
  """All labels of a split, in order, without decoding images."""
  if not source.has_label:
    raise ValueError("the evaluation split has no labels")
  ds = source.dataset.map(lambda ex: ex["label"]).batch(8192)
  return np.concatenate([b.numpy() for b in ds]).astype(np.int64)


def evaluate(config, extractor: Extractor, log: Callable = print,
             writer=None) -> Dict:
  """Runs ``config.protocols`` on ``extractor``; returns a JSON-able dict."""
  validate_eval_config(config)
  train_src = pipeline.open_source(config.dataset, config.channels,
                                   split=config.dataset.train_split, training=False)
  test_src = pipeline.open_source(config.dataset, config.channels,
                                  split=config.dataset.test_split, training=False)
  limit = config.get("max_test_images", 0)
  if limit:
    test_src.dataset = test_src.dataset.take(limit)
  result: Dict = {"features": extractor.name, "layers": list(extractor.layers)}
  unknown = set(config.protocols) - {"folds", "full"}
  if unknown:
    raise ValueError(f"config.protocols has unknown {sorted(unknown)}; use "
                     f"'folds' and/or 'full'")
  if "folds" in config.protocols:
    labels_all = split_labels(train_src)
    folds = fold_indices(config, lambda: labels_all)
    bad = [f for f in folds if f.min() < 0 or f.max() >= len(labels_all)]
    if bad:
      raise ValueError(f"fold indices outside the {len(labels_all)} training "
                       f"images of {config.dataset.name}")
    common = validation_indices(len(labels_all), folds,
                                config.folds.validation_size, config.folds.seed)
    vals = [fold_validation(f, folds, common, config.folds.validation_size,
                            config.folds.seed) for f in range(len(folds))]
    needed = np.unique(np.concatenate(folds + vals))
    log(f"folds: {len(folds)} x {len(folds[0])} images, validation "
        f"{len(vals[0])}, extracting {len(needed)} train images")
    train_feats, train_labels = extract(extractor, train_src, config.pp_eval,
                                        needed, config.batch_size)
    test_feats, test_labels = extract(extractor, test_src, config.pp_eval,
                                      None, config.batch_size)
    position = lambda idx: np.searchsorted(needed, idx)
    result["folds"] = folds_protocol(
        train_feats, train_labels, [position(f) for f in folds],
        [position(v) for v in vals], test_feats, test_labels, config.num_classes,
        tuple(config.ridge_penalties), config.knn.k, config.knn.temperature, log,
        knn=config.knn.get("enabled", True))
    result["folds_setup"] = {"num_folds": len(folds), "fold_size": len(folds[0]),
                             "validation_size": len(vals[0]),
                             "test_images": int(len(test_labels))}
    del train_feats, test_feats
    if writer is not None:
      with writer.as_default(step=0):
        for layer, r in result["folds"].items():
          tf.summary.scalar(f"folds_linear/{layer}", r["linear"]["mean"])
          if "knn" in r:
            tf.summary.scalar(f"folds_knn/{layer}", r["knn"]["mean"])
  if "full" in config.protocols:
    train_src = pipeline.open_source(config.dataset, config.channels,
                                     split=config.dataset.train_split)
    if config.full.get("max_train_images", 0):
      train_src.dataset = train_src.dataset.take(config.full.max_train_images)
    f = config.full
    result["full"] = full_probe(extractor, train_src, test_src, config.pp_train,
                                config.pp_eval, config.num_classes, f.epochs,
                                f.batch_size, f.lr, f.weight_decay, config.seed,
                                log, writer)
    log("  full probe: " + " ".join(
        f"{k}={v:.4f}" for k, v in result["full"]["accuracy"].items()))
  return result
