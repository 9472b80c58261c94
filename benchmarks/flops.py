r"""FLOPs of a network's forward pass, of a traced training step, and of a
step composed by hand from forward passes.

Three counts, used by benchmarks/throughput.py (its utilisation figures) and
benchmarks/keras_plain.py (the plain Keras step against ours):

- ``forward_flops``: TensorFlow's profiler on one traced call.
- ``step_flops`` / ``graph_flops``: a step function traced once more on a
  batch's shapes; the ops the runtime prunes (those no output or state update
  depends on, e.g. the weight gradients of a frozen network) are dropped by
  walking back from the graph's outputs and control outputs (``kept_ops``),
  and the FLOPs TensorFlow registers for each kept op (convolutions, their
  gradients, matmuls, elementwise math) are summed, into called functions'
  bodies too. Ops the registry does not cover (batch norm, pooling
  gradients' bookkeeping, casts) count zero, except the argmax max pools the
  layers use without oneDNN (``_unregistered_flops``).
- ``model_flops`` / ``step_flops_by_hand``: each network's forward FLOPs,
  composed by what the step needs: a backward pass costs one forward for the
  input gradients plus one for the weight gradients, the first layer's input
  gradient is not needed, frozen networks only pass input gradients through.
  R's loss is on the fakes, but C runs its batch norm in training mode on
  [real, fake, history] together, so the batch statistics couple the rows
  and the exact gradient needs C's input gradients on every view.

TensorFlow is imported inside the functions, so importing this module is
cheap (benchmarks/throughput.py's parent process never builds a model).
"""

from __future__ import annotations


def forward_flops(fn, *specs) -> float:
  """Profiler-counted FLOPs of one call of ``fn`` on tensors of ``specs``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  graph = tf.function(fn).get_concrete_function(*specs).graph
  opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  return float(tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops)


def model_flops(model, resolution, channels, history_fraction, has_history,
                fakes="repair", batch=8):
  """Forward FLOPs per image of each network and the FLOPs per image a step
  needs (see the module docstring)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  x = tf.TensorSpec([batch, resolution, resolution, channels], tf.float32)
  phi_shape = [batch] + list(model.grid) + [model.encoder.widths[-1]]
  phi = tf.TensorSpec(phi_shape, tf.float32)
  keep = tf.TensorSpec([batch] + list(model.grid) + [1], tf.float32)
  disc = model.discriminator
  f = {
      "encoder": forward_flops(lambda t: model.encoder(t, training=False), x),
      "decoder": forward_flops(lambda t: model.decoder(t, training=False), phi),
      "discriminator": forward_flops(lambda t: disc(t, training=False), x),
      "discriminator_conv1": forward_flops(lambda t: disc.conv1(t, training=False), x),
  }
  if fakes == "repair":
    repaired = forward_flops(lambda p, k: model.decoder(
        p, training=False, stage_fn=model.repair_fn(k, False)), phi, keep)
    f["repair"] = max(repaired - f["decoder"], 0.0)
  else:
    f["repair"] = 0.0
  f = {k: v / batch for k, v in f.items()}
  return {"forward_per_image": f,
          "step_per_image": step_flops_by_hand(f, history_fraction, has_history)}


def step_flops_by_hand(f, history_fraction, has_history):
  """FLOPs per image each phase's step needs, from the networks' forward
  FLOPs per image ``f`` (model_flops' keys; see the module docstring)."""
  c, c1, e, d, r = (f["discriminator"], f["discriminator_conv1"], f["encoder"],
                    f["decoder"], f["repair"])
  views = 2.0 + (history_fraction if has_history else 0.0)  # real, fake, history
  adversarial = (
      e + d                        # autoencode the real image
      + d + r                      # damaged -> repaired
      + views * c                  # C forward on [real, fake, history]
      + views * (c + (c - c1))     # C backward: weight + input gradients
      + views * (c - c1) + c1      # R's loss: C input gradients, every view
                                   # (batch norm statistics couple the rows)
      + d + 2 * r)                 # back through the decoder, R's gradients
  autoencoder = 3 * (e + d)        # forward, input and weight gradients
  return {"autoencoder": autoencoder, "spotter": adversarial, "features": c}


# Ops whose work lives in another graph: a called function's body is counted
# (once per call); branches and loop bodies are not (how often they run is
# data-dependent), so they are reported instead.
_CALLS = ("PartitionedCall", "StatefulPartitionedCall")
_NESTED = ("If", "StatelessIf", "While", "StatelessWhile", "Case")


def kept_ops(graph):
  """The ops of ``graph`` the runtime runs: those its outputs or its control
  outputs (state updates) depend on. The rest (e.g. gradients nobody asked
  for) are pruned before execution."""
  stack = [t.op for t in graph.outputs] + list(graph.control_outputs)
  seen = {}
  while stack:
    op = stack.pop()
    if op.name not in seen:
      seen[op.name] = op
      stack.extend(t.op for t in op.inputs)
      stack.extend(op.control_inputs)
  return list(seen.values())


def _called_graph(graph, op):
  """The body of a function-call op (TF's private function registry; there
  is no public API for it), or None."""
  try:
    return graph._get_function(op.get_attr("f").name).graph  # pylint: disable=protected-access
  except (AttributeError, ValueError):
    return None


def _unregistered_flops(op):
  """FLOPs of op types TensorFlow's registry leaves out but the layers use
  (models/blocks.py's max pool without oneDNN), counted like their registered
  twins so that a step's count does not depend on the formulation chosen:
  MaxPoolWithArgmax searches each window once, as MaxPool does (window area
  per output element); MaxPoolGradWithArgmax scatters one value per output
  element, where MaxPoolGrad searches every window again first."""
  if op.type == "MaxPoolWithArgmax":
    area = 1
    for k in op.get_attr("ksize"):
      area *= k
    return area * op.outputs[0].shape.num_elements()
  if op.type == "MaxPoolGradWithArgmax":
    return op.inputs[1].shape.num_elements()
  return None


def graph_flops(graph):
  """(FLOPs of the kept ops, {op type: FLOPs}, nested-graph op types kept
  whose FLOPs are not counted)."""
  from tensorflow.python.framework import ops as tf_ops  # pylint: disable=g-import-not-at-top
  total, by_type, nested = 0.0, {}, set()
  for op in kept_ops(graph):
    if op.type in _NESTED:
      nested.add(op.type)
    if op.type in _CALLS:
      body = _called_graph(graph, op)
      if body is None:
        nested.add(op.type)
        continue
      sub_total, sub_by_type, sub_nested = graph_flops(body)
      total += sub_total
      for k, v in sub_by_type.items():
        by_type[k] = by_type.get(k, 0.0) + v
      nested.update(sub_nested)
      continue
    try:
      value = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
    except ValueError:  # statistics registered but the shapes are unknown
      value = None
    if value is None:  # no statistics registered for this op type
      value = _unregistered_flops(op)
    if value:
      total += float(value)
      by_type[op.type] = by_type.get(op.type, 0.0) + float(value)
  return total, by_type, sorted(nested)


def step_flops(fn, batch):
  """FLOPs per image of one ``fn(batch)`` step, traced on ``batch``'s shapes
  (the step must have run once, so no variable is created here)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), batch)
  graph = tf.function(fn).get_concrete_function(spec).graph
  total, by_type, nested = graph_flops(graph)
  n = tf.nest.flatten(batch)[0].shape[0]
  return total / n, {k: v / n for k, v in by_type.items()}, nested
