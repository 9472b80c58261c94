r"""Fashion-MNIST at 32x32, offline (Debian's dataset-fashion-mnist IDX files).

  python -m trainers.pretrain --config=configs/fashion_mnist.py --workdir=/tmp/as_fmnist

Arguments after ':' (comma separated): ``smoke`` (both phases in well under two
minutes on 2 CPU cores), ``ablation=<row>`` (a paper ablation row, see
artifact_spotting/config.py ABLATIONS). Any field can be overridden with a
dotted flag, e.g. ``--config.spotter.drop_rate=0.5``.
"""

from artifact_spotting import config as config_lib


def get_config(arg: str = ""):
  args = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.dataset.source = "idx"
  c.dataset.name = "fashion_mnist"
  c.dataset.path = "/usr/share/datasets/fashion-mnist"
  c.resolution, c.channels = 32, 1
  c.pp = "resize(32)|flip_lr|value_range(-1, 1)"
  # A lighter autoencoder than the 96x96 one: 28x28 grayscale needs less.
  c.autoencoder.update(stem_filters=16, widths=(32, 64, 128),
                       decoder_widths=(64, 32, 16),
                       steps=1500, batch_size=128, lr=1e-3)
  c.discriminator.fc_units = 256
  c.spotter.update(steps=1500, batch_size=64)
  c.probe.update(enabled=True, num_classes=10)
  c.train.update(log_every=50, summary_every=500, checkpoint_every=500)
  if args.get("smoke"):
    c.autoencoder.update(steps=60, batch_size=64)
    c.spotter.update(steps=30, batch_size=32, history_size=64)
    c.train.update(log_every=10, summary_every=20, checkpoint_every=30)
    c.dataset.shuffle_buffer = 1000
  config_lib.apply_ablation(c, args.get("ablation", "full"))
  return c
