r"""Fashion-MNIST at 32x32, offline (Debian's dataset-fashion-mnist IDX files).

  python -m trainers.pretrain --config=configs/fashion_mnist.py --workdir=/tmp/as_fmnist

Arguments after ':' (comma separated): ``smoke`` (both phases in well under two
minutes on 2 CPU cores), ``tiny`` (16x16, seconds; for tests; see
config.make_tiny), ``ablation=<row>`` (a paper ablation row, see
artifact_spotting/config.py ABLATIONS), ``grid=8`` (an 8x8 mask grid of
4x4-pixel cells instead of 4x4 cells of 8x8 pixels: two encoder downsamplings
instead of three, and no pool after the discriminator's conv3, so conv3-5 run
on 8x8; the paper's 96x96 images have a 6x6 grid, cells a sixth of the side;
not with ``tiny``), ``width=<factor>`` (the discriminator's conv filters and
fc units times the factor, e.g. ``width=2``; a width is a property of the
network, so random baselines and the supervised bound built from this config
get it too). Other arguments are refused.
Any field can be overridden with a dotted flag, e.g.
``--config.spotter.drop_rate=0.5``.
"""

from artifact_spotting import config as config_lib
from artifact_spotting.data.sources import DEBIAN_FASHION_MNIST


def get_config(arg: str = ""):
  args = config_lib.parse_arg(arg)
  config_lib.check_args(args, ("smoke", "tiny", "ablation", "grid", "width"),
                        "configs/fashion_mnist.py")
  c = config_lib.base_config()
  c.dataset.source = "idx"
  c.dataset.name = "fashion_mnist"
  c.dataset.path = DEBIAN_FASHION_MNIST
  c.resolution, c.channels = 32, 1
  c.pp = "resize(32)|flip_lr|value_range(-1, 1)"
  # A lighter autoencoder than the 96x96 one: 28x28 grayscale needs less.
  c.autoencoder.update(stem_filters=16, widths=(32, 64, 128),
                       decoder_widths=(64, 32, 16),
                       steps=1500, batch_size=128, lr=1e-3)
  c.discriminator.fc_units = 256
  grid = args.get("grid", 4)
  if grid == 8:
    c.autoencoder.update(widths=(64, 128), decoder_widths=(64, 32))
    c.discriminator.convs = tuple(dict(conv, pool=i < 2) for i, conv in
                                  enumerate(config_lib.small_alexnet()))
  elif grid != 4:
    raise ValueError(f"configs/fashion_mnist.py: grid={grid!r}; known: 4, 8")
  if grid != 4 and args.get("tiny"):
    # tiny sets its own 16x16 autoencoder and discriminator (a 4x4 grid).
    raise ValueError("configs/fashion_mnist.py: tiny has a 4x4 grid only; "
                     f"got tiny with grid={grid!r}")
  # 1500 steps is a tiny fraction of the paper's ~195k, so both players take
  # a larger step than the paper's lr 3e-4 (a choice for the short budget;
  # the settings measured against each other are in docs/results.md).
  c.spotter.update(steps=1500, batch_size=64, lr=1e-3, repair_lr=1e-3)
  c.probe.update(enabled=True, num_classes=10)
  c.train.update(log_every=50, summary_every=500, checkpoint_every=500)
  if args.get("smoke"):
    c.autoencoder.update(steps=60, batch_size=64)
    c.spotter.update(steps=30, batch_size=32, history_size=64)
    c.train.update(log_every=10, summary_every=20, checkpoint_every=30)
    c.dataset.shuffle_buffer = 1000
  if args.get("tiny"):  # 16x16, a few steps: for tests of the binaries
    config_lib.make_tiny(c)
    c.pp = "resize(16)|flip_lr|value_range(-1, 1)"
  if "width" in args:
    config_lib.scale_discriminator(c, args["width"], "configs/fashion_mnist.py")
  config_lib.apply_ablation(c, args.get("ablation", "full"))
  return c
