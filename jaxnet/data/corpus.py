"""Packed sequences, train/validation split, pages and batches over one token stream.

Packing (gauntlet.md §2.2): the stream is already `doc EOS doc EOS ...`; training sequence
j is the L + 1 tokens stream[j*L : j*L + L + 1] (L = data.seq_len), so consecutive
sequences share one boundary token and every stream token is a target exactly once.

Split: of the S = (N - 1) // L sequences of an N-token stream, the last
ceil(val_fraction * S) are held out. Validation sequence i starts at n_train*L + 1 + i*L,
one token past the end of the last training sequence, so no token is shared.

Pages: page p is training sequences [p*page_size, (p+1)*page_size); the trailing
n_train mod page_size sequences are in no page (they are still used by `train_batches`).
"""
from __future__ import annotations

import math

import numpy as np

from jaxnet.data import pages as pg
from jaxnet.data.embedded import default_shards
from jaxnet.data.errors import DataError
from jaxnet.data.shards import TokenStream, check_tokenizer, open_shards
from jaxnet.data.tokenizer import load_tokenizer


def loss_mask(targets: np.ndarray, eos_id: int) -> np.ndarray:
  """float32 mask, 0 where the target is EOS (= pad, gauntlet.md §2.2), else 1."""
  return (np.asarray(targets) != eos_id).astype(np.float32)


def make_batch(tokens_BxL1: np.ndarray, eos_id: int) -> dict[str, np.ndarray]:
  """[B, L+1] tokens -> {'inputs', 'targets': int32[B, L], 'mask': float32[B, L]}."""
  tokens_BxL1 = np.asarray(tokens_BxL1, np.int32)
  targets_BxL = tokens_BxL1[:, 1:]
  return {"inputs": tokens_BxL1[:, :-1], "targets": targets_BxL,
          "mask": loss_mask(targets_BxL, eos_id)}


