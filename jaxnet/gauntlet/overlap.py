"""Index-overlap copy detection (gauntlet.md §14, §16, §18 row 4; templar PR #382 and #435).

Post-paper and off by default (`GauntletConfig.overlap_detection`). For every pair of peers
(a, b) and every compressed tensor, the per-chunk *set* overlap |I_a ∩ I_b| / k of their
top-k indices is averaged over the chunks; the tensors are then combined with a size weight:
templar weights a tensor by its number of transmitted indices, C x k ("indices", the default;
the overlap is then simply shared indices / all indices), "elements" by its element count
C x chunk_len. A pair at or above the threshold flags the later uploader (§14).

Computation, all pairs at once. Each peer's chunk index set becomes a packed bitset
[P, M, W] uint32 (W = ceil(chunk_len / 32)); indices are sorted per chunk so that duplicates
and out-of-range values can be dropped, after which a scatter-add of distinct bits equals an
OR. The pair counts are then, per leaf, either
  * "bits":   sum popcount(words_a & words_b) over chunks and words (P^2 M W word ops), or
  * "gather": for each index of a, test its bit in b's bitset (P^2 M k lookups),
one row a at a time under lax.map. "auto" takes "gather" when 2k < W (sparse 2-D DCT blocks:
k = 32 of 4096) and "bits" otherwise (1-D chunks: k = 32 of 64); measured on 2 CPU cores,
each is about 2x faster than the other in its regime and 2-5x faster than a one-hot matmul.
The chunk axis is processed in blocks so that the bitsets take at most `block_bytes`.
Duplicated indices count once and indices outside [0, chunk_len) are ignored (the format
check of §7.4 rejects such uploads anyway), so the diagonal is 1 for well-formed uploads.
"""
from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from jaxnet.gauntlet.config import GauntletConfig, GauntletError
from jaxnet.gauntlet.scores import ScoreState, reset_uids, slash_scores

__all__ = ["leaf_counts", "index_overlap", "CopyVerdict", "copy_slash", "apply_copy_verdict"]

Method = Literal["auto", "bits", "gather"]


def _prepare(idx_PxMxK: jax.Array, chunk_len: int):
  """Sorted indices with a validity mask (in range, first of its value in the chunk)."""
  idx = jnp.sort(idx_PxMxK.astype(jnp.int32), axis=-1)
  first = jnp.concatenate([jnp.ones_like(idx[..., :1], bool), idx[..., 1:] != idx[..., :-1]],
                          axis=-1)
  valid = first & (idx >= 0) & (idx < chunk_len)
  return jnp.where(valid, idx, 0), valid


def _bitsets(idx_PxMxK, valid_PxMxK, n_words: int):
  """[P, M, W] uint32 bitsets; indices are distinct per chunk, so add == or."""
  p, m, _ = idx_PxMxK.shape
  bit = jnp.where(valid_PxMxK, jnp.left_shift(jnp.uint32(1), (idx_PxMxK & 31).astype(jnp.uint32)),
                  jnp.uint32(0))
  p_i = jnp.arange(p)[:, None, None]
  m_i = jnp.arange(m)[None, :, None]
  return jnp.zeros((p, m, n_words), jnp.uint32).at[p_i, m_i, idx_PxMxK >> 5].add(bit)


def _block_counts(idx_PxMxK, valid_PxMxK, n_words: int, method: str):
  """|I_a ∩ I_b| summed over the chunks of one block: [P, P] int32."""
  words_PxMxW = _bitsets(idx_PxMxK, valid_PxMxK, n_words)
  if method == "bits":
    def row(words_a_MxW):
      both = jax.lax.population_count(words_a_MxW[None] & words_PxMxW)
      return jnp.sum(both, axis=(1, 2), dtype=jnp.int32)
    return jax.lax.map(row, words_PxMxW)
  m = idx_PxMxK.shape[1]
  m_i = jnp.arange(m)[:, None]

  def row(args):
    idx_a_MxK, valid_a_MxK = args
    word_PxMxK = words_PxMxW[:, m_i, idx_a_MxK >> 5]
    hit = (word_PxMxK >> (idx_a_MxK & 31).astype(jnp.uint32)) & jnp.uint32(1)
    return jnp.sum(jnp.where(valid_a_MxK, hit, 0), axis=(1, 2), dtype=jnp.int32)
  return jax.lax.map(row, (idx_PxMxK, valid_PxMxK))


