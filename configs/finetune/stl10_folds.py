r"""STL-10 fine-tuning on the 10 official folds of 1,000 labelled images.

  python -m trainers.finetune --config=configs/finetune/stl10_folds.py \
      --config.fold_file=/data/stl10_binary/fold_indices.txt \
      --init=/tmp/as_stl10 --workdir=/tmp/as_stl10_ft

One run per fold (workdir/fold_<i>), each tested on the 8,000 test images;
finetune_results.json holds the per-fold accuracies, their mean and std.
``:fold=3`` runs one fold. fold_indices.txt ships in the official binary
release (http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz).
All layers are fine-tuned, as in the paper's STL-10 protocol.
"""

import ml_collections

from artifact_spotting import config as config_lib


def get_config(arg: str = ""):
  args = config_lib.parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = ml_collections.ConfigDict(dict(
      source="tfds", name="stl10", path="", data_dir="", manual_dir="",
      auto_install=False, tfds_fallback=False,
      train_split="train", eval_split="test", shuffle_buffer=5000))
  c.channels = 3
  c.num_classes = 10
  c.fold = str(args.get("fold", "all"))   # "all" or one fold index
  c.fold_file = ""                       # path of fold_indices.txt (required)
  c.pp_train = "random_resized_crop(96)|flip_lr|value_range(-1, 1)"
  c.pp_eval = "resize(96)|value_range(-1, 1)"
  c.freeze_up_to = "none"
  c.head_dropout = 0.5
  c.epochs = 60
  c.steps_per_epoch = 0
  c.batch_size = 64
  c.lr = 1e-4
  c.early_stopping_patience = 0   # off: the eval split is the test split
  if args.get("smoke"):
    c.epochs, c.steps_per_epoch, c.batch_size = 1, 2, 4
  return c
