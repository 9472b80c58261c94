"""Experiment configuration: the shared base config, ablations, validation.

Configs are ``ml_collections.ConfigDict``s built by ``configs/<name>.py:get_config(arg)``.
``arg`` is a comma-separated list such as ``"smoke,ablation=k"``.
"""

from __future__ import annotations

import ast
import math
from typing import Any, Dict

import ml_collections

DATASET_SOURCES = ("idx", "tfds", "image_folder")
JIT_MODES = ("auto", "off", "on", "spotter")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
# Batch-norm statistics under several replicas (models/replica.py); the
# config also takes "auto" (replica.resolve_batch_norm).
BATCH_NORM_MODES = ("sync", "per_replica")
REPAIR_INITS = ("zeros", "glorot_uniform")

# What a rerun on an existing workdir may change (workdir.resume_changes):
# fields that decide how a run is logged, checkpointed, executed or where its
# data is fetched from, not what is trained. distribute.batch_norm is not
# among them: per-replica statistics train another model.
RESUME_SAFE_FIELDS = (
    "train.log_every", "train.summary_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.montage_size", "train.jit_compile",
    "train.deterministic",
    "dataset.auto_install", "dataset.tfds_fallback", "dataset.cache",
    "dataset.manual_dir", "distribute.strategy", "distribute.devices",
    "distribute.tpu", "distribute.logical_cpus",
)
# The value assumed for a field that a workdir's config.json does not hold,
# where it differs from the field's default (a config.json without
# distribute.batch_norm describes a run with synchronized batch norm).
RECORD_DEFAULTS = {"distribute.batch_norm": "sync", "spotter.repair_init": "zeros",
                   "train.deterministic": False}
# Step counts a rerun may raise (extending the run), never lower.
EXTENDABLE_FIELDS = ("autoencoder.steps", "spotter.steps")
# Fields holding a folder: two spellings of one folder are the same value.
PATH_FIELDS = ("dataset.path", "dataset.data_dir", "dataset.manual_dir",
               "autoencoder.init_from")

# Paper ablation rows (Jenni & Favaro 2018, Table 1) as config overrides.
# Keys are the row letters; "full" is the method itself.
ABLATIONS: Dict[str, Dict[str, Any]] = {
    "full": {},
    "a": {"spotter.real_input": "raw"},                 # input image as real
    "baseline": {"spotter.drop_rate": 0.5},             # the paper's baseline
    "b": {"spotter.repair_placement": "local"},         # local repair
    "c": {"spotter.drop_rate": 0.1},
    "d": {"spotter.drop_rate": 0.3},
    "e": {"spotter.drop_rate": 0.7},
    "f": {"spotter.drop_rate": 0.9},
    "g": {"spotter.mask_weight": 0.0},                  # no mask prediction
    "h": {"autoencoder.kernel_size": 3},                # 3x3 encoder convs
    "i": {"spotter.gated": False},                      # no gating
    "j": {"spotter.history_size": 0},                   # no history
    "k": {"spotter.repair": False},                     # no repair network
    "l": {"spotter.fakes": "gan"},                      # GAN instead of D&R
    # The released TF1 code's extra loss terms.
    "released_code": {"spotter.generator_adds_c_losses": True,
                      "spotter.mask_real_weight": 0.1},
    # One design point each set as elsewhere (docs/method.md, "Every
    # design point"): the released code's mask loss (weight 0.1, reals as
    # all-kept), its generator terms alone, R's output conv not starting at
    # zero, the two other fills, the paper's learning rate for both players.
    "released_mask": {"spotter.mask_weight": 0.1, "spotter.mask_real_weight": 0.1},
    "released_terms": {"spotter.generator_adds_c_losses": True},
    "repair_init": {"spotter.repair_init": "glorot_uniform"},
    "fill_average": {"spotter.fill": "average"},
    "fill_zeros": {"spotter.fill": "zeros"},
    "paper_lr": {"spotter.lr": 3e-4, "spotter.repair_lr": 3e-4},
}


