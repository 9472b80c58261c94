r"""The adversarial step written the plain way a Keras user would.

  python -m benchmarks.keras_plain       # parameters and FLOPs against ours

The spotter phase of a config (configs/fashion_mnist.py by default) built
from stock keras.layers (Conv2D, BatchNormalization, LeakyReLU, MaxPooling2D,
UpSampling2D, Dense, Dropout) as functional models, in a keras.Model whose
``train_step`` does one adversarial step and which ``Model.fit`` drives: no
custom kernels (models/kernels.py), no fused Adam, no multi-step loop, no
separate compute/apply (models/replica.py). benchmarks/throughput.py times it
beside our step (its ``keras_fit`` row) so that what those buy is a measured
ratio. Same networks (same parameter counts, tests/test_keras_plain.py), same
losses (artifact_spotting/losses.py), the same work per step within a few
percent (traced FLOPs, below); it is not meant to train identically (its own
initialisation and random draws).

The frozen autoencoder is frozen the Keras way (``trainable = False``, so its
batch norms run in inference mode); the repair blocks act between the
decoder's stages by sharing the decoder's layers in a second functional model
(the generator) instead of a hook. The discriminator sees [autoencoded reals,
repaired fakes, history] concatenated (ours runs conv1 per view so that it
takes conv1's input gradient of the fakes only; the plain way takes it for
every row).
"""

from __future__ import annotations

import math
import time

import keras
import tensorflow as tf
from keras import layers, ops

from artifact_spotting import losses
from benchmarks.flops import forward_flops, step_flops

SLOPE = 0.2  # leaky ReLU slope of every block (the library's negative_slope)


def conv_block(filters, kernel, strides=1, name=None):
  """Conv (no bias) -> batch norm -> leaky ReLU: the library's ConvBlock."""
  return keras.Sequential([
      layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False),
      layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
      layers.LeakyReLU(SLOPE)], name=name)


def repair_block(size, width, hidden, gated, name):
  """(h, keep-mask at h's size) -> h + (1 - mask) * conv(conv_block([h, mask]))."""
  h = keras.Input((size[0], size[1], width))
  mask = keras.Input((size[0], size[1], 1))
  r = conv_block(hidden, 3)(layers.Concatenate()([h, mask]))
  r = layers.Conv2D(width, 3, padding="same", kernel_initializer="zeros")(r)
  if gated:
    r = (1.0 - mask) * r
  return keras.Model([h, mask], h + r, name=name)


