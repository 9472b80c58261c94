"""Preprocessing ops registered by name and chained from a config string.

``parse("random_resized_crop(96)|flip_lr|color_jitter|value_range(-1, 1)")``
returns one function mapping a feature dict to a feature dict; each op reads
and writes ``features["image"]``. Images enter as uint8 [H, W, C] and leave as
float32 in the range set by ``value_range``. Ops work eagerly and in tf.data
(both are tested) and keep shapes static: an op with a ``size`` returns
[size, size, C], every op keeps the input's channel count C known when it is
(``to_rgb``/``to_gray`` set it to 3/1), so batches have a fully defined shape.

Arguments are Python literals (numbers, strings, tuples, lists, True/False/
None) and arithmetic on numbers (unary minus, + - * /), e.g.
``random_resized_crop(96, area=(1/3, 1.0))``; nothing is evaluated as code.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Callable, Dict

import tensorflow as tf

_REGISTRY: Dict[str, Callable] = {}


def register(name):
  def wrap(fn):
    _REGISTRY[name] = fn
    return fn
  return wrap


def known_ops():
  return sorted(_REGISTRY)


# Ops whose code works unchanged on a batch [B, H, W, C], image by image
# (random_flip_left_right draws one flip per image of a batch).
BATCHABLE = frozenset({"resize", "flip_lr", "value_range", "to_rgb", "to_gray"})


def batchable(spec: str) -> bool:
  """Whether every op of ``spec`` can run on whole batches (see BATCHABLE)."""
  return all(name in BATCHABLE for name, _, _ in _calls(spec))


def _as_float01(image):
  if image.dtype == tf.uint8:
    return tf.image.convert_image_dtype(image, tf.float32)
  return tf.cast(image, tf.float32)


def _channels(image):
  """The static channel count of ``image`` (None when unknown)."""
  return image.shape[-1] if image.shape.rank is not None else None


# Largest side an op may resize or crop to: far above any training
# resolution, small enough that one float32 image stays below a few GiB.
MAX_SIZE = 16384

RESIZE_METHODS = tuple(sorted(
    v for k, v in vars(tf.image.ResizeMethod).items()
    if k.isupper() and isinstance(v, str)))


def _is_number(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _size(size):
  """``size`` or ``(height, width)`` -> (height, width), each an integer in
  [1, MAX_SIZE]; ValueError otherwise."""
  sides = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
  if len(sides) != 2 or not all(
      isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SIZE
      for s in sides):
    raise ValueError(f"size={size!r} must be an integer or an (height, width) "
                     f"pair of integers in [1, {MAX_SIZE}]")
  return sides


def _method(method):
  if method not in RESIZE_METHODS:
    raise ValueError(f"method={method!r} must be one of {RESIZE_METHODS}")
  return method


def _range(name, value, low, high=None):
  """``value`` as an ordered pair (lo, hi) with low < lo <= hi (<= high)."""
  ok = (isinstance(value, (tuple, list)) and len(value) == 2
        and all(_is_number(v) for v in value)
        and low < value[0] <= value[1] and (high is None or value[1] <= high))
  if not ok:
    bound = f" <= {high}" if high is not None else ""
    raise ValueError(f"{name}={value!r} must be a pair (lo, hi) with "
                     f"{low} < lo <= hi{bound}")
  return tuple(value)


def _image_op(fn):
  """Lifts an image->image function to a feature-dict op."""
  def op(features):
    features = dict(features)
    features["image"] = fn(features["image"])
    return features
  return op


@register("resize")
def resize(size, method="bilinear"):
  size, method = _size(size), _method(method)
  return _image_op(lambda im: tf.image.resize(_as_float01(im), size, method=method,
                                              antialias=True))


@register("random_resized_crop")
def random_resized_crop(size, area=(1 / 3, 1.0), ratio=(3 / 4, 4 / 3),
                        method="bilinear"):
  """Inception-style crop (released code: area 1/3..1, aspect 3/4..4/3)."""
  size, method = _size(size), _method(method)
  area = _range("area", area, 0, 1)
  ratio = _range("ratio", ratio, 0)

  def fn(image):
    image = _as_float01(image)
    channels = _channels(image)
    # The stateless op takes its seed from a (stateful) random draw, so the
    # crop follows the global seed and works under TensorFlow's op
    # determinism, which refuses the stateful op without an explicit seed.
    seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed,
        area_range=area, aspect_ratio_range=ratio, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    # The crop's size is a tensor, so tf.slice forgets every dimension; the
    # channels are those of the input (the box spans all of them).
    image = tf.slice(image, begin, crop)
    image.set_shape([None, None, channels])
    return tf.image.resize(image, size, method=method, antialias=True)
  return _image_op(fn)


@register("central_crop")
def central_crop(fraction=0.85, size=None, method="bilinear"):
  """Test-time crop of the central ``fraction``, optionally resized."""
  if not (_is_number(fraction) and 0 < fraction <= 1):
    raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
  if size is not None:
    size = _size(size)
  method = _method(method)

  def fn(image):
    image = tf.image.central_crop(_as_float01(image), fraction)
    if size is not None:
      image = tf.image.resize(image, size, method=method, antialias=True)
    return image
  return _image_op(fn)


@register("flip_lr")
def flip_lr():
  return _image_op(lambda im: tf.image.random_flip_left_right(_as_float01(im)))


@register("color_jitter")
def color_jitter(brightness=32 / 255, saturation=(0.5, 1.5)):
  """Brightness +-delta and saturation scaling, in random order (released code).
  Saturation is skipped on grayscale images."""
  if not (_is_number(brightness) and 0 <= brightness <= 1):
    raise ValueError(f"brightness={brightness!r} must be in [0, 1]")
  if not (isinstance(saturation, (tuple, list)) and len(saturation) == 2
          and all(_is_number(v) for v in saturation)
          and 0 <= saturation[0] < saturation[1]):
    raise ValueError(f"saturation={saturation!r} must be a pair (lo, hi) with "
                     f"0 <= lo < hi")

  def fn(image):
    image = _as_float01(image)
    rgb = image.shape[-1] == 3

    def b(im):
      return tf.image.random_brightness(im, brightness)

    def s(im):
      return tf.image.random_saturation(im, *saturation) if rgb else im
    image = tf.cond(tf.random.uniform([]) < 0.5, lambda: s(b(image)),
                    lambda: b(s(image)))
    return tf.clip_by_value(image, 0.0, 1.0)
  return _image_op(fn)


@register("to_rgb")
def to_rgb():
  def fn(image):
    return image if image.shape[-1] == 3 else tf.image.grayscale_to_rgb(image)
  return _image_op(fn)


@register("to_gray")
def to_gray():
  def fn(image):
    if image.shape[-1] == 1:
      return image
    return tf.image.rgb_to_grayscale(_as_float01(image))
  return _image_op(fn)


@register("value_range")
def value_range(low=-1.0, high=1.0):
  """Maps [0, 1] (or uint8 [0, 255]) to [low, high]."""
  if not (_is_number(low) and _is_number(high) and math.isfinite(low)
          and math.isfinite(high) and low < high):
    raise ValueError(f"low={low!r}, high={high!r} must be finite numbers with "
                     f"low < high")
  return _image_op(lambda im: low + _as_float01(im) * (high - low))


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub,
               ast.Mult: operator.mul, ast.Div: operator.truediv}


def _number(node):
  value = _literal(node)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{ast.unparse(node)!r} is not a number")
  return value


def _literal(node):
  """The value of an argument's syntax tree: literals, tuples and lists of
  them, and unary +/- and + - * / on numbers. Anything else (names, calls,
  attributes, strings in arithmetic, ...) raises ValueError."""
  if isinstance(node, ast.Constant) and (
      node.value is None or isinstance(node.value, (bool, int, float, str))):
    return node.value
  if isinstance(node, (ast.Tuple, ast.List)):
    values = [_literal(e) for e in node.elts]
    return tuple(values) if isinstance(node, ast.Tuple) else values
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
    value = _number(node.operand)
    return -value if isinstance(node.op, ast.USub) else value
  if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
    left, right = _number(node.left), _number(node.right)
    try:
      return _ARITHMETIC[type(node.op)](left, right)
    except ZeroDivisionError:
      raise ValueError(f"{ast.unparse(node)!r} divides by zero") from None
  raise ValueError(f"{ast.unparse(node)!r} is not a number, string, tuple or "
                   "list (allowed: literals, unary -, + - * / on numbers)")


def _parse_call(text: str):
  """``"name"`` or ``"name(args)"`` -> (name, args, kwargs)."""
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"Cannot parse preprocessing op {text!r}: {e.msg}") from None
  if isinstance(node, ast.Name):
    return node.id, [], {}
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
    raise ValueError(f"Cannot parse preprocessing op {text!r}")
  name = node.func.id
  try:
    if any(k.arg is None for k in node.keywords):
      raise ValueError("**kwargs are not allowed")
    args = [_literal(a) for a in node.args]
    kwargs = {k.arg: _literal(k.value) for k in node.keywords}
  except ValueError as e:
    raise ValueError(f"Bad argument of preprocessing op {name!r} in "
                     f"{text.strip()!r}: {e}") from None
  return name, args, kwargs


def _calls(spec: str):
  """``"op1(args)|op2|..."`` -> [(name, args, kwargs)] of each op."""
  return [_parse_call(p) for p in filter(None, (p.strip() for p in spec.split("|")))]


def parse(spec: str):
  """Chains ops from ``"op1(args)|op2|..."`` into one feature-dict function."""
  ops = []
  for name, args, kwargs in _calls(spec):
    if name not in _REGISTRY:
      raise ValueError(f"Unknown preprocessing op {name!r} in {spec!r}; "
                       f"known ops: {known_ops()}")
    try:
      ops.append(_REGISTRY[name](*args, **kwargs))
    except (TypeError, ValueError) as e:  # wrong number, names or values
      raise ValueError(f"Bad arguments for preprocessing op {name!r} in "
                       f"{spec!r}: {e}") from None

  def apply(features):
    for op in ops:
      features = op(features)
    return features
  return apply


def check(spec: str, channels: int, resolution=None, field: str = "pp"):
  """Checks a pp string for a config without reading data: parses it (errors
  name the op) and traces the chain in a tf.data map on uint8 images of any
  height and width with ``channels`` channels. The output must be float32
  with ``channels`` channels and, where its height and width are static,
  ``resolution`` x ``resolution``. Raises ValueError naming config.<field>."""
  try:
    process = parse(spec)
  except ValueError as e:
    raise ValueError(f"config.{field}={spec!r}: {e}") from None
  # Traced in a throwaway graph with its own graph-level seed: the random
  # ops need one when TensorFlow's op determinism is on, and the process's
  # global seed is left alone.
  try:
    with tf.Graph().as_default():
      tf.compat.v1.set_random_seed(0)
      image = tf.compat.v1.placeholder(tf.uint8, [None, None, channels])
      out = process({"image": image})["image"]
  except (TypeError, ValueError, tf.errors.OpError) as e:
    raise ValueError(f"config.{field}={spec!r} fails on {channels}-channel "
                     f"images: {e}") from None
  shape = out.shape.as_list() if out.shape.rank is not None else None
  want = [resolution, resolution, channels]
  fits = (out.dtype == tf.float32 and shape is not None and len(shape) == 3
          and shape[2] == channels
          and all(s is None or resolution is None or s == resolution
                  for s in shape[:2]))
  if not fits:
    shown = [("R" if resolution is None else resolution)] * 2 + [channels]
    raise ValueError(
        f"config.{field}={spec!r}: gives {out.dtype.name} images of shape "
        f"{shape}, the config needs float32 [{', '.join(map(str, shown))}]")
