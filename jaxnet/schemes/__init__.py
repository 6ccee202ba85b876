"""Training schemes behind one seam (schemes.md; DESIGN.md): DeMo, DiLoCo, SparseLoCo.

`get(cfg)` returns the scheme named by `cfg.scheme`, bound to the config; `of_layout`
returns the class of a layout's scheme (the operations validators need). A scheme is the
module `jaxnet.schemes.<name>` that defines `SCHEME`. The shared primitives live in files
named by their role: `layout` (chunking), `dct`, `topk`, `quant` (8-bit DeMo, 2-bit LUT,
int8) and `pack` (12-bit indices, 2-bit codes). Nothing is imported here at import time,
so `jaxnet.config` can import a scheme's config section without pulling in the others.
"""
from __future__ import annotations

import importlib
import importlib.util

PRIMITIVES = frozenset(("base", "layout", "dct", "topk", "quant", "pack", "demo_optax"))


def scheme_class(name: str):
  """The `SCHEME` class of module `jaxnet.schemes.<name>`; ValueError if there is none."""
  if (not name.isidentifier() or name in PRIMITIVES
      or importlib.util.find_spec(f"jaxnet.schemes.{name}") is None):
    raise ValueError(f"no scheme named {name!r}")
  cls = getattr(importlib.import_module(f"jaxnet.schemes.{name}"), "SCHEME", None)
  if cls is None or cls.name != name:
    raise ValueError(f"jaxnet.schemes.{name} defines no SCHEME named {name!r}")
  return cls


def get(cfg):
  """The scheme `cfg.scheme`, bound to the config."""
  return scheme_class(cfg.scheme)(cfg)


def of_layout(layout):
  """The scheme class that built `layout` (its layout-only operations)."""
  return scheme_class(layout.scheme)
