"""ArtifactSpotter: one keras.Model owning E, D, R (or G), C and the probe.

The networks carry no losses; the train steps below combine them with the
loss functions in ``artifact_spotting.losses``. Both steps are written for one
replica of a global batch: the trainer wraps them in ``strategy.run``.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Union

import keras
import tensorflow as tf
from keras import layers

from artifact_spotting import losses
from artifact_spotting.models import replica
from artifact_spotting.models.autoencoder import Decoder, Encoder, NoiseGenerator
from artifact_spotting.models.blocks import PACKAGE, get_indexed, set_indexed
from artifact_spotting.models.damage_repair import Damage, RepairBlock, sample_keep_mask, upsample_mask
from artifact_spotting.models.discriminator import Discriminator
from artifact_spotting.models.history import HistoryBuffer

# Offsets that make the stateless seeds of one step independent streams.
_MASK, _HISTORY_SAMPLE, _HISTORY_SLOTS, _NOISE = 0, 1, 2, 3


def _grad_norm(grads, optimizer):
  """Global norm of the true (unscaled) gradients, read before the optimizer
  applies them (a loss-scale optimizer changes its scale when it applies).

  With loss scaling (mixed_float16) a step whose scaled gradients overflow
  is skipped by the optimizer (nothing applied, the scale halves): its norm
  is reported as 0, not inf, so that the trainer's check for non-finite
  metrics stops diverging runs only.
  """
  norm = tf.linalg.global_norm([tf.cast(g, tf.float32) for g in grads])
  scale = getattr(optimizer, "dynamic_scale", None)
  if scale is None:
    return norm
  norm = norm / tf.cast(scale, tf.float32)
  return tf.where(tf.math.is_finite(norm), norm, tf.zeros_like(norm))


@keras.saving.register_keras_serializable(PACKAGE)
class ArtifactSpotter(keras.Model):
  """Damage & repair generator and artifact-spotting discriminator.

  Every argument is required: the experiment config (``artifact_spotting/
  config.py``) is the one place that holds their defaults, and
  ``config.spotter_kwargs(config)`` gives them for a config.

  resolution: image side, or (height, width); channels: 1 or 3; seed: keys
  the step's stateless random draws (masks, noise, history).
  stem_filters, encoder_widths, kernel_size: the encoder E (one stride-2
  stage per width); decoder_widths: the decoder D (one stage per encoder
  stage).
  drop_rate, fill: the damage (a Bernoulli keep-mask on E's grid; dropped
  cells "zeros" or the "average" of their kept neighbours).
  repair, gated, repair_placement ("distributed" | "local"), repair_hidden
  (0: each block's width): the repair network R.
  fakes: "repair" (damage & repair) | "gan" (a noise generator, ablation l);
  real_input: "autoencoded" | "raw" (ablation a); noise_dim: the GAN's noise.
  discriminator: the Discriminator's keyword arguments (convs, fc_units,
  dropout, fc_norm).
  history_size (0: none), history_fraction: the history of earlier fakes
  that C sees besides the current ones, as a fraction of the batch.
  ae_recon_weight, l2_weight: the autoencoder's loss; recon_weight,
  mask_weight, mask_real_weight, generator_adds_c_losses: the adversarial
  losses (see adversarial_step).
  probe_classes: a linear probe on C's conv5 (0: none).
  """

  def __init__(self, *, resolution: Union[int, Sequence[int]], channels: int,
               seed: int, stem_filters: int, encoder_widths: Sequence[int],
               kernel_size: int, decoder_widths: Sequence[int],
               drop_rate: float, fill: str, repair: bool, gated: bool,
               repair_placement: str, repair_hidden: int, fakes: str,
               real_input: str, noise_dim: int, discriminator: Dict[str, Any],
               history_size: int, history_fraction: float,
               ae_recon_weight: float, l2_weight: float, recon_weight: float,
               mask_weight: float, mask_real_weight: float,
               generator_adds_c_losses: bool, probe_classes: int, **kwargs):
    super().__init__(**kwargs)
    if isinstance(resolution, int):
      resolution = (resolution, resolution)
    res = self.resolution = tuple(int(r) for r in resolution)
    self.channels = int(channels)
    self.seed = int(seed)
    self.drop_rate = drop_rate
    self.use_repair = bool(repair)
    self.gated = bool(gated)
    self.repair_placement = repair_placement
    self.repair_hidden = int(repair_hidden or 0)
    self.fakes = fakes
    self.real_input = real_input
    self.noise_dim = int(noise_dim)
    self.history_size = int(history_size)
    self.history_fraction = history_fraction
    self.ae_recon_weight = ae_recon_weight
    self.l2_weight = l2_weight
    self.recon_weight = recon_weight
    self.mask_weight = mask_weight
    self.mask_real_weight = mask_real_weight
    self.generator_adds_c_losses = bool(generator_adds_c_losses)
    self.probe_classes = int(probe_classes)

    self.encoder = Encoder(stem_filters, encoder_widths, kernel_size,
                           name="encoder")
    factor = self.encoder.downsampling
    if res[0] % factor or res[1] % factor:
      raise ValueError(
          f"resolution {res} is not divisible by 2**len(encoder_widths) = "
          f"{factor}; change `resolution` or `encoder_widths`.")
    self.grid = (res[0] // factor, res[1] // factor)
    encoder_widths = self.encoder.widths
    decoder_widths = tuple(int(w) for w in decoder_widths)
    if len(decoder_widths) != len(encoder_widths):
      raise ValueError(
          f"decoder_widths {list(decoder_widths)} must have one entry per "
          f"encoder stage ({len(encoder_widths)}) so the decoder restores "
          f"resolution {res}.")
    self.decoder = Decoder(decoder_widths, self.channels, name="decoder")
    self.damage = Damage(fill, name="damage")
    if fakes not in ("repair", "gan"):
      raise ValueError(f"fakes must be 'repair' or 'gan', got {fakes!r}")
    if real_input not in ("autoencoded", "raw"):
      raise ValueError(
          f"real_input must be 'autoencoded' or 'raw', got {real_input!r}")
    if repair_placement not in ("distributed", "local"):
      raise ValueError(f"repair_placement must be 'distributed' or 'local', "
                       f"got {repair_placement!r}")
    blocks = []
    if fakes == "repair" and self.use_repair:
      widths = [encoder_widths[-1]] + list(decoder_widths)
      if repair_placement == "local":
        widths = [encoder_widths[-1]] * len(widths)
      for i, w in enumerate(widths):
        blocks.append(RepairBlock(
            w, self.repair_hidden or w, gated=self.gated, name=f"repair{i + 1}"))
    # R1..Rn as attributes repair1.. (see autoencoder.set_indexed).
    self._num_repair = set_indexed(self, "repair", blocks)
    self.generator = None
    if fakes == "gan":
      self.generator = NoiseGenerator(
          self.noise_dim, self.grid, encoder_widths[-1], decoder_widths,
          self.channels, name="generator")
    self.discriminator = Discriminator(**discriminator, name="discriminator")
    c_grid = self.discriminator.grid(res)
    if c_grid != self.grid:
      raise ValueError(
          f"discriminator.convs give a conv5 grid of {c_grid} at resolution "
          f"{res}, but the mask grid is {self.grid}; change the strides/pools "
          f"in discriminator.convs.")
    self.history = None
    if self.history_size > 0:
      self.history = HistoryBuffer(self.history_size, res + (self.channels,),
                                   self.grid, name="history")
    self.probe = None
    if self.probe_classes:
      self.probe = layers.Dense(self.probe_classes, name="probe")

  @property
  def repair_blocks(self):
    return get_indexed(self, "repair", self._num_repair)

  # ----------------------------------------------------------------- building
  def build(self, input_shape=None):
    x = tf.zeros((2,) + self.resolution + (self.channels,))
    self.autoencode(x)
    mask = tf.ones((2,) + self.grid + (1,))
    fakes = self.make_fakes(x, mask, training=False)
    out = self.discriminator(fakes, training=False)
    if self.probe is not None:
      self.probe(self.probe_features(out))
    self.built = True

  # ----------------------------------------------------------- sub-variables
  @property
  def autoencoder_variables(self):
    return self.encoder.trainable_variables + self.decoder.trainable_variables

  @property
  def generator_variables(self):
    if self.generator is not None:
      return self.generator.trainable_variables
    return [v for b in self.repair_blocks for v in b.trainable_variables]

  @property
  def discriminator_variables(self):
    variables = self.discriminator.trainable_variables
    if not (self.mask_weight or self.mask_real_weight or
            self.generator_adds_c_losses):
      # Ablation (g): the mask head is never trained.
      head = {id(v) for v in self.discriminator.mask_head.trainable_variables}
      variables = [v for v in variables if id(v) not in head]
    return variables

  @property
  def probe_variables(self):
    return [] if self.probe is None else self.probe.trainable_variables

  # ------------------------------------------------------------------ forward
  def call(self, images, training=False):
    """Discriminator outputs (features and heads) for images in [-1, 1]."""
    return self.discriminator(images, training=training)

  def autoencode(self, images, training=False):
    return self.decoder(self.encoder(images, training=training), training=training)

  def repair_fn(self, keep_mask, training):
    blocks = self.repair_blocks
    local = self.repair_placement == "local"

    def stage_fn(i, h):
      if local:
        if i == 0:
          for b in blocks:
            h = b(h, keep_mask, training=training)
        return h
      return blocks[i](h, keep_mask, training=training) if i < len(blocks) else h
    return stage_fn if blocks else None

  def make_fakes(self, images, keep_mask, training=False, phi=None, noise=None):
    """Damaged-and-repaired images (or G(noise) for the GAN ablation)."""
    if self.generator is not None:
      if noise is None:
        noise = tf.random.normal([tf.shape(images)[0], self.noise_dim])
      return self.generator(noise, training=training)
    if phi is None:
      phi = self.encoder(images, training=False)
    damaged = self.damage(phi, keep_mask)
    return self.decoder(damaged, training=False,
                        stage_fn=self.repair_fn(keep_mask, training))

  def probe_features(self, outputs):
    return tf.stop_gradient(tf.reshape(outputs["conv5"], [tf.shape(outputs["conv5"])[0], -1]))

  # -------------------------------------------------------------- train steps
  def _replica(self):
    ctx = tf.distribute.get_replica_context()
    n = ctx.num_replicas_in_sync if ctx is not None else 1
    rid = ctx.replica_id_in_sync_group if ctx is not None else 0
    return ctx, n, rid

  def _seed(self, stream, step):
    return tf.stack([tf.constant(self.seed * 16 + stream, tf.int64),
                     tf.cast(step, tf.int64)])

  def autoencoder_step(self, batch, optimizer):
    """One replica's phase-1 step: MSE reconstruction + L2 on kernels.

    Compute (forward, loss, gradients) and apply (optimizer update, deferred
    batch-norm writes) are separate so that XLA can compile the compute alone
    (models/replica.py)."""
    x = batch["image"]
    _, n, _ = self._replica()
    global_b = x.shape[0] * n
    variables = self.autoencoder_variables

    def compute(x):
      with tf.GradientTape() as tape:
        x_ae = self.autoencode(x, training=True)
        recon = losses.mse(x, x_ae, global_b)
        l2 = losses.l2_penalty(variables)
        loss = self.ae_recon_weight * recon + self.l2_weight * l2 / n
        scaled = optimizer.scale_loss(loss)
      return tape.gradient(scaled, variables), loss, recon

    (grads, loss, recon), writes = replica.run_compute("autoencoder", compute, x)
    metrics = {"ae/loss": loss * n, "ae/mse": recon * n,
               "ae/grad_norm": _grad_norm(grads, optimizer)}
    replica.apply_writes(writes)
    optimizer.apply_gradients(zip(replica.agree_on_overflow(grads, optimizer),
                                  variables))
    return metrics

  def adversarial_step(self, batch, c_optimizer, r_optimizer,
                       probe_optimizer=None):
    """One replica's phase-2 step: C and R (or G) updated simultaneously
    from a single forward pass of C over [reals, fakes, history].

    Compute (forward passes, losses, gradients, metrics) and apply (optimizer
    updates, deferred batch-norm writes, the history buffer's all-gather and
    update) are separate so that XLA can compile the compute alone
    (models/replica.py)."""
    x = batch["image"]
    _, n, rid = self._replica()
    b = x.shape[0]
    gb = b * n
    hist_k = 0
    if self.history is not None:
      hist_k = int(round(self.history_fraction * b))
    c_vars = self.discriminator_variables
    r_vars = self.generator_variables
    probe = (self.probe is not None and probe_optimizer is not None
             and "label" in batch)

    # The step's random draws (damage masks, noise, history slots) are made
    # here, outside the compute that XLA may compile: XLA's stateless random
    # numbers differ from TensorFlow's kernels', and drawn here they are the
    # same with XLA on or off.
    step = c_optimizer.iterations
    keep = sample_keep_mask(self._seed(_MASK, step), b, self.grid,
                            self.drop_rate, offset=rid * b,
                            total_batch=gb)
    noise = None
    if self.generator is not None:
      noise = tf.random.stateless_normal(
          [gb, self.noise_dim], seed=self._seed(_NOISE, step))[rid * b:(rid + 1) * b]
      # Every cell of a generated image is fake.
      keep = tf.zeros_like(keep)
    slots = None
    if hist_k:
      slots = self.history.draw(self._seed(_HISTORY_SAMPLE, step), hist_k,
                                rid * hist_k, hist_k * n)

    def compute(batch, keep, noise, slots):
      x = batch["image"]
      phi = self.encoder(x, training=False)
      x_ae = self.decoder(phi, training=False)
      real = x if self.real_input == "raw" else x_ae
      with tf.GradientTape(persistent=True) as tape:
        fake = self.make_fakes(x, keep, training=True, phi=phi, noise=noise)
        fake_masks = keep
        inputs = [real, fake]
        if hist_k:
          h_img, h_mask = self.history.gather(slots, tf.stop_gradient(fake), keep)
          inputs.append(h_img)
          fake_masks = tf.concat([keep, h_mask], axis=0)
        out = self.discriminator(inputs, training=True)  # views: see Discriminator
        logits, mask_logits = out["logits"], out["mask_logits"]
        real_logits, all_fake_logits = logits[:b], logits[b:]
        fake_logits = logits[b:2 * b]
        g_fake = (b + hist_k) * n
        class_loss = losses.real_fake_loss(real_logits, all_fake_logits, gb, g_fake)
        mask_fake = losses.mask_loss(mask_logits[b:], fake_masks, g_fake)
        c_loss = class_loss
        if self.mask_weight:
          c_loss += self.mask_weight * mask_fake
        if self.mask_real_weight:
          c_loss += self.mask_real_weight * losses.mask_loss(
              mask_logits[:b], tf.ones_like(keep), gb)
        adv = losses.non_saturating_loss(fake_logits, gb)
        r_loss = adv
        recon = tf.constant(0.0)
        if self.generator is None and self.recon_weight:
          keep_up = upsample_mask(keep, (x.shape[1], x.shape[2]))
          recon = losses.masked_mse(x_ae, fake, keep_up, gb)
          r_loss += self.recon_weight * recon
        if self.generator_adds_c_losses:
          r_loss += losses.confusion_loss(fake_logits, gb)
          r_loss += self.mask_weight * losses.mask_loss(mask_logits[b:2 * b], keep, gb)
        # Loss scaling (mixed_float16: LossScaleOptimizer; else the identity).
        c_scaled = c_optimizer.scale_loss(c_loss)
        r_scaled = r_optimizer.scale_loss(r_loss)
      c_grads = tape.gradient(c_scaled, c_vars)
      r_grads = tape.gradient(r_scaled, r_vars) if r_vars else []
      del tape

      f32 = lambda t: tf.cast(t, tf.float32)
      cells_keep = f32(keep[..., 0])
      mask_pred = f32(mask_logits[b:2 * b] > 0)
      metrics = {
          "c/loss": c_loss * n, "c/class_loss": class_loss * n,
          "c/mask_loss": mask_fake * n,
          "c/real_accuracy": tf.reduce_mean(f32(real_logits > 0)),
          "c/fake_accuracy": tf.reduce_mean(f32(fake_logits < 0)),
          "c/mask_accuracy": tf.reduce_mean(f32(tf.equal(mask_pred, cells_keep))),
          "r/loss": r_loss * n, "r/adversarial": adv * n, "r/recon_kept": recon * n,
      }
      p_grads = []
      if probe:
        labels = batch["label"]
        feats = self.probe_features({"conv5": out["conv5"][:b]})
        with tf.GradientTape() as ptape:
          plogits = tf.cast(self.probe(feats), tf.float32)
          ploss = losses.global_mean(
              tf.nn.sparse_softmax_cross_entropy_with_logits(
                  labels=labels, logits=plogits), gb)
        p_grads = ptape.gradient(ploss, self.probe_variables)
        metrics["probe/loss"] = ploss * n
        metrics["probe/accuracy"] = tf.reduce_mean(
            f32(tf.equal(tf.argmax(plogits, -1, output_type=labels.dtype), labels)))
      return c_grads, r_grads, p_grads, tf.stop_gradient(fake), metrics

    (c_grads, r_grads, p_grads, fake, metrics), writes = replica.run_compute(
        "adversarial", compute, batch, keep, noise, slots)
    metrics["c/grad_norm"] = _grad_norm(c_grads, c_optimizer)
    metrics["r/grad_norm"] = (_grad_norm(r_grads, r_optimizer) if r_vars
                              else tf.constant(0.0))
    replica.apply_writes(writes)
    c_optimizer.apply_gradients(
        zip(replica.agree_on_overflow(c_grads, c_optimizer), c_vars))
    if r_vars:
      r_optimizer.apply_gradients(
          zip(replica.agree_on_overflow(r_grads, r_optimizer), r_vars))
    if self.history is not None:
      ctx = tf.distribute.get_replica_context()
      all_fakes, all_keep = fake, keep
      if ctx is not None and n > 1:
        all_fakes = tf.reshape(ctx.all_gather(all_fakes, axis=0),
                               [gb] + fake.shape[1:].as_list())
        all_keep = tf.reshape(ctx.all_gather(all_keep, axis=0),
                              [gb] + keep.shape[1:].as_list())
      self.history.update(self._seed(_HISTORY_SLOTS, step), all_fakes, all_keep)
    if probe:
      probe_optimizer.apply_gradients(zip(p_grads, self.probe_variables))
    return metrics

  def visualize(self, images, step):
    """Montage parts for TensorBoard: input, autoencoded, mask, repaired,
    predicted mask (all [B, H, W, C] in [0, 1])."""
    b = images.shape[0]
    keep = sample_keep_mask(self._seed(_MASK, step), b, self.grid,
                            self.drop_rate)
    noise = None
    if self.generator is not None:
      noise = tf.random.stateless_normal([b, self.noise_dim],
                                         seed=self._seed(_NOISE, step))
    x_ae = self.autoencode(images)
    fake = self.make_fakes(images, keep, noise=noise)
    pred = tf.sigmoid(self.discriminator(fake)["mask_logits"])[..., None]
    size = (images.shape[1], images.shape[2])
    ch = images.shape[-1]
    to_img = lambda m: tf.tile(upsample_mask(m, size), [1, 1, 1, ch])
    unit = lambda t: tf.clip_by_value((t + 1.0) / 2.0, 0.0, 1.0)
    return [unit(images), unit(x_ae), to_img(keep), unit(fake), to_img(pred)]

  def get_config(self):
    config = super().get_config()
    disc = self.discriminator
    config.update(
        resolution=list(self.resolution), channels=self.channels,
        seed=self.seed, stem_filters=self.encoder.stem_filters,
        encoder_widths=list(self.encoder.widths),
        kernel_size=self.encoder.kernel_size,
        decoder_widths=list(self.decoder.widths),
        drop_rate=self.drop_rate, fill=self.damage.fill,
        repair=self.use_repair, gated=self.gated,
        repair_placement=self.repair_placement,
        repair_hidden=self.repair_hidden, fakes=self.fakes,
        real_input=self.real_input, noise_dim=self.noise_dim,
        discriminator=dict(convs=[dict(c) for c in disc.convs],
                           fc_units=disc.fc_units, dropout=disc.dropout,
                           negative_slope=disc.negative_slope,
                           fc_norm=disc.fc_norm),
        history_size=self.history_size,
        history_fraction=self.history_fraction,
        ae_recon_weight=self.ae_recon_weight, l2_weight=self.l2_weight,
        recon_weight=self.recon_weight, mask_weight=self.mask_weight,
        mask_real_weight=self.mask_real_weight,
        generator_adds_c_losses=self.generator_adds_c_losses,
        probe_classes=self.probe_classes)
    return config
