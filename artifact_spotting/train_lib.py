"""Pretraining: phase 1 (autoencoder), then phase 2 (damage, repair, spot).

Order of business in ``train``: setup -> strategy -> workdir (lock, resume
check; see workdir.py) -> input -> model and optimizers -> restore -> config
record -> phase loops. Restore order: the workdir's newest readable
checkpoint (resume), else from scratch. Each phase's step count is its
optimizer's ``iterations``, so a rerun continues whichever phase is unfinished.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Callable, Dict, Optional, Tuple

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from artifact_spotting import config as config_lib
from artifact_spotting import distribute
from artifact_spotting import hardware
from artifact_spotting import workdir as workdir_lib
from artifact_spotting.data import pipeline
from artifact_spotting.models import replica
from artifact_spotting.models.spotter import ArtifactSpotter
from artifact_spotting.optimizers import FusedAdam
from artifact_spotting.schedules import LinearDecay

CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"


class SetupError(ValueError):
  """A config or workdir problem found before any training step ran."""


# ------------------------------------------------------------------- pieces
def make_adam(lr: float, steps: int, opt_cfg, name: str, precision="float32"):
  """FusedAdam with the learning rate decaying linearly from ``lr`` to
  ``lr * end_lr_ratio`` over ``decay_fraction`` of ``steps``, then constant;
  with loss scaling for mixed_float16."""
  # Our LinearDecay, not keras' PolynomialDecay(power=1): the same line, but
  # keras computes (lr - end) * (1 - t) + end where we compute
  # lr * (1 - t * (1 - ratio)), and in float32 the two differ by up to tens
  # of ulps at most steps of the schedule (tests/test_train.py compares
  # them), which would change every run's numerics.
  schedule = LinearDecay(lr, int(math.ceil(opt_cfg.decay_fraction * steps)),
                         opt_cfg.end_lr_ratio)
  adam = FusedAdam(learning_rate=schedule, beta_1=opt_cfg.beta1,
                   beta_2=opt_cfg.beta2, epsilon=opt_cfg.epsilon, name=name)
  if precision == "mixed_float16":  # float16 gradients need loss scaling
    return keras.optimizers.LossScaleOptimizer(adam, name=name)
  return adam


@contextlib.contextmanager
def precision_policy(name: str):
  """Layers built inside compute in ``name``'s dtype ("float32",
  "mixed_bfloat16", "mixed_float16"; variables stay float32); the global
  Keras policy is restored afterwards."""
  before = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(before)


def _accelerator() -> Optional[str]:
  """"GPU" or "TPU" when TensorFlow sees one, else None (CPU only)."""
  for kind in ("TPU", "GPU"):
    if tf.config.list_logical_devices(kind):
      return kind
  return None


def auto_precision() -> Tuple[str, str]:
  """(precision, why) that train.precision="auto" picks on this machine:
  mixed_float16 on GPUs, mixed_bfloat16 on TPUs and on CPUs with bfloat16
  units, float32 on other CPUs."""
  kind = _accelerator()
  if kind == "GPU":
    return "mixed_float16", "a GPU (TensorFlow's mixed-precision recipe for GPUs)"
  if kind == "TPU":
    return "mixed_bfloat16", "a TPU"
  if hardware.cpu_has_bf16_units():
    return "mixed_bfloat16", ("a CPU with bfloat16 units (adversarial step 1.46x "
                              "float32's, results/throughput_cpu2_avx512_bf16.md)")
  return "float32", ("a CPU without bfloat16 units (mixed_bfloat16 ran at 0.20x "
                     "float32's there, results/throughput_cpu2_avx2.md)")


def resolve_precision(requested: str, recorded: Optional[str] = None) -> str:
  """The precision a run trains in: ``requested`` unless it is "auto"; then
  ``recorded`` (what the workdir's config.json says the run trained in, so
  a resumed run keeps its precision) or, for a new run, auto_precision()."""
  if requested != "auto":
    return requested
  if recorded is not None:
    return recorded
  return auto_precision()[0]


def warn_slow_precision(precision: str) -> Optional[str]:
  """The warning logged for mixed_bfloat16 on a CPU without bf16 units."""
  if precision != "mixed_bfloat16":
    return None
  if _accelerator() is not None:
    return None
  if hardware.cpu_has_bf16_units() is not False:
    return None
  msg = ("train.precision=mixed_bfloat16 on a CPU without bfloat16 units "
         "(no avx512_bf16/amx_bf16 in /proc/cpuinfo): TensorFlow emulates "
         "bfloat16 there; the adversarial step measured 0.20x its float32 "
         "speed, about 5x slower (results/throughput_cpu2_avx2.md). Use "
         "float32 or auto on this machine.")
  logging.warning(msg)
  return msg


def player_optimizer(config, name: str):
  """The optimizer the trainer makes for ``name`` (ae_optimizer: the
  autoencoder; c_optimizer / r_optimizer: the discriminator / the repair
  network) from ``config``, unbuilt. Reading a checkpoint's step counts
  through one (never built for variables) finds them under the names and
  wrappers the trainer saved them with (mixed_float16: the loss-scale
  optimizer's inner optimizer)."""
  lr, steps = {"ae_optimizer": (config.autoencoder.lr, config.autoencoder.steps),
               "c_optimizer": (config.spotter.lr, config.spotter.steps),
               "r_optimizer": (config.spotter.repair_lr, config.spotter.steps),
               }[name]
  return make_adam(lr, steps, config.optimizer, name,
                   resolve_precision(config.train.get("precision", "float32")))


class Players:
  """The model and one optimizer per player, built inside the strategy scope.

  The weights are initialised from ``config.seed`` (Keras, TF and NumPy global
  seeds are set here), so two runs of one config start from the same weights
  and different seeds start from different ones. The damage masks, noise and
  history draws are seeded by ``config.seed`` too (stateless, per step), and
  the input order by the data pipeline's seed.
  """

  def __init__(self, config, strategy, probe: bool = True):
    keras.utils.set_random_seed(int(config.seed))
    precision = resolve_precision(config.train.get("precision", "float32"))
    warn_slow_precision(precision)
    with strategy.scope():
      with precision_policy(precision):
        self.model = ArtifactSpotter(**config_lib.spotter_kwargs(config, probe),
                                     name="artifact_spotter")
        self.model.build()
      self.ae_opt = player_optimizer(config, "ae_optimizer")
      self.c_opt = player_optimizer(config, "c_optimizer")
      self.r_opt = player_optimizer(config, "r_optimizer")
      self.probe_opt = FusedAdam(config.probe.lr, name="probe_optimizer")
      m = self.model
      self.ae_opt.build(m.autoencoder_variables)
      self.c_opt.build(m.discriminator_variables)
      self.r_opt.build(m.generator_variables)
      self.probe_opt.build(m.probe_variables)
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, ae_optimizer=self.ae_opt, c_optimizer=self.c_opt,
        r_optimizer=self.r_opt, probe_optimizer=self.probe_opt)

  @property
  def ae_step(self) -> int:
    return int(self.ae_opt.iterations.numpy())

  @property
  def adv_step(self) -> int:
    return int(self.c_opt.iterations.numpy())