def parse_arg(arg: str) -> Dict[str, Any]:
  """``"smoke,ablation=k,batch=8"`` -> ``{"smoke": True, "ablation": "k", ...}``."""
  out: Dict[str, Any] = {}
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    if "=" in part:
      key, value = part.split("=", 1)
      try:
        out[key.strip()] = ast.literal_eval(value.strip())
      except (ValueError, SyntaxError):
        out[key.strip()] = value.strip()
    else:
      out[part] = True
  return out


def check_args(args: Dict[str, Any], known, where: str):
  """Refuses config arguments ``where`` does not read (a typo such as
  ``abaltion=k`` would otherwise train the full method without a word)."""
  unknown = sorted(set(args) - set(known))
  if unknown:
    raise ValueError(f"{where}: unknown argument(s) {unknown}; known: {sorted(known)}")


def scale_discriminator(config, factor, where: str):
  """Multiplies the discriminator's conv filters and fc units by ``factor``
  (rounded, at least 1): the ``width=`` argument of a config."""
  if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
    raise ValueError(f"{where}: width={factor!r} must be a positive number "
                     f"(a factor on the discriminator's widths, e.g. width=2)")
  scale = lambda n: max(1, int(round(n * factor)))
  disc = config.discriminator
  disc.convs = tuple(dict(conv, filters=scale(conv["filters"])) for conv in disc.convs)
  disc.fc_units = scale(disc.fc_units)
  return config


def set_dotted(config, dotted: str, value):
  node = config
  *parents, leaf = dotted.split(".")
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise KeyError(f"config has no field {dotted!r}")
  node[leaf] = value


def apply_ablation(config, name: str):
  if name not in ABLATIONS:
    raise ValueError(f"Unknown ablation {name!r}; known: {sorted(ABLATIONS)}")
  for k, v in ABLATIONS[name].items():
    set_dotted(config, k, v)
  config.ablation = name
  return config


