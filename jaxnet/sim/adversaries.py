"""Peer behaviours (gauntlet.md §16): what each uid uploads, and when.

Every behaviour starts from what an honest peer would have computed (`honest` below is
that peer's own submission, already computed on the right model and pages, or on the
wrong ones for `desync`/`wrong_data`) and turns it into an upload: bytes or nothing, and an
offset from the window boundary T_{w+1}. All randomness is a function of (seed, window,
uid). The validator never sees these labels, only the bytes and their timestamps.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from jaxnet.sim.config import SimConfig
from jaxnet.submission import Layout, Submission, to_bytes

MALFORMED_KINDS = ("nan", "wrong_k", "index_range", "truncated", "inf_lut")


def rng_for(seed: int, window: int, uid: int, salt: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, window, uid, salt, 0xAD5])


def _with_meta(sub: Submission, uid: int, window: int) -> Submission:
  return sub._replace(uid=np.int32(uid), window=np.int32(window))


def _map_values(sub: Submission, fn: Callable[[str, np.ndarray], np.ndarray]) -> Submission:
  return sub._replace(val={n: fn(n, v) for n, v in sub.val.items()})


def zero_submission(sub: Submission) -> Submission:
  """Valid format, zero direction: the free-rider that uploads 'something'."""
  if sub.quantized:
    return sub._replace(qmean={n: np.zeros_like(v) for n, v in sub.qmean.items()},
                        qlut={n: np.zeros_like(v) for n, v in sub.qlut.items()})
  return _map_values(sub, lambda n, v: np.zeros_like(v))


def noise_submission(sub: Submission, layout: Layout, rng: np.random.Generator) -> Submission:
  """Random indices and values of the right format and scale (the noise uploader)."""
  idx = {t.name: rng.integers(0, t.chunk_len, size=t.idx_shape).astype(np.int16)
         for t in layout.tensors}
  if sub.quantized:
    val = {n: rng.integers(0, 256, size=v.shape).astype(np.uint8) for n, v in sub.val.items()}
  else:
    val = {n: (rng.standard_normal(v.shape) * (np.std(v) + 1e-12)).astype(np.float32)
           for n, v in sub.val.items()}
  return sub._replace(idx=idx, val=val)


def degrade_submission(sub: Submission, layout: Layout, fraction: float,
                       rng: np.random.Generator) -> Submission:
  """Replaces a `fraction` of every tensor's chunks with noise (graded honest quality)."""
  noisy = noise_submission(sub, layout, rng)
  idx, val = dict(sub.idx), dict(sub.val)
  for t in layout.tensors:
    rows = rng.random(t.batch_shape + (t.n_chunks, 1)) < fraction
    idx[t.name] = np.where(rows, noisy.idx[t.name], sub.idx[t.name])
    val[t.name] = np.where(rows, noisy.val[t.name], sub.val[t.name])
  return sub._replace(idx=idx, val=val)


def malformed_bytes(sub: Submission, layout: Layout, kind: str) -> bytes:
  """One malformed upload of the given kind (§7.4); all must become penalties."""
  t = layout.tensors[0]
  if kind == "nan":
    if sub.quantized:
      bad = dict(sub.qmean)
      bad[t.name] = np.full_like(bad[t.name], np.nan)
      return to_bytes(sub._replace(qmean=bad))
    return to_bytes(_map_values(sub, lambda n, v: np.full_like(v, np.nan) if n == t.name else v))
  if kind == "inf_lut" and sub.quantized:
    bad = dict(sub.qlut)
    bad[t.name] = np.full_like(bad[t.name], np.inf)
    return to_bytes(sub._replace(qlut=bad))
  if kind == "wrong_k":
    return to_bytes(sub._replace(idx={**sub.idx, t.name: sub.idx[t.name][..., :-1]},
                                 val={**sub.val, t.name: sub.val[t.name][..., :-1]}))
  if kind == "index_range":
    return to_bytes(sub._replace(idx={**sub.idx, t.name: np.full_like(sub.idx[t.name], t.chunk_len + 5)}))
  data = to_bytes(sub)
  return data[: len(data) // 2]   # truncated (also the fallback for inf_lut unquantised)


def operator_of(uid: int, behaviours: list[str], group: int) -> int:
  """First uid of a sybil's operator group: consecutive sybil uids share one computation."""
  first = uid
  while first > 0 and behaviours[first - 1] == "sybil":
    first -= 1
  return first + ((uid - first) // group) * group


def make_uploads(behaviours: list[str], honest: list[Submission], window: int,
                 previous: list[Submission | None], layout: Layout, cfg: SimConfig):
  """-> (uploads [N] bytes|None, offsets_s [N], probe_present [N]).

  `honest[u]` is uid u's own computation for this round (metadata set); `previous[u]` what
  it computed last round (for replay).
  """
  n = len(behaviours)
  lo, hi = cfg.honest_upload_s
  offsets = np.array([rng_for(cfg.seed, window, u, 1).uniform(lo, hi) for u in range(n)])
  uploads: list[bytes | None] = [None] * n
  probe = np.ones(n, bool)
  honest_uids = [u for u, b in enumerate(behaviours) if b == "honest"]
  degraded = cfg.degraded_fraction()
  for u, b in enumerate(behaviours):
    sub = honest[u]
    rng = rng_for(cfg.seed, window, u, 2)
    if b in ("honest", "wrong_data", "desync"):
      uploads[u] = to_bytes(sub)
    elif b == "free_rider":
      probe[u] = False
    elif b == "degraded":
      uploads[u] = to_bytes(degrade_submission(sub, layout, degraded[u], rng))
    elif b == "zeros":
      uploads[u] = to_bytes(zero_submission(sub))
    elif b == "noise":
      uploads[u] = to_bytes(noise_submission(sub, layout, rng))
    elif b == "malformed":
      uploads[u] = malformed_bytes(sub, layout, MALFORMED_KINDS[(window + u) % len(MALFORMED_KINDS)])
    elif b == "late":
      uploads[u], offsets[u] = to_bytes(sub), cfg.late_s
    elif b == "early":
      uploads[u], offsets[u] = to_bytes(sub), cfg.early_s
    elif b == "replay":
      prev = previous[u] if previous[u] is not None else sub
      uploads[u] = to_bytes(_with_meta(prev, u, window))
    elif b == "copier":
      victim = honest_uids[u % len(honest_uids)] if honest_uids else (u + 1) % n
      copied = _with_meta(honest[victim], u, window)
      if cfg.copy_noise > 0 and not copied.quantized:
        copied = _map_values(copied, lambda _, v: v * (1 + cfg.copy_noise * rng.standard_normal(v.shape)).astype(np.float32))
      uploads[u] = to_bytes(copied)
      offsets[u] = min(offsets[victim] + cfg.copy_delay_s, cfg.late_s - 1e-3)
    elif b == "sybil":
      op = operator_of(u, behaviours, cfg.sybil_uids_per_operator)
      uploads[u] = to_bytes(_with_meta(honest[op], u, window))
      offsets[u] = offsets[op]
    else:  # pragma: no cover - SimConfig validates names
      raise ValueError(f"unknown behaviour {b!r}")
  return uploads, offsets, probe
