"""MultiWorkerMirroredStrategy: two worker processes on localhost."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import tensorflow as tf
import pytest

# Slow as a whole (binaries, several processes): the full suite only.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_ports(n):
  socks, ports = [], []
  for _ in range(n):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
    ports.append(s.getsockname()[1])
  for s in socks:
    s.close()
  return ports


def _start(workdir, idx_dir, ports, steps, log):
  procs = []
  for i in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": i}}))
    cmd = [sys.executable, "-m", "trainers.pretrain",
           "--config=configs/fashion_mnist.py:tiny", f"--workdir={workdir}",
           f"--config.dataset.path={idx_dir}", "--config.dataset.auto_install=False",
           "--config.dataset.tfds_fallback=False",
           "--config.distribute.strategy=multi_worker",
           f"--config.spotter.steps={steps}"]
    out = open(f"{log}.{i}", "w")
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True))
  return procs


def _wait(procs, timeout=400):
  deadline = time.time() + timeout
  for p in procs:
    p.wait(max(1, deadline - time.time()))
  return [p.returncode for p in procs]


def _kill(procs):
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()


def _adv_step(workdir):
  path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  if path is None:
    return -1
  reader = tf.train.load_checkpoint(path)
  return int(reader.get_tensor("c_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


def test_two_workers_train_checkpoint_from_chief_and_resume(idx_dir, tmp_path):
  workdir = str(tmp_path / "mw")
  log = str(tmp_path / "log")
  procs = _start(workdir, idx_dir, _free_ports(2), 4, log)
  try:
    codes = _wait(procs)
  finally:
    _kill(procs)
  logs = [open(f"{log}.{i}").read() for i in range(2)]
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert "with 2 replica(s)" in logs[0]
  assert _adv_step(workdir) == 4
  # Only the chief keeps checkpoints; the other worker's scratch is removed.
  assert not os.path.exists(os.path.join(workdir, ".scratch", "worker_1"))
  assert "worker_1" not in os.listdir(os.path.join(workdir, "checkpoints"))
  assert os.path.exists(os.path.join(workdir, "tensorboard"))

  # Extend the run, kill both workers after a new checkpoint, restart, resume.
  procs = _start(workdir, idx_dir, _free_ports(2), 40, log + "b")
  try:
    deadline = time.time() + 300
    while _adv_step(workdir) < 6 and time.time() < deadline:
      if any(p.poll() is not None for p in procs):
        break
      time.sleep(0.5)
    killed_at = _adv_step(workdir)
  finally:
    _kill(procs)
  assert 6 <= killed_at < 40, open(f"{log}b.0").read()[-3000:]
  procs = _start(workdir, idx_dir, _free_ports(2), 40, log + "c")
  try:
    codes = _wait(procs)
  finally:
    _kill(procs)
  out = open(f"{log}c.0").read()
  assert codes == [0, 0], out[-3000:]
  assert f"adversarial step {killed_at}" in out
  assert _adv_step(workdir) == 40
