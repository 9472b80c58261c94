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

from configs.finetune import fashion_mnist


def get_config(arg: str = ""):
  c, args = fashion_mnist.tfds_images(arg, "stl10", 96, 10, "train", also=("fold",),
                                      where="configs/finetune/stl10_folds.py")
  c.fold = str(args.get("fold", "all"))   # "all" or one fold index
  c.fold_file = ""                       # path of fold_indices.txt (required)
  if not args.get("smoke"):
    c.epochs = 60
  return c
