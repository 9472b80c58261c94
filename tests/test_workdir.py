"""A workdir refuses misuse: one trainer at a time, no mixed runs, one-line
errors from every binary, checkpoints that heal, exports others can read."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from artifact_spotting import config as config_lib
from artifact_spotting import loading
from artifact_spotting import export as export_lib
from artifact_spotting import checkpoints
from artifact_spotting import train_state
from artifact_spotting import train_lib
from artifact_spotting import workdir as workdir_lib
from artifact_spotting.data import sources
from conftest import make_idx_dir, tiny_idx_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(a finished tiny workdir: checkpoints ckpt-2 (autoencoder done),
  ckpt-3 (adversarial step 2), ckpt-4 (step 4); its idx folder; its config)."""
  root = tmp_path_factory.mktemp("workdir")
  idx = make_idx_dir(root / "idx", train=64, test=8)
  workdir = str(root / "work")
  config = tiny_idx_config(idx)
  train_lib.train(config, workdir)
  return workdir, idx, config


def _copy(trained, dst):
  workdir, _, _ = trained
  shutil.copytree(workdir, dst)
  return str(dst)


def _ckpt_dir(workdir):
  return os.path.join(workdir, "checkpoints")


def _snapshot(workdir):
  """Every file under ``workdir`` but the lock and start log: name -> bytes."""
  out = {}
  for folder, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(folder, f)
      if f not in (workdir_lib.LOCK_FILE, workdir_lib.START_LOG):
        out[os.path.relpath(path, workdir)] = open(path, "rb").read()
  return out


def _starts(workdir):
  with open(os.path.join(workdir, workdir_lib.START_LOG)) as f:
    return [json.loads(line) for line in f]


def _pretrain(idx, workdir, *extra):
  return [sys.executable, "-m", "trainers.pretrain",
          "--config=configs/fashion_mnist.py:tiny", f"--workdir={workdir}",
          f"--config.dataset.path={idx}", "--config.dataset.auto_install=False",
          "--config.dataset.tfds_fallback=False", *extra]


def _start(cmd, log):
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=open(log, "w"), start_new_session=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def _wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc is not None and proc.poll() is not None:
      return predicate()
    time.sleep(0.2)
  return False


def _kill(proc):
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()


def _one_line_error(rc, stderr, *needles):
  """The binaries' contract: exit 2, last stderr line `error: ...` naming
  the cause, no traceback."""
  last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
  assert rc == 2, (rc, stderr[-2000:])
  assert last.startswith("error: "), stderr[-2000:]
  for needle in needles:
    assert needle in last, (needle, last)
  assert "Traceback" not in stderr, stderr[-3000:]
  return last


def _each_one_line_error(cases, timeout, env=None):
  """Runs every ``{name: (command, [expected fragments])}`` case at once and
  checks that each ends in one ``error:`` line holding its fragments."""
  procs = {name: subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
           for name, (cmd, _) in cases.items()}
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=timeout)
    try:
      _one_line_error(proc.returncode, err, *cases[name][1])
    except AssertionError as e:
      raise AssertionError(f"{name}: {e}") from None


