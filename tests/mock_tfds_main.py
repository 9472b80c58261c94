r"""Runs one of the project's binaries under ``tfds.testing.mock_data``.

  python tests/mock_tfds_main.py NUM_EXAMPLES trainers.pretrain --config=... --workdir=...

tfds cannot download on the test machines, so the tests run the real binaries
(their flags, their config loading, their whole code path) with every tfds
builder answering with NUM_EXAMPLES generated examples per split, from the
builder's own feature spec.
"""

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  num_examples, module, *flags = sys.argv[1:]
  sys.path.insert(0, ROOT)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  sys.argv = [module] + flags
  with tfds.testing.mock_data(num_examples=int(num_examples)):
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
