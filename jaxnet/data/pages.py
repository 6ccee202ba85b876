"""Deterministic data assignment: pages per (uid, window), shared random pages, epoch order.

gauntlet.md §2.2: peer k in round w gets `pages_per_window` pages, from an RNG that anyone
can recompute from (uid, w); validators' random data uses "the same page mechanism with a
non-uid seed drawn in [1000, 10^7]". §2.3: assignment is a pure function of (seed, uid, round).

Derivation (stable across numpy versions: only raw Philox output and integer math are used):

  K(tag, a, b, c) = int.from_bytes(sha256(tag || a || b || c)[:16], "little"),
                    each integer packed as 8 bytes little-endian, signed
  r_0, r_1, ...   = numpy.random.Philox(key=K).random_raw(), Philox4x64-10, counter 0
  page_i          = (r_i * n_pages) >> 64   (Lemire's multiply-shift; bias < n_pages / 2^64),
                    skipping a page already drawn, until pages_per_window distinct ids

  pages(uid, w)        : K(b"jaxnet/pages/v1", data.seed, uid, w)        0 <= uid < 1000
  random_seed(w, salt) : 1000 + int.from_bytes(sha256(b"jaxnet/random/v1" || data.seed || w
                         || salt)[:8], "little") mod (10^7 - 1000 + 1)    in [1000, 10^7]
  random_pages(w, salt): the pages() draw with uid := random_seed(w, salt)

Uids stay below 1000 so a peer's stream can never coincide with the random stream. Every
validator with the same `data.seed` draws the same random pages; a nonzero `salt` gives a
validator independent randomness. Pages are drawn without replacement within one draw and
independently across uids (as in the reference, two peers may occasionally share a page).

`epoch_permutation(seed, epoch, n)` orders the training sequences of one epoch for the
centralised baseline: argsort (stable) of n raw Philox words keyed K(b"jaxnet/train/v1",
seed, epoch, 0), so a resumed run sees exactly the same data.
"""
from __future__ import annotations

import hashlib

import numpy as np

from jaxnet.data.errors import DataError

RANDOM_SEED_MIN = 1000           # gauntlet.md §2.2: non-uid seed drawn in [1000, 10^7]
RANDOM_SEED_MAX = 10_000_000
PAGES_TAG = b"jaxnet/pages/v1"
RANDOM_TAG = b"jaxnet/random/v1"
TRAIN_TAG = b"jaxnet/train/v1"


def _pack(*ints: int) -> bytes:
  try:
    return b"".join(int(i).to_bytes(8, "little", signed=True) for i in ints)
  except OverflowError:
    raise DataError(f"page key {ints}: values must fit in int64") from None


def philox_key(tag: bytes, *ints: int) -> int:
  """The 128-bit Philox key K(tag, ints...) of the module docstring."""
  return int.from_bytes(hashlib.sha256(tag + _pack(*ints)).digest()[:16], "little")


def _draw(key: int, k: int, n_pages: int) -> np.ndarray:
  """k distinct page ids in [0, n_pages) from the Philox stream with `key`."""
  bits = np.random.Philox(key=key)
  out: list[int] = []
  while len(out) < k:
    for r in bits.random_raw(k).tolist():
      page = (r * n_pages) >> 64
      if page not in out and len(out) < k:
        out.append(page)
  return np.asarray(out, np.int64)


def _check(window: int, k: int, n_pages: int) -> None:
  if window < 0:
    raise DataError(f"window {window}: must be >= 0")
  if n_pages < k:
    raise DataError(f"corpus has {n_pages} pages, fewer than pages_per_window={k}")


def pages(uid: int, window: int, cfg, n_pages: int) -> np.ndarray:
  """int64[cfg.pages_per_window] page ids of peer `uid` in round `window` (pure)."""
  if not 0 <= uid < RANDOM_SEED_MIN:
    raise DataError(f"uid {uid}: must be in [0, {RANDOM_SEED_MIN}) "
                    f"(larger values are reserved for random seeds, gauntlet.md §2.2)")
  _check(window, cfg.pages_per_window, n_pages)
  return _draw(philox_key(PAGES_TAG, cfg.seed, uid, window), cfg.pages_per_window, n_pages)


def pages_for(uids, window: int, cfg, n_pages: int) -> np.ndarray:
  """int64[P, pages_per_window]: `pages` for each uid of a peer axis."""
  uids = np.asarray(uids, np.int64).reshape(-1)
  if uids.size == 0:
    return np.zeros((0, cfg.pages_per_window), np.int64)
  return np.stack([pages(int(u), window, cfg, n_pages) for u in uids])


def random_seed(window: int, seed: int, salt: int = 0) -> int:
  """The validators' non-uid seed for `window`, in [1000, 10^7] (gauntlet.md §2.2)."""
  h = int.from_bytes(hashlib.sha256(RANDOM_TAG + _pack(seed, window, salt)).digest()[:8], "little")
  return RANDOM_SEED_MIN + h % (RANDOM_SEED_MAX - RANDOM_SEED_MIN + 1)


def random_pages(window: int, cfg, n_pages: int, salt: int = 0) -> np.ndarray:
  """int64[pages_per_window]: shared random evaluation pages R_window (gauntlet.md §9.1)."""
  _check(window, cfg.pages_per_window, n_pages)
  who = random_seed(window, cfg.seed, salt)
  return _draw(philox_key(PAGES_TAG, cfg.seed, who, window), cfg.pages_per_window, n_pages)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """int64[n]: the order of training sequences in `epoch` (a pure function of its args)."""
  raw = np.random.Philox(key=philox_key(TRAIN_TAG, seed, epoch, 0)).random_raw(n)
  return np.argsort(raw, kind="stable").astype(np.int64)
