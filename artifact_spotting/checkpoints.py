"""A workdir's checkpoints: listing (newest first), checking, restoring the
newest intact one, and keeping them while training (``Keeper``). The trainer,
loading (evaluation, export, fine-tuning) and the benchmarks share these.

A checkpoint that cannot be read (a data file missing or truncated, a corrupt
index) is named in a warning and the one before it is used; a readable one
that does not fit the model is refused with the reason.

Each checkpoint holds the two phases' step counts as variables of their own
(``steps/autoencoder``, ``steps/adversarial``: train_state.StepCounters);
``steps_of`` reads them straight from the files, building nothing.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
from typing import Optional

import tensorflow as tf
from absl import logging

from artifact_spotting import distribute
from artifact_spotting import workdir as workdir_lib


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


# Where a checkpoint keeps each phase's step count: train_state.StepCounters,
# saved as ``steps``. Checkpoints written before the counters existed hold
# the count only as the phase's optimizer's iterations (with mixed_float16 in
# the loss-scale optimizer's inner optimizer): the fallbacks, in that order.
STEP_KEYS = {
    "autoencoder": ("steps/autoencoder", "ae_optimizer/inner_optimizer/_iterations",
                    "ae_optimizer/_iterations"),
    "adversarial": ("steps/adversarial", "c_optimizer/inner_optimizer/_iterations",
                    "c_optimizer/_iterations"),
}
_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"


def has_step_counters(path: str) -> bool:
  """Whether checkpoint ``path`` holds train_state.StepCounters (else it
  predates them and ``steps_of`` reads its optimizers' iterations)."""
  return tf.train.load_checkpoint(path).has_tensor(STEP_KEYS["adversarial"][0] + _VALUE)


def steps_of(path: str) -> dict:
  """{"autoencoder": steps done, "adversarial": steps done} of checkpoint
  ``path``, read from its files (nothing is built or restored)."""
  reader = tf.train.load_checkpoint(path)
  out = {}
  for phase, keys in STEP_KEYS.items():
    found = [k for k in keys if reader.has_tensor(k + _VALUE)]
    out[phase] = int(reader.get_tensor(found[0] + _VALUE)) if found else 0
  return out


def restore_newest(checkpoint, directory):
  """Restores the newest readable checkpoint in ``directory`` into
  ``checkpoint`` (a tf.train.Checkpoint, or a function of a checkpoint's path
  giving the one to read it with).

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
        reader = checkpoint(path) if callable(checkpoint) else checkpoint
        status = reader.restore(path)
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

class Keeper:
  """Periodic/final checkpoints in workdir/checkpoints; only the chief keeps
  them (other workers write to a scratch dir that is removed again)."""

  def __init__(self, checkpoint, workdir, strategy, max_to_keep=3, reader=None):
    """``checkpoint``: what is saved; ``reader``: a function of a checkpoint's
    path giving the checkpoint to restore it with (default: ``checkpoint``)."""
    self.reader = reader or checkpoint
    self.chief = distribute.is_chief(strategy)
    directory = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
    if not self.chief:
      directory = os.path.join(workdir, ".scratch", distribute.task_name(strategy))
    self.directory = directory
    self.manager = tf.train.CheckpointManager(checkpoint, directory,
                                              max_to_keep=max_to_keep)
    self.checkpoint = checkpoint
    self.main_dir = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
    self.skipped = []

  def restore(self) -> Optional[str]:
    path, self.skipped = restore_newest(self.reader, self.main_dir)
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