def base_config() -> ml_collections.ConfigDict:
  """Every field a config may set, with the paper's / released code's defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.ablation = "full"

  c.dataset = ml_collections.ConfigDict(dict(
      source="idx",                # idx | tfds | image_folder
      name="fashion_mnist",        # tfds name, or a label for logs
      path="",                     # idx: folder of IDX files; image_folder: root
      split="train",
      data_dir="",                 # tfds data_dir ("" = tfds default)
      manual_dir="",               # tfds manual download dir (imagenet2012)
      auto_install=True,           # not read (nothing is installed); kept so
                                   # workdirs whose config.json has it resume
      tfds_fallback=True,          # idx: fall back to tfds when files are missing
      max_pixels=64_000_000,       # image_folder: skip files with more pixels
                                   # (sources.DEFAULT_MAX_PIXELS; 0: no cap)
      shuffle_buffer=10_000,
      cache=False,
  ))
  c.resolution = 32
  c.channels = 1
  c.pp = "value_range(-1, 1)"     # training preprocessing ops, see data/pp.py

  c.autoencoder = ml_collections.ConfigDict(dict(
      stem_filters=32, widths=(64, 128, 256), kernel_size=2,
      decoder_widths=(128, 64, 32),
      steps=2000, batch_size=128, lr=3e-4,
      recon_weight=30.0, l2_weight=5e-5,
      # A pretraining workdir whose finished autoencoder phase this run starts
      # from (phase 1 is then skipped): one autoencoder, several spotter runs.
      init_from="",
  ))
  c.spotter = ml_collections.ConfigDict(dict(
      drop_rate=0.7, fill="blur",
      repair=True, gated=True, repair_placement="distributed", repair_hidden=0,
      # The repair blocks' output conv: "zeros" (an untrained block changes
      # nothing) | "glorot_uniform" (as the released code's convs start).
      repair_init="zeros",
      fakes="repair", real_input="autoencoded", noise_dim=128,
      history_size=1024, history_fraction=0.5,
      mask_weight=1.0, mask_real_weight=0.0, recon_weight=30.0,
      generator_adds_c_losses=False,
      steps=2000, batch_size=64, lr=3e-4, repair_lr=3e-4,
  ))
  c.discriminator = ml_collections.ConfigDict(dict(
      convs=small_alexnet(), fc_units=512, dropout=0.5, fc_norm=True))
  c.optimizer = ml_collections.ConfigDict(dict(
      beta1=0.5, beta2=0.999, epsilon=1e-5,
      end_lr_ratio=0.01, decay_fraction=0.9))
  c.probe = ml_collections.ConfigDict(dict(enabled=True, num_classes=10, lr=1e-3))
  c.train = ml_collections.ConfigDict(dict(
      log_every=50, summary_every=500, checkpoint_every=1000,
      # XLA: "off" | "on" (both phases) | "spotter" (the adversarial phase
      # only) | "auto": the measured faster choice for the device, see
      # distribute.resolve_jit (so far "off" everywhere).
      keep_checkpoints=3, jit_compile="auto", montage_size=8,
      # "auto" (the default: mixed_float16 on GPUs, mixed_bfloat16 on TPUs
      # and CPUs with bf16 units, float32 on other CPUs; resolved at a
      # run's first start and recorded in config.json, see
      # precision.auto_precision) | "float32" | "mixed_bfloat16" |
      # "mixed_float16" (adds dynamic loss scaling).
      precision="auto",
      # True: TensorFlow's op determinism for the process, and a resumed
      # phase replays its input up to the step it resumes at, so a run
      # killed and resumed ends with the uninterrupted run's weights (the
      # replay decodes the batches already trained on: seconds for
      # Fashion-MNIST, long for a far-advanced large run). False: a resumed
      # phase draws a fresh data order seeded by its step.
      deterministic=False))
  c.distribute = ml_collections.ConfigDict(dict(
      strategy="default", devices=(), tpu="",
      # mirrored: split the host CPU into this many logical devices, one
      # replica each (0: off). Applied before TensorFlow sets up its devices.
      logical_cpus=0,
      # "sync": batch norm normalises with the global batch's statistics (a
      # cross-replica reduction in every layer); "per_replica": with each
      # replica's own, moving statistics averaged over replicas (the same as
      # "sync" on one replica). XLA on several replicas needs "per_replica"
      # (train_lib.train says why); "auto" picks it there and "sync" elsewhere.
      batch_norm="auto"))
  return c


def small_alexnet():
  """conv1..conv5 for 32x32 inputs, conv5 on a 4x4 grid (1.55M conv weights)."""
  return (
      dict(filters=64, kernel=5, stride=1, pool=True, norm="batch"),
      dict(filters=128, kernel=3, stride=1, pool=True, norm="batch"),
      dict(filters=256, kernel=3, stride=1, pool=True, norm="batch"),
      dict(filters=256, kernel=3, stride=1, pool=False, norm="batch"),
      dict(filters=256, kernel=3, stride=1, pool=False, norm="batch"),
  )


def alexnet():
  """Caffe AlexNet conv layers (LRN after conv1, conv2; BN on conv5) with
  'same' padding so that 96x96 inputs give conv5 on the 6x6 mask grid."""
  return (
      dict(filters=96, kernel=11, stride=4, pool=True, norm="lrn"),
      dict(filters=256, kernel=5, stride=1, pool=True, norm="lrn"),
      dict(filters=384, kernel=3, stride=1, pool=False, norm="none"),
      dict(filters=384, kernel=3, stride=1, pool=False, norm="none"),
      dict(filters=256, kernel=3, stride=1, pool=False, norm="batch"),
  )


def _to_py(obj):
  if isinstance(obj, ml_collections.ConfigDict):
    return {k: _to_py(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_to_py(v) for v in obj]
  return obj


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _non_finite(x) -> bool:
  return isinstance(x, float) and not math.isfinite(x)


def _is_real(x) -> bool:
  """A finite int or float: inf and nan pass no range check (an infinite
  learning rate or weight trains straight into non-finite losses)."""
  return (isinstance(x, (int, float)) and not isinstance(x, bool)
          and math.isfinite(x))


def whole(lo: int):
  """A field test: an integer (not a bool) >= ``lo``."""
  return lambda v: _is_int(v) and v >= lo


def real(test):
  """A field test: a finite number passing ``test``."""
  return lambda v: _is_real(v) and test(v)


def check_fields(config, rules, optional: bool = False):
  """The one field checker of every config kind (pretraining, evaluation,
  fine-tuning). ``rules``: (dotted field, test, what it must be); ValueError
  ``config.<field>=<value> must be <what>`` for the first failing one (with
  "a finite number" added for an inf or nan). A field the config lacks
  raises KeyError, or is skipped with ``optional`` (configs that may leave
  it out)."""
  for dotted, ok, what in rules:
    node, present = config, True
    for part in dotted.split("."):
      if optional and (not hasattr(node, "get") or part not in node):
        present = False
        break
      node = node[part]
    if present and not ok(node):
      finite = (_non_finite(node) and "finite" not in what
                and "integer" not in what)
      raise ValueError(f"config.{dotted}={node!r} must be "
                       f"{'a finite number ' if finite else ''}{what}")


def check_ranges(config):
  """Every numeric field in its range and every choice field one of its
  choices; ValueError naming the field, its value and the range."""
  def need(dotted, ok, what):
    check_fields(config, [(dotted, ok, what)])

  need("seed", whole(0), "an integer >= 0")
  need("resolution", whole(1), "a positive integer")
  need("dataset.shuffle_buffer", whole(1), "an integer >= 1")
  need("dataset.max_pixels", whole(0), "an integer >= 0 (0: no cap)")
  for key in ("autoencoder", "spotter"):
    need(f"{key}.steps", whole(0), "an integer >= 0 (0: skip the phase)")
    need(f"{key}.batch_size", whole(1), "an integer >= 1")
    need(f"{key}.lr", real(lambda v: v > 0), "> 0")
    need(f"{key}.recon_weight", real(lambda v: v >= 0), ">= 0")
  ae = "autoencoder."
  need(ae + "stem_filters", whole(1), "a positive integer")
  need(ae + "kernel_size", whole(1), "a positive integer")
  for key in ("widths", "decoder_widths"):
    need(ae + key, lambda v: (isinstance(v, (list, tuple)) and len(v) > 0
                              and all(_is_int(w) and w > 0 for w in v)),
         "a non-empty list of positive integers")
  need(ae + "l2_weight", real(lambda v: v >= 0), ">= 0")
  sp = "spotter."
  need(sp + "drop_rate", real(lambda v: 0 <= v < 1), "in [0, 1)")
  need(sp + "fill", lambda v: v in ("blur", "average", "zeros"),
       "'blur' (the paper's), 'average' or 'zeros'")
  need(sp + "repair_placement", lambda v: v in ("distributed", "local"),
       "'distributed' or 'local'")
  need(sp + "repair_hidden", whole(0), "an integer >= 0 (0: the block's width)")
  if "repair_init" in config.spotter:
    need(sp + "repair_init", lambda v: v in REPAIR_INITS, f"one of {REPAIR_INITS}")
  need(sp + "fakes", lambda v: v in ("repair", "gan"), "'repair' or 'gan'")
  need(sp + "real_input", lambda v: v in ("autoencoded", "raw"),
       "'autoencoded' or 'raw'")
  need(sp + "noise_dim", whole(1), "a positive integer")
  need(sp + "history_size", whole(0), "an integer >= 0 (0: no history)")
  need(sp + "history_fraction", real(lambda v: 0 <= v <= 1), "in [0, 1]")
  for key in ("mask_weight", "mask_real_weight"):
    need(sp + key, real(lambda v: v >= 0), ">= 0")
  need(sp + "repair_lr", real(lambda v: v > 0), "> 0")
  for i, conv in enumerate(config.discriminator.convs):
    for key in ("filters", "kernel", "stride"):
      if not (_is_int(conv.get(key)) and conv.get(key) > 0):
        raise ValueError(f"config.discriminator.convs[{i}].{key}="
                         f"{conv.get(key)!r} must be a positive integer")
  need("discriminator.fc_units", whole(1), "a positive integer")
  need("discriminator.dropout", real(lambda v: 0 <= v < 1), "in [0, 1)")
  o = "optimizer."
  for key in ("beta1", "beta2"):
    need(o + key, real(lambda v: 0 <= v < 1), "in [0, 1)")
  need(o + "epsilon", real(lambda v: v > 0), "> 0")
  need(o + "end_lr_ratio", real(lambda v: 0 <= v <= 1), "in [0, 1]")
  need(o + "decay_fraction", real(lambda v: 0 <= v <= 1), "in [0, 1]")
  if config.probe.enabled:
    need("probe.num_classes", whole(1), "a positive integer")
    need("probe.lr", real(lambda v: v > 0), "> 0")
  t = "train."
  need(t + "log_every", whole(1), "an integer >= 1 (steps per console line)")
  need(t + "summary_every", whole(0), "an integer >= 0 (0: no image summaries)")
  need(t + "checkpoint_every", whole(0),
       "an integer >= 0 (0: a checkpoint at each phase's end only)")
  need(t + "keep_checkpoints", whole(1), "an integer >= 1")
  need(t + "montage_size", whole(1), "an integer >= 1")
  if "deterministic" in config.train:
    need(t + "deterministic", lambda v: isinstance(v, bool), "True or False")


def validate(config, pp: bool = True):
  """Fails before any training with a message naming the offending field.

  ``pp=False`` leaves out the check of ``config.pp`` (check_pp), which traces
  the preprocessing ops and so starts TensorFlow's runtime: a caller that
  still has to set up devices (logical CPUs, collectives for multi-worker
  runs) validates without it first and calls check_pp after the strategy
  exists."""
  check_ranges(config)
  ds = config.dataset
  if ds.source not in DATASET_SOURCES:
    raise ValueError(f"config.dataset.source={ds.source!r} is unknown; "
                     f"use one of {DATASET_SOURCES}")
  if ds.source == "tfds":
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    base = ds.name.split("/")[0].split(":")[0]
    if base not in tfds.list_builders():
      raise ValueError(f"config.dataset.name={ds.name!r} is not a tfds dataset "
                       f"(see tfds.list_builders())")
  if config.distribute.strategy not in STRATEGIES:
    raise ValueError(f"config.distribute.strategy={config.distribute.strategy!r} "
                     f"is unknown; use one of {STRATEGIES}")
  factor = 2 ** len(config.autoencoder.widths)
  if config.resolution % factor:
    raise ValueError(
        f"config.resolution={config.resolution} is not divisible by "
        f"2**len(config.autoencoder.widths)={factor}: the encoder cannot "
        f"divide it into a grid of cells")
  if config.train.jit_compile not in JIT_MODES:
    raise ValueError(f"config.train.jit_compile={config.train.jit_compile!r} must "
                     f"be one of {JIT_MODES}")
  if config.train.precision not in PRECISIONS:
    raise ValueError(f"config.train.precision={config.train.precision!r} must "
                     f"be one of {PRECISIONS}")
  dist = config.distribute
  if dist.get("batch_norm", "auto") not in ("auto",) + BATCH_NORM_MODES:
    raise ValueError(f"config.distribute.batch_norm={dist.batch_norm!r} must be "
                     f"one of {('auto',) + BATCH_NORM_MODES}")
  cpus = dist.get("logical_cpus", 0)
  if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 0:
    raise ValueError(f"config.distribute.logical_cpus={cpus!r} must be an "
                     f"integer >= 0 (0: off)")
  if cpus and dist.strategy != "mirrored":
    raise ValueError(f"config.distribute.logical_cpus={cpus} applies to "
                     f"strategy='mirrored' only, not {dist.strategy!r}")
  if config.channels not in (1, 3):
    raise ValueError(f"config.channels={config.channels} must be 1 or 3")
  if pp:
    check_pp(config)
  return config


def check_pp(config):
  """config.pp parses and gives float32 [resolution, resolution, channels]
  images (data/pp.py:check); starts TensorFlow's runtime."""
  from artifact_spotting.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  pp_lib.check(config.pp, config.channels, config.resolution)


