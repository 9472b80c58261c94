"""Preprocessing ops registered by name and chained from a config string.

``parse("random_resized_crop(96)|flip_lr|color_jitter|value_range(-1, 1)")``
returns one function mapping a feature dict to a feature dict; each op reads
and writes ``features["image"]``. Images enter as uint8 [H, W, C] and leave as
float32 in the range set by ``value_range``. Ops work eagerly and in tf.data
(both are tested).
"""

from __future__ import annotations

import ast
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


def _image_op(fn):
  """Lifts an image->image function to a feature-dict op."""
  def op(features):
    features = dict(features)
    features["image"] = fn(features["image"])
    return features
  return op


@register("resize")
def resize(size, method="bilinear"):
  size = (size, size) if isinstance(size, int) else tuple(size)
  return _image_op(lambda im: tf.image.resize(_as_float01(im), size, method=method,
                                              antialias=True))


@register("random_resized_crop")
def random_resized_crop(size, area=(1 / 3, 1.0), ratio=(3 / 4, 4 / 3),
                        method="bilinear"):
  """Inception-style crop (released code: area 1/3..1, aspect 3/4..4/3)."""
  size = (size, size) if isinstance(size, int) else tuple(size)

  def fn(image):
    image = _as_float01(image)
    begin, crop, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32),
        area_range=area, aspect_ratio_range=ratio, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop)
    return tf.image.resize(image, size, method=method, antialias=True)
  return _image_op(fn)


@register("central_crop")
def central_crop(fraction=0.85, size=None, method="bilinear"):
  """Test-time crop of the central ``fraction``, optionally resized."""
  def fn(image):
    image = tf.image.central_crop(_as_float01(image), fraction)
    if size is not None:
      s = (size, size) if isinstance(size, int) else tuple(size)
      image = tf.image.resize(image, s, method=method, antialias=True)
    return image
  return _image_op(fn)


@register("flip_lr")
def flip_lr():
  return _image_op(lambda im: tf.image.random_flip_left_right(_as_float01(im)))


@register("color_jitter")
def color_jitter(brightness=32 / 255, saturation=(0.5, 1.5)):
  """Brightness +-delta and saturation scaling, in random order (released code).
  Saturation is skipped on grayscale images."""
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
  return _image_op(lambda im: low + _as_float01(im) * (high - low))


def _parse_call(text: str):
  node = ast.parse(text.strip(), mode="eval").body
  if isinstance(node, ast.Name):
    return node.id, [], {}
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
    raise ValueError(f"Cannot parse preprocessing op {text!r}")
  args = [ast.literal_eval(a) for a in node.args]
  kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  return node.func.id, args, kwargs


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
    ops.append(_REGISTRY[name](*args, **kwargs))

  def apply(features):
    for op in ops:
      features = op(features)
    return features
  return apply
