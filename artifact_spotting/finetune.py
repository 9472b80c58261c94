"""Fine-tuning (or linear probing) a pretrained discriminator with Keras fit.

The backbone comes from a pretraining workdir, an export version folder or a
``discriminator.keras`` file; conv1..``freeze_up_to`` stay frozen (their batch
norms in inference mode), a dropout + dense head on flattened conv5 is trained.

Choosing the epoch: with ``config.validation_size > 0`` that many labelled
training images (a seeded draw, never the test split) are held out; after every
epoch the model is scored on them, the best epoch is kept as ``best.keras``
(and training stops after ``early_stopping_patience`` epochs without
improvement), and the test split is scored once, on the chosen model. With
``validation_size = 0`` nothing is chosen: the model after the last epoch is
the result (a fixed schedule, as the STL-10 and VOC protocols use). The test
split is never looked at during training.

Callbacks: TensorBoard, BackupAndRestore (a rerun resumes an interrupted fit)
and ``BestEpoch``, whose choice survives that resume. The model after the last
epoch is saved as ``final.keras``.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from artifact_spotting import evaluation
from artifact_spotting import loading
from artifact_spotting import workdir as workdir_lib
from artifact_spotting.data import pipeline
from artifact_spotting.evaluation.probe import held_out_split
from artifact_spotting.models.discriminator import FEATURE_NAMES

RESULTS_FILE = "finetune_results.json"


def build_classifier(backbone: keras.Model, num_classes: int, freeze_up_to: str,
                     dropout: float) -> keras.Model:
  disc = loading.discriminator_of(backbone)
  if freeze_up_to != "none" and freeze_up_to not in FEATURE_NAMES:
    raise ValueError(f"freeze_up_to={freeze_up_to!r} must be 'none' or one of "
                     f"{FEATURE_NAMES}")
  frozen = (FEATURE_NAMES[:FEATURE_NAMES.index(freeze_up_to) + 1]
            if freeze_up_to != "none" else ())
  for name in FEATURE_NAMES:
    getattr(disc, name).trainable = name not in frozen
  for layer in (disc.fc, disc.fc_bn, disc.class_head, disc.mask_head):
    if layer is not None:
      layer.trainable = False  # pretext heads are not used
  inputs = backbone.inputs[0]
  features = backbone(inputs)["conv5"]
  h = keras.layers.Flatten(name="flatten")(features)
  h = keras.layers.Dropout(dropout, name="head_dropout")(h)
  logits = keras.layers.Dense(num_classes, name="head")(h)
  return keras.Model(inputs, logits, name="finetune")


TASKS = ("labels", "rotation")
ROTATIONS = 4


def _supervised(ds):
  return ds.map(lambda ex: (ex["image"], ex["label"]))


def rotations(images):
  """(images, labels) for rotation prediction (RotNet, Gidaris et al. 2018):
  every image of the batch in each of the four rotations by k * 90 degrees
  (counter-clockwise), labelled k; the batch grows four-fold, k-major."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rotated = [tf.image.rot90(images, k) for k in range(ROTATIONS)]
  n = tf.shape(images)[0]
  labels = tf.repeat(tf.range(ROTATIONS, dtype=tf.int64), n)
  return tf.concat(rotated, 0), labels


def _examples(ds, task):
  """A batched dataset of examples as (inputs, targets) for ``task``."""
  if task == "rotation":
    return ds.map(lambda ex: rotations(ex["image"]))
  return _supervised(ds)


@keras.saving.register_keras_serializable("artifact_spotting")
def masked_binary_crossentropy(y_true, logits):
  """Multi-label loss; targets 1 / 0 / -1, where -1 ("difficult") is ignored."""
  y_true = keras.ops.cast(y_true, logits.dtype)
  mask = keras.ops.cast(y_true >= 0, logits.dtype)
  per = keras.ops.binary_crossentropy(keras.ops.clip(y_true, 0, 1), logits,
                                      from_logits=True)
  return keras.ops.sum(per * mask, -1) / keras.ops.maximum(keras.ops.sum(mask, -1), 1.0)


