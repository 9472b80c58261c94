"""How one replica runs a train step: with or without XLA, with synchronized
or per-replica batch norm.

The train steps (``ArtifactSpotter.autoencoder_step`` and
``adversarial_step``) are split into a compute part (forward passes, losses,
gradients) and an apply part (optimizer updates with their gradient
all-reduce, batch-norm moving statistics, the history buffer).
``run_compute`` runs the compute part, compiled with XLA when the step mode
asks for it, and ``apply_writes`` makes the variable writes the compute part
deferred. No collective runs inside the XLA computation: under
MirroredStrategy on CPUs and under MultiWorkerMirroredStrategy, TensorFlow
implements replica-context collectives with ``merge_call`` or with
collective ops that an XLA computation on a CPU cannot contain, so they stay
in the surrounding graph, which runs them on every replica.

The mode is a trace-time setting (``step_mode``): the trainer's loop
(``train_lib.make_loop``) enters it around ``strategy.run``, and the steps and
``blocks.BatchNorm`` read it while they are traced.
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import tensorflow as tf
from absl import logging

from artifact_spotting.config import BATCH_NORM_MODES


def xla_batch_norm_problem(xla: bool, replicas: int, batch_norm: str):
  """Why XLA cannot run with ``batch_norm`` on ``replicas`` replicas, or None.

  The one statement of the rule: the trainer refuses such a config
  (resolve_batch_norm) and a step refuses such a mode (run_compute)."""
  if xla and replicas > 1 and batch_norm == "sync":
    return ("synchronized batch norm reduces each layer's statistics across "
            "replicas inside the forward pass, and tf.distribute does that "
            "with merge_call, which an XLA-compiled function cannot contain "
            "(TensorFlow: 'merge_call called while defining a new graph or a "
            "tf.function'; measured on CPUs, GPUs not tried)")
  return None


def resolve_batch_norm(requested: str, xla: bool, replicas: int,
                       jit_compile: str = "on") -> str:
  """config.distribute.batch_norm for a run: "sync" or "per_replica" as
  given, "auto" -> "per_replica" under XLA on several replicas (logged as a
  warning), else "sync". Raises ValueError for XLA with "sync" on several
  replicas (xla_batch_norm_problem); ``jit_compile`` is the config's
  setting, named in that message."""
  batch_norm = requested
  if batch_norm == "auto":
    batch_norm = "per_replica" if xla and replicas > 1 else "sync"
    if batch_norm == "per_replica":
      logging.warning(
          "XLA on %d replicas: batch norm per replica (each replica "
          "normalises with its own part of the batch). Synchronized batch "
          "norm on several replicas needs jit_compile='off'.", replicas)
  problem = xla_batch_norm_problem(xla, replicas, batch_norm)
  if problem:
    raise ValueError(
        f"config.train.jit_compile={jit_compile!r} on {replicas} replicas needs "
        f"config.distribute.batch_norm='per_replica': {problem}. Set "
        "config.distribute.batch_norm='per_replica' (each replica normalises "
        "with its own statistics) or jit_compile='off'")
  return batch_norm


@dataclasses.dataclass(frozen=True)
class StepMode:
  """xla: compile each replica's compute part with XLA.
  batch_norm: "sync" normalises with the statistics of the global batch
  (a cross-replica reduction inside every batch-norm layer); "per_replica"
  with the statistics of the replica's own part of it, and the moving
  statistics become the mean over replicas of each replica's update."""
  xla: bool = False
  batch_norm: str = "sync"
  # Compiled compute functions by the step's key (see run_compute).
  compiled: dict = dataclasses.field(default_factory=dict, compare=False)


# Read in every replica's thread while the steps are traced, so a module
# global (not thread-local) set by the thread that calls strategy.run.
_MODE = StepMode()


@contextlib.contextmanager
def step_mode(xla: bool = False, batch_norm: str = "sync", compiled=None):
  """Steps traced inside run under this mode (see StepMode).

  ``compiled``: a dict that keeps the XLA-compiled compute functions of the
  steps traced inside, so that a step traced twice (a loop traces its first
  step and its loop body separately) is compiled once per replica. Pass the
  same dict for every trace of one step function (train_lib.make_loop keeps
  one per loop); None: a fresh one.
  """
  global _MODE
  if batch_norm not in BATCH_NORM_MODES:
    raise ValueError(f"batch_norm={batch_norm!r} must be one of {BATCH_NORM_MODES}")
  before = _MODE
  _MODE = StepMode(bool(xla), batch_norm, {} if compiled is None else compiled)
  try:
    yield _MODE
  finally:
    _MODE = before


