r"""Fashion-MNIST evaluation (offline): the STL-10 folds protocol's shape, plus
the full-label probe.

  python -m trainers.linear_eval --workdir=/tmp/as_fmnist \
      --config=configs/eval/fashion_mnist_folds.py

Folds: 10 seeded, disjoint, class-balanced folds of 100 labelled images per
class (1,000 per fold) from the 60k training split; every fold's classifier is
tested on the 10,000 test images; mean and std over folds. The ridge penalty
is chosen on 5,000 training images in no fold. Full: one softmax classifier
per layer on the 60k labels, 5,000 of them held out to choose each layer's
epoch (early stopping; the test split is scored once, on that epoch).
Arguments after ':' (comma separated):
``folds_only``, ``full_only``, ``smoke`` (tiny sizes, for tests).
"""

import ml_collections

from artifact_spotting import config as config_lib
from configs import datasets


def get_config(arg: str = "", where="configs/eval/fashion_mnist_folds.py"):
  args = config_lib.parse_arg(arg)
  config_lib.check_args(args, ("folds_only", "full_only", "smoke"), where)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = datasets.fashion_mnist(train_split="train", test_split="test")
  c.channels = 1
  c.num_classes = 10
  c.pp_eval = "resize(32)|value_range(-1, 1)"
  c.protocols = ("folds", "full")
  c.pooled_dims = 9216            # per layer, after adaptive average pooling
  c.batch_size = 256              # feature extraction
  c.folds = ml_collections.ConfigDict(dict(
      kind="seeded",              # seeded | file (STL-10 fold_indices.txt)
      file="", num_folds=10, per_class=100, seed=0, validation_size=5000))
  c.ridge_penalties = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
  c.knn = ml_collections.ConfigDict(dict(enabled=True, k=20, temperature=0.07))
  c.full = ml_collections.ConfigDict(dict(
      # Features of pp_eval images, cached; a layer's classifier trains
      # until its accuracy on validation_size held-out training images has
      # not improved for `patience` epochs, and the best epoch is kept.
      max_epochs=50, patience=5, validation_size=5000,
      batch_size=256, lr=1e-3, weight_decay=5e-4,
      max_train_images=0))        # 0 = the whole training split
  c.max_test_images = 0           # 0 = the whole test split
  if args.get("folds_only"):
    c.protocols = ("folds",)
  if args.get("full_only"):
    c.protocols = ("full",)
  if args.get("smoke"):
    c.folds.update(num_folds=2, per_class=3, validation_size=20)
    c.full.update(max_epochs=3, patience=1, validation_size=32, batch_size=32,
                  max_train_images=256)
    c.max_test_images = 200
    c.batch_size = 32
  return c
