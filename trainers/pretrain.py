r"""Pretraining binary: phase 1 (autoencoder), then phase 2 (spot artifacts).

  python -m trainers.pretrain --config=configs/fashion_mnist.py --workdir=/tmp/as

Rerunning the same command resumes whichever phase is unfinished; a rerun
may raise step counts and change logistics fields (config.RESUME_SAFE_FIELDS),
anything else is refused (see artifact_spotting/workdir.py). One trainer at a
time per workdir (workdir/trainer.lock). Dotted flags override config fields:
--config.spotter.drop_rate=0.5

SIGTERM or SIGINT (Ctrl-C) stops training at the next step boundary: a
checkpoint is written there, one line says so, and the exit status is 128 +
the signal's number (143 for SIGTERM, 130 for SIGINT); rerunning the same
command resumes from it. A second signal ends the process at once.

The data of configs/fashion_mnist.py is Debian's dataset-fashion-mnist
package, with tfds as the fallback; when neither has it (a first run on a
new machine) the binary stops with one line naming the install command.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from artifact_spotting import config as config_lib  # noqa: E402
from trainers import _cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file, optionally ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, "
                               "TensorBoard logs and the resolved config go.")
flags.mark_flags_as_required(["config", "workdir"])


def setup_errors():
  from artifact_spotting import train_lib  # pylint: disable=g-import-not-at-top
  from artifact_spotting.data.sources import DataUnavailableError  # pylint: disable=g-import-not-at-top
  # FloatingPointError: training diverged; its message names the last good
  # checkpoint, which is kept.
  return (DataUnavailableError, train_lib.SetupError, FloatingPointError)


def main(argv):
  del argv
  _cli.require_paths(workdir=_WORKDIR.value)
  # The config's ranges are checked before TensorFlow loads (train checks
  # them again): a mistake is reported at once.
  try:
    config_lib.validate(_CONFIG.value, pp=False)  # train() checks pp too
  except ValueError as e:
    _cli.fail(_cli.one_line(str(e)))
  from artifact_spotting import train_lib  # pylint: disable=g-import-not-at-top
  from artifact_spotting.data import sources  # pylint: disable=g-import-not-at-top
  try:
    results = train_lib.train(_CONFIG.value, _WORKDIR.value)
  except sources.FashionMnistMissingError as e:
    _cli.fail(_cli.fashion_mnist_first_run(e.path))
  except train_lib.Interrupted as e:
    # Not an error: the checkpoint is written and a rerun resumes from it.
    print(f"interrupted: {e}", file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  for phase, r in results.items():
    if r:
      print(f"{phase}: {r['steps']} steps, {r['images_per_second']:.1f} img/s")


if __name__ == "__main__":
  _cli.run(main, setup_errors)
