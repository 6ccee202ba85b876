"""Peer behaviours (gauntlet.md §16): what each uid uploads, and when.

Every behaviour starts from what an honest peer would have computed (`honest` below is
that peer's own submission, already computed on the right model and pages, or on the
wrong ones for `desync`/`wrong_data`) and turns it into an upload: bytes or nothing, and an
offset from the window boundary T_{w+1}. All randomness is a function of (seed, window,
uid). The validator never sees these labels, only the bytes and their timestamps.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from jaxnet.schemes import layout as lay
from jaxnet.sim.config import SimConfig
from jaxnet.submission import Layout, Submission, to_bytes

MALFORMED_KINDS = ("nan", "wrong_k", "index_range", "truncated", "inf_lut")


def rng_for(seed: int, window: int, uid: int, salt: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, window, uid, salt, 0xAD5])


def _with_meta(sub: Submission, uid: int, window: int) -> Submission:
  return sub._replace(uid=np.int32(uid), window=np.int32(window))


@functools.lru_cache(maxsize=8)
def _codec(scheme, layout: Layout):
  """Jitted (decode, encode_direction) of a scheme for one layout (the host's helpers)."""
  return (jax.jit(lambda s: scheme.decode(s, layout)),
          jax.jit(lambda d: scheme.encode_direction(d, layout)))


def _encode(sub: Submission, dense, layout: Layout, scheme) -> Submission:
  """A made-up direction in the scheme's format, keeping sub's metadata."""
  out = jax.tree.map(np.asarray, _codec(scheme, layout)[1](dense))
  return out._replace(uid=sub.uid, window=sub.window, pages=sub.pages)


def _noise_like(dense, rng: np.random.Generator):
  """Gaussian noise with each leaf's standard deviation (the right scale, no signal)."""
  return jax.tree.map(lambda d: (rng.standard_normal(d.shape) * (np.std(d) + 1e-12))
                      .astype(np.float32), dense)


def zero_submission(sub: Submission) -> Submission:
  """Valid format, zero direction: the free-rider that uploads 'something'. Every float
  array is zeroed (values, or the means, scales and LUTs that decode the codes)."""
  zero = lambda d: {n: np.zeros_like(v) if np.asarray(v).dtype.kind == "f" else v
                    for n, v in d.items()}
  return sub._replace(val=zero(sub.val), qmean=zero(sub.qmean), qscale=zero(sub.qscale),
                      qlut=zero(sub.qlut))


def noise_submission(sub: Submission, layout: Layout, rng: np.random.Generator,
                     scheme) -> Submission:
  """Random direction of the right format and scale, encoded by the scheme (the noise
  uploader): the honest upload's decoded scale per tensor, no information."""
  dense = jax.tree.map(np.asarray, _codec(scheme, layout)[0](sub))
  return _encode(sub, _noise_like(dense, rng), layout, scheme)


def degrade_submission(sub: Submission, layout: Layout, fraction: float,
                       rng: np.random.Generator, scheme) -> Submission:
  """Replaces a `fraction` of every tensor's chunks with noise (graded honest quality)."""
  dense = jax.tree.map(np.asarray, _codec(scheme, layout)[0](sub))
  noise = _noise_like(dense, rng)
  mixed = []
  for t, d, z in zip(layout.tensors, layout.treedef.flatten_up_to(dense),
                     layout.treedef.flatten_up_to(noise)):
    rows = rng.random(t.batch_shape + (t.n_chunks, 1)) < fraction
    c = np.where(rows, np.asarray(lay.to_chunks(z, t)), np.asarray(lay.to_chunks(d, t)))
    mixed.append(np.asarray(lay.from_chunks(c, t)))
  return _encode(sub, layout.treedef.unflatten(mixed), layout, scheme)


def _first_float(sub: Submission, name: str) -> str:
  """The first float field of tensor `name` (where a NaN is a value-check failure)."""
  return next(f for f in ("val", "qmean", "qscale", "qlut")
              if name in getattr(sub, f) and np.asarray(getattr(sub, f)[name]).dtype.kind == "f")


def malformed_bytes(sub: Submission, layout: Layout, kind: str, scheme) -> bytes:
  """One malformed upload of the given kind (§7.4); all must become penalties."""
  t = layout.tensors[0]
  if kind == "index_range":
    bad = scheme.out_of_range(sub, layout)
    if bad is not None:
      return to_bytes(bad, layout)
    kind = "nan"   # the format cannot point past a chunk (dense, or 12 bits of 4096)
  if kind == "nan":
    f = _first_float(sub, t.name)
    field = dict(getattr(sub, f))
    field[t.name] = np.full_like(field[t.name], np.nan)
    return to_bytes(sub._replace(**{f: field}), layout)
  if kind == "inf_lut" and sub.qlut:
    bad = dict(sub.qlut)
    bad[t.name] = np.full_like(bad[t.name], np.inf)
    return to_bytes(sub._replace(qlut=bad), layout)
  if kind == "wrong_k":
    cut = lambda d: {**d, t.name: d[t.name][..., :-1]} if t.name in d else d
    return to_bytes(sub._replace(idx=cut(sub.idx), val=cut(sub.val)), layout)
  data = to_bytes(sub, layout)
  return data[: len(data) // 2]   # truncated (also the fallback for inf_lut without a LUT)


def _copy_attack(b: str, u: int, victim: int, honest, previous, offsets, rng, window: int,
                 layout: Layout, cfg: SimConfig, scheme) -> tuple[bytes, float]:
  """Copies of a victim's work that attack the rules around copying (issue 12):

  * copier_first: an exact copy that claims an upload time before its victim's (the
    time rule of §14 would blame the victim);
  * partial_copier: the victim's direction with `partial_copy_fraction` of its chunks
    replaced by noise and re-encoded (every value re-quantised), to dodge the detector;
  * stale_copier: the victim's upload of the previous window, which no same-round copy
    detector can see (public since then);
  * scaled_copier: the victim's direction times `copy_scale` (value manipulation).
  """
  sub = _with_meta(honest[victim], u, window)
  offset = min(offsets[victim] + cfg.copy_delay_s, cfg.late_s - 1e-3)
  if b == "copier_first":
    offset = max(offsets[victim] - cfg.copy_delay_s, 0.0)
  elif b == "partial_copier":
    sub = degrade_submission(sub, layout, cfg.partial_copy_fraction, rng, scheme)
  elif b == "stale_copier":
    prev = previous[victim]
    sub = _with_meta(prev if prev is not None else honest[victim], u, window)
    offset = float(offsets[u])   # no hurry: it was public a window ago
  elif b == "scaled_copier":
    dense = jax.tree.map(np.asarray, _codec(scheme, layout)[0](sub))
    sub = _encode(sub, jax.tree.map(lambda d: (d * cfg.copy_scale).astype(np.float32), dense),
                  layout, scheme)
  return to_bytes(sub, layout), offset


def operator_of(uid: int, behaviours: list[str], group: int) -> int:
  """First uid of a sybil's operator group: consecutive sybil uids share one computation."""
  first = uid
  while first > 0 and behaviours[first - 1] == "sybil":
    first -= 1
  return first + ((uid - first) // group) * group


def make_uploads(behaviours: list[str], honest: list[Submission], window: int,
                 previous: list[Submission | None], layout: Layout, cfg: SimConfig, scheme):
  """-> (uploads [N] bytes|None, offsets_s [N], probe_present [N]).

  `honest[u]` is uid u's own computation for this round (metadata set); `previous[u]` what
  it computed last round (for replay); `scheme` the network's scheme (its format).
  """
  put = lambda sub: to_bytes(sub, layout)
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
      uploads[u] = put(sub)
    elif b == "free_rider":
      probe[u] = False
    elif b == "degraded":
      uploads[u] = put(degrade_submission(sub, layout, degraded[u], rng, scheme))
    elif b == "zeros":
      uploads[u] = put(zero_submission(sub))
    elif b == "noise":
      uploads[u] = put(noise_submission(sub, layout, rng, scheme))
    elif b == "malformed":
      uploads[u] = malformed_bytes(sub, layout, MALFORMED_KINDS[(window + u) % len(MALFORMED_KINDS)],
                                   scheme)
    elif b == "late":
      uploads[u], offsets[u] = put(sub), cfg.late_s
    elif b == "early":
      uploads[u], offsets[u] = put(sub), cfg.early_s
    elif b == "replay":
      prev = previous[u] if previous[u] is not None else sub
      uploads[u] = put(_with_meta(prev, u, window))
    elif b == "copier":
      victim = honest_uids[u % len(honest_uids)] if honest_uids else (u + 1) % n
      copied = _with_meta(honest[victim], u, window)
      if cfg.copy_noise > 0:   # a near-copy: the victim's direction, perturbed, re-encoded
        dense = jax.tree.map(np.asarray, _codec(scheme, layout)[0](copied))
        dense = jax.tree.map(lambda d: (d * (1 + cfg.copy_noise * rng.standard_normal(d.shape)))
                             .astype(np.float32), dense)
        copied = _encode(copied, dense, layout, scheme)
      uploads[u] = put(copied)
      offsets[u] = min(offsets[victim] + cfg.copy_delay_s, cfg.late_s - 1e-3)
    elif b in ("copier_first", "partial_copier", "stale_copier", "scaled_copier"):
      victim = honest_uids[u % len(honest_uids)] if honest_uids else (u + 1) % n
      uploads[u], offsets[u] = _copy_attack(b, u, victim, honest, previous, offsets, rng,
                                            window, layout, cfg, scheme)
    elif b == "sybil":
      op = operator_of(u, behaviours, cfg.sybil_uids_per_operator)
      uploads[u] = put(_with_meta(honest[op], u, window))
      offsets[u] = offsets[op]
    else:  # pragma: no cover - SimConfig validates names
      raise ValueError(f"unknown behaviour {b!r}")
  return uploads, offsets, probe
