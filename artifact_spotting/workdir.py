"""The pretraining workdir: who may write it, what it records, what a rerun
may change, and what interrupted writers leave behind.

Files this module owns in a workdir:

- ``trainer.lock``: held (``fcntl.flock``) by the one trainer writing the
  workdir, for as long as that process lives; it names the holder (pid, host,
  start time, command line). The kernel drops the lock when the process dies,
  so a workdir whose trainer was killed is taken over by the next start. A
  start refused before it passed its checks removes the lock file (and the
  workdir folders) it created.
- ``config.json``: the resolved config the checkpoints were trained with,
  written atomically and only once a start has passed every check.
- ``starts.jsonl``: one JSON line per start that passed the checks: time,
  command line, host, pid, the checkpoint it resumed from and the config
  fields that changed since the previous start.

``checkpoints/`` and ``tensorboard/`` are written by ``train_lib``; orphaned
``ckpt-N_temp`` folders (a save killed midway) are removed here at the next
start, under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import logging

LOCK_FILE = "trainer.lock"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
SUMMARY_FILE = "train_summary.json"
START_LOG = "starts.jsonl"


class WorkdirError(ValueError):
  """The workdir refuses this start (in use, or holding another run)."""


def is_local(path: str) -> bool:
  return "://" not in path


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)


def disk_errno(error: BaseException) -> Optional[int]:
  """The errno of a full, read-only or failing disk behind ``error`` (an
  OSError, or a TensorFlow error whose message carries the strerror)."""
  code = getattr(error, "errno", None)
  if code:
    return code
  message = str(getattr(error, "message", None) or error)
  for candidate in DISK_ERRNOS:
    if os.strerror(candidate) in message:
      return candidate
  return None


def write_error(what: str, error: BaseException, note: str = "") -> OSError:
  """An OSError for a failed write (``what`` names the target, ``note`` is
  appended), keeping the errno when the cause is a full disk, a read-only
  disk or a permission."""
  message = str(getattr(error, "message", None) or error)
  code = disk_errno(error)
  reason = os.strerror(code) if code else message.splitlines()[0]
  return OSError(code or errno.EIO, f"cannot write {what}: {reason}{note}")


def make_dir(path: str, what: str = "the workdir"):
  """``mkdir -p``; a failure is an OSError naming ``path`` and the cause."""
  if not is_local(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.makedirs(path)
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise OSError(errno.ENOTDIR, f"{what.removeprefix('the ')} {path} is a "
                  f"file, not a folder")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise OSError(e.errno, f"cannot create {what} {path}: "
                  f"{e.strerror or e}") from e
  if not os.path.isdir(path):
    raise OSError(errno.ENOTDIR, f"{what} {path} is not a folder")


def missing_dirs(path: str) -> List[str]:
  """``path`` and each parent of it that does not exist, deepest first: the
  folders ``make_dir(path)`` creates."""
  missing = []
  path = os.path.abspath(path)
  while not os.path.lexists(path):
    missing.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return missing


def remove_empty_dirs(paths: List[str]):
  """Removes each of ``paths`` (deepest first) that is an empty folder: what
  a refused start created is taken back; a folder holding anything stays."""
  for path in paths:
    with contextlib.suppress(OSError):
      os.rmdir(path)


# --------------------------------------------------------------------- lock
def _holder() -> Dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "command": list(sys.argv)}


def describe_holder(info: Dict[str, Any]) -> str:
  if "unreadable" in info:
    return f"an unreadable lock record {info['unreadable']!r}"
  command = " ".join(info.get("command") or [])
  return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
          f"started {info.get('started', '?')}" + (f" ({command})" if command else ""))


class WorkdirLock:
  """An exclusive ``flock`` on ``workdir/trainer.lock`` for one trainer.

  ``acquire`` refuses (WorkdirError naming the holder) while another process
  holds it; a lock whose process died is free again (the kernel released it).
  ``acquire`` only locks: the file is unchanged until ``claim`` (called once
  the start passed its checks) writes this process's record, logs the
  takeover and returns the previous holder's record, so a refused start
  leaves a dead holder's record for the next one to report. ``release``
  empties the record (only if this process wrote it) and unlocks; released
  unclaimed, a lock file this process created is removed, so a refused start
  leaves no lock file behind.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.fd: Optional[int] = None
    self.claimed = False
    self.created = False

  def _read(self, fd) -> Dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode("utf-8", "replace").strip()
    try:
      record = json.loads(text) if text else {}
    except json.JSONDecodeError:
      record = None
    if text and not isinstance(record, dict):
      return {"unreadable": text[:200]}
    return record

  def acquire(self):
    """Takes the lock (the file's content is left as it is)."""
    while not self._try_acquire():
      pass  # the file was removed between our open and flock: open it again

  def _open(self):
    """(a descriptor of the lock file, whether this call created it)."""
    # O_NOFOLLOW: a link put there after the check is refused, not followed.
    flags = os.O_RDWR | os.O_NOFOLLOW
    try:
      return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
      return os.open(self.path, flags), False

  def _try_acquire(self) -> bool:
    if os.path.islink(self.path):
      raise WorkdirError(
          f"{self.path} is a symbolic link, not the lock file; remove it "
          f"(a trainer never follows it, so its target is not written)")
    try:
      fd, created = self._open()
    except FileNotFoundError:
      return False  # removed between the two opens
    except OSError as e:
      if e.errno == errno.ELOOP:
        raise WorkdirError(
            f"{self.path} is a symbolic link, not the lock file; remove "
            f"it") from None
      if e.errno == errno.EISDIR:
        raise WorkdirError(f"{self.path} is a folder, not the lock file; "
                           f"remove it") from None
      raise OSError(e.errno, f"cannot write the workdir {self.workdir}: "
                    f"{e.strerror or e}") from e
    import stat  # pylint: disable=g-import-not-at-top
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      os.close(fd)
      raise WorkdirError(f"{self.path} is not a regular file, so it cannot be "
                         f"the lock file; remove it")
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        raise OSError(e.errno, f"cannot lock {self.path}: {e.strerror or e}") from e
      holder = {}
      for _ in range(20):  # the holder writes its record right after locking
        holder = self._read(fd)
        if holder:
          break
        time.sleep(0.05)
      os.close(fd)
      raise WorkdirError(
          f"workdir {self.workdir} is in use by another trainer "
          f"({describe_holder(holder) if holder else 'holder not recorded yet'}); "
          f"two trainers would overwrite each other's checkpoints: wait for it "
          f"to finish or stop it") from None
    try:
      same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if not same:
      # A refused start removed the file it had created after we opened it:
      # this lock is on a file nobody else will open.
      os.close(fd)
      return False
    self.fd, self.created = fd, created
    return True

  def claim(self) -> Optional[Dict[str, Any]]:
    """Writes this process's record into the held lock; returns the record a
    dead holder left, if any."""
    fd = self.fd
    try:
      previous = self._read(fd)
      record = (json.dumps(_holder()) + "\n").encode()
      os.ftruncate(fd, 0)
      os.pwrite(fd, record, 0)
      os.fsync(fd)
    except OSError as e:
      raise write_error(self.path, e) from e
    self.claimed = True
    if previous:
      logging.warning("Took over %s from a trainer that is no longer running "
                      "(%s).", self.path, describe_holder(previous))
    return previous or None

  def release(self):
    if self.fd is None:
      return
    fd, self.fd = self.fd, None
    if self.claimed:
      with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    elif self.created:
      # Removed while still locked: a trainer that opened it meanwhile is
      # refused, and one that opens it later creates a new file.
      with contextlib.suppress(OSError):
        os.unlink(self.path)
    self.claimed = self.created = False
    os.close(fd)  # closing the last descriptor drops the flock

  def __enter__(self):
    self.acquire()
    self.claim()
    return self

  def __exit__(self, *exc):
    self.release()


