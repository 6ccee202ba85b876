"""Fast evaluation: put-window timeliness, format checks, sync score, uptime (gauntlet.md §7).

Cheap per-uid checks over the whole pool `[N]`, every round, before any LossScore. All
functions are jittable; host-side parsing of uploaded files (which produces the
`struct_ok` flags and reasons) lives in `jaxnet.gauntlet.collect`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import schemes
from jaxnet.gauntlet.config import GauntletConfig
from jaxnet.submission import Layout, Submission

PROBE = slice(10, 12)  # debug-dict positions [10:12] of every tensor (§3.4, §15.2)


class Timeliness(NamedTuple):
  on_time: jax.Array    # [N] bool: T_{w+1} <= t <= T_{w+1} + Δ_put
  too_early: jax.Array  # [N] bool
  too_late: jax.Array   # [N] bool
  missing: jax.Array    # [N] bool: no object for this round


def timeliness(present_N, offset_s_N, put_window_s: float) -> Timeliness:
  """Put-window rule of §1.3/§1.4: `offset_s` is the upload time minus T_{w+1}."""
  early = present_N & (offset_s_N < 0)
  late = present_N & ((offset_s_N > put_window_s) | ~jnp.isfinite(offset_s_N))
  return Timeliness(present_N & ~early & ~late, early, late, ~present_N)


def format_ok(subs_N: Submission, struct_ok_N, layout: Layout) -> tuple[jax.Array, dict]:
  """Every §7.4 check: structure (host) and, vectorised over N, the scheme's value checks
  (index range, NaN/Inf in the values and after decoding). Returns ([N] bool ok, the
  per-check [N] flags)."""
  check = schemes.of_layout(layout).check_values
  flags = jax.vmap(lambda s: check(s, layout, decode=True))(subs_N)
  flags = {k: v & struct_ok_N for k, v in flags.items()}
  return flags["ok"], flags


def sync_probe(params, layout: Layout) -> jax.Array:
  """θ at flat positions [10:12] of every tensor (each layer slice is one tensor, §3.4)."""
  out = []
  for t, leaf in zip(layout.tensors, layout.treedef.flatten_up_to(params)):
    flat = leaf.reshape(t.batch_shape + (-1,))
    out.append(flat[..., PROBE].reshape(-1))
  return jnp.concatenate(out).astype(jnp.float32)


def probe_size(layout: Layout) -> int:
  return sum(int(np.prod(t.batch_shape, dtype=np.int64)) * 2 for t in layout.tensors)


def steps_behind(own_probe, probes_NxK, lr_t) -> jax.Array:
  """x = mean |θ_val − θ_peer| / η_t: every sign step moves a weight by η_t (§7.2)."""
  return jnp.mean(jnp.abs(probes_NxK - own_probe[None, :]), axis=-1) / lr_t


def sync_score(x_N, probe_present_N, cfg: GauntletConfig) -> jax.Array:
  """(1 − min(x, 5)/5)^2.5, 0 when the debug dict is missing (§7.2 table)."""
  x = jnp.where(jnp.isfinite(x_N), x_N, cfg.sync_saturation)
  # clipped at 0: XLA may divide by multiplying with 1/5, so x = 5 can give base -1e-8,
  # and a negative base to the power 2.5 is NaN
  base = jnp.maximum(1.0 - jnp.minimum(x, cfg.sync_saturation) / cfg.sync_saturation, 0.0)
  return jnp.where(probe_present_N, base ** cfg.sync_exponent, 0.0).astype(jnp.float32)


def desynced(x_N, probe_present_N, cfg: GauntletConfig) -> jax.Array:
  """Desync slash condition: debug dict missing or x > sync_max_steps_behind (§7.2)."""
  return ~probe_present_N | ~(x_N <= cfg.sync_max_steps_behind)


def update_activity(last_upload_N, present_N, window) -> jax.Array:
  """Window of each uid's latest gradient object (−10⁶ if none yet)."""
  return jnp.where(present_N, jnp.asarray(window, jnp.int32), last_upload_N)


def is_active(last_upload_N, window, cfg: GauntletConfig) -> jax.Array:
  """Active = a gradient object for some w in [current − recent_windows, current] (§6)."""
  return (jnp.asarray(window, jnp.int32) - last_upload_N) <= cfg.recent_windows
