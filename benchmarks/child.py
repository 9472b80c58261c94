"""The benchmarks' parent/child protocol: a child process prints one
``RESULT <json>`` line; the parent runs it and reads that line back."""

from __future__ import annotations

import json
import subprocess
import sys

PREFIX = "RESULT "


def emit(result) -> None:
  print(PREFIX + json.dumps(result), flush=True)


def run(args, what: str, cwd=None, env=None):
  """Runs ``python -m <args>`` and returns the JSON its RESULT line holds;
  on failure prints the child's stderr tail and exits naming ``what``."""
  r = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env,
                     capture_output=True, text=True)
  line = [l for l in r.stdout.splitlines() if l.startswith(PREFIX)]
  if r.returncode or not line:
    print(r.stderr[-3000:], file=sys.stderr)
    raise SystemExit(f"{what} failed")
  return json.loads(line[0][len(PREFIX):])
