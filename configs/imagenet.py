r"""ImageNet (tfds imagenet2012) at 96x96 with the STL-10 architecture.

  python -m trainers.pretrain --config=configs/imagenet.py \
      --config.dataset.manual_dir=/data/imagenet_tars --workdir=/tmp/as_imagenet

tfds cannot download ImageNet: place ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in ``dataset.manual_dir`` (see BUILD.md).
"""

from artifact_spotting import config as config_lib
from configs import stl10


def get_config(arg: str = ""):
  args = config_lib.parse_arg(arg)
  c = stl10.get_config(arg, where="configs/imagenet.py")
  c.dataset.update(source="tfds", name="imagenet2012", split="train",
                   manual_dir="", shuffle_buffer=50_000)
  c.probe.update(enabled=True, num_classes=1000)
  steps = 100_000 if not args.get("smoke") else c.spotter.steps
  c.autoencoder.steps = steps
  c.spotter.steps = steps
  return c