class Corpus:
  """A token stream seen through `DataConfig`: sequences, pages, train and val batches."""

  def __init__(self, stream: TokenStream, tokenizer, cfg):
    self.stream, self.tokenizer, self.cfg = stream, tokenizer, cfg
    # Shard ids are verified < the vocab in their meta.json, while the model is sized by
    # `tokenizer.vocab_size`: both must be the same tokenizer.
    check_tokenizer(stream.tokenizer, tokenizer, stream.directory / "meta.json")
    self.seq_len, self.page_size = cfg.seq_len, cfg.page_size
    n_seq = (stream.n_tokens - 1) // cfg.seq_len
    n_held = math.ceil(cfg.val_fraction * n_seq)
    self.n_train = n_seq - n_held
    self.val_start = self.n_train * cfg.seq_len + 1
    self.n_val = max(0, (stream.n_tokens - self.val_start - 1) // cfg.seq_len) if n_held else 0
    self.n_pages = self.n_train // cfg.page_size
    where = stream.directory
    if n_held and self.n_val == 0:
      raise DataError(f"{where}: {stream.n_tokens} tokens leave no validation sequence "
                      f"of seq_len={cfg.seq_len}")
    if self.n_pages < cfg.pages_per_window:
      raise DataError(f"{where}: {self.n_train} training sequences make {self.n_pages} pages of "
                      f"{cfg.page_size}, fewer than pages_per_window={cfg.pages_per_window}")
    self._perms: dict[int, np.ndarray] = {}

  @property
  def eos_id(self) -> int:
    return self.tokenizer.eos_id

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  @property
  def n_tokens(self) -> int:
    return self.stream.n_tokens

  def __repr__(self) -> str:
    return (f"Corpus({self.stream.directory}, tokens={self.n_tokens}, train_seqs={self.n_train}, "
            f"val_seqs={self.n_val}, pages={self.n_pages}, seq_len={self.seq_len})")

  # ------------------------------------------------------------------ sequences, batches

  def sequences(self, seq_ids) -> np.ndarray:
    """int32[n, L+1] training sequences by id (0 <= id < n_train)."""
    ids = np.asarray(seq_ids, np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= self.n_train):
      raise DataError(f"sequence ids must be in [0, {self.n_train}), got "
                      f"[{ids.min()}, {ids.max()}]")
    return self.stream.gather(ids * self.seq_len, self.seq_len + 1)

  def batch(self, seq_ids) -> dict[str, np.ndarray]:
    return make_batch(self.sequences(seq_ids), self.eos_id)

  # ------------------------------------------------------------------ pages (§2.2)

  def pages(self, uid: int, window: int) -> np.ndarray:
    """int64[pages_per_window]: peer `uid`'s pages in round `window` (see pages.py)."""
    return pg.pages(uid, window, self.cfg, self.n_pages)

  def random_pages(self, window: int, salt: int = 0) -> np.ndarray:
    """int64[pages_per_window]: the round's shared random pages (gauntlet.md §9.1)."""
    return pg.random_pages(window, self.cfg, self.n_pages, salt)

  def page_sequences(self, page_ids) -> np.ndarray:
    """int64[len(page_ids) * page_size]: sequence ids of the pages, page-major."""
    p = np.asarray(page_ids, np.int64).reshape(-1)
    if p.size and (p.min() < 0 or p.max() >= self.n_pages):
      raise DataError(f"page ids must be in [0, {self.n_pages}), got [{p.min()}, {p.max()}]")
    return (p[:, None] * self.page_size + np.arange(self.page_size)).reshape(-1)

  def batch_from_pages(self, page_ids) -> dict[str, np.ndarray]:
    """Batch of shape [len(page_ids) * page_size, L] holding the pages' sequences in order."""
    return self.batch(self.page_sequences(page_ids))

  def peer_batches(self, uids, window: int) -> dict[str, np.ndarray]:
    """Each peer's assigned data, leading peer axis: [P, pages_per_window * page_size, L]."""
    page_ids_PxK = pg.pages_for(uids, window, self.cfg, self.n_pages)
    flat = self.batch_from_pages(page_ids_PxK.reshape(-1))
    n_peer = page_ids_PxK.shape[0]
    return {k: v.reshape(n_peer, -1, self.seq_len) for k, v in flat.items()}

  # ------------------------------------------------------------------ centralised baseline

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) >= 2:        # steps move forward: keep this epoch and the last
        self._perms.pop(min(self._perms))
      self._perms[epoch] = pg.epoch_permutation(self.cfg.seed, epoch, self.n_train)
    return self._perms[epoch]

  def train_seq_ids(self, step: int, batch_size: int) -> np.ndarray:
    """int64[batch_size]: sequence ids of `step`, positions [step*B, (step+1)*B) of the
    endless stream that concatenates one seeded permutation per epoch (pure in step)."""
    if step < 0 or batch_size <= 0:
      raise DataError(f"train batch: step {step} must be >= 0 and batch_size {batch_size} > 0")
    pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epoch, within = np.divmod(pos, self.n_train)
    out = np.empty(batch_size, np.int64)
    for e in np.unique(epoch):
      sel = epoch == e
      out[sel] = self._perm(int(e))[within[sel]]
    return out

  def train_batches(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """The training batch of `step` ([batch_size, L]); same step, same data (resume-safe)."""
    return self.batch(self.train_seq_ids(step, batch_size))

  def held_out(self) -> dict[str, np.ndarray]:
    """The held-out batch every mode reports `val_loss` on: the first `data.val_sequences`
    held-out sequences (all of them when the tail holds fewer), so that centralised,
    decentralised and network runs of one corpus are compared on the same tokens."""
    return self.val_batch(min(self.cfg.val_sequences, self.n_val))

  def val_batch(self, n: int | None = None) -> dict[str, np.ndarray]:
    """The first `n` (default all) held-out sequences, [n, L], in stream order."""
    n = self.n_val if n is None else n
    if not 0 < n <= self.n_val:
      raise DataError(f"val_batch({n}): the corpus holds {self.n_val} validation sequences "
                      f"(data.val_fraction={self.cfg.val_fraction})")
    starts = self.val_start + np.arange(n, dtype=np.int64) * self.seq_len
    return make_batch(self.stream.gather(starts, self.seq_len + 1), self.eos_id)


def batch_from_pages(corpus: Corpus, page_ids) -> dict[str, np.ndarray]:
  """Functional form of `Corpus.batch_from_pages`."""
  return corpus.batch_from_pages(page_ids)


def load_corpus(cfg) -> Corpus:
  """The corpus `DataConfig` names: its tokenizer, and `shards` (or the embedded KJV)."""
  tokenizer = load_tokenizer(cfg.tokenizer)
  directory = cfg.shards or default_shards(tokenizer)
  return Corpus(open_shards(directory, tokenizer), tokenizer, cfg)