# ------------------------------------------------ 4. one trainer per workdir
@pytest.mark.slow
def test_second_trainer_is_refused_and_a_killed_ones_lock_is_taken_over(trained, tmp_path):
  """Two trainers on one workdir: the second exits at once naming the
  first (pid, host); after kill -9 of the first a rerun takes the workdir
  over and resumes from its last checkpoint."""
  workdir = str(tmp_path / "missing_parent" / "run")  # created like mkdir -p
  _, idx, _ = trained
  # Far more steps than the test waits for: the first trainer is still
  # training when the second starts.
  cmd = _pretrain(idx, workdir, "--config.spotter.steps=100000")
  first = _start(cmd, tmp_path / "first.log")
  try:
    lock = os.path.join(workdir, workdir_lib.LOCK_FILE)
    holds = lambda: os.path.exists(lock) and f'"pid": {first.pid}' in open(lock).read()
    assert _wait_for(holds, first), open(tmp_path / "first.log").read()[-3000:]
    t0 = time.time()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = _one_line_error(second.returncode, second.stderr, "in use by another trainer",
                           f"pid {first.pid} on host {socket.gethostname()}")
    assert time.time() - t0 < 60, last
    # In-process too.
    c = tiny_idx_config(idx, **{"spotter.steps": 100000})
    with pytest.raises(train_lib.SetupError, match=f"pid {first.pid}"):
      train_lib.train(c, workdir)
    assert first.poll() is None, "the first trainer kept running"
    # Wait for a checkpoint of the adversarial phase, then kill -9.
    def step():
      latest = tf.train.latest_checkpoint(_ckpt_dir(workdir))
      return latest and int(tf.train.load_variable(
          latest, "c_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))
    assert _wait_for(lambda: (step() or 0) >= 2, first), \
        open(tmp_path / "first.log").read()[-3000:]
  finally:
    _kill(first)
  killed_at = step()
  assert killed_at >= 2
  # A refused start (another seed) changes nothing: the dead holder's record,
  # an orphaned _temp folder and the start log stay for the next start.
  lock_path = os.path.join(workdir, workdir_lib.LOCK_FILE)
  dead_record = open(lock_path).read()
  assert f'"pid": {first.pid}' in dead_record
  orphan = os.path.join(_ckpt_dir(workdir), "ckpt-99_temp")
  os.makedirs(orphan, exist_ok=True)
  starts_before = open(os.path.join(workdir, workdir_lib.START_LOG)).read()
  with pytest.raises(train_lib.SetupError, match="seed"):
    train_lib.train(tiny_idx_config(idx, **{"spotter.steps": 100000, "seed": 5}), workdir)
  assert open(lock_path).read() == dead_record
  assert os.path.isdir(orphan)
  assert open(os.path.join(workdir, workdir_lib.START_LOG)).read() == starts_before
  rerun = _start(cmd, tmp_path / "rerun.log")
  try:
    resumed = lambda: "Resumed from" in open(tmp_path / "rerun.log").read()
    assert _wait_for(resumed, rerun), open(tmp_path / "rerun.log").read()[-3000:]
    log = open(tmp_path / "rerun.log").read()
    assert "Took over" in log and f"pid {first.pid}" in log
    assert f"adversarial step {killed_at}" in log
    starts = _starts(workdir)
    assert [s["pid"] for s in starts[-2:]] == [first.pid, rerun.pid]
    assert starts[-1]["took_over_from"]["pid"] == first.pid
    assert not os.path.exists(orphan)
  finally:
    _kill(rerun)
  # The killed rerun's lock is free again; its record names it.
  lock = workdir_lib.WorkdirLock(workdir)
  lock.acquire()
  assert lock.claim()["pid"] == rerun.pid
  lock.release()
  assert open(os.path.join(workdir, workdir_lib.LOCK_FILE)).read() == ""


def _adversarial_step(checkpoint):
  return int(tf.train.load_variable(
      checkpoint, "c_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.mark.slow
def test_sigterm_and_sigint_checkpoint_at_a_step_and_the_rerun_resumes(trained, tmp_path):
  """SIGTERM during phase 2, mid log interval: the trainer stops at the next
  step boundary, writes a checkpoint of that step, prints one line naming
  it and exits 143; the same command resumes from it, and SIGINT then does
  the same with exit 130."""
  _, idx, _ = trained
  workdir = str(tmp_path / "run")
  # No periodic checkpoint in phase 2: the one written on the signal is it.
  cmd = _pretrain(idx, workdir, "--config.spotter.steps=100000",
                  "--config.train.log_every=50",
                  "--config.train.checkpoint_every=100000")
  previous = None
  for run, sig, code in ((1, signal.SIGTERM, 143), (2, signal.SIGINT, 130)):
    out, err = tmp_path / f"run{run}.out", tmp_path / f"run{run}.err"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(out, "w"), stderr=open(err, "w"),
                            start_new_session=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
      start = previous[1] if previous else 0
      # A console line of phase 2 beyond where this run started.
      seen = lambda: any(
          line.startswith("[spotter] ") and int(line.split()[1].split("/")[0]) > start
          for line in open(out).read().splitlines())
      assert _wait_for(seen, proc), open(err).read()[-3000:]
      proc.send_signal(sig)
      proc.wait(timeout=120)
    finally:
      _kill(proc)
    stderr = open(err).read()
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: {sig.name} at spotter step "), last
    step = int(last.split("spotter step ")[1].split("/")[0])
    checkpoint = last.split("checkpoint ")[1].split(" written")[0]
    assert "rerun the same command to resume" in last
    assert step > start, (step, start)
    assert _adversarial_step(checkpoint) == step
    assert tf.train.latest_checkpoint(_ckpt_dir(workdir)) == checkpoint
    if previous:
      assert f"Resumed from {previous[0]}" in stderr, stderr[-3000:]
      assert f"adversarial step {previous[1]})" in stderr
      assert step > previous[1]
    previous = (checkpoint, step)
  assert [s["resumed_from"] for s in _starts(workdir)][1:] == [
      os.path.join(_ckpt_dir(workdir), "ckpt-2")]


def test_lock_is_exclusive_in_process_and_released(tmp_path):
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  a = workdir_lib.WorkdirLock(workdir)
  a.acquire()
  assert a.claim() is None
  record = json.load(open(os.path.join(workdir, workdir_lib.LOCK_FILE)))
  assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
  assert record["command"] == sys.argv
  with pytest.raises(workdir_lib.WorkdirError, match=f"pid {os.getpid()}"):
    workdir_lib.WorkdirLock(workdir).acquire()
  a.release()
  with workdir_lib.WorkdirLock(workdir):
    pass


def test_lock_file_that_is_a_link_or_garbage(tmp_path):
  """A symlinked trainer.lock is refused, its target untouched; a lock file
  holding garbage is described as an unreadable lock record."""
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  victim = tmp_path / "victim.txt"
  victim.write_text("precious\n")
  lock_path = os.path.join(workdir, workdir_lib.LOCK_FILE)
  os.symlink(victim, lock_path)
  with pytest.raises(workdir_lib.WorkdirError, match="is a symbolic link"):
    workdir_lib.WorkdirLock(workdir).acquire()
  assert victim.read_text() == "precious\n"
  os.remove(lock_path)
  os.makedirs(lock_path)
  with pytest.raises(workdir_lib.WorkdirError, match="not the lock file"):
    workdir_lib.WorkdirLock(workdir).acquire()
  os.rmdir(lock_path)
  with open(lock_path, "w") as f:
    f.write("\x00garbage{")
  lock = workdir_lib.WorkdirLock(workdir)
  lock.acquire()
  previous = lock.claim()
  lock.release()
  assert "an unreadable lock record" in workdir_lib.describe_holder(previous)


# ------------------------------------------------ 5. a resume never mixes runs
@pytest.mark.slow
def test_rerun_with_other_data_or_training_is_refused_logistics_may_change(trained, tmp_path):
  workdir = _copy(trained, tmp_path / "a" / "run")
  _, idx, _ = trained
  # The record holds the batch norm the run trained with, not "auto".
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["distribute"]["batch_norm"] == "sync"
  before = _snapshot(workdir)
  other_idx = str(tmp_path / "other_idx")
  shutil.copytree(idx, other_idx)
  folder = tmp_path / "images"
  folder.mkdir()

  def refused(match, **overrides):
    c = tiny_idx_config(idx)
    for field, value in overrides.items():
      config_lib.set_dotted(c, field, value)
    with pytest.raises(train_lib.SetupError, match=match):
      train_lib.train(c, workdir)
    assert _snapshot(workdir) == before  # config.json and checkpoints untouched

  refused(f"dataset.path: '{idx}' -> '{other_idx}'", **{"dataset.path": other_idx})
  refused("dataset.source: 'idx' -> 'image_folder'", **{
      "dataset.source": "image_folder", "dataset.path": str(folder)})
  refused(r"spotter.drop_rate: 0.7 -> 0.5", **{"spotter.drop_rate": 0.5})
  refused(r"spotter.steps: 4 -> 2 \(step counts may only rise\)", **{"spotter.steps": 2})
  refused("discriminator.fc_units: 16 -> 32", **{"discriminator.fc_units": 32})
  # A config that fails validation changes nothing either.
  refused("config.train.log_every=0 must be an integer >= 1", **{"train.log_every": 0})

  # More steps, other logistics, the same data folder spelled differently.
  c = tiny_idx_config(idx + "/", **{
      "spotter.steps": 6, "train.log_every": 1, "train.checkpoint_every": 0,
      "train.summary_every": 0, "train.keep_checkpoints": 5,
      "train.montage_size": 1})
  results = train_lib.train(c, workdir)
  assert results["spotter"]["steps"] == 6
  recorded = json.load(open(os.path.join(workdir, "config.json")))
  assert recorded["spotter"]["steps"] == 6 and recorded["train"]["log_every"] == 1
  entry = _starts(workdir)[-1]
  assert entry["command"] == sys.argv and entry["pid"] == os.getpid()
  assert entry["host"] == socket.gethostname()
  assert entry["resumed_from"].endswith("ckpt-4")
  assert entry["changes"] == {
      "spotter.steps": [4, 6], "train.checkpoint_every": [2, 0],
      "train.keep_checkpoints": [3, 5], "train.log_every": [2, 1],
      "train.montage_size": [2, 1], "train.summary_every": [2, 0]}
  # No leftover temporary file from the atomic write.
  assert not [f for f in os.listdir(workdir) if f.endswith(".tmp")]


def test_autoencoder_steps_cannot_rise_once_phase_2_started(trained, tmp_path):
  """Phase 2 freezes the autoencoder: more autoencoder steps after it began
  are refused, naming why, and the workdir is unchanged. Before phase 2 they
  may rise."""
  workdir = _copy(trained, tmp_path / "run")
  _, idx, _ = trained
  before = _snapshot(workdir)
  starts = open(os.path.join(workdir, workdir_lib.START_LOG)).read()
  c = tiny_idx_config(idx)
  c.autoencoder.steps += 2
  with pytest.raises(train_lib.SetupError,
                     match=r"config.autoencoder.steps: \d+ -> \d+ refused: phase 2 has started"):
    train_lib.train(c, workdir)
  assert _snapshot(workdir) == before
  assert open(os.path.join(workdir, workdir_lib.START_LOG)).read() == starts


def test_checkpoints_without_config_json_are_refused(trained, tmp_path):
  workdir = _copy(trained, tmp_path / "run")
  _, idx, config = trained
  os.remove(os.path.join(workdir, workdir_lib.CONFIG_FILE))
  before = _snapshot(workdir)
  with pytest.raises(train_lib.SetupError,
                     match="holds checkpoints but no config.json.*restore .*or move"):
    train_lib.train(tiny_idx_config(idx, seed=3), workdir)
  assert _snapshot(workdir) == before



def _tree(path):
  """Every file and folder under ``path`` (lock and start log included):
  relative name -> bytes, or None for a folder."""
  out = {}
  for folder, dirs, files in os.walk(path):
    for d in dirs:
      out[os.path.relpath(os.path.join(folder, d), path)] = None
    for f in files:
      full = os.path.join(folder, f)
      out[os.path.relpath(full, path)] = open(full, "rb").read()
  return out


@pytest.mark.slow
def test_start_refused_for_bad_data_leaves_nothing(trained, tmp_path):
  """pretrain refused for its data (a missing IDX folder, an image folder
  without images): on a new workdir no folder and no trainer.lock are left,
  not even the parents it would have made; on an existing workdir (without
  a lock file) nothing changes and no lock file appears."""
  empty = tmp_path / "no_images"
  empty.mkdir()
  (empty / "notes.txt").write_text("no image here")
  existing = _copy(trained, tmp_path / "existing")
  os.remove(os.path.join(existing, workdir_lib.LOCK_FILE))
  moved = str(tmp_path / "moved_idx")  # the run's data, since moved away
  record = json.load(open(os.path.join(existing, workdir_lib.CONFIG_FILE)))
  record["dataset"]["path"] = moved
  with open(os.path.join(existing, workdir_lib.CONFIG_FILE), "w") as f:
    json.dump(record, f)
  before = _tree(existing)
  new_idx = str(tmp_path / "new" / "deeper" / "run")
  new_folder = str(tmp_path / "new_folder_run")
  cases = {
      "idx_new": (_pretrain("/nonexistent", new_idx),
                  ["config.dataset.path='/nonexistent'", "does not exist"]),
      "folder_new": ([sys.executable, "-m", "trainers.pretrain",
                      "--config=configs/image_folder.py:smoke", f"--workdir={new_folder}",
                      f"--config.dataset.path={empty}"],
                     [f"No decodable images under '{empty}'"]),
  }
  _each_one_line_error(cases, timeout=300,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert not os.path.exists(tmp_path / "new")
  assert not os.path.exists(new_folder)
  # The existing workdir's run (the fixture's in-process config), its data
  # moved away.
  with pytest.raises(sources.DataUnavailableError, match="does not exist"):
    train_lib.train(tiny_idx_config(moved), existing)
  assert _tree(existing) == before

def test_resume_rules_field_by_field():
  old = json.loads(config_lib.tiny_config().to_json_best_effort())
  new = json.loads(json.dumps(old))

  def check(has_checkpoint=True):
    return workdir_lib.resume_changes(old, new, has_checkpoint=has_checkpoint)

  assert check() == ({}, [])
  new["distribute"]["strategy"] = "mirrored"
  new["train"]["jit_compile"] = "on"
  assert set(check()[0]) == {"distribute.strategy", "train.jit_compile"}
  assert check()[1] == []
  # A field the record predates: accepted at its default only.
  del old["spotter"]["repair_hidden"]
  assert check()[0]["spotter.repair_hidden"] == ("(not recorded)", 0)
  new["spotter"]["repair_hidden"] = 4
  assert check()[1] == ["spotter.repair_hidden: (not recorded) -> 4"]
  new["spotter"]["repair_hidden"] = 0
  # Batch norm: the record holds the resolved mode. A record that predates
  # the field trained with synchronized batch norm; per-replica differs.
  new["distribute"]["batch_norm"] = "sync"
  del old["distribute"]["batch_norm"]
  assert check()[0]["distribute.batch_norm"] == ("(not recorded)", "sync")
  new["distribute"]["batch_norm"] = "per_replica"
  assert check()[1] == ["distribute.batch_norm: (not recorded) -> 'per_replica'"]
  old["distribute"]["batch_norm"] = "sync"
  assert check()[1] == ["distribute.batch_norm: 'sync' -> 'per_replica'"]
  new["distribute"]["batch_norm"] = "sync"
  # init_from: another spelling of one folder is the same; a moved folder is
  # accepted once a checkpoint exists (it is not read again); starting from
  # an autoencoder after training one here (or before any checkpoint) is not.
  old["autoencoder"]["init_from"] = "/runs/ae"
  new["autoencoder"]["init_from"] = "/runs/./ae/"
  assert check()[1] == []
  new["autoencoder"]["init_from"] = "/moved/ae"
  assert check()[0]["autoencoder.init_from"] == ("/runs/ae", "/moved/ae")
  assert check(has_checkpoint=False)[1] == [
      "autoencoder.init_from: '/runs/ae' -> '/moved/ae'"]
  old["autoencoder"]["init_from"] = ""
  assert check()[1] == ["autoencoder.init_from: '' -> '/moved/ae'"]
  new["autoencoder"]["init_from"] = ""
  new["seed"] = 1
  new["probe"]["enabled"] = False
  assert check()[1] == ["probe.enabled: True -> False", "seed: 0 -> 1"]


@pytest.mark.slow
def test_workdir_recorded_before_max_pixels_resumes(trained, tmp_path):
  """A config.json written before dataset.max_pixels existed resumes at the
  field's default (the start log names it as not recorded); another cap is
  refused."""
  workdir = _copy(trained, tmp_path / "old")
  _, idx, _ = trained
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  record = json.load(open(path))
  del record["dataset"]["max_pixels"]
  with open(path, "w") as f:
    json.dump(record, f)
  with pytest.raises(train_lib.SetupError,
                     match=r"dataset.max_pixels: \(not recorded\) -> 1000"):
    train_lib.train(tiny_idx_config(idx, **{"dataset.max_pixels": 1000}), workdir)
  result = train_lib.train(tiny_idx_config(idx, **{"spotter.steps": 6}), workdir)
  assert result["spotter"]["steps"] == 6
  assert _starts(workdir)[-1]["changes"]["dataset.max_pixels"] == [
      "(not recorded)", sources.DEFAULT_MAX_PIXELS]
  assert config_lib.base_config().dataset.max_pixels == sources.DEFAULT_MAX_PIXELS

def test_half_written_config_json_is_refused_not_overwritten(trained, tmp_path):
  workdir = _copy(trained, tmp_path / "run")
  _, idx, config = trained
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    f.write('{"seed": 0, "data')
  with pytest.raises(train_lib.SetupError, match="config.json is not valid JSON"):
    train_lib.train(config, workdir)
  assert open(path).read() == '{"seed": 0, "data'


# ---------------------------------------------- 6. user mistakes get one line
@pytest.mark.parametrize("field,value,needle", [
    ("train.log_every", 0, "config.train.log_every=0 must be an integer >= 1"),
    ("train.checkpoint_every", -1, "config.train.checkpoint_every=-1"),
    ("train.summary_every", -5, "config.train.summary_every=-5"),
    ("train.keep_checkpoints", 0, "config.train.keep_checkpoints=0"),
    ("train.montage_size", 0, "config.train.montage_size=0"),
    ("autoencoder.steps", -1, "config.autoencoder.steps=-1"),
    ("spotter.batch_size", 0, "config.spotter.batch_size=0"),
    ("autoencoder.lr", 0.0, "config.autoencoder.lr=0.0 must be > 0"),
    ("spotter.repair_lr", -1e-3, "config.spotter.repair_lr=-0.001"),
    ("spotter.drop_rate", 1.0, r"config.spotter.drop_rate=1.0 must be in \[0, 1\)"),
    ("spotter.history_fraction", 1.5, r"history_fraction=1.5 must be in \[0, 1\]"),
    ("spotter.history_size", -1, "config.spotter.history_size=-1"),
    ("spotter.fill", "mean", "config.spotter.fill='mean' must be 'blur' \\(the paper's\\), 'average' or 'zeros'"),
    ("autoencoder.widths", (8, 0), r"config.autoencoder.widths=\(8, 0\)"),
    ("autoencoder.stem_filters", 0, "config.autoencoder.stem_filters=0"),
    ("discriminator.fc_units", 0, "config.discriminator.fc_units=0"),
    ("discriminator.dropout", 1.0, "config.discriminator.dropout=1.0"),
    ("optimizer.beta1", 1.0, "config.optimizer.beta1=1.0"),
    ("optimizer.epsilon", 0.0, "config.optimizer.epsilon=0.0"),
    ("optimizer.decay_fraction", 2.0, "config.optimizer.decay_fraction=2.0"),
    ("probe.num_classes", 0, "config.probe.num_classes=0"),
    ("dataset.shuffle_buffer", 0, "config.dataset.shuffle_buffer=0"),
    ("dataset.max_pixels", -1, r"config.dataset.max_pixels=-1 must be an integer >= 0"),
    ("seed", -1, "config.seed=-1"),
    # Every real-valued field must be finite.
    *[(f, v, rf"config.{f}={v!r} must be a finite number")
      for f in ("autoencoder.lr", "spotter.lr", "autoencoder.recon_weight",
                "spotter.recon_weight", "autoencoder.l2_weight",
                "spotter.mask_weight", "spotter.mask_real_weight",
                "spotter.repair_lr", "optimizer.epsilon", "probe.lr")
      for v in (float("inf"), float("nan"))],
    ("optimizer.beta1", float("-inf"), "config.optimizer.beta1=-inf must be a finite"),
])
def test_validate_checks_every_range(field, value, needle):
  with pytest.raises(ValueError, match=needle):
    config_lib.validate(config_lib.tiny_config(**{field: value}))


def test_validate_accepts_the_shipped_configs():
  from configs import fashion_mnist
  for arg in ("", "smoke", "tiny", "grid=8", "ablation=k", "ablation=l", "ablation=j"):
    config_lib.check_ranges(fashion_mnist.get_config(arg))
  config_lib.validate(config_lib.tiny_config(**{
      "train.checkpoint_every": 0, "train.summary_every": 0,
      "spotter.steps": 0, "spotter.history_size": 0, "spotter.drop_rate": 0.0}))


@pytest.mark.slow
def test_binaries_end_user_mistakes_in_one_line(trained, tmp_path):
  """A missing config file, an unknown field, a bad value, a read-only or
  unusable workdir, a full disk, a missing workdir or --init: each binary
  prints `error: <cause>` last, exits 2, and shows no traceback."""
  workdir, idx, _ = trained
  if os.geteuid() == 0:
    read_only = "/sys/kernel"  # root writes through file modes; sysfs refuses
  else:
    read_only = str(tmp_path / "ro")
    os.makedirs(read_only, mode=0o555)
  full = tmp_path / "full"
  full.mkdir()
  # config.json is written through .config.json.tmp: a real write that fails
  # with ENOSPC as on a full disk.
  os.symlink("/dev/full", full / ".config.json.tmp")
  missing = str(tmp_path / "missing")
  cases = {
      "no_config": (_pretrain(idx, str(tmp_path / "w1"))[:3] + [
          "--config=configs/no_such.py", f"--workdir={tmp_path / 'w1'}"],
                    ["no such config file 'configs/no_such.py'"]),
      "typo": (_pretrain(idx, str(tmp_path / "w2"), "--config.spotter.dropp_rate=0.5"),
               ["--config.spotter.dropp_rate", "no field 'spotter.dropp_rate'",
                "did you mean 'drop_rate'"]),
      "bad_value": (_pretrain(idx, str(tmp_path / "w3"), "--config.spotter.drop_rate=abc"),
                    ["--config.spotter.drop_rate=abc", "could not convert"]),
      "log_every": (_pretrain(idx, str(tmp_path / "w4"), "--config.train.log_every=0"),
                    ["config.train.log_every=0 must be an integer >= 1"]),
      "read_only": (_pretrain(idx, read_only), [read_only, "Permission denied"]),
      "full_disk": (_pretrain(idx, str(full)),
                    [f"cannot write {full / 'config.json'}", "No space left on device"]),
      "export_read_only": ([sys.executable, "-m", "trainers.export", f"--workdir={workdir}",
                            f"--output={read_only}/srv"], [f"{read_only}/srv"]),
      "eval_missing": ([sys.executable, "-m", "trainers.linear_eval",
                        "--config=configs/eval/fashion_mnist_folds.py",
                        f"--workdir={missing}"], [missing, "does not exist"]),
      "eval_typo": ([sys.executable, "-m", "trainers.linear_eval",
                     "--config=configs/eval/fashion_mnist_folds.py",
                     f"--workdir={workdir}", "--config.knn.enabledd=False"],
                    ["no field 'knn.enabledd'"]),
      "finetune_missing": ([sys.executable, "-m", "trainers.finetune",
                            "--config=configs/finetune/fashion_mnist.py",
                            f"--init={missing}", f"--workdir={tmp_path / 'ft'}"],
                           [missing, "does not exist"]),
      "finetune_no_config": ([sys.executable, "-m", "trainers.finetune",
                              "--config=configs/finetune/nope.py", f"--init={workdir}",
                              f"--workdir={tmp_path / 'ft'}"], ["no such config file"]),
  }
  names = list(cases)
  procs = {name: subprocess.Popen(
      cases[name][0], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")) for name in names}
  for name in names:
    _, err = procs[name].communicate(timeout=300)
    procs[name] = (procs[name].returncode, err)
  for name in names:
    rc, err = procs[name]
    try:
      _one_line_error(rc, err, *cases[name][1])
    except AssertionError as e:
      raise AssertionError(f"{name}: {e}") from None
  # A fine-tune refused for its --init made no workdir.
  assert not os.path.exists(tmp_path / "ft")
  # The full-disk start wrote nothing: no config.json, no checkpoint.
  assert not os.path.exists(full / "config.json")
  assert not os.path.exists(full / ".config.json.tmp")
  assert not tf.train.get_checkpoint_state(str(full / "checkpoints"))


def test_config_file_that_is_not_valid_python_is_one_line(tmp_path):
  """A config file with a SyntaxError, an ImportError or no get_config:
  `error: --config=<file>: <cause>` naming the line, exit 2, no traceback."""
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n")
  imports = tmp_path / "imports.py"
  imports.write_text("import os\nimport nosuchmod\ndef get_config(arg=None):\n  return None\n")
  empty = tmp_path / "empty.py"
  empty.write_text("")
  work = f"--workdir={tmp_path / 'w'}"
  cases = {
      "syntax": ([sys.executable, "-m", "trainers.pretrain", f"--config={bad}:tiny", work],
                 [f"--config={bad}:tiny: SyntaxError", "line 1"]),
      "import": ([sys.executable, "-m", "trainers.pretrain", f"--config={imports}", work],
                 [f"--config={imports}: ModuleNotFoundError", "nosuchmod", "line 2"]),
      "empty": ([sys.executable, "-m", "trainers.pretrain", f"--config={empty}", work],
                [f"--config={empty}", f"{empty} defines no get_config"]),
      "eval_syntax": ([sys.executable, "-m", "trainers.linear_eval", f"--config={bad}", work],
                      [f"--config={bad}: SyntaxError", "line 1"]),
      "finetune_import": ([sys.executable, "-m", "trainers.finetune", f"--config={imports}",
                           f"--init={tmp_path}", work], ["nosuchmod", "line 2"]),
  }
  _each_one_line_error(cases, timeout=120)


@pytest.mark.slow
def test_path_and_version_mistakes_are_one_line(trained, tmp_path):
  workdir, idx, _ = trained
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  export = [sys.executable, "-m", "trainers.export"]
  finetune = [sys.executable, "-m", "trainers.finetune",
              "--config=configs/finetune/fashion_mnist.py"]
  cases = {
      "workdir_file": (_pretrain(idx, str(a_file)),
                       [f"workdir {a_file} is a file, not a folder"]),
      "workdir_empty": (_pretrain(idx, ""), ["--workdir is empty"]),
      "export_version": (export + [f"--workdir={workdir}", f"--output={tmp_path / 'o'}",
                                   "--version=-5"], ["--version=-5 must be >= 1"]),
      "export_file": (export + [f"--workdir={a_file}", f"--output={tmp_path / 'o'}"],
                      [f"--workdir={a_file} is a file"]),
      "finetune_init_file": (finetune + [f"--init={a_file}", f"--workdir={tmp_path / 'f'}"],
                             [f"--init={a_file} is a file"]),
      "finetune_workdir_file": (finetune + [f"--init={workdir}", f"--workdir={a_file}"],
                                [f"--workdir={a_file} is a file"]),
  }
  _each_one_line_error(cases, timeout=300,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert os.path.isfile(a_file) and a_file.read_text() == "x"


_GUARD_PROBE = """
import errno, sys
from trainers import _cli, pretrain
def diverged(argv):
  raise FloatingPointError("Phase spotter: non-finite ['loss'] at step 7; the "
                           "last good checkpoint in W/checkpoints is kept.")
def bug(argv):
  raise OSError(errno.EBADF, "Bad file descriptor")
_cli.guard({"diverged": diverged, "bug": bug}[sys.argv[1]],
           pretrain.setup_errors)(["pretrain"])
"""


@pytest.mark.slow
def test_guard_ends_divergence_in_one_line_and_keeps_bugs_tracebacks():
  # In a fresh process: importing trainers.pretrain defines its absl flags,
  # which other modules of the test session define too.
  def probe(case):
    return subprocess.run([sys.executable, "-c", _GUARD_PROBE, case], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  r = probe("diverged")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
      "error: Phase spotter: non-finite ['loss'] at step 7; the last good "
      "checkpoint in W/checkpoints is kept.")
  assert "Traceback" not in r.stderr
  r = probe("bug")
  assert r.returncode != 0 and "Traceback" in r.stderr and "EBADF" not in r.stdout
  assert "Bad file descriptor" in r.stderr


def test_full_disk_while_checkpointing_keeps_the_written_ones(trained, tmp_path, monkeypatch,
                                                                 capsys):
  """A checkpoint write that fails with ENOSPC raises OSError (which the
  binaries print in one line) and the checkpoints already there stay."""
  from trainers import _cli
  workdir = _copy(trained, tmp_path / "run")
  _, _, config = trained
  before = {f: open(os.path.join(_ckpt_dir(workdir), f), "rb").read()
            for f in os.listdir(_ckpt_dir(workdir)) if f.startswith("ckpt-")}

  def full(self, *args, **kwargs):
    raise tf.errors.ResourceExhaustedError(
        None, None, f"{self.directory}/ckpt-5_temp/part-00000-of-00001.data-00000-of-00001"
        f".tempstate123; No space left on device")
  monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
  # The keeper train() saves through, on the restored run.
  strategy = tf.distribute.get_strategy()
  players = train_state.Players(config, strategy)
  keeper = checkpoints.Keeper(players.checkpoint, workdir, strategy)
  assert keeper.restore().endswith("ckpt-4")
  with pytest.raises(OSError) as info:
    keeper.save()
  assert info.value.errno == errno.ENOSPC
  assert "cannot write a checkpoint to" in str(info.value)
  after = {f: open(os.path.join(_ckpt_dir(workdir), f), "rb").read()
           for f in os.listdir(_ckpt_dir(workdir)) if f.startswith("ckpt-")}
  assert after == before
  # The binaries' wrapper turns it into one line.
  def main(argv):
    del argv
    raise info.value
  with pytest.raises(SystemExit) as exit_info:
    _cli.guard(main, (train_lib.SetupError,))(["pretrain"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: cannot write a checkpoint to ")
  assert "No space left on device" in err[-1]


@pytest.mark.parametrize("first", [True, False])
def test_full_disk_midway_through_a_save_leaves_nothing_half_written(trained, tmp_path,
                                                                     monkeypatch, first):
  """A save that dies of ENOSPC after writing part of ckpt-N (its data file,
  an empty index, its _temp folder, even the state file naming it) removes
  what it wrote: the next start resumes from the previous checkpoint, or
  from scratch when it was the first save."""
  _, _, config = trained
  if first:
    workdir = str(tmp_path / "fresh")
    os.makedirs(_ckpt_dir(workdir))
  else:
    workdir = _copy(trained, tmp_path / "run")

  def listing():
    d = _ckpt_dir(workdir)
    return {f: open(os.path.join(d, f), "rb").read() if os.path.isfile(os.path.join(d, f))
            else None for f in os.listdir(d)}
  before = listing()

  def partial(self, *args, **kwargs):
    n = 1 if first else 5
    prefix = os.path.join(self.directory, f"ckpt-{n}")
    with open(prefix + ".data-00000-of-00001", "wb") as f:
      f.write(b"\0" * 100)
    open(prefix + ".index", "wb").close()
    os.makedirs(prefix + "_temp")
    with open(os.path.join(self.directory, "checkpoint"), "w") as f:
      f.write(f'model_checkpoint_path: "ckpt-{n}"\n')
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
  monkeypatch.setattr(tf.train.CheckpointManager, "save", partial)
  strategy = tf.distribute.get_strategy()
  players = train_state.Players(config, strategy)
  keeper = checkpoints.Keeper(players.checkpoint, workdir, strategy)
  with pytest.raises(OSError) as info:
    keeper.save()
  assert info.value.errno == errno.ENOSPC
  assert listing() == before
  restored, skipped = checkpoints.restore_newest(players.checkpoint, _ckpt_dir(workdir))
  assert skipped == []
  if first:
    assert restored is None
  else:
    assert restored.endswith("ckpt-4")


# --------------------------------------------------- 7. checkpoints heal
def _break(workdir, ckpt, how):
  prefix = os.path.join(_ckpt_dir(workdir), ckpt)
  data = prefix + ".data-00000-of-00001"
  if how == "missing_data":
    os.remove(data)
  elif how == "truncated_data":
    with open(data, "r+b") as f:
      f.truncate(os.path.getsize(data) // 2)
  elif how == "corrupt_index":
    with open(prefix + ".index", "wb") as f:
      f.write(b"not an sstable" * 10)
  return prefix


@pytest.mark.slow
@pytest.mark.parametrize("how", ["missing_data", "truncated_data", "corrupt_index"])
def test_unreadable_latest_checkpoint_falls_back_to_the_one_before(trained, tmp_path, how,
                                                                   caplog):
  workdir = _copy(trained, tmp_path / "run")
  broken = _break(workdir, "ckpt-4", how)
  caplog.set_level("WARNING")
  _, players = loading.spotter(workdir)
  assert players.adv_step == 2  # ckpt-3
  assert f"Checkpoint {broken} cannot be read" in caplog.text
  path = export_lib.export(workdir, str(tmp_path / "serving"))
  assert os.path.basename(path) == "2"


@pytest.mark.slow
def test_resume_skips_an_unreadable_checkpoint_and_refuses_another_model(trained, tmp_path):
  workdir = _copy(trained, tmp_path / "run")
  _, idx, _ = trained
  _break(workdir, "ckpt-4", "missing_data")
  c = tiny_idx_config(idx, **{"spotter.steps": 6})
  results = train_lib.train(c, workdir)
  assert results["spotter"]["steps"] == 6
  entry = _starts(workdir)[-1]
  assert entry["resumed_from"].endswith("ckpt-3")
  assert entry["unreadable_checkpoints"][0].startswith("ckpt-4 (")
  # A readable checkpoint of another model is still refused, by name.
  other = _copy(trained, tmp_path / "other")
  recorded = json.load(open(os.path.join(other, "config.json")))
  recorded["discriminator"]["fc_units"] = 32
  with open(os.path.join(other, "config.json"), "w") as f:
    json.dump(recorded, f)
  with pytest.raises(loading.LoadError, match="ckpt-4 does not match"):
    loading.spotter(other)
  # No readable checkpoint at all: refused, nothing trained from scratch.
  paths = checkpoints.checkpoint_paths(_ckpt_dir(workdir))
  assert len(paths) == 3
  for path in paths:
    _break(workdir, os.path.basename(path), "corrupt_index")
  before = _snapshot(workdir)
  c.spotter.steps = 8
  with pytest.raises(train_lib.SetupError, match="no checkpoint in .* can be read"):
    train_lib.train(c, workdir)
  assert _snapshot(workdir) == before


@pytest.mark.slow
def test_orphaned_temp_folders_are_removed_at_the_next_start(trained, tmp_path):
  workdir = _copy(trained, tmp_path / "run")
  _, idx, config = trained
  orphan = os.path.join(_ckpt_dir(workdir), "ckpt-5_temp")
  os.makedirs(orphan)
  with open(os.path.join(orphan, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
    f.write(b"\0" * 1000)
  assert train_lib.train(config, workdir) == {}  # nothing left to train
  assert not os.path.exists(orphan)
  assert sorted(os.listdir(_ckpt_dir(workdir)))[0] == "checkpoint"

  # Export temp folders: a dead writer's goes, a live writer's (flock held)
  # and a just-created one stay.
  out = tmp_path / "serving"
  out.mkdir()
  old = time.time() - 3600
  dead, live, young = (str(out / f".tmp-{n}-abc_123x") for n in (7, 8, 9))
  # Folders whose names export never gives: a user's, however old, stay.
  users = [str(out / n) for n in (".tmp-myeditor-session", ".tmp-7-notes",
                                  ".tmp-7-abc_123x.bak")]
  for d in (dead, live, young, *users):
    os.makedirs(d)
    open(os.path.join(d, "saved_model.pb"), "w").close()
  for d in (dead, live, *users):
    os.utime(d, (old, old))
  held = workdir_lib.HeldDir(live)
  try:
    export_lib.export(workdir, str(out))
    assert sorted(os.listdir(out)) == sorted(
        [".tmp-8-abc_123x", ".tmp-9-abc_123x", "4"] + [os.path.basename(u) for u in users])
  finally:
    held.release()


def test_exports_are_readable_by_other_users(trained, tmp_path):
  workdir, _, _ = trained
  umask = os.umask(0o077)
  try:
    path = export_lib.export(workdir, str(tmp_path / "serving"))
  finally:
    os.umask(umask)
  modes = {}
  for folder, dirs, files in os.walk(tmp_path / "serving"):
    modes[folder] = os.stat(folder).st_mode & 0o777
    for f in files:
      modes[os.path.join(folder, f)] = os.stat(os.path.join(folder, f)).st_mode & 0o777
  assert modes[str(tmp_path / "serving")] == 0o755
  assert modes[path] == 0o755
  assert os.path.join(path, "saved_model.pb") in modes
  assert os.path.join(path, "variables", "variables.index") in modes
  bad = {p: oct(m) for p, m in modes.items()
         if m != (0o755 if os.path.isdir(p) else 0o644)}
  assert not bad


@pytest.mark.slow
def test_missing_input_paths_are_one_line(tmp_path):
  """A path a binary reads that does not exist (a .keras --init, a workdir,
  a pretraining config, a fold file): `error: ...` naming it, exit 2, no
  traceback, and no output folder made."""
  missing = "/nonexistent"
  finetune = [sys.executable, "-m", "trainers.finetune",
              "--config=configs/finetune/fashion_mnist.py:smoke"]
  linear_eval = [sys.executable, "-m", "trainers.linear_eval",
                 "--config=configs/eval/fashion_mnist_folds.py"]
  out = tmp_path / "out"
  cases = {
      "finetune_keras": (finetune + [f"--init={missing}.keras", f"--workdir={out}"],
                         [f"{missing}.keras", "does not exist"]),
      "finetune_random": (finetune + [f"--init=random:{missing}.py", f"--workdir={out}"],
                          [f"{missing}.py"]),
      "eval_workdir": (linear_eval + [f"--workdir={missing}"], [missing, "does not exist"]),
      "eval_random": (linear_eval + ["--features=random",
                                     f"--pretrain_config={missing}.py", f"--output={out}"],
                      [f"{missing}.py"]),
      "eval_fold_file": (linear_eval + ["--features=pixels", f"--output={out}",
                                        "--config.folds.kind=file",
                                        f"--config.folds.file={missing}/folds.txt"],
                         [f"config.folds.file='{missing}/folds.txt' does not exist"]),
      "export_workdir": ([sys.executable, "-m", "trainers.export", f"--workdir={missing}",
                          f"--output={out}"], [missing, "does not exist"]),
  }
  _each_one_line_error(cases, timeout=300,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert not os.path.exists(out)
