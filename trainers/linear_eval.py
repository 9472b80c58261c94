r"""Frozen-feature evaluation of every layer: folds protocol, kNN, full probe.

  python -m trainers.linear_eval --workdir=/tmp/as_fmnist \
      --config=configs/eval/fashion_mnist_folds.py

--features picks what is evaluated (the same protocol and code for each):
  discriminator  the pretrained discriminator of --workdir (default)
  autoencoder    the frozen autoencoder's encoder stages of --workdir
  random         a random-initialised discriminator of --workdir's config
                 (or of --pretrain_config), seeded by --seed
  pixels         raw pixels
  keras          the discriminator inside the .keras file --keras_file
                 (e.g. trainers.finetune's final.keras)
Writes <output>/eval_results.json and TensorBoard scalars under <output>;
--output defaults to <workdir>/eval/<config name>[_<features>].
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from trainers import _cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir.")
_FEATURES = flags.DEFINE_enum(
    "features", "discriminator",
    ["discriminator", "autoencoder", "random", "pixels", "keras"],
    "Which features to evaluate.")
_PRETRAIN_CONFIG = flags.DEFINE_string(
    "pretrain_config", None, "For --features=random without --workdir: "
    "a pretraining config, e.g. configs/fashion_mnist.py.")
_KERAS_FILE = flags.DEFINE_string("keras_file", None, "For --features=keras.")
_SEED = flags.DEFINE_integer("seed", 0, "For --features=random.")
_OUTPUT = flags.DEFINE_string("output", None, "Where results go.")
flags.mark_flag_as_required("config")


def _source():
  kind = _FEATURES.value
  if kind in ("discriminator", "autoencoder"):
    if not _WORKDIR.value:
      raise ValueError(f"--features={kind} needs --workdir")
    return _WORKDIR.value
  if kind == "random":
    src = _PRETRAIN_CONFIG.value or _WORKDIR.value
    if not src:
      raise ValueError("--features=random needs --workdir or --pretrain_config")
    return src
  if kind == "keras":
    if not _KERAS_FILE.value or not os.path.exists(_KERAS_FILE.value):
      raise ValueError(f"--features=keras needs an existing --keras_file, got "
                       f"{_KERAS_FILE.value!r}")
    return _KERAS_FILE.value
  return ""


def _output():
  if _OUTPUT.value:
    return _OUTPUT.value
  if not _WORKDIR.value:
    raise ValueError(f"--features={_FEATURES.value} without --workdir needs --output")
  filename = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.splitext(os.path.basename(filename.split(":")[0]))[0]
  suffix = "" if _FEATURES.value == "discriminator" else f"_{_FEATURES.value}"
  if _FEATURES.value == "random":
    suffix += f"_seed{_SEED.value}"
  return os.path.join(_WORKDIR.value, "eval", name + suffix)


class _LazyWriter:
  """A tf.summary writer under ``logdir`` made on its first use, so an
  evaluation that fails before it writes a summary (missing data, say)
  leaves no output folder behind."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._writer = None

  def as_default(self, step=None):
    if self._writer is None:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._writer = tf.summary.create_file_writer(self.logdir)
    return self._writer.as_default(step=step)

  def flush(self):
    if self._writer is not None:
      self._writer.flush()


def setup_errors():
  from artifact_spotting.data.sources import DataUnavailableError  # pylint: disable=g-import-not-at-top
  from artifact_spotting.loading import LoadError  # pylint: disable=g-import-not-at-top
  return (DataUnavailableError, LoadError, ValueError)


def main(argv):
  del argv
  from artifact_spotting import evaluation  # pylint: disable=g-import-not-at-top
  from artifact_spotting import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  # Before any output folder, model or data: a bad field is one error line.
  try:
    evaluation.validate_eval_config(config)
  except ValueError as e:
    _cli.fail(_cli.one_line(str(e)))
  output = _output()
  extractor = evaluation.make_extractor(_FEATURES.value, _source(),
                                        config.pooled_dims, _SEED.value)
  writer = _LazyWriter(os.path.join(output, "tensorboard"))
  t0 = time.time()
  result = evaluation.evaluate(config, extractor, writer=writer)
  writer.flush()
  os.makedirs(output, exist_ok=True)
  result["seconds"] = time.time() - t0
  result["config"] = config.to_dict()
  # Where and how it was made: a report that finds this file in another
  # folder (copied in to share a baseline) can say so.
  result["output"] = os.path.abspath(output)
  result["command"] = sys.argv[1:]
  path = os.path.join(output, "eval_results.json")
  workdir_lib.atomic_write(path, json.dumps(result, indent=2, default=list))
  print(f"wrote {path}")


if __name__ == "__main__":
  _cli.run(main, setup_errors)
