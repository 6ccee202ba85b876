"""The one exception class of the data layer, and its lazy import of optional packages."""
from __future__ import annotations

import importlib
import sys


class DataError(ValueError):
  """Bad or missing data (shards, meta, tokenizer, corpus). One line; names the file."""


def optional_package(module: str, what: str, install: str):
  """The top package of `module` (a dotted module is imported with its parent), imported
  only when needed; otherwise a one-line DataError: "<what> needs the optional ... package
  (<install>)", `what` naming the file or function that needs it."""
  top = module.split(".")[0]
  try:
    importlib.import_module(module)
  except ImportError:
    raise DataError(f"{what} needs the optional {top!r} package ({install})") from None
  return sys.modules[top]
