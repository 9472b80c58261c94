"""The binaries' entry point: a user's mistake ends in one line.

``run(main, errors)`` is ``absl.app.run(main)`` where a bad flag (an unknown
flag or config field, a value of the wrong type, a config file that is
missing or fails to load), an OSError (a missing or read-only folder, a full
disk) or one of ``errors`` (the binary's own setup errors) prints
``error: <cause>`` as the last line on stderr and exits with status 2,
without a traceback. Anything else is a bug and keeps its traceback.

The binaries import TensorFlow inside ``main`` (and ``errors`` is a function
returning the classes for the same reason), so a flag mistake is reported
in well under a second.
"""

from __future__ import annotations

import difflib
import errno
import os
import sys
from typing import Callable, NoReturn, Sequence, Tuple, Type, Union

from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl

EXIT_CODE = 2

# Installs Debian's Fashion-MNIST IDX files (as root); named to the user on a
# first run, never run by the binaries or the library (.ci/run runs it). The
# same text as data.sources.FASHION_MNIST_INSTALL (this module loads no
# TensorFlow, which sources imports).
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"


def require_paths(**paths: str):
  """Refuses an empty path flag (``--workdir=``) in one line."""
  for name, value in paths.items():
    if value is not None and not value.strip():
      fail(f"--{name} is empty")


def fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_CODE)


def fashion_mnist_first_run(path: str) -> str:
  """The one-line message for a run that finds no Fashion-MNIST IDX files in
  Debian's folder ``path`` and none from tfds: the command that installs
  them."""
  return (f"Fashion-MNIST is not installed (no IDX files in {path}); on a "
          f"first run install it with: {FASHION_MNIST_INSTALL} (or point "
          f"--config.dataset.path at a folder holding the IDX files)")


def one_line(text: str) -> str:
  """A multi-line message as one line; an embedded traceback is reduced to
  its last line (the exception itself)."""
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  if not lines:
    return ""
  if any(line.startswith("Traceback (most recent call last)") for line in lines):
    head = lines[0]
    for marker in ("Error whilst parsing config file:", "Traceback"):
      if marker in head:
        head = head[:head.index(marker)].rstrip(" :")
    return f"{head}: {lines[-1]}" if head else lines[-1]
  return " ".join(lines)


def describe(error: BaseException) -> str:
  """``error``'s cause in one line (an OSError as "<what>: <strerror>")."""
  if isinstance(error, OSError) and error.strerror and error.filename:
    return f"{error.filename}: {error.strerror}"
  if isinstance(error, OSError) and error.strerror:
    return one_line(error.strerror)
  if isinstance(error, KeyError) and error.args:
    return one_line(str(error.args[0]))
  return one_line(str(error))


def _config_flags() -> Sequence[str]:
  return [name for name in flags.FLAGS
          if config_flags_impl.is_config_flag(flags.FLAGS[name])]


def _spec(name: str, argv: Sequence[str]) -> str:
  """The ``--<name>=`` argument (a config file, optionally ``:arg``)."""
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def _load_problem(name: str, spec: str, config):
  """Why config flag ``name``'s file ``spec`` did not load (None when it did)."""
  if config is None:
    return None
  try:
    config.keys()  # a config that failed to load raises on any access
  except OSError:
    path = spec.split(":", 1)[0]
    if not os.path.exists(path):
      return f"--{name}={spec}: no such config file {path!r}"
    cause = getattr(config, "_error", None)
    return f"--{name}={spec}: cannot load it: {one_line(cause or '')}"
  return None


def _missing_field(config, dotted: str):
  """(the first missing part of ``dotted`` in ``config``, its siblings) or None."""
  node, walked = config, []
  for part in dotted.split("."):
    try:
      keys = list(node.keys())
    except (AttributeError, TypeError):
      return None
    if part not in keys:
      return ".".join(walked + [part]), keys
    node, walked = node[part], walked + [part]
  return None