def discriminator_kwargs(config) -> Dict[str, Any]:
  """The Discriminator's keyword arguments for an experiment config."""
  disc = config.discriminator
  return dict(convs=_to_py(disc.convs), fc_units=disc.fc_units,
              dropout=disc.dropout, fc_norm=disc.fc_norm)


def spotter_kwargs(config, probe: bool = True) -> Dict[str, Any]:
  """The ArtifactSpotter's keyword arguments for an experiment config (the
  model has no defaults of its own: they are the fields above). ``probe``:
  False leaves the linear probe out even where config.probe.enabled."""
  ae, sp = config.autoencoder, config.spotter
  return dict(
      resolution=config.resolution, channels=config.channels, seed=config.seed,
      stem_filters=ae.stem_filters, encoder_widths=tuple(ae.widths),
      kernel_size=ae.kernel_size, decoder_widths=tuple(ae.decoder_widths),
      drop_rate=sp.drop_rate, fill=sp.fill,
      repair=sp.repair, gated=sp.gated, repair_placement=sp.repair_placement,
      repair_hidden=sp.repair_hidden,
      repair_init=sp.get("repair_init", RECORD_DEFAULTS["spotter.repair_init"]),
      fakes=sp.fakes, real_input=sp.real_input, noise_dim=sp.noise_dim,
      discriminator=discriminator_kwargs(config),
      history_size=sp.history_size, history_fraction=sp.history_fraction,
      ae_recon_weight=ae.recon_weight, l2_weight=ae.l2_weight,
      recon_weight=sp.recon_weight, mask_weight=sp.mask_weight,
      mask_real_weight=sp.mask_real_weight,
      generator_adds_c_losses=sp.generator_adds_c_losses,
      probe_classes=(config.probe.num_classes
                     if probe and config.probe.enabled else 0),
  )


