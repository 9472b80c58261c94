"""Op-type time breakdown of a TensorFlow profiler trace (``*.xplane.pb``),
read with the protobuf classes TensorFlow ships (no TensorBoard plugin)."""

from __future__ import annotations

import collections
import glob
import os

# Threads whose events are TensorFlow ops ("name:Type") run by the executor.
EXECUTOR_LINES = ("tf_Compute", "tf_inter_op")
INPUT_LINES = ("tf_data",)


def _op_type(event_name: str):
  """'c_optimizer/Conv2D_3:Conv2D' -> 'Conv2D'; None for non-op events."""
  if ":" not in event_name or "::" in event_name:
    return None
  op_type = event_name.rsplit(":", 1)[1]
  return op_type if op_type.isidentifier() else None


def _self_times(events):
  """[(start, end, key)] on one thread -> [(key, self duration)], where an
  event's self time excludes the events nested inside it."""
  out, stack = [], []  # stack of [end, key, duration, children]
  def close(item):
    end, key, dur, children = item
    out.append((key, dur - children))
  for start, end, key in sorted(events, key=lambda e: (e[0], -e[1])):
    while stack and stack[-1][0] <= start:
      close(stack.pop())
    if stack:
      stack[-1][3] += end - start
    stack.append([end, key, end - start, 0])
  while stack:
    close(stack.pop())
  return out


def _busy(intervals):
  """Total length of the union of [start, end) intervals."""
  total, cur_start, cur_end = 0, None, None
  for s, e in sorted(intervals):
    if cur_end is None or s > cur_end:
      if cur_end is not None:
        total += cur_end - cur_start
      cur_start, cur_end = s, e
    else:
      cur_end = max(cur_end, e)
  if cur_end is not None:
    total += cur_end - cur_start
  return total


def breakdown(xspace, steps: int):
  """Per-step op-type times (seconds) of a host trace.

  Returns {"op_types": {type: {"seconds_per_step", "calls_per_step",
  "share"}}, "op_seconds_per_step", "input_busy_seconds_per_step",
  "wall_seconds_per_step"}; shares sum to 1 over op types.
  """
  per_type = collections.defaultdict(float)
  calls = collections.Counter()
  input_busy, first, last = 0, None, None
  for plane in xspace.planes:
    if not plane.name.startswith("/host:"):
      continue
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      t0 = line.timestamp_ns
      spans = [(t0 + e.offset_ps / 1000, t0 + (e.offset_ps + e.duration_ps) / 1000,
                names.get(e.metadata_id, "")) for e in line.events]
      if line.name.startswith(EXECUTOR_LINES):
        ops = [(s, e, _op_type(n)) for s, e, n in spans if _op_type(n)]
        for key, dur in _self_times(ops):
          per_type[key] += dur
          calls[key] += 1
        for s, e, _ in ops:
          first = s if first is None else min(first, s)
          last = e if last is None else max(last, e)
      elif line.name.startswith(INPUT_LINES):
        input_busy += _busy([(s, e) for s, e, _ in spans])
  total = sum(per_type.values())
  if not total:
    raise ValueError("the trace holds no TensorFlow op events on the executor "
                     f"threads ({', '.join(EXECUTOR_LINES)}); was the step run "
                     "between profiler start and stop?")
  ns = 1e9 * steps
  return {
      "op_types": {k: {"seconds_per_step": v / ns, "calls_per_step": calls[k] / steps,
                       "share": v / total}
                   for k, v in sorted(per_type.items(), key=lambda kv: -kv[1])},
      "op_seconds_per_step": total / ns,
      "input_busy_seconds_per_step": input_busy / ns,
      "wall_seconds_per_step": (last - first) / ns,
  }


def read_trace(logdir: str):
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
  if not paths:
    raise FileNotFoundError(f"no *.xplane.pb under {logdir}: the profiler wrote no trace")
  space = xplane_pb2.XSpace()
  with open(paths[-1], "rb") as f:
    space.ParseFromString(f.read())
  return space


