"""Read back what a pretraining run logged to TensorBoard.

``train_lib`` writes its summaries (losses, accuracies, images/s, montages)
with ``tf.summary`` under ``<workdir>/tensorboard``. This module reads them
into plain Python, for scripts and notebooks that want a run's numbers
without starting TensorBoard:

  scalars, images = events.read_workdir("/tmp/as_fmnist")
  steps, losses = zip(*scalars["c/class_loss"])

TF2 summaries are stored as tensors; a rank-0 tensor is a scalar, anything
else (an image summary: ``[width, height, png bytes...]`` as strings) is
returned as the tensor.
"""

import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from artifact_spotting import workdir as workdir_lib

Scalars = Dict[str, List[Tuple[int, float]]]
Images = Dict[str, List[Tuple[int, np.ndarray]]]


def read_events(logdir: str) -> Tuple[Scalars, Images]:
  """({tag: [(step, value)]}, {tag: [(step, tensor)]}) from the event files
  in ``logdir``, every logged point kept, in the order written."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(
      logdir, size_guidance={"tensors": 0})  # 0: keep every point
  acc.Reload()
  scalars, images = {}, {}
  for tag in acc.Tags()["tensors"]:
    events = acc.Tensors(tag)
    values = [tf.make_ndarray(e.tensor_proto) for e in events]
    if values[0].ndim == 0:
      scalars[tag] = [(int(e.step), float(v)) for e, v in zip(events, values)]
    else:
      images[tag] = [(int(e.step), v) for e, v in zip(events, values)]
  return scalars, images


def read_workdir(workdir: str) -> Tuple[Scalars, Images]:
  """``read_events`` on the TensorBoard folder of a pretraining workdir."""
  return read_events(os.path.join(workdir, workdir_lib.TENSORBOARD_DIR))