def _override_error(error: BaseException, argv: Sequence[str]) -> str:
  """Names the ``--config.<field>`` override that failed to parse (the
  config file is loaded again to find it: the failed parse kept nothing)."""
  for name in _config_flags():
    spec = _spec(name, argv)
    if not spec:
      continue
    try:
      config = config_flags_impl.ConfigFileFlagParser(
          name=name, lock_config=False).parse(spec)
    except Exception:  # pylint: disable=broad-except
      continue
    problem = _load_problem(name, spec, config)
    if problem:
      return problem
    for arg in argv[1:]:
      if not arg.startswith(f"--{name}."):
        continue
      dotted = arg[len(name) + 3:].split("=", 1)[0]
      missing = _missing_field(config, dotted)
      if missing:
        field, siblings = missing
        close = difflib.get_close_matches(field.rsplit(".", 1)[-1],
                                          [str(k) for k in siblings], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"--{name}.{dotted}: the config has no field {field!r}{hint}"
  return describe(error)


def _code_problem(argv: Sequence[str]):
  """Why a config file named by a config flag fails as Python code (a
  SyntaxError, an ImportError, no ``get_config``), as
  ``--config=<file>: <cause>, line N``; None when every one loads."""
  import traceback  # pylint: disable=g-import-not-at-top
  for name in _config_flags():
    spec = _spec(name, argv)
    if not spec:
      continue
    path = spec.split(":", 1)[0]
    try:
      config_flags_impl.ConfigFileFlagParser(
          name=name, lock_config=False).parse(spec)
    except SyntaxError as e:
      where = f"line {e.lineno}" if e.lineno else ""
      return (f"--{name}={spec}: {type(e).__name__}: {e.msg}"
              f"{f' ({where})' if where else ''}")
    except ImportError as e:
      lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
               if os.path.abspath(f.filename) == os.path.abspath(path)]
      where = f" (line {lines[-1]})" if lines else ""
      return f"--{name}={spec}: {type(e).__name__}: {e}{where}"
    except AttributeError as e:
      if "get_config" in str(e):
        return f"--{name}={spec}: {path} defines no get_config() function"
    except Exception:  # pylint: disable=broad-except
      continue
  return None


def parse_flags(argv: Sequence[str]):
  """absl's flag parsing with every failure as one ``error:`` line."""
  try:
    rest = flags.FLAGS(list(argv))
  except flags.Error as e:
    fail(one_line(str(e)))
  except (SyntaxError, ImportError) as e:
    # A config file that is not valid Python, or imports a missing module.
    fail(_code_problem(argv) or describe(e))
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    # config_flags raises these for a bad --config.<field> override (and
    # AttributeError for a config file without get_config).
    fail(_code_problem(argv) if isinstance(e, AttributeError) and _code_problem(argv)
         else _override_error(e, argv))
  for name in _config_flags():
    problem = _load_problem(name, _spec(name, argv), flags.FLAGS[name].value)
    if problem:
      fail(problem)
  return rest


Errors = Union[Tuple[Type[BaseException], ...],
               Callable[[], Tuple[Type[BaseException], ...]]]


# The OSErrors a user's paths or disk cause (missing, unwritable, full or
# read-only, a file where a folder belongs); any other errno (EBADF, EINVAL,
# ...) is a bug and keeps its traceback.
USER_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                         errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                         errno.EEXIST, errno.ELOOP, errno.ENAMETOOLONG,
                         errno.EIO))


def guard(main: Callable, errors: Errors = ()):
  """``main`` with ``errors`` (classes, or a function returning them) and
  OSErrors of USER_ERRNOS turned into one ``error:`` line."""

  def guarded(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      known = tuple(errors() if callable(errors) else errors)
      if isinstance(e, known) or (isinstance(e, OSError)
                                  and e.errno in USER_ERRNOS):
        fail(describe(e))
      raise

  return guarded


def run(main: Callable, errors: Errors = ()):
  """``app.run(main)`` with one-line errors for bad flags, OSError and
  ``errors``."""
  app.run(guard(main, errors), flags_parser=parse_flags)
