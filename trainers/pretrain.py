r"""Pretraining binary: phase 1 (autoencoder), then phase 2 (spot artifacts).

  python -m trainers.pretrain --config=configs/fashion_mnist.py --workdir=/tmp/as

Rerunning the same command resumes whichever phase is unfinished.
Dotted flags override config fields: --config.spotter.drop_rate=0.5
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from artifact_spotting import train_lib  # noqa: E402
from artifact_spotting.data.sources import DataUnavailableError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file, optionally ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, "
                               "TensorBoard logs and the resolved config go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  try:
    results = train_lib.train(_CONFIG.value, _WORKDIR.value)
  except (DataUnavailableError, train_lib.SetupError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for phase, r in results.items():
    if r:
      print(f"{phase}: {r['steps']} steps, {r['images_per_second']:.1f} img/s")


if __name__ == "__main__":
  app.run(main)
