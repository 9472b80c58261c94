r"""One throughput variant timed at several commits, interleaved.

  python -m benchmarks.by_commit --commits=5656a0d,15dfcb0

Checks each commit out into a temporary git worktree and runs
``python -m benchmarks.throughput --variant=...`` there (its own process), in
``--rounds`` interleaved rounds (commit 1, 2, ..., 1, 2, ...) so that a drift
of the machine's speed hits every commit alike. Per commit: the median over
all timed windows of all rounds. Writes
``results/throughput_<machine>_history.{json,md}`` (commits in the order
given, the first is the 1.00x reference). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time

from absl import app, flags

from benchmarks import child
from benchmarks.machine import machine, machine_tag, write_report

FLAGS = flags.FLAGS
flags.DEFINE_list("commits", [], "Commits to time, the reference first.")
flags.DEFINE_string("variant", "spotter:64:noxla:float32",
                    "phase:global_batch:xla|noxla:precision (benchmarks.throughput).")
flags.DEFINE_integer("steps", 10, "Steps per timed window.")
flags.DEFINE_integer("windows", 5, "Timed windows per round.")
flags.DEFINE_integer("rounds", 2, "Interleaved rounds over the commits.")
flags.DEFINE_string("out_dir", "results", "Output folder.")


def git(*args, cwd=None):
  return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                        text=True).stdout.strip()


def time_at(tree, variant, steps, windows):
  return child.run(["benchmarks.throughput", f"--variant={variant}",
                    f"--steps={steps}", f"--windows={windows}"],
                   f"{variant} in {tree}", cwd=tree)


def main(argv):
  del argv
  if len(FLAGS.commits) < 2:
    raise app.UsageError("--commits needs at least two commits (the first is the reference)")
  root = git("rev-parse", "--show-toplevel")
  commits = [git("rev-parse", "--short", c, cwd=root) for c in FLAGS.commits]
  tmp = tempfile.mkdtemp(prefix="as_by_commit_")
  trees = {}
  try:
    for c in commits:
      trees[c] = os.path.join(tmp, c)
      git("worktree", "add", "--detach", trees[c], c, cwd=root)
    windows = {c: [] for c in commits}
    for rnd in range(FLAGS.rounds):
      for c in commits:
        res = time_at(trees[c], FLAGS.variant, FLAGS.steps, FLAGS.windows)
        windows[c].extend(res["window_rates"])
        print(f"round {rnd + 1} {c}: {res['images_per_second']:.1f} img/s", flush=True)
  finally:
    for tree in trees.values():
      subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=root,
                     capture_output=True)
  rows = []
  for i, c in enumerate(commits):
    rate = statistics.median(windows[c])
    # What this row adds: the subjects of the commits since the previous row.
    span = [c] if i == 0 else [f"{commits[i - 1]}..{c}"]
    change = "; ".join(git("log", "--format=%h %s", *span, cwd=root).splitlines()
                       [:1 if i == 0 else None])
    rows.append({"commit": c, "change": change,
                 "images_per_second": rate, "window_rates": windows[c],
                 "speedup": rate / statistics.median(windows[commits[0]])})
  m = machine()
  tag = machine_tag(m)
  command = (f"python -m benchmarks.by_commit --commits={','.join(commits)} "
             f"--variant={FLAGS.variant} --steps={FLAGS.steps} "
             f"--windows={FLAGS.windows} --rounds={FLAGS.rounds}")
  report = {"machine": m, "tag": tag, "date": time.strftime("%Y-%m-%d"),
            "command": command, "variant": FLAGS.variant, "rows": rows}
  lines = [f"# Speed by commit: {FLAGS.variant} ({tag})", "",
           f"Machine: {m['cpu']} family {m.get('cpu_family')} model {m.get('cpu_model')}, "
           f"ISA {m.get('cpu_flags')}, {m['cores']} cores, TensorFlow {m['tensorflow']}; "
           f"{report['date']}. Fashion-MNIST config (32x32) unless the variant's "
           f"config says otherwise. Each commit in its own process, {FLAGS.rounds} "
           f"interleaved rounds of {FLAGS.windows} windows of {FLAGS.steps} steps; "
           "median over all windows.", "", f"Reproduce: `{command}`", "",
           "| commit | commits since the previous row | images/s | speedup | windows (min-max) |",
           "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['commit']} | {r['change']} | {r['images_per_second']:.1f} | "
                 f"{r['speedup']:.2f}x | {min(r['window_rates']):.1f}-"
                 f"{max(r['window_rates']):.1f} |")
  write_report(FLAGS.out_dir, f"throughput_{tag}_history", report, lines)
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