def make_tiny(c, conv_norms=("batch",) * 5):
  """Shrinks config ``c`` in place to the tiny model (returned): 16x16 with a
  4x4 grid, 8-filter discriminator convs with ``conv_norms``, batches of 8,
  4 steps per phase and a log, summary and checkpoint every 2 steps. The one
  definition of "tiny" (configs/fashion_mnist.py:tiny and tiny_config)."""
  c.resolution = 16
  c.autoencoder.update(stem_filters=4, widths=(8, 8), decoder_widths=(8, 4),
                       steps=4, batch_size=8)
  c.spotter.update(steps=4, batch_size=8, history_size=16)
  c.discriminator.update(
      convs=tuple(dict(filters=8, kernel=3, stride=1, pool=i < 2, norm=norm)
                  for i, norm in enumerate(conv_norms)),
      fc_units=16, dropout=0.0)
  c.train.update(log_every=2, summary_every=2, checkpoint_every=2, montage_size=2)
  # float32 on every machine: the tiny model's numerical checks must not
  # depend on whether the CPU has bfloat16 units (what "auto" picks).
  c.train.precision = "float32"
  c.dataset.shuffle_buffer = 64
  return c


def tiny_config(**overrides):
  """The tiny model on the base config, grayscale, with every kind of conv
  norm: the smallest full model, for tests and numerical checks (no dataset
  set). ``overrides``: dotted field -> value."""
  c = make_tiny(base_config(), conv_norms=("batch", "batch", "lrn", "none", "batch"))
  c.channels = 1
  c.autoencoder.lr = 1e-3
  c.train.jit_compile = "off"  # XLA has its own tests; compiling is slow
  for k, v in overrides.items():
    set_dotted(c, k, v)
  return c
