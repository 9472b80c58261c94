r"""Your own unlabeled images: every .jpg/.jpeg/.png/.gif/.bmp under a folder.

  python -m trainers.pretrain --config=configs/image_folder.py \
      --config.dataset.path=/path/to/images --workdir=/tmp/as_mine

Sub-folders one level down are taken as class labels for the online probe
when every image sits in one (set --config.probe.num_classes to their
number); otherwise the probe is off. JPEG (also CMYK and progressive), PNG
(8/16-bit, grey, palette, RGBA), GIF and BMP files are read, any case of
extension; each file once, however many links lead to it. Files that cannot
be used (unreadable, not an image, truncated, corrupt, decoding only with
libjpeg warnings, or over ``--config.dataset.max_pixels`` pixels: 64,000,000
by default, 0 for no cap) are skipped; one warning line counts them by reason
and names the first 20. ``:res=64`` picks another resolution
(must be divisible by 16 with the default 4 encoder stages).
"""

from artifact_spotting import config as config_lib
from configs import stl10


def get_config(arg: str = ""):
  args = config_lib.parse_arg(arg)
  c = stl10.get_config(arg, also=("res",), where="configs/image_folder.py")
  res = int(args.get("res", 96))
  c.dataset.update(source="image_folder", name="image_folder", path="",
                   shuffle_buffer=10_000)
  c.resolution = res
  c.pp = (f"random_resized_crop({res}, area=(1/3, 1.0))|flip_lr|"
          "color_jitter|value_range(-1, 1)")
  c.probe.update(enabled=False, num_classes=0)
  if not args.get("smoke"):
    c.autoencoder.steps = 50_000
    c.spotter.steps = 50_000
  return c
