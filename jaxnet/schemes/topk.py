"""Top-k by magnitude with a deterministic tie rule (gauntlet.md §3.2 step 4; jax.md rule 17)."""
from __future__ import annotations

import inspect

import jax.numpy as jnp
from jax import lax

_HAS_STABLE_TOP_K = "is_stable" in inspect.signature(lax.top_k).parameters  # not on 0.10.2


def topk_indices(a, k: int, stable: bool | None = None):
  """Indices [..., k] (int32, ascending) of the k largest `a` along the last axis.

  Tie rule: among equal magnitudes the lowest index wins, so the selected set is a
  function of the data alone (validators and 1/N devices agree; jax.md rule 17). Where
  `lax.top_k` has `is_stable` (jax 0.12) this is one call; on jax 0.10.2 (none) the k-th
  value t is found first and a second top_k over distinct integer keys (entries > t
  first, then entries == t by ascending index) picks the same set.
  """
  stable = _HAS_STABLE_TOP_K if stable is None else stable
  if stable:
    idx = lax.top_k(a, k, is_stable=True)[1]
  else:
    n = a.shape[-1]
    t = lax.top_k(a, k)[0][..., -1:]
    pos = jnp.arange(n, dtype=jnp.float32)  # keys < 2n <= 2**16 are exact in float32
    key = jnp.where(a > t, 2 * n - pos, jnp.where(a == t, n - pos, 0.0))
    kv = lax.top_k(key, k)[0]
    idx = jnp.where(kv > n, 2 * n - kv, n - kv).astype(jnp.int32)
  return jnp.sort(idx, axis=-1)
