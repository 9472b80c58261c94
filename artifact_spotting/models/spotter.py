"""ArtifactSpotter: one keras.Model owning E, D, R (or G), C and the probe.

The networks carry no losses; the train steps below combine them with the
loss functions in ``artifact_spotting.losses``. Both steps are written for one
replica of a global batch: the trainer wraps them in ``strategy.run``.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class ReplicaBatch:
  """One replica's part of a global batch, and the counts the losses divide
  by (every loss is a sum over the replica's rows divided by a global count,
  so the replicas' gradients add up to the whole batch's).

  ``replica_id`` is a tensor under a distribution strategy; it only places
  the replica's rows among the global batch's random draws."""
  local: int                   # images in this replica's batch
  replicas: int                # replicas in sync
  replica_id: Any = 0
  history: int = 0             # history images this replica shows C

  @property
  def global_batch(self) -> int:
    return self.local * self.replicas

  @property
  def global_fakes(self) -> int:
    """Fakes C sees in the global step: repaired images and history."""
    return (self.local + self.history) * self.replicas


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
  repair_init: the initializer of each repair block's output conv ("zeros":
    an untrained block changes nothing; "glorot_uniform": as any other conv).
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
               generator_adds_c_losses: bool, probe_classes: int,
               repair_init: str, **kwargs):
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
    self.repair_init = repair_init
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
            w, self.repair_hidden or w, gated=self.gated,
            out_initializer=repair_init, name=f"repair{i + 1}"))
    # R1..Rn as attributes repair1.. (see blocks.set_indexed).
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
  def repair_variables(self):
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
  def replica_batch(self, images, history: bool = False) -> ReplicaBatch:
    """This replica's part of the global batch ``images`` belongs to; with
    ``history``, how many history images it shows C besides its fakes."""
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    replica_id = ctx.replica_id_in_sync_group if ctx is not None else 0
    local = images.shape[0]
    shown = 0
    if history and self.history is not None:
      shown = int(round(self.history_fraction * local))
    return ReplicaBatch(local, replicas, replica_id, shown)

  def _seed(self, stream, step):
    return tf.stack([tf.constant(self.seed * 16 + stream, tf.int64),
                     tf.cast(step, tf.int64)])

  def autoencoder_step(self, batch, optimizer):
    """One replica's phase-1 step: MSE reconstruction + L2 on kernels.

    Compute (forward, loss, gradients) and apply (optimizer update, deferred
    batch-norm writes) are separate so that XLA can compile the compute alone
    (models/replica.py)."""
    x = batch["image"]
    part = self.replica_batch(x)
    n = part.replicas
    variables = self.autoencoder_variables

    def compute(x):
      with tf.GradientTape() as tape:
        x_ae = self.autoencode(x, training=True)
        recon = losses.mse(x, x_ae, part.global_batch)
        l2 = losses.l2_penalty(variables)
        loss = self.ae_recon_weight * recon + self.l2_weight * l2 / n
        scaled = optimizer.scale_loss(loss)
      return tape.gradient(scaled, variables), loss, recon

    (grads, loss, recon), writes = replica.run_compute("autoencoder", compute, x)
    metrics = {"ae/loss": loss * n, "ae/mse": recon * n,
               "ae/grad_norm": _grad_norm(grads, optimizer)}
    replica.apply_writes(writes)
    _apply_gradients(optimizer, grads, variables)
    return metrics

  def adversarial_step(self, batch, c_optimizer, r_optimizer,
                       probe_optimizer=None, step=None):
    """One replica's phase-2 step: C and R (or G) updated simultaneously
    from a single forward pass of C over [reals, fakes, history].

    As in the paper: draw the damage, make the fakes (damage & repair),
    C's loss (real or fake, and which cells were damaged), R's loss (fool
    C, keep the undamaged cells), update both players, then put the fakes
    into the history.

    Compute (forward passes, losses, gradients, metrics) and apply (optimizer
    updates, deferred batch-norm writes, the history buffer's all-gather and
    update) are separate so that XLA can compile the compute alone
    (models/replica.py): ``compute`` reads no tensor other than its
    arguments and the variables, and runs no collective."""
    part = self.replica_batch(batch["image"], history=True)
    c_vars = self.discriminator_variables
    r_vars = self.repair_variables
    train_probe = (self.probe is not None and probe_optimizer is not None
                   and "label" in batch)
    # The steps done before this one (train_state.StepCounters; here, by
    # default, C's optimizer's): it seeds the step's random draws.
    step = tf.convert_to_tensor(c_optimizer.iterations if step is None else step)
    keep, noise, history_slots = self._random_draws(step, part)

    def compute(batch, keep, noise, history_slots):
      images = batch["image"]
      phi = self.encoder(images, training=False)
      autoencoded = self.decoder(phi, training=False)
      reals = images if self.real_input == "raw" else autoencoded
      with tf.GradientTape(persistent=True) as tape:
        fakes = self.make_fakes(images, keep, training=True, phi=phi, noise=noise)
        views, fake_masks = self._discriminator_views(reals, fakes, keep,
                                                      history_slots)
        out = self.discriminator(views, training=True)  # views: see Discriminator
        c_loss, c_terms = self._discriminator_loss(out, fake_masks, keep, part)
        r_loss, r_terms = self._generator_loss(out, keep, autoencoded, fakes,
                                               part)
        # Loss scaling (mixed_float16: LossScaleOptimizer; else the identity).
        c_scaled = c_optimizer.scale_loss(c_loss)
        r_scaled = r_optimizer.scale_loss(r_loss)
      c_grads = tape.gradient(c_scaled, c_vars)
      r_grads = tape.gradient(r_scaled, r_vars) if r_vars else []
      del tape
      metrics = _adversarial_metrics(out, keep, c_loss, c_terms, r_loss,
                                     r_terms, part)
      probe_grads = []
      if train_probe:
        probe_grads = self._probe_gradients(out, batch["label"], part, metrics)
      return c_grads, r_grads, probe_grads, tf.stop_gradient(fakes), metrics

    (c_grads, r_grads, probe_grads, fakes, metrics), writes = replica.run_compute(
        "adversarial", compute, batch, keep, noise, history_slots)
    metrics["c/grad_norm"] = _grad_norm(c_grads, c_optimizer)
    metrics["r/grad_norm"] = (_grad_norm(r_grads, r_optimizer) if r_vars
                              else tf.constant(0.0))
    replica.apply_writes(writes)
    _apply_gradients(c_optimizer, c_grads, c_vars)
    if r_vars:
      _apply_gradients(r_optimizer, r_grads, r_vars)
    if self.history is not None:
      # Seeded by the steps done once this one is (the history's own stream).
      self._update_history(step + 1, fakes, keep, part)
    if train_probe:
      probe_optimizer.apply_gradients(zip(probe_grads, self.probe_variables))
    return metrics

  # The pieces of adversarial_step, in the order it runs them.
  def _random_draws(self, step, part: ReplicaBatch):
    """The step's random draws: keep-masks (1 = keep), the GAN's noise and
    the history slots C sees (None where unused), this replica's rows of
    the global batch's draws.

    Drawn outside the compute that XLA may compile: XLA's stateless random
    numbers differ from TensorFlow's kernels', and drawn here they are the
    same with XLA on or off."""
    b = part.local
    rows = part.replica_id * b  # this replica's first row
    keep = sample_keep_mask(self._seed(_MASK, step), b, self.grid,
                            self.drop_rate, offset=rows,
                            total_batch=part.global_batch)
    noise = None
    if self.generator is not None:
      noise = tf.random.stateless_normal(
          [part.global_batch, self.noise_dim],
          seed=self._seed(_NOISE, step))[rows:rows + b]
      # Every cell of a generated image is fake.
      keep = tf.zeros_like(keep)
    history_slots = None
    if part.history:
      history_slots = self.history.draw(
          self._seed(_HISTORY_SAMPLE, step), part.history,
          part.replica_id * part.history, part.history * part.replicas)
    return keep, noise, history_slots

  def _discriminator_views(self, reals, fakes, keep, history_slots):
    """What C sees, [reals, fakes(, history)], and the keep-masks of
    everything after the reals (the fakes' and the history's)."""
    if history_slots is None:
      return [reals, fakes], keep
    history_images, history_masks = self.history.gather(
        history_slots, tf.stop_gradient(fakes), keep)
    return ([reals, fakes, history_images],
            tf.concat([keep, history_masks], axis=0))

  def _discriminator_loss(self, out, fake_masks, keep, part: ReplicaBatch):
    """C's loss: reals as real and fakes (repaired and history) as fake,
    plus, weighted, the damaged cells of every fake (and, with
    mask_real_weight, no damaged cell in the reals). Returns the loss and
    (its real/fake term, its fakes' mask term)."""
    b = part.local
    logits, mask_logits = out["logits"], out["mask_logits"]
    class_loss = losses.real_fake_loss(logits[:b], logits[b:],
                                       part.global_batch, part.global_fakes)
    mask_loss = losses.mask_loss(mask_logits[b:], fake_masks, part.global_fakes)
    loss = class_loss
    if self.mask_weight:
      loss += self.mask_weight * mask_loss
    if self.mask_real_weight:
      loss += self.mask_real_weight * losses.mask_loss(
          mask_logits[:b], tf.ones_like(keep), part.global_batch)
    return loss, (class_loss, mask_loss)

  def _generator_loss(self, out, keep, autoencoded, fakes, part: ReplicaBatch):
    """R's (or G's) loss: C should call the current fakes real, plus,
    weighted, the autoencoded image in the kept cells (R repairs the
    dropped ones only); with generator_adds_c_losses (the released code) R
    also confuses C's real/fake and mask heads. Returns the loss and (its
    adversarial term, its kept-cell reconstruction term)."""
    b = part.local
    fake_logits = out["logits"][b:2 * b]
    adversarial = losses.non_saturating_loss(fake_logits, part.global_batch)
    loss = adversarial
    recon = tf.constant(0.0)
    if self.generator is None and self.recon_weight:
      keep_up = upsample_mask(keep, (fakes.shape[1], fakes.shape[2]))
      recon = losses.masked_mse(autoencoded, fakes, keep_up, part.global_batch)
      loss += self.recon_weight * recon
    if self.generator_adds_c_losses:
      loss += losses.confusion_loss(fake_logits, part.global_batch)
      loss += self.mask_weight * losses.mask_loss(
          out["mask_logits"][b:2 * b], keep, part.global_batch)
    return loss, (adversarial, recon)

  def _probe_gradients(self, out, labels, part: ReplicaBatch, metrics):
    """The linear probe's gradients on C's conv5 of the reals (C gets none
    from it); adds its loss and accuracy to ``metrics``."""
    features = self.probe_features({"conv5": out["conv5"][:part.local]})
    with tf.GradientTape() as tape:
      logits = tf.cast(self.probe(features), tf.float32)
      loss = losses.global_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(
              labels=labels, logits=logits), part.global_batch)
    grads = tape.gradient(loss, self.probe_variables)
    metrics["probe/loss"] = loss * part.replicas
    metrics["probe/accuracy"] = tf.reduce_mean(tf.cast(
        tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels),
        tf.float32))
    return grads

  def _update_history(self, step, fakes, keep, part: ReplicaBatch):
    """Writes the global batch's fakes and keep-masks into the history
    (all-gathered, so every replica's copy stays the same)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and part.replicas > 1:
      fakes, keep = (
          tf.reshape(ctx.all_gather(t, axis=0),
                     [part.global_batch] + t.shape[1:].as_list())
          for t in (fakes, keep))
    self.history.update(self._seed(_HISTORY_SLOTS, step), fakes, keep)

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
        repair_hidden=self.repair_hidden, repair_init=self.repair_init,
        fakes=self.fakes,
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


def _apply_gradients(optimizer, grads, variables):
  """The optimizer's update, skipped on every replica when the gradients
  overflow on any (mixed_float16; see replica.agree_on_overflow)."""
  optimizer.apply_gradients(zip(replica.agree_on_overflow(grads, optimizer),
                                variables))


def _adversarial_metrics(out, keep, c_loss, c_terms, r_loss, r_terms,
                         part: ReplicaBatch):
  """The step's losses (scaled back up from this replica's share) and C's
  accuracies on this replica's reals and current fakes."""
  b, n = part.local, part.replicas
  class_loss, mask_loss = c_terms
  adversarial, recon = r_terms
  f32 = lambda t: tf.cast(t, tf.float32)
  logits = out["logits"]
  mask_pred = f32(out["mask_logits"][b:2 * b] > 0)
  return {
      "c/loss": c_loss * n, "c/class_loss": class_loss * n,
      "c/mask_loss": mask_loss * n,
      "c/real_accuracy": tf.reduce_mean(f32(logits[:b] > 0)),
      "c/fake_accuracy": tf.reduce_mean(f32(logits[b:2 * b] < 0)),
      "c/mask_accuracy": tf.reduce_mean(f32(tf.equal(mask_pred, f32(keep[..., 0])))),
      "r/loss": r_loss * n, "r/adversarial": adversarial * n,
      "r/recon_kept": recon * n,
  }