def subset(source, indices):
  """A new Source of the elements of ``source`` at ``indices`` (stream order;
  the source must be opened without file shuffling)."""
  return source.with_dataset(pipeline.keep_indices(source.dataset, indices),
                             images=len(set(int(i) for i in indices)))


def num_examples(source) -> int:
  """How many elements ``source`` holds (counted when tf.data does not know)."""
  n = int(source.dataset.cardinality())
  if n >= 0:
    return n
  return int(source.dataset.reduce(np.int64(0), lambda c, _: c + 1))


def hold_out(indices, size: int, seed: int):
  """(train, validation): ``size`` of ``indices`` drawn with ``seed`` for
  validation, the rest for training, each in ascending order."""
  indices = np.asarray(indices, np.int64)
  if size >= len(indices):
    raise ValueError(f"config.validation_size={size} leaves no training images "
                     f"of the {len(indices)} available")
  train, held = held_out_split(len(indices), size, seed)
  return np.sort(indices[train]), np.sort(indices[held])


class BestEpoch(keras.callbacks.Callback):
  """Keeps the epoch whose ``monitor`` is best as ``best.keras`` and stops
  after ``patience`` epochs without improvement (0: never stops).

  Unlike ModelCheckpoint and EarlyStopping, its state (every epoch's score,
  the best epoch) lives in ``selection.json`` in the workdir, so a fit that
  BackupAndRestore resumes after a kill still compares against the epochs
  trained before it.
  """

  def __init__(self, workdir: str, monitor: str, mode: str, patience: int):
    super().__init__()
    self.workdir, self.monitor, self.mode, self.patience = (
        workdir, monitor, mode, patience)
    self.path = os.path.join(workdir, "selection.json")
    self.state = {"monitor": monitor, "mode": mode, "best_epoch": None,
                  "best": None, "scores": {}}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.state = json.load(f)

  def _better(self, value):
    best = self.state["best"]
    return best is None or (value > best if self.mode == "max" else value < best)

  def on_epoch_end(self, epoch, logs=None):
    value = float((logs or {})[self.monitor])
    self.state["scores"][str(epoch + 1)] = value
    if self._better(value):
      tmp = os.path.join(self.workdir, "best.tmp.keras")
      self.model.save(tmp)
      os.replace(tmp, os.path.join(self.workdir, "best.keras"))
      self.state.update(best_epoch=epoch + 1, best=value)
    workdir_lib.atomic_write(self.path, json.dumps(self.state, indent=2))
    if self.patience and epoch + 1 - self.state["best_epoch"] >= self.patience:
      self.model.stop_training = True



def validate_finetune_config(config):
  """Checks every field of a fine-tuning config (configs/finetune/*.py)
  before a model is loaded or data read; ValueError naming the field."""
  from artifact_spotting import config as config_lib  # pylint: disable=g-import-not-at-top
  real, whole = config_lib.real, config_lib.whole
  positive = "an integer >= 1"
  fold = config.get("fold", "")
  config_lib.check_fields(config, optional=True, rules=[
      ("seed", whole(0), "an integer >= 0"),
      ("task", lambda v: v in TASKS, f"one of {TASKS}"),
      ("channels", lambda v: v in (1, 3), "1 or 3"),
      ("num_classes", whole(2), "an integer >= 2"),
      ("multilabel", lambda v: isinstance(v, bool), "True or False"),
      ("fold", lambda v: isinstance(v, str) and (
          v in ("", "all") or (v.isdigit() and v.isascii())),
       "'' (the whole split), 'all' or a fold index >= 0"),
      ("freeze_up_to", lambda v: v in FEATURE_NAMES + ("none",),
       f"one of {FEATURE_NAMES + ('none',)}"),
      ("head_dropout", real(lambda v: 0 <= v < 1), "in [0, 1)"),
      ("epochs", whole(1), positive),
      ("steps_per_epoch", whole(0),
       "an integer >= 0 (0: one pass over the training split)"),
      ("batch_size", whole(1), positive),
      ("lr", real(lambda v: v > 0), "a finite number > 0"),
      ("validation_size", whole(0), "an integer >= 0 (0: no epoch is "
       "chosen, the last one is the result)"),
      ("early_stopping_patience", whole(0), "an integer >= 0 (0: off)"),
      ("dataset.shuffle_buffer", whole(1), positive),
  ])
  if config.get("task", "labels") == "rotation" and (config.num_classes != ROTATIONS
                                    or config.multilabel):
    raise ValueError(f"config.task='rotation' predicts one of {ROTATIONS} "
                     f"rotations: it needs config.num_classes={ROTATIONS} and "
                     f"config.multilabel=False (got {config.num_classes}, "
                     f"{config.multilabel})")
  if config.early_stopping_patience and not config.validation_size:
    raise ValueError(
        f"config.early_stopping_patience={config.early_stopping_patience} "
        "needs config.validation_size > 0: early stopping watches held-out "
        "training images, never the test split")
  if fold not in (None, "") and not config.get("fold_file", ""):
    raise ValueError(f"config.fold={fold!r} needs config.fold_file (the "
                     f"folds of the training split)")
  evaluation.check_pp(config)
  return config


