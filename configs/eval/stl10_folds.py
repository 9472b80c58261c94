r"""STL-10 folds protocol: the 10 official folds of 1,000 labelled training
images, tested on the 8,000 test images; mean and std over folds.

  python -m trainers.linear_eval --workdir=/tmp/as_stl10 \
      --config=configs/eval/stl10_folds.py \
      --config.folds.file=/data/stl10_binary/fold_indices.txt

``fold_indices.txt`` ships in the official binary release
(http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz, inside
``stl10_binary/``): ten lines of 0-based indices into the 5,000 training
images, in the order tfds ``stl10`` ``train`` yields them. The ridge penalty is
chosen per fold on 1,000 images of the other folds. Images are used at the
pretraining resolution (96x96, see configs/stl10.py).
"""

from configs import datasets
from configs.eval import fashion_mnist_folds


def get_config(arg: str = ""):
  c = fashion_mnist_folds.get_config(arg, where="configs/eval/stl10_folds.py")
  c.dataset = datasets.tfds("stl10", train_split="train", test_split="test")
  c.channels = 3
  c.pp_eval = "resize(96)|value_range(-1, 1)"
  c.folds.update(kind="file", file="", validation_size=1000)  # set .file
  c.protocols = ("folds",)
  return c
