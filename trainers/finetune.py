r"""Fine-tune a pretrained artifact spotter with Keras fit.

  python -m trainers.finetune --config=configs/finetune/fashion_mnist.py \
      --init=/tmp/as_fmnist --workdir=/tmp/as_fmnist_ft

--init: a pretraining workdir, an export version folder or a .keras file.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from trainers import _cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config.",
                                          lock_config=True)
_INIT = flags.DEFINE_string("init", None, "Workdir, export folder or .keras file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "init", "workdir"])


def setup_errors():
  from artifact_spotting.data.sources import DataUnavailableError  # pylint: disable=g-import-not-at-top
  from artifact_spotting.loading import LoadError  # pylint: disable=g-import-not-at-top
  return (DataUnavailableError, LoadError, ValueError)


def main(argv):
  del argv
  _cli.require_paths(init=_INIT.value, workdir=_WORKDIR.value)
  if os.path.isfile(_INIT.value) and not _INIT.value.endswith(".keras"):
    _cli.fail(f"--init={_INIT.value} is a file, not a pretraining workdir, an "
              f"export folder or a .keras file")
  if os.path.isfile(_WORKDIR.value):
    _cli.fail(f"--workdir={_WORKDIR.value} is a file, not a folder")
  from artifact_spotting import finetune as finetune_lib  # pylint: disable=g-import-not-at-top
  # Before any model, data or output folder: a bad field is one error line.
  try:
    finetune_lib.validate_finetune_config(_CONFIG.value)
  except ValueError as e:
    _cli.fail(_cli.one_line(str(e)))
  _, result = finetune_lib.finetune(_CONFIG.value, _INIT.value, _WORKDIR.value)
  metric = "eval_map" if "eval_map" in result else "eval_accuracy"
  spread = (f" +- {result[metric + '_std']:.4f} over {len(result['folds'])} folds"
            if metric + "_std" in result else "")
  print(f"{metric.replace('_', ' ')} {result[metric]:.4f}{spread} "
        f"({result['epochs_run']} epochs, frozen up to {result['freeze_up_to']})")


if __name__ == "__main__":
  _cli.run(main, setup_errors)
