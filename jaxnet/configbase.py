"""Building blocks shared by every config section (kept apart to avoid import cycles).

Sections that live beside their modules (e.g. `jaxnet/ledger/config.py`) use these, and
`jaxnet/config.py` assembles them into the one `Config` tree.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax


class ConfigError(ValueError):
  """A bad configuration value; the message starts with the dotted field name."""


def static_config(cls):
  """Frozen, keyword-only dataclass registered as a static pytree (Training Cookbook)."""
  cls = dataclass(frozen=True, kw_only=True)(cls)
  jax.tree_util.register_static(cls)
  return cls


def require(cond: bool, name: str, msg: str) -> None:
  """Raises `ConfigError("name: msg")` unless `cond`."""
  if not cond:
    raise ConfigError(f"{name}: {msg}")
