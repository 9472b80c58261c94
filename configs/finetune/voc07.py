r"""Pascal VOC 2007 multi-label classification (tfds voc/2007).

  python -m trainers.finetune --config=configs/finetune/voc07.py \
      --init=/tmp/as_imagenet --workdir=/tmp/as_voc07

Trains on trainval (tfds "train+validation"), reports per-class AP and mAP on
test by the VOC 2007 definition (11-point interpolated AP; "difficult"-only
classes of an image are ignored, in the loss too). 20 sigmoid heads on conv5;
all layers fine-tuned (``freeze_up_to="none"``) as in the paper's protocol.
Set ``resolution``/``channels`` to the pretraining config's (``:res=96``).
``:smoke`` shrinks it to seconds (tests run it under tfds mock_data).
"""

import ml_collections

from artifact_spotting import config as config_lib


def get_config(arg: str = ""):
  args = config_lib.parse_arg(arg)
  res = int(args.get("res", 96))
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = ml_collections.ConfigDict(dict(
      source="tfds", name="voc/2007", path="", data_dir="", manual_dir="",
      auto_install=False, tfds_fallback=False,
      train_split="train+validation", eval_split="test", shuffle_buffer=5000))
  c.channels = 3
  c.num_classes = 20
  c.multilabel = True
  c.pp_train = f"random_resized_crop({res})|flip_lr|value_range(-1, 1)"
  c.pp_eval = f"resize({res})|value_range(-1, 1)"
  c.freeze_up_to = "none"
  c.head_dropout = 0.5
  c.epochs = 80
  c.steps_per_epoch = 0
  c.batch_size = 64
  c.lr = 1e-4
  c.early_stopping_patience = 0   # off: the eval split is the test split
  if args.get("smoke"):
    c.epochs, c.steps_per_epoch, c.batch_size = 1, 2, 4
  return c