def leaf_counts(idx: jax.Array, chunk_len: int, method: Method = "auto",
                block_bytes: int = 16 << 20) -> jax.Array:
  """Σ_chunks |I_a ∩ I_b| for one tensor, all pairs: [P, P] int32.

  Args:
    idx: [P, *batch, n_chunks, k] integer top-k indices, chunk-local in [0, chunk_len).
    chunk_len: static number of coefficients per chunk (64 for 1-D, 4096 for 64x64 blocks).
    method: "bits", "gather" or "auto" (see the module docstring).
    block_bytes: bound on the bitset block (and gather intermediate) per step.
  """
  if idx.ndim < 3:
    raise GauntletError(f"indices must be [P, ..., n_chunks, k], got shape {idx.shape}")
  if not jnp.issubdtype(idx.dtype, jnp.integer):
    raise GauntletError(f"indices must be integers, got {idx.dtype}")
  chunk_len = int(chunk_len)
  if chunk_len < 1:
    raise GauntletError(f"chunk_len must be >= 1, got {chunk_len}")
  if method not in ("auto", "bits", "gather"):
    raise GauntletError(f"method must be auto, bits or gather, got {method!r}")
  p, k = idx.shape[0], idx.shape[-1]
  m = math.prod(idx.shape[1:-1])
  n_words = -(-chunk_len // 32)
  if method == "auto":
    method = "gather" if 2 * k < n_words else "bits"
  idx_PxMxK, valid_PxMxK = _prepare(idx.reshape(p, m, k), chunk_len)
  per_chunk = p * max(n_words, k) * 4
  mb = max(1, min(m, block_bytes // per_chunk))
  nb = -(-m // mb)
  if nb == 1:
    return _block_counts(idx_PxMxK, valid_PxMxK, n_words, method)
  pad = nb * mb - m   # padded chunks are all-invalid and add nothing
  idx_PxMxK = jnp.pad(idx_PxMxK, ((0, 0), (0, pad), (0, 0)))
  valid_PxMxK = jnp.pad(valid_PxMxK, ((0, 0), (0, pad), (0, 0)))
  blocks = lambda x: jnp.moveaxis(x.reshape(p, nb, mb, k), 1, 0)

  def step(acc, args):
    return acc + _block_counts(*args, n_words, method), None
  acc, _ = jax.lax.scan(step, jnp.zeros((p, p), jnp.int32),
                        (blocks(idx_PxMxK), blocks(valid_PxMxK)))
  return acc


def index_overlap(idx_tree, chunk_lens, size_weight: Literal["indices", "elements"] = "indices",
                  method: Method = "auto", block_bytes: int = 16 << 20) -> jax.Array:
  """Size-weighted mean per-chunk top-k index overlap of every pair of peers: [P, P] float32.

  Args:
    idx_tree: pytree of [P, *batch, n_chunks, k] int index arrays (one leaf per tensor).
    chunk_lens: pytree of the same structure holding each leaf's chunk length as a static
      Python int (close over it or use functools.partial when jitting).
    size_weight: "indices" (templar: n_chunks x k) or "elements" (n_chunks x chunk_len).
  """
  if size_weight not in ("indices", "elements"):
    raise GauntletError(f"size_weight must be indices or elements, got {size_weight!r}")
  leaves, treedef = jax.tree.flatten(idx_tree)
  lens = treedef.flatten_up_to(chunk_lens)
  if not leaves:
    raise GauntletError("idx_tree has no leaves")
  p = jnp.shape(leaves[0])[0]
  for idx in leaves:   # check every leaf before any work
    if jnp.ndim(idx) < 3 or jnp.shape(idx)[0] != p:
      raise GauntletError(f"every leaf must be [P={p}, ..., n_chunks, k], got {jnp.shape(idx)}")
  total = jnp.zeros((p, p), jnp.float32)
  weight_sum = 0.0
  for idx, chunk_len in zip(leaves, lens):
    m, k = math.prod(idx.shape[1:-1]), idx.shape[-1]
    weight = float(m * (k if size_weight == "indices" else int(chunk_len)))
    frac_PxP = leaf_counts(idx, chunk_len, method, block_bytes).astype(jnp.float32) / (m * k)
    total = total + weight * frac_PxP
    weight_sum += weight
  return total / weight_sum


class CopyVerdict(NamedTuple):
  """Result of `copy_slash` per peer (leading axis P).

  Attributes:
    level: 0 none, 1 "high" (>= threshold), 2 "max", 3 "mega" (templar HEAD levels).
    offending_overlap: the largest overlap with an earlier valid uploader, 0 if none.
    source: index of that earlier uploader, -1 if level is 0.
    max_overlap: the largest overlap with any other valid peer (for metrics), 0 if none.
  """
  level: jax.Array
  offending_overlap: jax.Array
  source: jax.Array
  max_overlap: jax.Array


def copy_slash(overlap_PxP: jax.Array, upload_time_P: jax.Array, valid_P: jax.Array,
               thresholds=(0.4, 0.5, 0.6), uid_P: jax.Array | None = None) -> CopyVerdict:
  """Flags the later uploader of every pair whose overlap reaches the threshold (§14).

  "Later" means a larger upload time; equal times count the higher uid as later (templar
  flags the earlier-listed peer on ties, which depends on list order; ours does not). Peers
  with `valid` False or a non-finite time are neither flagged nor counted as sources.
  A peer copying several others gets the level of its largest offending overlap.

  Args:
    overlap_PxP: from `index_overlap`.
    upload_time_P: upload timestamps (any unit).
    valid_P: bool, the peer's upload was gathered.
    thresholds: (high, max, mega), non-decreasing.
    uid_P: the uid of each row for tie-breaking; defaults to the row index.
  """
  p = overlap_PxP.shape[0]
  if overlap_PxP.shape != (p, p):
    raise GauntletError(f"overlap must be square [P, P], got {overlap_PxP.shape}")
  for name, x in (("upload_time", upload_time_P), ("valid", valid_P)):
    if jnp.shape(x) != (p,):
      raise GauntletError(f"{name} has shape {jnp.shape(x)}, expected ({p},)")
  if len(thresholds) != 3 or not thresholds[0] <= thresholds[1] <= thresholds[2]:
    raise GauntletError(f"thresholds must be 3 non-decreasing values, got {thresholds}")
  uid_P = jnp.arange(p) if uid_P is None else uid_P
  t_P = upload_time_P
  ok_P = valid_P & jnp.isfinite(t_P)
  pair_PxP = ok_P[:, None] & ok_P[None, :] & ~jnp.eye(p, dtype=bool)
  later_PxP = (t_P[:, None] > t_P[None, :]) | (
    (t_P[:, None] == t_P[None, :]) & (uid_P[:, None] > uid_P[None, :]))
  ov_PxP = jnp.nan_to_num(overlap_PxP.astype(jnp.float32), nan=0.0)
  off_PxP = jnp.where(pair_PxP & later_PxP, ov_PxP, -1.0)
  offending_P = jnp.max(off_PxP, axis=1)
  source_P = jnp.argmax(off_PxP, axis=1).astype(jnp.int32)
  level_P = sum((offending_P >= t).astype(jnp.int32) for t in thresholds)
  level_P = jnp.where(offending_P >= 0, level_P, 0)
  return CopyVerdict(
    level=level_P.astype(jnp.int32),
    offending_overlap=jnp.maximum(offending_P, 0.0),
    source=jnp.where(level_P > 0, source_P, -1),
    max_overlap=jnp.maximum(jnp.max(jnp.where(pair_PxP, ov_PxP, -1.0), axis=1), 0.0))


def apply_copy_verdict(state: ScoreState, level: jax.Array, window,
                       cfg: GauntletConfig) -> tuple[ScoreState, jax.Array]:
  """Acts on copy levels over the uid pool (§14 post-paper row; templar HEAD).

  level 1: F and BMA x overlap_slash (positive scores only, then the floor); level >= 2: full
  reset; level 3 also sets a timeout of `overlap_timeout_windows` (the caller excludes uids
  with window < timeout_until from gather and evaluation). Returns (state, reset [N] bool),
  the rating module deletes the ratings of `reset` uids.
  """
  n = state.final.shape[0]
  if jnp.shape(level) != (n,):
    raise GauntletError(f"level has shape {jnp.shape(level)}, expected ({n},)")
  state = slash_scores(state, cfg.overlap_slash, level == 1, cfg)
  reset = level >= 2
  state = reset_uids(state, reset, cfg.bma_init)
  until = jnp.asarray(window, jnp.int32) + cfg.overlap_timeout_windows
  return state._replace(timeout_until=jnp.where(level >= 3, until, state.timeout_until)), reset

