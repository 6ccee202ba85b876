"""Copy detection that fits every model size (issue 12; gauntlet.md §14, §16).

The statistic. Each peer's upload is a set of chunk coefficients (the scheme's
`coefficients`: DCT indices and values for DeMo, indices and 2-bit values for SparseLoCo,
the largest entries of each block for DiLoCo). Per chunk the values are scaled to unit L2
norm, so every chunk weighs the same, and the pair statistic is the cosine of the two
peers' concatenated chunk vectors: 1 for a copy, about 1 - (share of re-randomised chunks)
for a near-copy, and whatever honest peers happen to share otherwise (0.8-0.93 on the
byte-vocabulary sim models, much less on large layouts). Values, not only index sets: on
small models honest index sets overlap 0.7-0.93 and random ones 0.47, so index overlap
leaves little room; value vectors of independent computations differ even where their
indices agree.

The cost. All pairs exactly would be P^2 x (chunks x k) lookups: about 340 s per round at
P = 256 on the 150m layout on 2 CPU cores (issue 12). Instead:
  1. `n_sample` chunks are drawn from the round key (all chunks when there are fewer), the
     same for every peer and unknown to the peers when they upload;
  2. each peer's sampled unit-chunk vector is count-sketched into `buckets` signed
     buckets (a hash of the global coordinate, salted from the round key): O(P n_sample k);
  3. the [P, P] cosines of the sketches, one [P, buckets] x [buckets, P] product.
The sketch preserves distances to a relative error of about sqrt(2 / buckets) (1 % at
16384), which is what matters for the small distances of copies. Identical uploads give
identical sketches: their distance is exactly 0.

The threshold. Calibrated from the round itself (`calibrated_pairs`): with d = 1 - cos,
each valid peer's nearest-neighbour distance nn_a = min_b d_ab, and their median d_typ, a
pair is flagged when d_ab <= ratio x d_typ (a copy is `1 / ratio` times closer to its
source than peers typically are to anyone) or when d_ab <= EXACT (identical uploads). The
rule is scale-free: it holds whether honest peers sit at cosine 0.9 or 0.1. A copy with
noise on every value (relative size e) sits at d ~ e^2 / 2: caught up to e ~ 0.1 on the
sim models.

A second statistic covers the copier that re-randomises a share f of its chunks and keeps
the rest (d ~ f, which on small models is as close as honest peers are): the share of
sampled non-zero chunks whose index sets and value signs are identical (an order-free
hash per chunk, unchanged by value noise and re-quantisation), calibrated the same way on
1 - share with `share_ratio`: on DeMo uploads independent computations almost never
agree on all k indices and signs of a chunk (on the byte-vocabulary sim models honest
peers share up to ~0.4-0.55 of them, typical 1 - share ~ 0.37, so a pair sharing more
than ~0.89 is flagged at share_ratio 0.3: a copy that re-randomises 5 % of its chunks
shares ~0.95); on DiLoCo's dense deltas they often do, and the threshold follows. A copy that re-randomises chunks and also flips signs
everywhere escapes both statistics; it is not paid either, since payment needs own-page
evidence (`scores.has_evidence`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxnet.gauntlet.config import GauntletError
from jaxnet.submission import Layout

__all__ = ["EXACT", "sample_sizes", "sample_chunks", "sketch_one", "sketches", "cosines",
           "identical_shares", "pair_distances", "calibrated_pairs", "flag_pairs", "blame"]

EXACT = 1e-6   # d below this is an identical upload (float32 round-off of equal sketches)


def sample_sizes(layout: Layout, n_sample: int) -> tuple[int, ...]:
  """Static chunks sampled per tensor: all of them when the layout has <= n_sample
  chunks, else a share proportional to each tensor's chunk count (at least 1)."""
  counts = [math.prod(t.batch_shape) * t.n_chunks for t in layout.tensors]
  total = sum(counts)
  if total <= n_sample:
    return tuple(counts)
  return tuple(min(c, max(1, round(n_sample * c / total))) for c in counts)