def current() -> StepMode:
  return _MODE


def num_replicas() -> int:
  ctx = tf.distribute.get_replica_context()
  return ctx.num_replicas_in_sync if ctx is not None else 1


def local_batch_norm() -> bool:
  """Whether batch-norm layers normalise with the replica's own statistics:
  with one replica (they are the global ones) or in per-replica mode."""
  return num_replicas() == 1 or _MODE.batch_norm == "per_replica"


class _DeferredWrites(keras.StatelessScope):
  """A StatelessScope that remembers which variables were written, in order
  (reads inside still see the latest written value)."""

  def __init__(self):
    super().__init__(initialize_variables=False)
    self.written = []

  def add_update(self, update):
    if id(update[0]) not in self.state_mapping:
      self.written.append(update[0])
    super().add_update(update)


@tf.autograph.experimental.do_not_convert
def run_compute(key, fn, *args):
  """``fn(*args)`` for one replica -> (its outputs, deferred variable writes).

  Writes are deferred (returned as [(variable, value)] for ``apply_writes``)
  when the step mode compiles with XLA or when batch-norm statistics are per
  replica on several replicas (their moving averages are then averaged over
  replicas, a collective). Otherwise ``fn`` runs as it is and writes in place.
  Under XLA, ``fn`` must not run collectives; with synchronized batch norm
  and several replicas it would, and that is refused here.

  ``key`` names the step (e.g. "adversarial"): under XLA the compiled
  function is kept in the step mode's ``compiled`` under (key, replica id)
  and reused when the same step is traced again in that mode, so ``fn`` must
  take every tensor it reads (other than variables) as an argument.
  """
  mode = _MODE
  n = num_replicas()
  problem = xla_batch_norm_problem(mode.xla, n, mode.batch_norm)
  if problem:
    raise ValueError(f"XLA with synchronized batch norm on several replicas: "
                     f"{problem}; use batch_norm='per_replica'")
  if not (mode.xla or (n > 1 and mode.batch_norm == "per_replica")):
    return fn(*args), []
  ctx = tf.distribute.get_replica_context()
  # A constant tensor under MirroredStrategy (one trace per replica); None
  # where all replicas share one trace (TPUStrategy).
  rid = tf.get_static_value(ctx.replica_id_in_sync_group) if ctx is not None else 0
  cache_key = (key, None if rid is None else int(rid))
  if mode.xla and cache_key in mode.compiled:
    run, written = mode.compiled[cache_key]
  else:
    written = []

    def run(*args):
      with _DeferredWrites() as scope:
        outputs = fn(*args)
      written[:] = scope.written
      return outputs, [scope.get_current_value(v) for v in scope.written]

    if mode.xla:
      run = tf.function(run, jit_compile=True, autograph=False)
      mode.compiled[cache_key] = (run, written)
  outputs, values = run(*args)
  return outputs, list(zip(written, values))


@tf.autograph.experimental.do_not_convert
def apply_writes(writes):
  """Assigns the writes ``run_compute`` deferred. With several replicas the
  floating-point ones (batch-norm moving statistics) are averaged over
  replicas first, so every replica's copy keeps the same value; integer
  state (random seed counters) is written as each replica computed it."""
  if not writes:
    return
  ctx = tf.distribute.get_replica_context()
  floats = [i for i, (_, v) in enumerate(writes) if v.dtype.is_floating]
  values = [v for _, v in writes]
  if ctx is not None and ctx.num_replicas_in_sync > 1 and floats:
    means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [values[i] for i in floats])
    for i, m in zip(floats, means):
      values[i] = m
  for (variable, _), value in zip(writes, values):
    variable.assign(value)


@tf.autograph.experimental.do_not_convert
def agree_on_overflow(grads, optimizer):
  """``grads``, made non-finite on every replica when they are on any.

  keras.optimizers.LossScaleOptimizer (mixed_float16) decides whether to
  skip a step from the first replica's gradients alone (it assumes they are
  already all-reduced; they are not, the inner optimizer all-reduces them
  later), so an overflow on another replica would be applied as inf. Other
  optimizers, and one replica, get ``grads`` back unchanged.
  """
  ctx = tf.distribute.get_replica_context()
  if (getattr(optimizer, "dynamic_scale", None) is None or ctx is None
      or ctx.num_replicas_in_sync == 1):
    return grads
  present = [g for g in grads if g is not None]
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in present])
  overflows = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                             1.0 - tf.cast(finite, tf.float32))
  poison = tf.where(overflows > 0, float("nan"), 0.0)
  return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]