def finetune(config, init: str, workdir: str):
  """Fine-tunes once, or on every fold (``config.fold == "all"``: one run per
  fold in workdir/fold_<i>, mean and std in workdir/finetune_results.json)."""
  validate_finetune_config(config)
  fold = config.get("fold", None)
  if fold is None or fold == "":
    return finetune_one(config, init, workdir, None)
  folds = evaluation.read_fold_indices(config.fold_file)
  chosen = range(len(folds)) if fold == "all" else [int(fold)]
  results = []
  for f in chosen:
    if not 0 <= f < len(folds):
      raise ValueError(f"config.fold={f} is outside the {len(folds)} folds of "
                       f"{config.fold_file}")
    _, r = finetune_one(config, init, os.path.join(workdir, f"fold_{f}"), folds[f])
    results.append(r)
  key = "eval_map" if config.get("multilabel", False) else "eval_accuracy"
  values = [r[key] for r in results]
  mean = sum(values) / len(values)
  summary = {"folds": list(chosen), key + "_per_fold": values, key + "_mean": mean,
             key + "_std": (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5,
             key: mean, "freeze_up_to": config.freeze_up_to, "init": init,
             "epochs_run": max(r["epochs_run"] for r in results),
             "selected_epoch_per_fold": [r["selected_epoch"] for r in results]}
  workdir_lib.atomic_write(os.path.join(workdir, RESULTS_FILE),
                           json.dumps(summary, indent=2))
  return None, summary


def training_sources(config, fold_indices=None):
  """(train, validation or None) Sources of the training split: the fold's
  images (or all) minus ``config.validation_size`` held out for choosing the
  epoch. Opened without file shuffling whenever images are picked by index,
  so an index names the same image in every epoch (the pipeline's shuffle
  buffer still shuffles)."""
  size = config.get("validation_size", 0)
  pick = fold_indices is not None or size > 0
  src = pipeline.open_source(config.dataset, config.channels,
                             split=config.dataset.train_split, training=not pick)
  if not src.has_label and config.get("task", "labels") == "labels":
    raise ValueError(f"config.dataset {config.dataset.name}:"
                     f"{config.dataset.train_split} has no labels to fine-tune on")
  if not pick:
    return src, None
  indices = (np.arange(num_examples(src)) if fold_indices is None
             else np.asarray(fold_indices, np.int64))
  if not size:
    return subset(src, indices), None
  train, held = hold_out(indices, size, config.seed)
  return subset(src, train), subset(src, held)


def _fresh_start(workdir):
  """Before a fit that BackupAndRestore will not resume: forget the choice
  and the chosen model of an earlier, finished or abandoned, fit."""
  if not os.path.exists(os.path.join(workdir, "backup")):
    for name in ("selection.json", "best.keras", "best.tmp.keras"):
      path = os.path.join(workdir, name)
      if os.path.exists(path):
        os.remove(path)


def finetune_one(config, init: str, workdir: str, fold_indices=None):
  keras.utils.set_random_seed(config.seed)
  multilabel = bool(config.get("multilabel", False))
  backbone = loading.backbone(init, config.seed)
  model = build_classifier(backbone, config.num_classes, config.freeze_up_to,
                           config.head_dropout)
  train_src, val_src = training_sources(config, fold_indices)
  eval_src = pipeline.open_source(config.dataset, config.channels,
                                  split=config.dataset.eval_split, training=False)
  # Only once the backbone and the data are known good: a bad --init or a
  # missing dataset leaves no workdir behind.
  os.makedirs(workdir, exist_ok=True)
  task = config.get("task", "labels")
  train = _examples(pipeline.make_dataset(
      train_src, config.pp_train, config.batch_size, training=True,
      shuffle_buffer=config.dataset.shuffle_buffer, seed=config.seed,
      repeat=bool(config.steps_per_epoch)), task)
  test = _examples(pipeline.make_dataset(
      eval_src, config.pp_eval, config.batch_size, training=False,
      drop_remainder=False), task)
  validation = None if val_src is None else _examples(pipeline.make_dataset(
      val_src, config.pp_eval, config.batch_size, training=False,
      drop_remainder=False), task)
  if multilabel:
    model.compile(optimizer=keras.optimizers.Adam(config.lr),
                  loss=masked_binary_crossentropy)
    monitor, mode = "val_loss", "min"
  else:
    model.compile(optimizer=keras.optimizers.Adam(config.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    monitor, mode = "val_accuracy", "max"
  _fresh_start(workdir)
  callbacks = [keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"))]
  chooser = None
  if validation is not None:
    chooser = BestEpoch(workdir, monitor, mode, config.early_stopping_patience)
    callbacks.append(chooser)
  # Last: its epoch-end backup is written after the choice above, so a kill
  # between the two repeats that epoch (and overwrites its score) on resume.
  callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup")))
  history = model.fit(train, validation_data=validation, epochs=config.epochs,
                      steps_per_epoch=config.steps_per_epoch or None,
                      callbacks=callbacks, verbose=2)
  model.save(os.path.join(workdir, "final.keras"))
  result = {"init": init, "task": task, "freeze_up_to": config.freeze_up_to,
            "eval_split": config.dataset.eval_split,
            "epochs_run": len(history.history["loss"])}
  if chooser is not None:
    state = chooser.state
    result.update(epochs_run=len(state["scores"]), selected_epoch=state["best_epoch"],
                  validation_size=int(config.validation_size),
                  validation_metric=monitor.replace("val_", ""),
                  validation_best=state["best"],
                  validation_per_epoch=[state["scores"][str(e)]
                                        for e in range(1, len(state["scores"]) + 1)
                                        if str(e) in state["scores"]])
    # The chosen epoch's weights; the test split is scored on them alone.
    model.load_weights(os.path.join(workdir, "best.keras"))
  else:
    result.update(selected_epoch=result["epochs_run"], validation_size=0)
  result.update(_score(model, test, multilabel))
  workdir_lib.atomic_write(os.path.join(workdir, RESULTS_FILE),
                           json.dumps(result, indent=2))
  return model, result


def _score(model, test, multilabel):
  """The test split's accuracy and loss, or VOC 2007 AP per class and mAP."""
  if not multilabel:
    loss, accuracy = model.evaluate(test, verbose=0)
    return {"eval_accuracy": float(accuracy), "eval_loss": float(loss)}
  scores, labels = [], []
  for images, y in test:
    scores.append(model(images, training=False).numpy())
    labels.append(y.numpy())
  scores, labels = np.concatenate(scores), np.concatenate(labels)
  present = [c for c in range(labels.shape[1]) if (labels[:, c] == 1).any()]
  ap = evaluation.voc07_map(scores[:, present], labels[:, present] == 1,
                 labels[:, present] == -1)
  return {"eval_map": ap["map"],
          "eval_ap": {int(c): a for c, a in zip(present, ap["ap"])},
          "classes_without_positives": [c for c in range(labels.shape[1])
                                        if c not in present]}
