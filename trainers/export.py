r"""Export a pretraining workdir for TF Serving and Keras.

  python -m trainers.export --workdir=/tmp/as_fmnist --output=/tmp/as_export

writes /tmp/as_export/<version>/ (version = adversarial step unless
--version is given): a SavedModel with signatures serving_default, features
and repair, plus discriminator.keras, readable by other users (folders 0755,
files 0644). See BUILD.md for TF Serving.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from trainers import _cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "Export base directory.")
_VERSION = flags.DEFINE_integer("version", None, "Version number (default: step).")
flags.mark_flags_as_required(["workdir", "output"])


def setup_errors():
  from artifact_spotting.loading import LoadError  # pylint: disable=g-import-not-at-top
  return (LoadError,)  # export.ExportError is one


def main(argv):
  del argv
  _cli.require_paths(workdir=_WORKDIR.value, output=_OUTPUT.value)
  if _VERSION.value is not None and _VERSION.value < 1:
    _cli.fail(f"--version={_VERSION.value} must be >= 1 (TF Serving versions "
              f"are positive integers)")
  if os.path.isfile(_WORKDIR.value):
    _cli.fail(f"--workdir={_WORKDIR.value} is a file, not a pretraining workdir")
  from artifact_spotting import export as export_lib  # pylint: disable=g-import-not-at-top
  path = export_lib.export(_WORKDIR.value, _OUTPUT.value, _VERSION.value)
  print(f"exported {path}")


if __name__ == "__main__":
  _cli.run(main, setup_errors)