# ------------------------------------------------------- resume comparison
def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
  """{"a": {"b": 1}, "c": [{"d": 2}]} -> {"a.b": 1, "c[0].d": 2}: dicts and
  lists of dicts are opened, other lists stay values (JSON-normalised)."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  if isinstance(tree, (list, tuple)) and tree and all(isinstance(v, dict) for v in tree):
    out = {f"{prefix[:-1]}.len": len(tree)}
    for i, v in enumerate(tree):
      out.update(flatten(v, f"{prefix[:-1]}[{i}]."))
    return out
  return {prefix[:-1]: json.loads(json.dumps(tree))}


def _same_path(a: str, b: str) -> bool:
  if a == b:
    return True
  if not a or not b or not is_local(a) or not is_local(b):
    return False
  return (os.path.normpath(a) == os.path.normpath(b)
          or os.path.realpath(a) == os.path.realpath(b))


def resume_changes(old: Dict[str, Any], new: Dict[str, Any], *,
                   has_checkpoint: bool) -> Tuple[Dict[str, Tuple[Any, Any]], List[str]]:
  """Compares a workdir's recorded config with a rerun's resolved config.

  Returns (accepted changes {field: (old, new)}, refused descriptions).
  The rules (field lists in config.RESUME_SAFE_FIELDS / EXTENDABLE_FIELDS):
  resume-safe fields may change; step counts may rise, not fall; path fields
  naming the same folder are equal; ``autoencoder.init_from`` may name a moved
  folder once the workdir holds a checkpoint (it is then not read again);
  a field the record lacks is accepted at its default, or at the value
  config.RECORD_DEFAULTS assumes for a record without it; every other
  difference is refused.
  """
  from artifact_spotting import config as config_lib  # pylint: disable=g-import-not-at-top
  defaults = dict(flatten(config_lib.base_config().to_dict()),
                  **config_lib.RECORD_DEFAULTS)
  old_flat, new_flat = flatten(old), flatten(new)
  accepted, refused = {}, []
  for field in sorted(set(old_flat) | set(new_flat)):
    if field not in new_flat:
      accepted[field] = (old_flat[field], "(removed)")
      continue
    b = new_flat[field]
    if field not in old_flat:
      if field in config_lib.RESUME_SAFE_FIELDS or (
          field in defaults and defaults[field] == b):
        accepted[field] = ("(not recorded)", b)
      else:
        refused.append(f"{field}: (not recorded) -> {b!r}")
      continue
    a = old_flat[field]
    if a == b:
      continue
    if field in config_lib.PATH_FIELDS and isinstance(a, str) and isinstance(b, str):
      if _same_path(a, b):
        continue
      if field == "autoencoder.init_from" and a and b and has_checkpoint:
        accepted[field] = (a, b)
        continue
    if field in config_lib.RESUME_SAFE_FIELDS:
      accepted[field] = (a, b)
    elif field in config_lib.EXTENDABLE_FIELDS and _is_number(a) and _is_number(b):
      if b > a:
        accepted[field] = (a, b)
      else:
        refused.append(f"{field}: {a!r} -> {b!r} (step counts may only rise)")
    else:
      refused.append(f"{field}: {a!r} -> {b!r}")
  return accepted, refused


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_config(workdir: str) -> Optional[Dict[str, Any]]:
  """The workdir's recorded config; None when there is none."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.loads(f.read())
  except ValueError as e:  # not JSON, or not UTF-8
    raise WorkdirError(
        f"{path} is not valid JSON ({e}), so this start cannot be checked "
        f"against the run in {workdir}; restore the file or use another "
        f"workdir") from e


