"""Pretraining: phase 1 (autoencoder), then phase 2 (damage, repair, spot).

Order of business in ``train``: setup -> strategy -> workdir (lock, resume
check; workdir.open_workdir) -> input -> train state (train_state.Players:
model and optimizers) -> restore (checkpoints.Keeper) -> config record ->
phase loops (make_loop, run_phase). Restore order: the workdir's newest
readable checkpoint (resume), else from scratch. Each phase's step count is
a variable of the train state (train_state.StepCounters), so a rerun
continues whichever phase is unfinished.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from artifact_spotting import checkpoints
from artifact_spotting import config as config_lib
from artifact_spotting import distribute
from artifact_spotting import precision as precision_lib
from artifact_spotting import workdir as workdir_lib
from artifact_spotting.data import pipeline
from artifact_spotting.models import replica
from artifact_spotting.train_state import Players, init_autoencoder


class SetupError(ValueError):
  """A config or workdir problem found before any training step ran."""


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
              checkpoint_every: int, keeper: checkpoints.Keeper, writer,
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
    jit = distribute.resolve_jit(config.train.jit_compile, strategy)
    batch_norm = replica.resolve_batch_norm(
        config.distribute.get("batch_norm", "auto"), jit != "off",
        strategy.num_replicas_in_sync, config.train.jit_compile)
    # config.json records the batch norm the run trains with, not "auto": a
    # resume whose XLA setting or replica count would resolve "auto" to the
    # other mode is then refused by the comparison below.
    config.distribute.batch_norm = batch_norm
    # Likewise the precision: "auto" is resolved once, when the run starts,
    # and a resume keeps what config.json recorded (float32 for a
    # config.json that records no precision).
    recorded = workdir_lib.read_config(workdir)
    requested = config.train.precision
    config.train.precision = precision_lib.resolve_precision(
        requested, recorded["train"].get("precision", "float32") if recorded else None)
    why = ""
    if requested == "auto":
      why = (" (train.precision=auto: "
             + ("as this run recorded" if recorded else precision_lib.auto_precision()[1]) + ")")
    logging.info("Precision %s%s.", config.train.precision, why)
    chief = distribute.is_chief(strategy)
    changes, claim = workdir_lib.open_workdir(
        config, workdir, chief, held, has_checkpoint=bool(checkpoints.checkpoint_paths(
            os.path.join(workdir, workdir_lib.CHECKPOINT_DIR))))
    source = pipeline.open_source(config.dataset, config.channels)
    use_probe = bool(config.probe.enabled and source.has_label)
    players = Players(config, strategy, probe=use_probe)
    keeper = checkpoints.Keeper(players.checkpoint, workdir, strategy,
                                config.train.keep_checkpoints, reader=players.reader)
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
    workdir_lib.write_config(config, workdir)
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

  writer = (tf.summary.create_file_writer(os.path.join(workdir, workdir_lib.TENSORBOARD_DIR))
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
    ae_loop = make_loop(strategy, players.autoencoder_step,
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
        lambda b: players.adversarial_step(b, probe_opt),
        jit != "off", batch_norm, stop=stop.flag)
    it = iter(dataset(adv_batch, config.seed + 1, players.adv_step))
    if players.adv_step == 0:
      on_summary(0)
    results["spotter"] = run_phase(
        name="spotter", loop=adv_loop, iterator=it,
        step_of=lambda: players.adv_step, total=config.spotter.steps,
        global_batch=adv_batch, log_every=t.log_every,
        checkpoint_every=t.checkpoint_every, keeper=keeper, writer=writer,
        lr_of={"discriminator": lambda: float(players.discriminator_opt.learning_rate),
               "repair": lambda: float(players.repair_opt.learning_rate)},
        on_summary=on_summary, summary_every=t.summary_every,
        show=("class_loss", "real_accuracy", "fake_accuracy", "mask_accuracy",
              "adversarial", "accuracy"), stop=stop)
  if chief:
    summary = {k: v for k, v in results.items() if v}
    if summary:
      # Atomic: a run killed while writing keeps the previous summary whole.
      workdir_lib.atomic_write(os.path.join(workdir, workdir_lib.SUMMARY_FILE),
                               json.dumps(summary, indent=2, sort_keys=True))
  return results
