r"""Fine-tune a pretrained discriminator on Fashion-MNIST labels (offline).

  python -m trainers.finetune --config=configs/finetune/fashion_mnist.py \
      --init=/tmp/as_fmnist --workdir=/tmp/as_fmnist_ft

``--init`` is a pretraining workdir, an export version folder, or a
``discriminator.keras`` file. ``:smoke`` shrinks it to seconds.

The epoch is chosen on ``validation_size`` training images held out from
training (a seeded draw; never the test split), with early stopping after
``early_stopping_patience`` epochs without improvement; the test split is
scored once, on the chosen epoch's model (``best.keras``).

``:rotnet`` is the peer pretext task: RotNet (Gidaris et al., 2018), the
same discriminator trained from scratch to tell which of four rotations
(0, 90, 180, 270 degrees) each training image is shown in, with the
pretraining config's preprocessing and as many images as
``configs/fashion_mnist.py``'s adversarial phase sees (``:steps=N`` batches
of 64 images, default 1500, each shown in all four rotations); no epoch is
chosen, the last one is the result, evaluated like any backbone:

  python -m trainers.finetune --config=configs/finetune/fashion_mnist.py:rotnet \
      --init=random:configs/fashion_mnist.py --workdir=/tmp/as_rotnet
  python -m trainers.linear_eval --features=keras \
      --keras_file=/tmp/as_rotnet/final.keras --config=configs/eval/fashion_mnist_folds.py

``:supervised`` trains the whole discriminator from scratch on the other
55,000 labelled images until the held-out accuracy stops improving (at most
``:epochs=N``, default 60; the upper bound of benchmarks/quality.py):

  python -m trainers.finetune --config=configs/finetune/fashion_mnist.py:supervised \
      --init=random:configs/fashion_mnist.py --workdir=/tmp/as_supervised
"""

import ml_collections

from artifact_spotting import config as config_lib
from configs import datasets


def get_config(arg: str = ""):
  args = config_lib.parse_arg(arg)
  config_lib.check_args(args, ("supervised", "rotnet", "epochs", "steps", "smoke"),
                        "configs/finetune/fashion_mnist.py")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "labels"              # "labels" | "rotation" (RotNet: 4 classes)
  c.dataset = datasets.fashion_mnist(train_split="train", eval_split="test")
  c.channels = 1
  c.num_classes = 10
  c.multilabel = False           # True: sigmoid heads, labels 1 / 0 / -1 (ignored)
  c.fold = ""                    # "" (whole split), "all" or a fold index
  c.fold_file = ""               # folds of the training split (STL-10's file)
  c.pp_train = "resize(32)|flip_lr|value_range(-1, 1)"
  c.pp_eval = "resize(32)|value_range(-1, 1)"
  c.freeze_up_to = "conv5"     # conv1..this stay frozen; "none" trains all
  c.head_dropout = 0.5
  c.epochs = 10
  c.steps_per_epoch = 0        # 0 = one pass over the training split
  c.batch_size = 128
  c.lr = 1e-3
  c.validation_size = 5000       # held out of the train split to choose the epoch
  c.early_stopping_patience = 3  # needs validation_size > 0
  if args.get("supervised"):
    c.freeze_up_to = "none"
    c.epochs = int(args.get("epochs", 60))
    c.early_stopping_patience = 4
  if args.get("supervised") and args.get("rotnet"):
    raise ValueError("configs/finetune/fashion_mnist.py: supervised and rotnet "
                     "are two different trainings; pick one")
  if "steps" in args and not args.get("rotnet"):
    raise ValueError("configs/finetune/fashion_mnist.py: steps= applies to "
                     "rotnet only")
  if args.get("rotnet"):
    # Images seen as in configs/fashion_mnist.py's adversarial phase (steps
    # x 64), with its preprocessing and its players' Adam learning rate.
    steps = args.get("steps", 1500)
    if not (isinstance(steps, int) and steps > 0 and steps % 100 == 0):
      raise ValueError(f"configs/finetune/fashion_mnist.py: steps={steps!r} "
                       f"must be a positive multiple of 100 (epochs of 100 steps)")
    c.task, c.num_classes, c.freeze_up_to = "rotation", 4, "none"
    c.batch_size, c.lr = 64, 1e-3
    c.epochs, c.steps_per_epoch = steps // 100, 100
    c.validation_size, c.early_stopping_patience = 0, 0
  if args.get("smoke"):
    c.epochs, c.steps_per_epoch, c.batch_size = 2, 5, 32
    c.validation_size = 16 if c.validation_size else 0
  return c


def tfds_images(arg, name, res, num_classes, train_split, eval_split="test",
                *, also=(), where):
  """The RGB tfds fine-tuning setup (STL-10 folds, VOC 2007) at ``res``;
  ``arg`` may hold ``smoke`` and the caller's own arguments ``also``."""
  args = config_lib.parse_arg(arg)
  config_lib.check_args(args, ("smoke",) + tuple(also), where)
  c = get_config("")
  c.dataset = datasets.tfds(name, train_split=train_split, eval_split=eval_split)
  c.channels = 3
  c.num_classes = num_classes
  c.pp_train = f"random_resized_crop({res})|flip_lr|value_range(-1, 1)"
  c.pp_eval = f"resize({res})|value_range(-1, 1)"
  c.freeze_up_to = "none"         # the paper's protocol fine-tunes every layer
  c.batch_size = 64
  c.lr = 1e-4
  # A fixed schedule, as the paper's protocols: no epoch is chosen (the last
  # one is the result), so nothing is held out and nothing stops early.
  c.validation_size = 0
  c.early_stopping_patience = 0
  if args.get("smoke"):
    c.epochs, c.steps_per_epoch, c.batch_size = 1, 2, 4
  return c, args
