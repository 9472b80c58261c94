"""The evaluation protocols of configs/eval/*.py run on one feature extractor.

- ``folds``: few labels (see ``folds``).
- ``full``: all training labels. One softmax classifier per layer on the
  frozen, average-pooled features, its epoch chosen on training images held
  out from its training (see ``probe``).
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import tensorflow as tf

from artifact_spotting import loading
from artifact_spotting import config as config_lib
from artifact_spotting.config import real, whole  # field tests, shared with config.check_ranges
from artifact_spotting.data import pipeline
from artifact_spotting.evaluation.features import Extractor, extract
from artifact_spotting.evaluation.folds import (fold_validation, folds_protocol,
                                                read_fold_indices, seeded_folds,
                                                validation_indices)
from artifact_spotting.evaluation.probe import full_probe


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
  config_lib.check_fields(config, optional=True, rules=[
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
      ("full.max_epochs", whole(1), positive),
      ("full.patience", whole(0), "an integer >= 0 (0: train max_epochs)"),
      ("full.validation_size", whole(1), positive),
      ("full.batch_size", whole(1), positive),
      ("full.lr", real(lambda v: v > 0), "a finite number > 0"),
      ("full.weight_decay", real(lambda v: v >= 0), "a finite number >= 0"),
      ("full.max_train_images", whole(0),
       "an integer >= 0 (0: the whole training split)"),
  ])
  folds = config.get("folds", None)
  if ("folds" in config.get("protocols", ()) and folds is not None
      and folds.get("kind", "") == "file" and folds.get("file", "")
      and not tf.io.gfile.exists(folds.file)):
    # Checked here, before any output folder or data: read_fold_indices
    # would find it missing only after the training labels are read.
    raise ValueError(f"config.folds.file={folds.file!r} does not exist; "
                     f"STL-10's fold_indices.txt comes with the binary "
                     f"release (stl10_binary.tar.gz, see README)")
  check_pp(config)
  return config


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
    test_src = test_src.take(limit)
  result: Dict = {"features": extractor.name, "layers": list(extractor.layers)}
  if extractor.checkpoint is not None:
    result["checkpoint"] = dict(extractor.checkpoint)
    log(loading.describe_checkpoint(extractor.checkpoint))
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
    if config.full.get("max_train_images", 0):
      train_src = train_src.take(config.full.max_train_images)
    f = config.full
    result["full"] = full_probe(
        extractor, train_src, test_src, config.pp_eval, config.num_classes,
        max_epochs=f.max_epochs, patience=f.patience,
        validation_size=f.validation_size, batch_size=f.batch_size, lr=f.lr,
        weight_decay=f.weight_decay, seed=config.seed, log=log, writer=writer,
        extract_batch=config.batch_size)
    log("  full probe: " + " ".join(
        f"{k}={v:.4f}" for k, v in result["full"]["accuracy"].items()))
  return result