def checkpoint_paths(directory) -> list:
  """The checkpoints in ``directory``, newest first: those the
  CheckpointManager's ``checkpoint`` file lists, or every ``*.index`` when
  that file is missing or unreadable."""
  state = tf.train.get_checkpoint_state(directory)
  if state is not None:
    paths = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path not in paths:
      paths.append(state.model_checkpoint_path)
    return paths[::-1]
  found = [p[:-len(".index")] for p in tf.io.gfile.glob(
      os.path.join(directory, "*.index"))]
  return sorted(found, key=workdir_lib.checkpoint_number, reverse=True)


def checkpoint_problem(path: str, read_all: bool = False) -> Optional[str]:
  """Why the checkpoint ``path`` cannot be read, or None: an unreadable index
  or a missing data file; with ``read_all``, every tensor is read as well
  (checksums catch a truncated or corrupt data file)."""
  try:
    reader = tf.train.load_checkpoint(path)
    shards = tf.io.gfile.glob(path + ".data-*-of-*")
    if not shards:
      return "its .data file is missing"
    expected = int(shards[0].rsplit("-of-", 1)[1])
    if len(shards) != expected:
      return f"{expected - len(shards)} of its {expected} data files are missing"
    if read_all:
      for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)
  except Exception as e:  # pylint: disable=broad-except
    text = str(getattr(e, "message", None) or e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
  return None


def restore_newest(checkpoint, directory):
  """Restores the newest readable checkpoint in ``directory``.

  Returns (its path or None when the folder holds no checkpoint, the skipped
  unreadable ones as "name (why)"). A checkpoint that cannot be read (a data
  file missing or truncated, a corrupt index) is named in a warning and the
  one before it is tried. Raises ValueError when a readable checkpoint does
  not fit the model (e.g. the architecture changed since it was written), and
  when there are checkpoints but none can be read.
  """
  paths = checkpoint_paths(directory)
  skipped = []
  for path in paths:
    problem = checkpoint_problem(path)
    if problem is None:
      try:
        status = checkpoint.restore(path)
        status.assert_existing_objects_matched()
        status.expect_partial()
      except Exception as e:  # pylint: disable=broad-except
        problem = checkpoint_problem(path, read_all=True)
        if problem is None:
          raise ValueError(
              f"Checkpoint {path} does not match this config's model (was the "
              f"architecture changed since it was written?): {e}") from e
        # A later restore assigns every variable again; drop this attempt.
        status = None
        gc.collect()
      else:
        return path, skipped
    logging.warning("Checkpoint %s cannot be read (%s); trying the one before "
                    "it.", path, problem)
    skipped.append(f"{os.path.basename(path)} ({problem})")
  if skipped:
    raise ValueError(f"no checkpoint in {directory} can be read: "
                     f"{'; '.join(skipped)}. Move the folder away to start over")
  return None, skipped


def restore_latest(checkpoint, directory) -> Optional[str]:
  """restore_newest's path: the newest readable checkpoint restored, or None."""
  return restore_newest(checkpoint, directory)[0]


def newest_readable(directory) -> Optional[str]:
  """The newest checkpoint in ``directory`` whose files are all there."""
  for path in checkpoint_paths(directory):
    problem = checkpoint_problem(path)
    if problem is None:
      return path
    logging.warning("Checkpoint %s cannot be read (%s); trying the one before "
                    "it.", path, problem)
  return None


AUTOENCODER_FIELDS = ("stem_filters", "widths", "kernel_size", "decoder_widths")


def init_autoencoder(players: Players, config):
  """Starts phase 2 from another workdir's finished autoencoder.

  Restores the encoder and decoder (weights and batch norm statistics) from the
  newest checkpoint of ``config.autoencoder.init_from`` and marks phase 1 as
  done. Raises ValueError naming the problem when that workdir has no
  checkpoint, a different autoencoder, or an unfinished phase 1.
  """
  source = config.autoencoder.init_from
  latest = newest_readable(os.path.join(source, CHECKPOINT_DIR))
  if latest is None:
    raise ValueError(f"config.autoencoder.init_from={source!r} holds no checkpoint "
                     f"(expected {os.path.join(source, CHECKPOINT_DIR)})")
  with tf.io.gfile.GFile(os.path.join(source, "config.json")) as f:
    theirs = json.load(f)
  ours = config.to_dict()
  for key in AUTOENCODER_FIELDS + ("resolution", "channels"):
    mine = ours["autoencoder"].get(key, ours.get(key))
    other = theirs["autoencoder"].get(key, theirs.get(key))
    if json.loads(json.dumps(mine)) != other:
      raise ValueError(
          f"config.autoencoder.init_from={source!r} has {key}={other}, this "
          f"config {key}={mine}; the autoencoders must match")
  # The step count, read through an optimizer made as that run made its own
  # (never built for variables): with mixed_float16 it lives in the
  # loss-scale optimizer's inner optimizer.
  counter = player_optimizer(ml_collections.ConfigDict(theirs), "ae_optimizer")
  tf.train.Checkpoint(ae_optimizer=counter).restore(latest).expect_partial()
  steps = int(counter.iterations.numpy())
  done = max(int(theirs["autoencoder"]["steps"]), int(config.autoencoder.steps))
  if steps < done:
    raise ValueError(
        f"config.autoencoder.init_from={source!r}: its autoencoder has {steps} "
        f"steps, fewer than {done} (its own config's or this config's "
        f"autoencoder.steps); finish it first")
  model = players.model
  status = tf.train.Checkpoint(
      model=tf.train.Checkpoint(encoder=model.encoder, decoder=model.decoder),
  ).restore(latest)
  status.expect_partial()
  status.assert_existing_objects_matched()
  players.ae_opt.iterations.assign(config.autoencoder.steps)
  logging.info("Autoencoder from %s (%d steps); phase 1 skipped.", latest, steps)
  return latest


# jit_compile="auto" per kind of device the replicas run on.
AUTO_JIT = {
    # XLA makes both steps slower on CPUs, on one device and with replicas
    # on logical CPUs (docs/performance.md; results/throughput_*.md).
    "CPU": "off",
    # No GPU measurement: off until one shows XLA to be the faster choice.
    "GPU": "off",
    # TPUStrategy compiles every replica step with XLA by itself; the
    # trainer's own XLA compile of the compute part would add nothing.
    "TPU": "off",
}


def resolve_jit(mode: str, strategy) -> str:
  """``mode`` ("off", "on", "spotter") as it is; ``"auto"`` -> AUTO_JIT's
  choice for the kind of device ``strategy``'s replicas run on
  (distribute.device_kind: "CPU", "GPU" or "TPU"). The table gives "off"
  for every kind (reasons in AUTO_JIT), so the strategy changes the answer
  only where an entry differs.
  """
  if mode != "auto":
    return mode
  return AUTO_JIT[distribute.device_kind(strategy)]


class CheckpointKeeper:
  """Periodic/final checkpoints in workdir/checkpoints; only the chief keeps
  them (other workers write to a scratch dir that is removed again)."""

  def __init__(self, checkpoint, workdir, strategy, max_to_keep=3):
    self.chief = distribute.is_chief(strategy)
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not self.chief:
      directory = os.path.join(workdir, ".scratch", distribute.task_name(strategy))
    self.directory = directory
    self.manager = tf.train.CheckpointManager(checkpoint, directory,
                                              max_to_keep=max_to_keep)
    self.checkpoint = checkpoint
    self.main_dir = os.path.join(workdir, CHECKPOINT_DIR)
    self.skipped = []

  def restore(self) -> Optional[str]:
    path, self.skipped = restore_newest(self.checkpoint, self.main_dir)
    return path

  def _listing(self):
    """(the ``ckpt-*`` names in the checkpoint folder, the bytes of its
    ``checkpoint`` state file or None)."""
    names = set()
    if tf.io.gfile.isdir(self.directory):
      names = {n.rstrip("/") for n in tf.io.gfile.listdir(self.directory)
               if n.startswith("ckpt-")}
    state_path = os.path.join(self.directory, "checkpoint")
    state = None
    if tf.io.gfile.exists(state_path):
      with tf.io.gfile.GFile(state_path, "rb") as f:
        state = f.read()
    return names, state

  def _undo(self, before):
    """Removes what a failed save wrote (its ``ckpt-N.*`` files and
    ``ckpt-N_temp`` folder) and puts the state file back as it was, so the
    next start resumes from the newest intact checkpoint (or from scratch)
    instead of meeting a half-written one. Best effort: the disk may still
    refuse writes, and a leftover is then skipped or refused at the next
    start like any damaged checkpoint."""
    names, state = before
    now, now_state = self._listing()
    for name in sorted(now - names):
      path = os.path.join(self.directory, name)
      with contextlib.suppress(Exception):
        if tf.io.gfile.isdir(path):
          tf.io.gfile.rmtree(path)
        else:
          tf.io.gfile.remove(path)
    if now_state != state:
      state_path = os.path.join(self.directory, "checkpoint")
      with contextlib.suppress(Exception):
        if state is None:
          tf.io.gfile.remove(state_path)
        else:
          workdir_lib.atomic_write(state_path, state.decode("utf-8"))

  def save(self):
    """A new checkpoint; a failed write (a full or read-only disk) raises
    OSError, removes what it wrote and leaves the checkpoints already
    written as they were."""
    before = self._listing()
    try:
      path = self.manager.save()
    except BaseException as e:
      self._undo(before)
      if isinstance(e, tf.errors.OpError):
        raise workdir_lib.write_error(
            f"a checkpoint to {self.directory}", e,
            "; the checkpoints already there are kept") from e
      raise
    if not self.chief:
      shutil.rmtree(self.directory, ignore_errors=True)
    return path


class Progress:
  """One console line per log interval: step, images/s, ETA, a few metrics.

  Not keras.utils.Progbar: its line has no images/s figure ("name: value"
  pairs only), its ETA is an ANSI-bolded "12s"/"1:02" from the mean time per
  step since the start (the first interval's tracing and compilation
  included), and on a terminal it rewrites one line instead of printing one
  per interval. This line ("... 123.4 img/s ETA 00:01:02 loss=...") takes
  the ETA from the median rate of the last 5 intervals.
  """

  def __init__(self, phase, total, global_batch, stream=sys.stdout):
    self.phase, self.total, self.batch, self.stream = phase, total, global_batch, stream
    self.rates = []

  def update(self, step, steps_done, seconds, metrics, keys):
    rate = steps_done * self.batch / max(seconds, 1e-9)
    self.rates = (self.rates + [rate])[-5:]
    avg = float(np.median(self.rates))
    eta = (self.total - step) * self.batch / max(avg, 1e-9)
    width = 20
    filled = int(width * step / max(self.total, 1))
    bar = "=" * filled + ">" + "." * (width - filled)
    vals = " ".join(f"{k.split('/')[-1]}={metrics[k]:.3f}" for k in keys if k in metrics)
    line = (f"[{self.phase}] {step}/{self.total} [{bar[:width + 1]}] "
            f"{rate:.1f} img/s ETA {time.strftime('%H:%M:%S', time.gmtime(eta))} {vals}")
    print(line, file=self.stream, flush=True)
    return rate


# ------------------------------------------------------------ interruption
class Interrupted(Exception):
  """Training stopped on SIGTERM or SIGINT at a step boundary, after writing
  a checkpoint there; the message names the signal, the step and the
  checkpoint. ``signum`` is the signal's number."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class StopRequest:
  """While entered (in the main thread), SIGTERM and SIGINT ask training to
  stop at the next step boundary instead of ending the process.

  ``flag`` is a bool tf.Variable that make_loop's loop reads before every
  step. Python runs a signal handler only between bytecodes, which the main
  thread does not reach while a loop call runs its steps, so the signal is
  also written to a wakeup socket (signal.set_wakeup_fd) whose reader thread
  sets ``flag`` at once. A second signal ends the process the default way.
  Outside the main thread (or with ``enabled=False``) nothing is installed
  and ``flag`` stays False.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, enabled: bool = True):
    self.enabled = enabled
    self.flag = tf.Variable(False, trainable=False, name="stop_requested")
    self.signum: Optional[int] = None
    self._previous = None
    self._lock = threading.Lock()

  @property
  def requested(self) -> bool:
    return self.signum is not None or bool(self.flag.numpy())

  def signal_name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else "a signal"

  def _note(self, signum: int):
    with self._lock:
      first, self.signum = self.signum is None, self.signum or signum
    if first:
      self.flag.assign(True)

  def _handler(self, signum, frame):
    del frame
    self._handled += 1
    if self._handled > 1:  # the second signal: end the default way
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self._note(signum)

  def _read_wakeups(self, sock):
    while True:
      try:
        data = sock.recv(64)
      except OSError:
        return
      if not data:
        return
      for signum in data:
        if signum in self.SIGNALS:
          self._note(signum)

  def __enter__(self):
    if not self.enabled or threading.current_thread() is not threading.main_thread():
      return self
    import socket  # pylint: disable=g-import-not-at-top
    self._handled = 0
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    self._sockets = (reader, writer)
    self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
    self._previous_fd = signal.set_wakeup_fd(writer.fileno(),
                                             warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._read_wakeups, args=(reader,),
                                    name="stop_request", daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    if self._previous is None:
      return
    signal.set_wakeup_fd(self._previous_fd)
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = None
    reader, writer = self._sockets
    writer.close()
    reader.shutdown(2)
    self._thread.join(5)
    reader.close()


# --------------------------------------------------------------------- loop
def make_loop(strategy, step_fn: Callable, jit_compile: bool,
              batch_norm: str = "sync", stop: Optional[tf.Variable] = None):
  """A tf.function running ``n`` steps on a distributed iterator and
  returning the metrics averaged over replicas and steps (one host sync per
  call, not per step).

  ``step_fn`` is an ArtifactSpotter step for one replica. With
  ``jit_compile`` XLA compiles each replica's compute (forward passes,
  losses, gradients) and the collectives (gradient all-reduce, moving
  statistics, the history all-gather) run outside it, with any strategy
  (models/replica.py). ``batch_norm``: "sync" or "per_replica" statistics
  (replica.StepMode); XLA with several replicas needs "per_replica".
  ``stop``: a bool variable (StopRequest.flag) read before each step after
  the first; once True the call returns after the steps it made (the
  metrics are their mean).
  """
  compiled = {}  # one XLA compilation per replica for both traces below

  def stopped():
    return False if stop is None else stop.read_value()

  def one(iterator):
    with replica.step_mode(xla=jit_compile, batch_norm=batch_norm,
                           compiled=compiled):
      per_replica = strategy.run(step_fn, args=(next(iterator),))
    return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
            for k, v in per_replica.items()}

  @tf.function
  def loop(iterator, n):
    acc = one(iterator)
    done = tf.constant(1, tf.int32)
    for _ in tf.range(n - 1):
      if stopped():
        break
      m = one(iterator)
      acc = {k: acc[k] + m[k] for k in acc}
      done += 1
    return {k: v / tf.cast(done, v.dtype) for k, v in acc.items()}
  return loop


