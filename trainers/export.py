r"""Export a pretraining workdir for TF Serving and Keras.

  python -m trainers.export --workdir=/tmp/as_fmnist --output=/tmp/as_export

writes /tmp/as_export/<version>/ (version = adversarial step unless
--version is given): a SavedModel with signatures serving_default, features
and repair, plus discriminator.keras. See BUILD.md for TF Serving.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags  # noqa: E402

from artifact_spotting import export as export_lib  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "Export base directory.")
_VERSION = flags.DEFINE_integer("version", None, "Version number (default: step).")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  del argv
  try:
    path = export_lib.export(_WORKDIR.value, _OUTPUT.value, _VERSION.value)
  except export_lib.ExportError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"exported {path}")


if __name__ == "__main__":
  app.run(main)
