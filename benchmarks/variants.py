"""One benchmark variant (phase x global batch x XLA x precision), built the
same way for every script that times or profiles it."""

from __future__ import annotations

from artifact_spotting.config import PRECISIONS


def parse_variant(text):
  """'spotter:64:noxla:float32' -> ('spotter', 64, False, 'float32')."""
  parts = text.split(":")
  if (len(parts) != 4 or parts[0] not in ("spotter", "autoencoder", "features")
      or not parts[1].isdigit() or parts[2] not in ("xla", "noxla")
      or parts[3] not in PRECISIONS):
    raise SystemExit(f"bad variant {text!r}: want phase:batch:xla|noxla:precision "
                     "with phase spotter|autoencoder|features and precision "
                     + "|".join(PRECISIONS))
  return parts[0], int(parts[1]), parts[2] == "xla", parts[3]


def build_variant(config, phase: str, batch: int, jit: bool, precision: str):
  """(model, multi-step loop, real-input dataset, (strategy, source,
  preprocessing, one-step function)) of a variant.

  ``loop(iterator, n)`` runs n steps of ``phase`` in one tf.function; shared
  with benchmarks/profile_ops.py so both time the same step.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting import train_lib  # pylint: disable=g-import-not-at-top
  from artifact_spotting.data import pipeline  # pylint: disable=g-import-not-at-top
  config.train.precision = precision
  strategy = tf.distribute.get_strategy()
  source = pipeline.open_source(config.dataset, config.channels)
  players = train_lib.Players(config, strategy, probe=source.has_label)
  model = players.model
  if phase == "autoencoder":
    fn = lambda b: model.autoencoder_step(b, players.ae_opt)
    pp = config.pp
  elif phase == "spotter":
    fn = lambda b: model.adversarial_step(b, players.c_opt, players.r_opt,
                                          players.probe_opt)
    pp = config.pp
  else:
    from artifact_spotting import evaluation  # pylint: disable=g-import-not-at-top
    extractor = evaluation.discriminator_extractor(model.discriminator, 9216)
    fn = lambda b: {"sum": tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32))
                                     for v in extractor._fn(b["image"]).values()])}  # pylint: disable=protected-access
    pp = config.pp.replace("|flip_lr", "")
  ds = pipeline.distributed_dataset(strategy, source, pp, batch,
                                    shuffle_buffer=config.dataset.shuffle_buffer)
  return model, train_lib.make_loop(strategy, fn, jit), ds, (strategy, source, pp, fn)