def run_phase(*, name, loop, iterator, step_of: Callable[[], int],
              total: int, global_batch: int, log_every: int,
              checkpoint_every: int, keeper: CheckpointKeeper, writer,
              lr_of: Dict[str, Callable[[], float]],
              on_summary: Optional[Callable[[int], None]] = None,
              summary_every: int = 0, show=("loss",),
              stop: Optional[StopRequest] = None):
  """Runs phase ``name`` from its step to ``total``: a console line, scalars
  and (every ``checkpoint_every``) a checkpoint per ``log_every`` steps, a
  checkpoint at the end. When ``stop`` is requested (SIGTERM, SIGINT) the
  phase ends at the next step boundary, writes a checkpoint there and
  raises Interrupted."""
  step = step_of()
  if step >= total:
    logging.info("Phase %s already complete (%d/%d steps).", name, step, total)
    return None
  if stop is not None and stop.requested:  # between phases: saved already
    raise Interrupted(
        f"{stop.signal_name()} before phase {name} started (step {step}/"
        f"{total}); checkpoint {keeper.manager.latest_checkpoint} holds the "
        f"run so far: rerun the same command to resume", stop.signum)
  logging.info("Phase %s: steps %d -> %d, global batch %d.", name, step, total,
               global_batch)
  progress = Progress(name, total, global_batch)
  last_ckpt = step // checkpoint_every if checkpoint_every else 0
  last_summary = step // summary_every if summary_every else 0
  metrics = {}
  rates = []
  while step < total and not (stop is not None and stop.requested):
    n = min(log_every, total - step)
    t0 = time.perf_counter()
    out = loop(iterator, tf.constant(n, tf.int32))
    metrics = {k: float(v) for k, v in out.items()}
    seconds = time.perf_counter() - t0
    before, step = step, step_of()
    n = step - before  # fewer than asked when stopped early
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
      raise FloatingPointError(
          f"Phase {name}: non-finite {bad} at step {step}; the last good "
          f"checkpoint in {keeper.main_dir} is kept.")
    rate = progress.update(step, n, seconds, metrics, show)
    rates.append(rate)
    if writer is not None:
      with writer.as_default(step=step):
        for k, v in metrics.items():
          tf.summary.scalar(k, v)
        for k, fn in lr_of.items():
          tf.summary.scalar(f"lr/{k}", fn())
        tf.summary.scalar(f"perf/{name}_images_per_second", rate)
    if on_summary is not None and summary_every and (
        step // summary_every > last_summary or step >= total):
      last_summary = step // summary_every
      on_summary(step)
    if (checkpoint_every and step // checkpoint_every > last_ckpt and step < total
        and not (stop is not None and stop.requested)):
      last_ckpt = step // checkpoint_every
      keeper.save()
  path = keeper.save()
  if writer is not None:
    writer.flush()
  if step < total:
    raise Interrupted(
        f"{stop.signal_name()} at {name} step {step}/{total}: checkpoint "
        f"{path} written; rerun the same command to resume", stop.signum)
  # The first call traces (and compiles); report the steady-state rate.
  steady = rates[1:] or rates
  return {"steps": step, "images_per_second": float(np.median(steady)),
          "metrics": metrics}


def montage(parts):
  """[input, autoencoded, mask, repaired, predicted mask] -> one image [1, h, w, c]
  with one row per example."""
  row = tf.concat(parts, axis=2)
  return tf.reshape(row, [1, -1, row.shape[2], row.shape[3]])


# -------------------------------------------------------------------- train
def write_config(config, workdir):
  """workdir/config.json, atomically (never half-written)."""
  workdir_lib.atomic_write(os.path.join(workdir, workdir_lib.CONFIG_FILE),
                           config.to_json_best_effort(indent=2, sort_keys=True))


def open_workdir(config, workdir: str, chief: bool, held: contextlib.ExitStack):
  """Locks ``workdir`` for this run before anything is written to it.

  The chief creates the folder and takes its lock (released when ``held``
  closes; see workdir.WorkdirLock); every task checks the config against the
  recorded one (workdir.check_resume). Returns (accepted config changes,
  ``claim``). Until ``claim()`` runs the workdir is unchanged, so a start
  refused before it (``held`` closes unclaimed) leaves everything as it
  found it: a lock file and folders this start created are removed again;
  ``claim()`` (call it once every check passed) writes the lock record,
  removes half-written checkpoint folders and returns the record of a dead
  trainer whose lock was taken over, or None.
  """
  ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
  lock = None
  if chief:
    local = workdir_lib.is_local(workdir)
    created = workdir_lib.missing_dirs(workdir) if local else []
    claimed = []

    def undo_unclaimed():
      if not claimed:
        workdir_lib.remove_empty_dirs(created)
    held.callback(undo_unclaimed)  # runs after the lock's release below
    workdir_lib.make_dir(workdir)
    if local:
      lock = workdir_lib.WorkdirLock(workdir)
      lock.acquire()
      held.callback(lock.release)
    else:
      logging.warning("workdir %s is not a local path: no lock keeps a second "
                      "trainer out of it.", workdir)
  changes = workdir_lib.check_resume(
      workdir, json.loads(config.to_json_best_effort()),
      has_checkpoint=bool(checkpoint_paths(ckpt_dir)))
  for field, (old, new) in sorted(changes.items()):
    logging.info("Config change on resume: %s %r -> %r", field, old, new)

  def claim():
    if not chief:
      return None
    took_over = lock.claim() if lock is not None else None
    claimed.append(True)
    workdir_lib.remove_orphan_checkpoints(ckpt_dir)
    return took_over

  return changes, claim


def train(config, workdir: str, strategy=None) -> Dict[str, Dict]:
  """Runs (or resumes) both phases; returns per-phase summaries.

  The chief holds the workdir's lock from before its first write to the
  workdir until this returns. Problems found before the first step (a config
  field, the workdir in use or holding another run, the data, a checkpoint
  that does not fit the model) raise SetupError naming the cause, and the
  workdir's config.json and checkpoints stay as they were. A failed write (a
  full or read-only disk) raises OSError.
  """
  with contextlib.ExitStack() as held:
    return _train(config, workdir, strategy, held)


def _train(config, workdir: str, strategy, held: contextlib.ExitStack):
  # --- setup, strategy, workdir, input, model and optimizers, restore
  try:
    config_lib.validate(config, pp=False)
    if config.train.get("deterministic", False):
      # Process-wide, before any op runs: the same seed gives the same
      # weights, and a resumed run the uninterrupted run's.
      tf.config.experimental.enable_op_determinism()
    strategy = strategy or distribute.make_strategy(config.distribute)
    config_lib.check_pp(config)  # after the devices are set up: it starts TF
    jit = resolve_jit(config.train.jit_compile, strategy)
    batch_norm = config.distribute.get("batch_norm", "auto")
    replicas = strategy.num_replicas_in_sync
    if batch_norm == "auto":
      batch_norm = "per_replica" if jit != "off" and replicas > 1 else "sync"
      if batch_norm == "per_replica":
        logging.warning(
            "XLA on %d replicas: batch norm per replica (each replica "
            "normalises with its own part of the batch). Synchronized batch "
            "norm on several replicas needs jit_compile='off'.", replicas)
    if jit != "off" and replicas > 1 and batch_norm == "sync":
      raise ValueError(
          f"config.train.jit_compile={config.train.jit_compile!r} on "
          f"{replicas} replicas needs "
          "config.distribute.batch_norm='per_replica': synchronized batch norm "
          "reduces each layer's statistics across replicas inside the forward "
          f"pass, and {type(strategy).__name__} does that with merge_call, "
          "which an XLA-compiled function cannot contain (TensorFlow: "
          "'merge_call called while defining a new graph or a tf.function'; "
          "measured on CPUs, GPUs not tried). Set "
          "config.distribute.batch_norm='per_replica' (each replica normalises "
          "with its own statistics) or jit_compile='off'")
    # config.json records the batch norm the run trains with, not "auto": a
    # resume whose XLA setting or replica count would resolve "auto" to the
    # other mode is then refused by the comparison below.
    config.distribute.batch_norm = batch_norm
    # Likewise the precision: "auto" is resolved once, when the run starts,
    # and a resume keeps what config.json recorded (float32 for a
    # config.json that records no precision).
    recorded = workdir_lib.read_config(workdir)
    requested = config.train.precision
    config.train.precision = resolve_precision(
        requested, recorded["train"].get("precision", "float32") if recorded else None)
    why = ""
    if requested == "auto":
      why = (" (train.precision=auto: "
             + ("as this run recorded" if recorded else auto_precision()[1]) + ")")
    logging.info("Precision %s%s.", config.train.precision, why)
    chief = distribute.is_chief(strategy)
    changes, claim = open_workdir(config, workdir, chief, held)
    source = pipeline.open_source(config.dataset, config.channels)
    use_probe = bool(config.probe.enabled and source.has_label)
    players = Players(config, strategy, probe=use_probe)
    keeper = CheckpointKeeper(players.checkpoint, workdir, strategy,
                              config.train.keep_checkpoints)
    restored = keeper.restore()
    if "autoencoder.steps" in changes and players.adv_step > 0:
      old_steps, new_steps = changes["autoencoder.steps"]
      raise ValueError(
          f"config.autoencoder.steps: {old_steps!r} -> {new_steps!r} refused: "
          f"phase 2 has started (adversarial step {players.adv_step} in "
          f"{restored}), and more autoencoder steps would retrain the "
          f"autoencoder that phase 2 freezes under a spotter trained against "
          f"the old one; use another workdir (autoencoder.init_from can "
          f"start phase 2 from a longer-trained autoencoder)")
    if restored is None and config.autoencoder.init_from:
      init_autoencoder(players, config)
    took_over = claim()
  except ValueError as e:
    raise SetupError(str(e)) from e
  if chief:
    write_config(config, workdir)
    entry = workdir_lib.start_entry(restored, changes, took_over)
    if keeper.skipped:
      entry["unreadable_checkpoints"] = keeper.skipped
    workdir_lib.log_start(workdir, entry)
  logging.info("Strategy %s with %d replica(s); XLA: %s.", type(strategy).__name__,
               strategy.num_replicas_in_sync, jit)
  if restored:
    logging.info("Resumed from %s (autoencoder step %d, adversarial step %d).",
                 restored, players.ae_step, players.adv_step)
  model = players.model

  deterministic = bool(config.train.get("deterministic", False))

  def dataset(global_batch, seed, done):
    """The phase's input from step ``done`` on. train.deterministic: the
    batches an uninterrupted run sees from that step (the pipeline replays
    the ``done`` batches before it, decoding but not training); otherwise a
    fresh order seeded by the step, so a resume does not see the phase's
    first batches again."""
    if done and not deterministic:
      seed = seed + 1_000_003 * done
    return pipeline.distributed_dataset(
        strategy, source, config.pp, global_batch,
        shuffle_buffer=config.dataset.shuffle_buffer, seed=seed,
        cache=config.dataset.cache, skip=done if deterministic else 0)

  writer = (tf.summary.create_file_writer(os.path.join(workdir, TENSORBOARD_DIR))
            if chief else None)
  t = config.train
  results = {}
  # SIGTERM / SIGINT stop at a step boundary with a checkpoint. Not with
  # several workers: each would stop at its own step and leave the others
  # waiting in a collective (they keep the default: killed, rerun resumes).
  stop = held.enter_context(StopRequest(
      enabled=not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)))

  # --- phase 1: autoencoder
  ae_batch = config.autoencoder.batch_size
  if players.ae_step < config.autoencoder.steps:
    ae_loop = make_loop(strategy, lambda b: model.autoencoder_step(b, players.ae_opt),
                        jit == "on", batch_norm, stop=stop.flag)
    it = iter(dataset(ae_batch, config.seed, players.ae_step))
    results["autoencoder"] = run_phase(
        name="autoencoder", loop=ae_loop, iterator=it,
        step_of=lambda: players.ae_step, total=config.autoencoder.steps,
        global_batch=ae_batch, log_every=t.log_every,
        checkpoint_every=t.checkpoint_every, keeper=keeper, writer=writer,
        lr_of={"autoencoder": lambda: float(players.ae_opt.learning_rate)},
        show=("loss", "mse"), stop=stop)

  # --- phase 2: damage & repair vs. artifact spotter
  adv_batch = config.spotter.batch_size
  if players.adv_step < config.spotter.steps:
    samples = next(iter(pipeline.make_dataset(
        source, config.pp, t.montage_size, training=False, keep_label=False)))["image"]
    visualize = tf.function(model.visualize)

    def on_summary(step):
      if writer is None:
        return
      parts = visualize(samples, tf.constant(step, tf.int64))
      with writer.as_default(step=step):
        tf.summary.image("montage/input|autoencoded|mask|repaired|predicted_mask",
                         montage(parts), max_outputs=1)

    probe_opt = players.probe_opt if use_probe else None
    adv_loop = make_loop(
        strategy,
        lambda b: model.adversarial_step(b, players.c_opt, players.r_opt, probe_opt),
        jit != "off", batch_norm, stop=stop.flag)
    it = iter(dataset(adv_batch, config.seed + 1, players.adv_step))
    if players.adv_step == 0:
      on_summary(0)
    results["spotter"] = run_phase(
        name="spotter", loop=adv_loop, iterator=it,
        step_of=lambda: players.adv_step, total=config.spotter.steps,
        global_batch=adv_batch, log_every=t.log_every,
        checkpoint_every=t.checkpoint_every, keeper=keeper, writer=writer,
        lr_of={"discriminator": lambda: float(players.c_opt.learning_rate),
               "repair": lambda: float(players.r_opt.learning_rate)},
        on_summary=on_summary, summary_every=t.summary_every,
        show=("class_loss", "real_accuracy", "fake_accuracy", "mask_accuracy",
              "adversarial", "accuracy"), stop=stop)
  if chief:
    summary = {k: v for k, v in results.items() if v}
    if summary:
      # Atomic: a run killed while writing keeps the previous summary whole.
      workdir_lib.atomic_write(os.path.join(workdir, "train_summary.json"),
                               json.dumps(summary, indent=2, sort_keys=True))
  return results