def check_resume(workdir: str, new: Dict[str, Any], *,
                 has_checkpoint: bool) -> Dict[str, Tuple[Any, Any]]:
  """The accepted changes against the workdir's config.json (empty for a
  fresh workdir); raises WorkdirError naming every refused field, and when
  the workdir holds checkpoints but no config.json (nothing to check this
  config against)."""
  old = read_config(workdir)
  if old is None:
    if has_checkpoint:
      raise WorkdirError(
          f"workdir {workdir} holds checkpoints but no {CONFIG_FILE}, so "
          f"this config cannot be checked against the run that wrote them: "
          f"restore {os.path.join(workdir, CONFIG_FILE)}, or move "
          f"{os.path.join(workdir, 'checkpoints')} away to start over")
    return {}
  accepted, refused = resume_changes(old, new, has_checkpoint=has_checkpoint)
  if refused:
    raise WorkdirError(
        f"workdir {workdir} holds another run: this config differs from its "
        f"{CONFIG_FILE} in {'; '.join(refused)}. Only step counts may rise "
        f"and logistics fields (config.RESUME_SAFE_FIELDS) change on a "
        f"resume; use another workdir for another run")
  return accepted


# ------------------------------------------------------------------ writes
def atomic_write(path: str, text: str):
  """Writes ``path`` through a temporary file and a rename: readers see the
  old or the new content, never a part. Failures raise OSError naming it."""
  if not is_local(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tmp = path + ".tmp"
    try:
      with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
      tf.io.gfile.rename(tmp, path, overwrite=True)
    except tf.errors.OpError as e:
      raise write_error(path, e) from e
    return
  folder, name = os.path.split(path)
  tmp = os.path.join(folder, f".{name}.tmp")
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise write_error(path, e) from e


def log_start(workdir: str, entry: Dict[str, Any]):
  """Appends one JSON line to workdir/starts.jsonl."""
  path = os.path.join(workdir, START_LOG)
  line = json.dumps(entry, sort_keys=True, default=str) + "\n"
  if not is_local(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    old = ""
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        old = f.read()
    atomic_write(path, old + line)
    return
  try:
    with open(path, "a") as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise write_error(path, e) from e


def start_entry(restored: Optional[str], changes, took_over) -> Dict[str, Any]:
  entry = _holder()
  entry["resumed_from"] = restored
  entry["changes"] = {k: [a, b] for k, (a, b) in sorted(changes.items())}
  if took_over:
    entry["took_over_from"] = took_over
  return entry


# ----------------------------------------------------------------- cleanup
def remove_orphan_checkpoints(directory: str) -> List[str]:
  """Removes ``ckpt-N_temp`` folders (a CheckpointManager save killed midway)
  from ``directory``. Only call it holding the workdir lock: a live writer's
  temp folder looks the same."""
  removed = []
  if not is_local(directory) or not os.path.isdir(directory):
    return removed
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if name.endswith("_temp") and os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  if removed:
    logging.warning("Removed %d half-written checkpoint folder(s) left by an "
                    "interrupted save: %s", len(removed), ", ".join(removed))
  return removed


EXPORT_TMP_PREFIX = ".tmp-"
# The whole name export's temporary folders get: tempfile.mkdtemp with prefix
# ".tmp-<version>-" adds 8 characters from [a-z0-9_]. Anything else in the
# export folder (a user's ".tmp-notes") is not ours and is never removed.
EXPORT_TMP_NAME = re.compile(r"\.tmp-\d+-[a-z0-9_]{8}")
STALE_UNLOCKED_SECONDS = 24 * 3600


class HeldDir:
  """A folder locked (``flock`` on the folder itself) while its writer lives,
  so a later cleaner tells a live writer's temporary folder from a dead one's."""

  def __init__(self, path: str):
    self.path = path
    self.fd = os.open(path, os.O_RDONLY)
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      pass  # e.g. a filesystem without flock: cleaners fall back to age

  def release(self):
    if self.fd is not None:
      os.close(self.fd)
      self.fd = None


def remove_dead_temps(output: str, pattern: "re.Pattern" = EXPORT_TMP_NAME,
                      min_age: float = 60.0) -> List[str]:
  """Removes folders in ``output`` whose whole name matches ``pattern`` (the
  names export's own temporary folders get) and whose writer is gone: the
  folder's flock is free (its writer held it until the rename), and it was
  last modified ``min_age`` s ago or more (the instant between a writer's
  mkdir and its flock). A folder whose lock cannot be tested is removed only
  after STALE_UNLOCKED_SECONDS."""
  removed = []
  if not os.path.isdir(output):
    return removed
  now = time.time()
  for name in sorted(os.listdir(output)):
    path = os.path.join(output, name)
    if (not pattern.fullmatch(name) or os.path.islink(path)
        or not os.path.isdir(path)):
      continue
    try:
      fd = os.open(path, os.O_RDONLY)
    except OSError:
      continue
    try:
      age = now - os.fstat(fd).st_mtime
      if age < min_age:
        continue
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) or age < STALE_UNLOCKED_SECONDS:
          continue  # a live writer (or no way to tell yet)
      if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    finally:
      os.close(fd)
  if removed:
    logging.warning("Removed %d temporary folder(s) left by interrupted "
                    "writers: %s", len(removed), ", ".join(removed))
  return removed


def make_readable(root: str):
  """0755 on ``root`` and every folder below it, 0644 on every file: what a
  server running as another user needs, whatever the writer's umask."""
  os.chmod(root, 0o755)
  for folder, dirs, files in os.walk(root):
    for d in dirs:
      p = os.path.join(folder, d)
      if not os.path.islink(p):
        os.chmod(p, 0o755)
    for f in files:
      p = os.path.join(folder, f)
      if not os.path.islink(p):
        os.chmod(p, 0o644)


_CKPT_NUMBER = re.compile(r"-(\d+)$")


def checkpoint_number(prefix: str) -> int:
  m = _CKPT_NUMBER.search(prefix)
  return int(m.group(1)) if m else -1


def write_config(config, workdir):
  """workdir/config.json, atomically (never half-written)."""
  atomic_write(os.path.join(workdir, CONFIG_FILE),
               config.to_json_best_effort(indent=2, sort_keys=True))


def open_workdir(config, workdir: str, chief: bool, held: contextlib.ExitStack,
                 has_checkpoint: bool):
  """Locks ``workdir`` for this run before anything is written to it.

  The chief creates the folder and takes its lock (released when ``held``
  closes; see WorkdirLock); every task checks the config against the
  recorded one (check_resume; ``has_checkpoint``: whether the workdir holds
  a checkpoint). Returns (accepted config changes, ``claim``). Until ``claim()`` runs the workdir is unchanged, so a start
  refused before it (``held`` closes unclaimed) leaves everything as it
  found it: a lock file and folders this start created are removed again;
  ``claim()`` (call it once every check passed) writes the lock record,
  removes half-written checkpoint folders and returns the record of a dead
  trainer whose lock was taken over, or None.
  """
  ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
  lock = None
  if chief:
    local = is_local(workdir)
    created = missing_dirs(workdir) if local else []
    claimed = []

    def undo_unclaimed():
      if not claimed:
        remove_empty_dirs(created)
    held.callback(undo_unclaimed)  # runs after the lock's release below
    make_dir(workdir)
    if local:
      lock = WorkdirLock(workdir)
      lock.acquire()
      held.callback(lock.release)
    else:
      logging.warning("workdir %s is not a local path: no lock keeps a second "
                      "trainer out of it.", workdir)
  changes = check_resume(
      workdir, json.loads(config.to_json_best_effort()),
      has_checkpoint=has_checkpoint)
  for field, (old, new) in sorted(changes.items()):
    logging.info("Config change on resume: %s %r -> %r", field, old, new)

  def claim():
    if not chief:
      return None
    took_over = lock.claim() if lock is not None else None
    claimed.append(True)
    remove_orphan_checkpoints(ckpt_dir)
    return took_over

  return changes, claim
