"""The plain Keras step (benchmarks/keras_plain.py) against ours, and the
throughput rows that time it."""

import numpy as np
import pytest
import tensorflow as tf

from artifact_spotting import train_state
from benchmarks import keras_plain
from configs import fashion_mnist


def _ours(config):
  return train_state.Players(config, tf.distribute.get_strategy(), probe=True).model


@pytest.mark.parametrize("arg", ["", "tiny"])
def test_the_plain_model_has_our_parameter_counts(arg):
  config = fashion_mnist.get_config(arg)
  ours, plain = _ours(config), keras_plain.build(config)
  assert keras_plain.param_counts(plain) == keras_plain.ours_param_counts(ours)
  # Batch norms' moving statistics too: the same layers, not just as many weights.
  assert (keras_plain.param_counts(plain, moving=True)
          == keras_plain.ours_param_counts(ours, moving=True))
  if not arg:
    assert keras_plain.param_counts(plain) == {
        "autoencoder": 140_769, "discriminator": 2_603_458, "repair": 394_560,
        "probe": 40_970}
  assert tuple(plain.history_images.shape) == tuple(ours.history.images.shape)


def _values(weights):
  return [np.array(w.numpy()) for w in weights]


@pytest.mark.slow
def test_one_train_step_trains_the_spotter_and_the_repair_only():
  config = fashion_mnist.get_config("tiny")
  plain = keras_plain.build(config)
  b, res = config.spotter.batch_size, config.resolution
  data = {"image": tf.random.uniform([b, res, res, 1], -1, 1, seed=1),
          "label": tf.zeros([b], tf.int32)}
  frozen = plain.encoder.weights + plain.decoder.weights
  c, r = plain.discriminator.trainable_weights, plain.generator.trainable_weights
  assert plain.encoder.trainable_weights == [] and plain.decoder.trainable_weights == []
  assert r and {id(w) for w in r} == {id(w) for m in plain.repairs
                                      for w in m.trainable_weights}
  before = [_values(ws) for ws in (frozen, c, r)]
  history = plain.fit(tf.data.Dataset.from_tensors(data).repeat(), epochs=1,
                      steps_per_epoch=1, verbose=0).history
  assert {"c_loss", "r_loss", "probe_loss"} <= set(history)
  assert all(np.isfinite(v[0]) for v in history.values())
  after = [_values(ws) for ws in (frozen, c, r)]
  same = lambda x, y: all(np.array_equal(u, v) for u, v in zip(x, y))
  assert same(before[0], after[0])       # the autoencoder, statistics included
  assert not same(before[1], after[1])   # C
  assert not same(before[2], after[2])   # R
  assert int(plain.history_count.numpy()) == b
  assert plain.c_optimizer.iterations.numpy() == 1
  assert plain.r_optimizer.iterations.numpy() == 1


@pytest.mark.slow
def test_the_plain_step_does_our_work_per_image(monkeypatch):
  """Traced FLOPs per image of one step (ops the runtime prunes left out)
  within a few percent of ours on configs/fashion_mnist.py (batch 8; at 64,
  1.390 vs 1.376 GFLOP/image). The plain step takes conv1's input gradient
  on every view and runs keras' unfused batch norm, so it is a little above.

  Our layers choose their formulation by ``hardware.onednn_enabled()``,
  which differs between AVX-512 and AVX2-only machines (and so does our
  traced count); the oneDNN formulation is pinned so the figures above hold
  on either."""
  from artifact_spotting.models import blocks
  from benchmarks import flops
  monkeypatch.setattr(blocks, "onednn_enabled", lambda: True)
  out = keras_plain.compare(batch=8)
  plain, ours = out["plain"], out["ours"]
  assert out["params"]["plain"] == out["params"]["ours"]
  assert ours["nested"] == [] and plain["nested"] == []
  assert ours["flops_per_image"] < plain["flops_per_image"] < 1.03 * ours["flops_per_image"]
  assert plain["by_type"]["Conv2DBackpropInput"] > 0   # TF's own input gradients
  # The hand count composed from the plain networks' forward FLOPs agrees too.
  model = keras_plain.build(fashion_mnist.get_config(""))
  f = keras_plain.forward_flops_per_image(model)
  hand = flops.step_flops_by_hand(f, 0.5, True)["spotter"]
  assert hand == pytest.approx(plain["flops_per_image"], rel=0.03)


def test_throughput_row_strings_round_trip():
  from benchmarks.variants import Variant, parse_row, parse_variant, variant_name
  for text in ("spotter:64:noxla:float32", "keras_fit:64:noxla:float32",
               "spotter:64:xla:mixed_bfloat16:r2", "autoencoder:128:noxla:float32:r4",
               "features:256:xla:mixed_bfloat16"):
    assert variant_name(parse_row(text)) == text
  # The old four-field strings: the same fields as parse_variant, one replica.
  for text in ("spotter:64:noxla:float32", "features:256:xla:mixed_bfloat16"):
    assert parse_row(text) == Variant(*parse_variant(text), 1)
  assert parse_row("spotter:64:xla:float32:r1") == parse_row("spotter:64:xla:float32")
  assert parse_row("spotter:64:xla:float32:r2").replicas == 2
  for bad in ("keras_fit:64:noxla:float32:r2", "keras_fit:64:noxla:mixed_bfloat16", "spotter:64:noxla:float32:r0",
              "spotter:64:noxla:float32:2", "spotter:64:noxla", "gan:64:noxla:float32",
              "spotter:64:noxla:float64:r2", "spotter:64:noxla:float32:r2:x"):
    with pytest.raises(SystemExit, match="bad variant"):
      parse_row(bad)
  with pytest.raises(SystemExit, match="bad variant"):
    parse_variant("keras_fit:64:noxla:float32")  # the old parser: our phases only


def test_keras_fit_ratio_compares_like_with_like():
  from benchmarks import throughput
  params = {"autoencoder": 1, "discriminator": 2, "repair": 3, "probe": 4}

  def row(phase, rate, jit=False, prec="float32", replicas=1, batch=64):
    return {"phase": phase, "batch_size": batch, "jit_compile": jit,
            "precision": prec, "replicas": replicas, "images_per_second": rate,
            "flops_per_image": 100.0 if phase == "keras_fit" else 99.0,
            "params": params}
  results = [row("spotter", 30.0), row("spotter", 40.0, jit=True),
             row("spotter", 90.0, replicas=2),           # not one replica
             row("spotter", 80.0, prec="mixed_bfloat16"),  # not the precision
             row("spotter", 70.0, batch=128),            # not the batch
             row("keras_fit", 10.0)]
  (q,) = throughput.keras_fit_ratios(results, "cpu2")
  assert q["machine"] == "cpu2" and q["params_equal"]
  assert q["ours_over_keras_fit_same_xla"] == pytest.approx(3.0)
  assert q["ours_over_keras_fit"] == pytest.approx(4.0) and q["ours_best_jit_compile"]
  assert q["flops_plain_over_ours"] == pytest.approx(100 / 99)
