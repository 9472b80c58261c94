"""One benchmark variant (phase x global batch x XLA x precision x replicas),
built the same way for every script that times or profiles it."""

from __future__ import annotations

import re
from typing import NamedTuple

from artifact_spotting.config import PRECISIONS

PHASES = ("spotter", "autoencoder", "features")
# keras_fit: the spotter phase written the plain Keras way, under Model.fit
# (benchmarks/keras_plain.py); float32 on one replica only.
ROW_PHASES = PHASES + ("keras_fit",)


class Variant(NamedTuple):
  phase: str
  batch: int
  jit: bool
  precision: str
  replicas: int = 1  # > 1: MirroredStrategy over that many logical CPUs


def parse_variant(text):
  """'spotter:64:noxla:float32' -> ('spotter', 64, False, 'float32'): the
  four-field form (one replica, our step); parse_row reads the longer rows."""
  parts = text.split(":")
  if (len(parts) != 4 or parts[0] not in PHASES
      or not parts[1].isdigit() or parts[2] not in ("xla", "noxla")
      or parts[3] not in PRECISIONS):
    raise SystemExit(f"bad variant {text!r}: want phase:batch:xla|noxla:precision "
                     "with phase spotter|autoencoder|features and precision "
                     + "|".join(PRECISIONS))
  return parts[0], int(parts[1]), parts[2] == "xla", parts[3]


def parse_row(text) -> Variant:
  """A row of benchmarks/throughput.py: phase:batch:xla|noxla:precision[:rN]
  with phase also keras_fit (float32, one replica only), and rN (N >= 1)
  the step on N logical CPU devices (distribute.logical_cpus=N); without
  it, one replica on the default strategy. Every string parse_variant takes gives
  the same first four fields and one replica."""
  parts = text.split(":")
  replicas = 1
  if len(parts) == 5 and re.fullmatch(r"r[1-9][0-9]*", parts[4]):
    replicas = int(parts.pop()[1:])
  if (len(parts) != 4 or parts[0] not in ROW_PHASES or not parts[1].isdigit()
      or parts[2] not in ("xla", "noxla") or parts[3] not in PRECISIONS
      or (parts[0] == "keras_fit" and (replicas != 1 or parts[3] != "float32"))):
    raise SystemExit(f"bad variant {text!r}: want phase:batch:xla|noxla:precision"
                     "[:rN] with phase " + "|".join(ROW_PHASES) + ", precision "
                     + "|".join(PRECISIONS) + " and N >= 1 logical CPUs "
                     "(keras_fit: float32 and r1 only)")
  return Variant(parts[0], int(parts[1]), parts[2] == "xla", parts[3], replicas)


def variant_name(v) -> str:
  """The string parse_row reads back into ``v`` (no :r1 suffix)."""
  v = Variant(*v)
  return (f"{v.phase}:{v.batch}:{'xla' if v.jit else 'noxla'}:{v.precision}"
          + (f":r{v.replicas}" if v.replicas != 1 else ""))


def build_variant(config, phase: str, batch: int, jit: bool, precision: str,
                  replicas: int = 1):
  """(model, multi-step loop, real-input dataset, (strategy, source,
  preprocessing, one-step function)) of a variant.

  ``loop(iterator, n)`` runs n steps of ``phase`` in one tf.function.
  ``replicas`` > 1 mirrors over that many logical CPU devices, as distribute.logical_cpus
  does (call before anything starts TensorFlow's runtime), with batch norm
  as config.distribute.batch_norm="auto" chooses (replica.resolve_batch_norm).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from artifact_spotting import train_state  # pylint: disable=g-import-not-at-top
  from artifact_spotting import distribute, train_lib  # pylint: disable=g-import-not-at-top
  from artifact_spotting.data import pipeline  # pylint: disable=g-import-not-at-top
  from artifact_spotting.models import replica  # pylint: disable=g-import-not-at-top
  config.train.precision = precision
  if replicas > 1:
    config.distribute.update(strategy="mirrored", logical_cpus=replicas)
    strategy = distribute.make_strategy(config.distribute)
  else:
    strategy = tf.distribute.get_strategy()
  batch_norm = replica.resolve_batch_norm("auto", bool(jit), replicas)
  config.distribute.batch_norm = batch_norm
  source = pipeline.open_source(config.dataset, config.channels)
  players = train_state.Players(config, strategy, probe=source.has_label)
  model = players.model
  if phase == "autoencoder":
    fn = players.autoencoder_step  # the trainer's steps, counted
    pp = config.pp
  elif phase == "spotter":
    fn = lambda b: players.adversarial_step(b, players.probe_opt)
    pp = config.pp
  else:
    from artifact_spotting import evaluation  # pylint: disable=g-import-not-at-top
    extractor = evaluation.discriminator_extractor(model.discriminator, 9216)
    fn = lambda b: {"sum": tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32))
                                     for v in extractor.fn(b["image"]).values()])}
    pp = config.pp.replace("|flip_lr", "")
  ds = pipeline.distributed_dataset(strategy, source, pp, batch,
                                    shuffle_buffer=config.dataset.shuffle_buffer)
  loop = train_lib.make_loop(strategy, fn, jit, batch_norm)
  return model, loop, ds, (strategy, source, pp, fn)
