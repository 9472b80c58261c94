r"""STL-10, paper-faithful: 96x96, tfds stl10 "unlabelled" split (100k images),
the released code's augmentation, AlexNet-style discriminator, 6x6 mask grid.

  python -m trainers.pretrain --config=configs/stl10.py --workdir=/tmp/as_stl10

Needs the tfds stl10 data (downloads on first use where the network allows;
or prepare it elsewhere and pass --config.dataset.data_dir). Paper scale is
~195k steps per phase at global batch 256 on 2 GPUs; see BUILD.md.
"""

from artifact_spotting import config as config_lib


def get_config(arg: str = "", also=(), where="configs/stl10.py"):
  """``also``/``where``: the arguments a config built on this one adds, and
  its name, for the refusal of unknown arguments."""
  args = config_lib.parse_arg(arg)
  config_lib.check_args(args, ("smoke", "ablation") + tuple(also), where)
  c = config_lib.base_config()
  c.dataset.update(source="tfds", name="stl10", split="unlabelled",
                   shuffle_buffer=20_000)
  c.resolution, c.channels = 96, 3
  c.pp = ("random_resized_crop(96, area=(1/3, 1.0), ratio=(3/4, 4/3))|flip_lr|"
          "color_jitter(brightness=32/255, saturation=(0.5, 1.5))|value_range(-1, 1)")
  c.autoencoder.update(stem_filters=32, widths=(64, 128, 256, 512),
                       decoder_widths=(256, 128, 64, 32), steps=195_000,
                       batch_size=256, lr=3e-4)
  c.spotter.update(steps=195_000, batch_size=256, drop_rate=0.7, history_size=10_000)
  c.discriminator.update(convs=config_lib.alexnet(), fc_units=4096, dropout=0.5)
  c.probe.enabled = False   # the unlabelled split has no labels
  c.train.update(log_every=100, summary_every=2000, checkpoint_every=5000)
  if args.get("smoke"):  # the whole path in about a minute on 2 CPU cores
    c.autoencoder.update(steps=6, batch_size=8)
    c.spotter.update(steps=6, batch_size=8, history_size=16)
    c.discriminator.fc_units = 256
    c.train.update(log_every=3, summary_every=3, checkpoint_every=3, montage_size=4)
    c.dataset.shuffle_buffer = 100
  config_lib.apply_ablation(c, args.get("ablation", "full"))
  return c
