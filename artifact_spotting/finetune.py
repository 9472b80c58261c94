"""Fine-tuning (or linear probing) a pretrained discriminator with Keras fit.

The backbone comes from a pretraining workdir, an export version folder or a
``discriminator.keras`` file; conv1..``freeze_up_to`` stay frozen (their batch
norms in inference mode), a dropout + dense head on flattened conv5 is trained.
Callbacks: ModelCheckpoint (best by validation accuracy), TensorBoard,
EarlyStopping and BackupAndRestore (a rerun resumes an interrupted fit).
"""

from __future__ import annotations

import json
import os

import keras

from artifact_spotting.data import pipeline
from artifact_spotting.models.discriminator import FEATURE_NAMES, Discriminator


def load_backbone(init: str) -> keras.Model:
  """A functional model images -> discriminator outputs, from ``init``."""
  from artifact_spotting import export as export_lib  # pylint: disable=g-import-not-at-top
  if init.endswith(".keras"):
    if not os.path.exists(init):
      raise FileNotFoundError(f"--init {init} does not exist")
    return keras.saving.load_model(init, safe_mode=True)
  keras_file = os.path.join(init, "discriminator.keras")
  if os.path.exists(keras_file):
    return keras.saving.load_model(keras_file, safe_mode=True)
  config, players = export_lib.restore_players(init)
  return export_lib.backbone_model(players.model, config.resolution, config.channels)


def discriminator_of(backbone: keras.Model) -> Discriminator:
  found = [l for l in backbone.layers if isinstance(l, Discriminator)]
  if len(found) != 1:
    raise ValueError("the backbone model holds no artifact_spotting Discriminator")
  return found[0]


def build_classifier(backbone: keras.Model, num_classes: int, freeze_up_to: str,
                     dropout: float) -> keras.Model:
  disc = discriminator_of(backbone)
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


def _supervised(ds):
  return ds.map(lambda ex: (ex["image"], ex["label"]))


def finetune(config, init: str, workdir: str):
  os.makedirs(workdir, exist_ok=True)
  keras.utils.set_random_seed(config.seed)
  backbone = load_backbone(init)
  model = build_classifier(backbone, config.num_classes, config.freeze_up_to,
                           config.head_dropout)
  train_src = pipeline.open_source(config.dataset, config.channels,
                                   split=config.dataset.train_split)
  eval_src = pipeline.open_source(config.dataset, config.channels,
                                  split=config.dataset.eval_split, training=False)
  if not train_src.has_label:
    raise ValueError(f"config.dataset {config.dataset.name}:"
                     f"{config.dataset.train_split} has no labels to fine-tune on")
  train = _supervised(pipeline.make_dataset(
      train_src, config.pp_train, config.batch_size, training=True,
      shuffle_buffer=config.dataset.shuffle_buffer, seed=config.seed,
      repeat=bool(config.steps_per_epoch)))
  evaluation = _supervised(pipeline.make_dataset(
      eval_src, config.pp_eval, config.batch_size, training=False,
      drop_remainder=False))
  model.compile(optimizer=keras.optimizers.Adam(config.lr),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  callbacks = [
      keras.callbacks.ModelCheckpoint(os.path.join(workdir, "best.keras"),
                                      monitor="val_accuracy", save_best_only=True),
      keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard")),
      keras.callbacks.EarlyStopping(monitor="val_accuracy",
                                    patience=config.early_stopping_patience,
                                    restore_best_weights=True),
      keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup")),
  ]
  history = model.fit(train, validation_data=evaluation, epochs=config.epochs,
                      steps_per_epoch=config.steps_per_epoch or None,
                      callbacks=callbacks, verbose=2)
  loss, accuracy = model.evaluate(evaluation, verbose=0)
  result = {"init": init, "freeze_up_to": config.freeze_up_to,
            "eval_split": config.dataset.eval_split, "eval_accuracy": float(accuracy),
            "eval_loss": float(loss), "epochs_run": len(history.history["loss"])}
  with open(os.path.join(workdir, "finetune_results.json"), "w") as f:
    json.dump(result, f, indent=2)
  return model, result
