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

from artifact_spotting import config as config_lib
from configs.finetune import fashion_mnist


def get_config(arg: str = ""):
  res = int(config_lib.parse_arg(arg).get("res", 96))
  c, args = fashion_mnist.tfds_images(arg, "voc/2007", res, 20, "train+validation",
                                      also=("res",), where="configs/finetune/voc07.py")
  c.multilabel = True
  if not args.get("smoke"):
    c.epochs = 80
  return c