class PlainSpotter(keras.Model):
  """E, D, R, C and the probe as stock Keras layers; ``train_step`` is one
  adversarial step (C and R from one forward pass of C, then the history)."""

  def __init__(self, config, probe=True, **kwargs):
    super().__init__(**kwargs)
    ae, sp, disc = config.autoencoder, config.spotter, config.discriminator
    unsupported = {"fakes": "repair", "real_input": "autoencoded", "repair": True,
                   "repair_placement": "distributed", "mask_real_weight": 0.0,
                   "generator_adds_c_losses": False}
    for key, value in unsupported.items():
      if sp[key] != value:
        raise ValueError(f"keras_plain: spotter.{key}={sp[key]!r}; only {value!r}")
    if any(c["norm"] != "batch" for c in disc.convs):
      raise ValueError("keras_plain: batch norm in every discriminator conv only")
    res, ch = config.resolution, config.channels
    self.drop_rate, self.fill = sp.drop_rate, sp.fill
    self.mask_weight, self.recon_weight = sp.mask_weight, sp.recon_weight
    self.history_size = sp.history_size
    self.batch_history = lambda b: int(round(sp.history_fraction * b)) if sp.history_size else 0

    # Encoder: 3x3 stem, then stride-2 stages; frozen.
    x = keras.Input((res, res, ch))
    h = conv_block(ae.stem_filters, 3)(x)
    for w in ae.widths:
      h = conv_block(w, ae.kernel_size, 2)(h)
    self.encoder = keras.Model(x, h, name="encoder")
    g = res // 2 ** len(ae.widths)
    self.grid = (g, g)
    width = ae.widths[-1]

    # Decoder stages (bilinear x2, conv block), then a 3x3 conv and tanh; the
    # layers are shared by the clean decoder and the generator below.
    ups = [layers.UpSampling2D(2, interpolation="bilinear") for _ in ae.decoder_widths]
    stages = [conv_block(w, 3) for w in ae.decoder_widths]
    to_image = layers.Conv2D(ch, 3, padding="same")
    phi = keras.Input((g, g, width))
    h = phi
    for up, stage in zip(ups, stages):
      h = stage(up(h))
    self.decoder = keras.Model(phi, ops.tanh(to_image(h)), name="decoder")
    self.encoder.trainable = False
    self.decoder.trainable = False

    # Generator: damage the bottleneck, then decode with a repair block
    # before the first stage and after each one (sp.gated: dropped cells only).
    widths = [width] + list(ae.decoder_widths)
    self.repairs = [repair_block((g * 2 ** i, g * 2 ** i), w, sp.repair_hidden or w,
                                 sp.gated, f"repair{i + 1}")
                    for i, w in enumerate(widths)]
    phi = keras.Input((g, g, width))
    keep = keras.Input((g, g, 1))
    kept = phi * keep
    if sp.fill == "blur":  # the 3x3 average of the clean features
      kept = kept + (1.0 - keep) * layers.AveragePooling2D(3, 1, padding="same")(phi)
    if sp.fill == "average":  # the mean of the kept cells of the 3x3 neighbourhood
      avg = lambda t: layers.AveragePooling2D(3, 1, padding="same")(t) * 9.0
      kept = kept + (1.0 - keep) * avg(kept) / ops.maximum(avg(keep), 1.0)
    h = self.repairs[0]([kept, keep])
    for i, (up, stage) in enumerate(zip(ups, stages)):
      h = stage(up(h))
      h = self.repairs[i + 1]([h, layers.UpSampling2D(2 ** (i + 1))(keep)])
    self.generator = keras.Model([phi, keep], ops.tanh(to_image(h)), name="generator")

    # Discriminator: conv1..conv5 (3x3 stride-2 max pools where asked),
    # fc + batch norm + leaky ReLU + dropout + real/fake logit; mask head on conv5.
    x = keras.Input((res, res, ch))
    h = x
    for spec in disc.convs:
      h = conv_block(spec["filters"], spec["kernel"], spec["stride"])(h)
      conv5 = h
      if spec.get("pool"):
        h = layers.MaxPooling2D(3, 2, padding="same")(h)
    f = layers.Dense(disc.fc_units, use_bias=not disc.fc_norm)(layers.Flatten()(conv5))
    if disc.fc_norm:
      f = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(f)
    f = layers.Dropout(disc.dropout)(layers.LeakyReLU(SLOPE)(f))
    logits = layers.Dense(1)(f)[:, 0]
    mask_logits = layers.Conv2D(1, 3, padding="same")(conv5)[..., 0]
    self.discriminator = keras.Model(x, [logits, mask_logits, conv5], name="discriminator")

    self.probe = (layers.Dense(config.probe.num_classes, name="probe")
                  if probe and config.probe.enabled else None)
    if self.probe is not None:
      self.probe.build((None, math.prod(conv5.shape[1:])))
    # History of earlier fakes and their keep-masks.
    if self.history_size:
      self.history_images = self.add_weight(
          (self.history_size, res, res, ch), initializer="zeros", trainable=False,
          name="history_images")
      self.history_masks = self.add_weight(
          (self.history_size, g, g, 1), initializer="zeros", trainable=False,
          name="history_masks")
      self.history_count = self.add_weight((), initializer="zeros", dtype="int32",
                                           trainable=False, name="history_count")

  def compile(self, c_optimizer, r_optimizer, probe_optimizer=None, **kwargs):
    super().compile(**kwargs)
    self.c_optimizer, self.r_optimizer = c_optimizer, r_optimizer
    self.probe_optimizer = probe_optimizer

  def call(self, images, training=False):
    return self.discriminator(images, training=training)

  def train_step(self, data):
    images = data["image"]
    b = images.shape[0]
    n = self.batch_history(b)
    keep = ops.cast(tf.random.uniform((b,) + self.grid + (1,)) >= self.drop_rate,
                    "float32")
    phi = self.encoder(images, training=False)
    reals = self.decoder(phi, training=False)
    c_vars = self.discriminator.trainable_weights
    r_vars = self.generator.trainable_weights
    with tf.GradientTape(persistent=True) as tape:
      fakes = self.generator([phi, keep], training=True)
      views, fake_masks = [reals, fakes], keep
      if n:
        old_images, old_masks = self.sample_history(n, tf.stop_gradient(fakes), keep)
        views += [old_images]
        fake_masks = tf.concat([keep, old_masks], axis=0)
      logits, mask_logits, conv5 = self.discriminator(tf.concat(views, axis=0),
                                                      training=True)
      c_loss = (losses.real_fake_loss(logits[:b], logits[b:], b, b + n)
                + self.mask_weight * losses.mask_loss(mask_logits[b:], fake_masks, b + n))
      keep_up = ops.repeat(ops.repeat(keep, fakes.shape[1] // self.grid[0], axis=1),
                           fakes.shape[2] // self.grid[1], axis=2)
      r_loss = (losses.non_saturating_loss(logits[b:2 * b], b)
                + self.recon_weight * losses.masked_mse(reals, fakes, keep_up, b))
    self.c_optimizer.apply_gradients(zip(tape.gradient(c_loss, c_vars), c_vars))
    self.r_optimizer.apply_gradients(zip(tape.gradient(r_loss, r_vars), r_vars))
    del tape
    logs = {"c_loss": c_loss, "r_loss": r_loss}
    if self.probe is not None and "label" in data:
      features = tf.stop_gradient(ops.reshape(conv5[:b], (b, -1)))
      with tf.GradientTape() as tape:
        probe_loss = ops.mean(keras.losses.sparse_categorical_crossentropy(
            data["label"], self.probe(features), from_logits=True))
      grads = tape.gradient(probe_loss, self.probe.trainable_weights)
      self.probe_optimizer.apply_gradients(zip(grads, self.probe.trainable_weights))
      logs["probe_loss"] = probe_loss
    if n:
      self.update_history(tf.stop_gradient(fakes), keep)
    return logs

  def sample_history(self, n, fakes, keep):
    """n random pool entries; strided rows of the current fakes while empty."""
    filled = ops.minimum(self.history_count, self.history_size)
    idx = tf.random.uniform([n], 0, ops.maximum(filled, 1), dtype="int32")
    rows = (ops.arange(n) * fakes.shape[0]) // n
    empty = filled == 0
    return (ops.where(empty, ops.take(fakes, rows, 0), ops.take(self.history_images, idx, 0)),
            ops.where(empty, ops.take(keep, rows, 0), ops.take(self.history_masks, idx, 0)))

  def update_history(self, fakes, keep):
    """In order until the pool is full, then at distinct random slots."""
    n, count = fakes.shape[0], self.history_count
    in_order = (count + ops.arange(n, dtype="int32")) % self.history_size
    shuffled = tf.random.shuffle(tf.range(self.history_size))[:n]
    slots = ops.where(count + n <= self.history_size, in_order, shuffled)[:, None]
    self.history_images.value.scatter_nd_update(slots, fakes)
    self.history_masks.value.scatter_nd_update(slots, keep)
    self.history_count.assign(count + n)


def adam(lr, steps, o):
  """Keras' Adam with the config's betas and epsilon and the library's
  schedule (linear from lr to lr * end_lr_ratio over decay_fraction of the
  steps, then constant) as keras' PolynomialDecay."""
  decay = keras.optimizers.schedules.PolynomialDecay(
      lr, max(1, math.ceil(o.decay_fraction * steps)), lr * o.end_lr_ratio, power=1.0)
  return keras.optimizers.Adam(decay, beta_1=o.beta1, beta_2=o.beta2, epsilon=o.epsilon)


def build(config, jit_compile=False, probe=True):
  """The compiled plain model, float32 (built, optimizers not yet)."""
  keras.utils.set_random_seed(int(config.seed))
  model = PlainSpotter(config, probe=probe, name="plain_spotter")
  sp = config.spotter
  model.compile(c_optimizer=adam(sp.lr, sp.steps, config.optimizer),
                r_optimizer=adam(sp.repair_lr, sp.steps, config.optimizer),
                probe_optimizer=keras.optimizers.Adam(config.probe.lr),
                jit_compile=jit_compile)
  return model


def _size(weights, moving=False):
  return int(sum(math.prod(w.shape) for w in weights
                 if moving or "moving_" not in w.path))


def param_counts(model, moving=False):
  """Weights per network (without batch norms' moving statistics unless
  ``moving``): the same figures as ``ours_param_counts``."""
  ae = _size(model.encoder.weights + model.decoder.weights, moving)
  return {"autoencoder": ae,
          "discriminator": _size(model.discriminator.weights, moving),
          "repair": _size([w for r in model.repairs for w in r.weights], moving),
          "probe": _size(model.probe.weights) if model.probe is not None else 0}


def ours_param_counts(model, moving=False):
  """The same figures for an ArtifactSpotter (``moving``: every weight of
  each network, its batch norms' statistics included)."""
  if moving:
    return {"autoencoder": _size(model.encoder.weights + model.decoder.weights, True),
            "discriminator": _size(model.discriminator.weights, True),
            "repair": _size([w for r in model.repair_blocks for w in r.weights], True),
            "probe": _size(model.probe_variables)}
  return {"autoencoder": _size(model.autoencoder_variables),
          "discriminator": _size(model.discriminator_variables),
          "repair": _size(model.repair_variables),
          "probe": _size(model.probe_variables)}


class FitTimer(keras.callbacks.Callback):
  """perf_counter at the end of every batch of a fit."""

  def on_train_begin(self, logs=None):
    self.ends = []

  def on_train_batch_end(self, batch, logs=None):
    self.ends.append(time.perf_counter())


def timed_fit(model, dataset, warm, steps):
  """Seconds of the last ``steps`` of ``warm + steps`` steps of one
  ``model.fit`` (from the end of the warm-up's last batch; ``warm`` >= 1)."""
  timer = FitTimer()
  model.fit(dataset, epochs=1, steps_per_epoch=warm + steps, verbose=0,
            callbacks=[timer])
  return timer.ends[-1] - timer.ends[warm - 1]


def forward_flops_per_image(model, batch=8):
  """Forward FLOPs per image of each plain network (flops.model_flops' keys),
  counted by flops.forward_flops."""
  res, ch = model.encoder.input_shape[1:3], model.encoder.input_shape[3]
  x = tf.TensorSpec([batch, *res, ch], tf.float32)
  phi = tf.TensorSpec([batch, *model.grid, model.encoder.output_shape[-1]], tf.float32)
  keep = tf.TensorSpec([batch, *model.grid, 1], tf.float32)
  first = model.discriminator.layers[1]  # conv1's block
  f = {"encoder": forward_flops(lambda t: model.encoder(t), x),
       "decoder": forward_flops(lambda t: model.decoder(t), phi),
       "discriminator": forward_flops(lambda t: model.discriminator(t), x),
       "discriminator_conv1": forward_flops(lambda t: first(t), x)}
  generator = forward_flops(lambda p, k: model.generator([p, k]), phi, keep)
  f["repair"] = max(generator - f["decoder"], 0.0)
  return {k: v / batch for k, v in f.items()}


def compare(config_spec="configs/fashion_mnist.py", batch=64):
  """Parameters and traced FLOPs per image of one step, plain against ours."""
  from artifact_spotting import train_state  # pylint: disable=g-import-not-at-top
  from artifact_spotting.loading import pretrain_config  # pylint: disable=g-import-not-at-top
  config = pretrain_config(config_spec)
  res, ch = config.resolution, config.channels
  data = {"image": tf.random.uniform([batch, res, res, ch], -1, 1),
          "label": tf.zeros([batch], tf.int32)}
  players = train_state.Players(config, tf.distribute.get_strategy())
  ours = players.model
  fn = lambda b: ours.adversarial_step(b, players.discriminator_opt, players.repair_opt, players.probe_opt)
  tf.function(fn)(data)
  plain = build(config)
  plain.fit(tf.data.Dataset.from_tensors(data).repeat(), steps_per_epoch=1, verbose=0)
  out = {"params": {"plain": param_counts(plain), "ours": ours_param_counts(ours)},
         "weights": {"plain": param_counts(plain, True),
                     "ours": ours_param_counts(ours, True)}}
  for name, step in (("plain", plain.train_step), ("ours", fn)):
    total, by_type, nested = step_flops(step, data)
    out[name] = {"flops_per_image": total, "by_type": by_type, "nested": nested}
  return out


def main():
  out = compare()
  for key in ("params", "weights"):
    print(key, "plain", out[key]["plain"], "ours", out[key]["ours"])
  p, o = out["plain"], out["ours"]
  print(f"traced GFLOP/image: plain {p['flops_per_image'] / 1e9:.4f}, ours "
        f"{o['flops_per_image'] / 1e9:.4f} ({p['flops_per_image'] / o['flops_per_image']:.3f}x)")
  for t in sorted(set(p["by_type"]) | set(o["by_type"])):
    print(f"  {t:28s} plain {p['by_type'].get(t, 0) / 1e6:9.2f}  ours "
          f"{o['by_type'].get(t, 0) / 1e6:9.2f} MFLOP/image")


if __name__ == "__main__":
  main()