def sample_chunks(layout: Layout, n_sample: int, key) -> tuple:
  """Per tensor the sampled flat chunk ids [S_t] int32 (over batch x chunks)."""
  out = []
  for i, (t, s) in enumerate(zip(layout.tensors, sample_sizes(layout, n_sample))):
    m = math.prod(t.batch_shape) * t.n_chunks
    out.append(jnp.arange(m, dtype=jnp.int32) if s == m else
               jax.random.randint(jax.random.fold_in(key, i), (s,), 0, m, jnp.int32))
  return tuple(out)


def _mix32(x):
  """murmur3's 32-bit finaliser: a bijection that spreads every input bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def sketch_one(coeffs: dict, layout: Layout, chunk_ids: tuple, buckets: int, salt):
  """(count sketch [buckets] float32 of one peer's sampled unit-chunk vector, content hash
  [S] uint32 of each sampled chunk, 0 for an all-zero chunk).

  `coeffs` is the scheme's `coefficients` of one submission; `salt` a uint32 scalar.
  Duplicate indices within a chunk add up (as the scatter-mean would weigh them).
  """
  total = sum(int(c.shape[0]) for c in chunk_ids)
  out = jnp.zeros((buckets,), jnp.float32)
  codes = []
  base = 0
  for t, ids in zip(layout.tensors, chunk_ids):
    idx, val = coeffs[t.name]
    idx = idx.reshape(-1, idx.shape[-1])[ids]                  # [S_t, k]
    val = val.reshape(-1, val.shape[-1])[ids].astype(jnp.float32)
    val = jnp.where(jnp.isfinite(val), val, 0.0)
    norm = jnp.sqrt(jnp.sum(val * val, axis=-1, keepdims=True))
    unit = jnp.where(norm > 0, val / jnp.where(norm > 0, norm, 1.0), 0.0) / math.sqrt(total)
    coord = (jnp.uint32(base) + ids.astype(jnp.uint32)[:, None] * jnp.uint32(t.chunk_len)
             + jnp.clip(idx, 0, t.chunk_len - 1).astype(jnp.uint32))
    h = _mix32(coord ^ salt)
    sign = jnp.where((h >> 31) == 1, -1.0, 1.0)
    out = out.at[(h & jnp.uint32(buckets - 1)).astype(jnp.int32)].add(sign * unit)
    # order-free chunk hash: sum of the mixed (index, sign) of its non-zero entries, so
    # a copy keeps it under value noise and re-quantisation, and a fresh computation
    # would need all k indices and signs of the chunk to agree
    entry = _mix32(_mix32(idx.astype(jnp.uint32) ^ salt) ^ (val > 0).astype(jnp.uint32))
    code = jnp.sum(jnp.where(val != 0, entry, jnp.uint32(0)), axis=-1, dtype=jnp.uint32)
    codes.append(jnp.where(norm[:, 0] > 0, code | jnp.uint32(1), jnp.uint32(0)))
    base += math.prod(t.batch_shape) * t.n_chunks * t.chunk_len
  return out, jnp.concatenate(codes)


def sketches(subs_N, scheme, layout: Layout, key, n_sample: int, buckets: int):
  """([N, buckets] sketches, [N, S] chunk hashes) of every submission (one peer at a time:
  memory stays bounded)."""
  if buckets < 2 or buckets & (buckets - 1):
    raise GauntletError(f"sketch buckets must be a power of two >= 2, got {buckets}")
  k_chunks, k_salt = jax.random.split(key)
  ids = sample_chunks(layout, n_sample, k_chunks)
  salt = jax.random.bits(k_salt, (), jnp.uint32)
  one = lambda sub: sketch_one(scheme.coefficients(sub, layout), layout, ids, buckets, salt)
  return jax.lax.map(one, subs_N)


def cosines(sk_NxB) -> tuple[jax.Array, jax.Array]:
  """([N, N] cosine of the sketches, [N] bool: the sketch is not zero)."""
  gram = jnp.matmul(sk_NxB, sk_NxB.T, precision=jax.lax.Precision.HIGHEST)
  sq = jnp.diag(gram)
  nonzero = sq > 0
  inv = jnp.where(nonzero, 1.0 / jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)
  return gram * inv[:, None] * inv[None, :], nonzero


def identical_shares(codes_NxS) -> jax.Array:
  """[N, N] share of a's non-zero sampled chunks that b sent identically (one row at a
  time: N x S memory)."""
  nonzero = codes_NxS != 0
  count = jnp.maximum(jnp.sum(nonzero, axis=1), 1).astype(jnp.float32)

  def row(args):
    code_S, nz_S = args
    same = (codes_NxS == code_S[None, :]) & nz_S[None, :]
    return jnp.sum(same, axis=1, dtype=jnp.int32)
  return jax.lax.map(row, (codes_NxS, nonzero)).astype(jnp.float32) / count[:, None]


def pair_distances(stat_PxP, kind: str):
  """d = 1 - statistic (cosine or index overlap), clipped at 0."""
  if kind not in ("values", "indices"):
    raise GauntletError(f"unknown pair statistic {kind!r}")
  return jnp.maximum(1.0 - jnp.nan_to_num(stat_PxP.astype(jnp.float32), nan=0.0), 0.0)


def calibrated_pairs(d_PxP, valid_P, ratio: float) -> tuple[jax.Array, jax.Array]:
  """Flagged pairs [P, P] bool (symmetric) and the round's typical distance d_typ.

  d_typ is the lower median of the valid peers' nearest-neighbour distances to uploads
  that are not identical to theirs (at least 3 such peers; otherwise only identical
  uploads are flagged). A copy ring larger than
  half of the valid peers would pull d_typ down: it is bounded by the uid count, and each
  of its members still has to earn own-page evidence to be paid.
  """
  p = d_PxP.shape[0]
  pair = valid_P[:, None] & valid_P[None, :] & ~jnp.eye(p, dtype=bool)
  # identical uploads are flagged by EXACT anyway; leaving them out of the calibration
  # keeps a group of exact copies from pulling the typical distance down to 0
  nn_P = jnp.min(jnp.where(pair & (d_PxP > EXACT), d_PxP, jnp.inf), axis=1)
  has_nn = valid_P & jnp.isfinite(nn_P)
  n_valid = jnp.sum(has_nn)
  srt = jnp.sort(jnp.where(has_nn, nn_P, jnp.inf))
  d_typ = jnp.where(n_valid >= 3, srt[jnp.maximum(n_valid - 1, 0) // 2], 0.0)
  flag = pair & ((d_PxP <= ratio * d_typ) | (d_PxP <= EXACT))
  return flag, d_typ


def flag_pairs(d_PxP, share_PxP, valid_P, ratio: float, share_ratio: float) -> jax.Array:
  """[P, P] bool: pairs near in value cosine (`calibrated_pairs` on d, `ratio`) or in
  shared chunk signatures (the same rule on 1 - share, either way round, `share_ratio`).

  Both are calibrated: schemes whose honest uploads agree on many chunk signatures (dense
  DiLoCo deltas keep the largest entries of each block, often the same positions and
  signs for every peer) raise the typical distance, so only outliers are flagged."""
  near, _ = calibrated_pairs(d_PxP, valid_P, ratio)
  d_share = 1.0 - jnp.maximum(share_PxP, share_PxP.T)
  same, _ = calibrated_pairs(d_share, valid_P, share_ratio)
  return near | same


def blame(flag_PxP, evidence_P, times_P=None):
  """Orients flagged pairs: (blamed [P, P] bool, row copied column; unresolved [P] bool).

  With `times_P` (gauntlet.md §14), the later member of each pair (equal times: the higher
  uid). Without (issue 12), by own-page evidence: the member without evidence of training
  on its own pages copied a partner that has it, since the shared update was computed on
  the partner's pages. A pair where both or neither have evidence is unresolved: reported,
  not punished (an upload time is the copier's to choose, and a copier without evidence is
  not paid anyway).
  """
  p = flag_PxP.shape[0]
  if times_P is not None:
    uid = jnp.arange(p)
    later = (times_P[:, None] > times_P[None, :]) | (
        (times_P[:, None] == times_P[None, :]) & (uid[:, None] > uid[None, :]))
    return flag_PxP & later, jnp.zeros((p,), bool)
  blamed = flag_PxP & ~evidence_P[:, None] & evidence_P[None, :]
  unresolved = jnp.any(flag_PxP & (evidence_P[:, None] == evidence_P[None, :]), axis=1)
  return blamed, unresolved
