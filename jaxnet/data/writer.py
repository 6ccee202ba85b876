"""Writing token shards (the layout is in shards.py): documents in, `.bin` files + meta.json out.

Documents (formats.py reads JSONL and Parquet too): every text file is split on the ASCII
record separator U+001E (`DOC_SEP`); a file without one is one document. Surrounding
newlines are stripped and empty documents dropped. Files are read `_READ_CHUNK` bytes at a
time, so only the current document is held, never the whole file.
Each document is followed by EOS, so the stream is `doc0 EOS doc1 EOS ...` (gauntlet.md §2.2
packing); shards cut the stream at fixed token counts, so a document may span two shards.
`meta.json` is written last: a directory without it is incomplete. Documents are consumed
as a stream (encoded 256 at a time, written once about `_ROW_BUF` tokens are buffered), so
inputs larger than memory work; if reading them fails, the shard files written so far are
removed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from jaxnet.data.errors import DataError
from jaxnet.data.shards import DOC_SEP, FORMAT, META

DEFAULT_SHARD_TOKENS = 1 << 24   # 16 Mi tokens = 32 MiB of uint16 per shard
_ROW_BUF = 1 << 20               # tokens buffered before a write
_READ_CHUNK = 1 << 20            # bytes of a text file read at a time


def split_documents(text: str) -> list[str]:
  """Documents of one file: split on `DOC_SEP`, strip newlines, drop empty ones."""
  docs = (d.strip("\r\n") for d in text.split(DOC_SEP))
  return [d for d in docs if d.strip()]


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class _ShardWriter:
  """Appends token arrays to `shard_NNNNN.bin` files of exactly `shard_tokens` tokens."""

  def __init__(self, out_dir: Path, dtype: np.dtype, shard_tokens: int):
    self.out_dir, self.dtype, self.shard_tokens = out_dir, dtype, shard_tokens
    self.records: list[dict] = []
    self._f = None
    self._hash = None
    self._n = self._max = 0

  def _open(self):
    name = f"shard_{len(self.records):05d}.bin"
    self._f = open(self.out_dir / name, "wb")  # noqa: SIM115 - closed in _close
    self._hash, self._n, self._max = hashlib.sha256(), 0, 0
    self.records.append({"file": name, "n_tokens": 0, "sha256": "", "max_id": 0})

  def _close(self):
    self._f.close()
    self.records[-1].update(n_tokens=self._n, sha256=self._hash.hexdigest(), max_id=self._max)
    self._f = None

  def add(self, ids: np.ndarray) -> None:
    data = np.ascontiguousarray(ids, dtype=self.dtype.newbyteorder("<"))
    while data.size:
      if self._f is None:
        self._open()
      take = min(data.size, self.shard_tokens - self._n)
      chunk = data[:take].tobytes()
      self._f.write(chunk)
      self._hash.update(chunk)
      self._n += take
      self._max = max(self._max, int(data[:take].max()))
      data = data[take:]
      if self._n == self.shard_tokens:
        self._close()

  def finish(self) -> list[dict]:
    if self._f is not None:
      self._close()
    return self.records

  def abort(self) -> None:
    """Closes and deletes every shard file written (inputs failed half-way)."""
    if self._f is not None:
      self._f.close()
      self._f = None
    for rec in self.records:
      (self.out_dir / rec["file"]).unlink(missing_ok=True)


def write_shards(documents: Iterable[str], out_dir: str | Path, tokenizer, *,
                 shard_tokens: int = DEFAULT_SHARD_TOKENS, sources: Sequence[str] = (),
                 overwrite: bool = False, extra_meta: Callable[[], dict] | None = None) -> Path:
  """Tokenizes `documents` (EOS after each) into shards + meta.json under `out_dir`.

  `documents` may be any iterable, read once and lazily. `extra_meta`, called once they are
  consumed, gives keys added to meta.json (the row counts of `formats.Inputs.meta`).
  """
  if shard_tokens <= 0:
    raise DataError(f"shard_tokens {shard_tokens}: must be positive")
  out = Path(out_dir)
  if (out / META).exists() and not overwrite:
    raise DataError(f"{out / META}: already exists (pass overwrite=True / --force)")
  out.mkdir(parents=True, exist_ok=True)
  for old in out.glob("shard_*.bin"):
    old.unlink()
  (out / META).unlink(missing_ok=True)
  dtype = token_dtype(tokenizer.vocab_size)
  eos = np.asarray([tokenizer.eos_id], np.int64)
  writer = _ShardWriter(out, dtype, shard_tokens)
  n_docs = n_tokens = 0
  buf: list[np.ndarray] = []
  buffered = 0

  def flush():
    nonlocal buf, buffered
    if buf:
      writer.add(np.concatenate(buf))
    buf, buffered = [], 0

  batch: list[str] = []

  def encode_pending():
    nonlocal n_docs, n_tokens, buffered
    for ids in tokenizer.encode_batch(batch):
      if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        raise DataError(f"{out}: tokenizer produced id {int(ids.max())} outside "
                        f"[0, {tokenizer.vocab_size})")
      buf.extend((ids, eos))
      buffered += ids.size + 1
      n_docs += 1
      n_tokens += ids.size + 1
    batch.clear()
    if buffered >= _ROW_BUF:
      flush()

  try:
    for doc in documents:
      batch.append(doc)
      if len(batch) >= 256:        # encode_batch amortises the BPE call overhead
        encode_pending()
    encode_pending()
    flush()
  except BaseException:
    writer.abort()                 # no half-written directory that looks like shards
    raise
  if n_tokens == 0:
    raise DataError(f"{out}: no documents to write (inputs are empty)")
  meta = {"format": FORMAT, "tokenizer": tokenizer.fingerprint(), "dtype": dtype.name,
          "n_tokens": n_tokens, "n_documents": n_docs, "shards": writer.finish(),
          "sources": list(sources)}
  if extra_meta is not None:
    meta.update(extra_meta())
  tmp = out / (META + ".tmp")
  tmp.write_text(json.dumps(meta, indent=1))
  os.replace(tmp, out / META)      # meta.json appears only once every shard is complete
  return out


def _raw_documents(f) -> Iterable[tuple[int, bytes]]:
  """(file offset, bytes) of each piece between `DOC_SEP`s, read `_READ_CHUNK` at a time."""
  sep = DOC_SEP.encode()         # one byte that never occurs inside a multi-byte character
  held: list[bytes] = []         # the current piece so far: joined once, never re-copied
  offset = 0
  while chunk := f.read(_READ_CHUNK):
    *done, rest = chunk.split(sep)
    for part in done:
      piece = b"".join(held + [part])
      yield offset, piece
      offset += len(piece) + len(sep)
      held = []
    held.append(rest)
  yield offset, b"".join(held)


def read_documents(paths: Sequence[str | Path]) -> Iterable[str]:
  """Documents of UTF-8 text files, in order: exactly `split_documents` of each file's text,
  but streamed, holding one document at a time rather than the file."""
  for p in map(Path, paths):
    if not p.is_file():
      raise DataError(f"{p}: input text file not found")
    with open(p, "rb") as f:
      for offset, raw in _raw_documents(f):
        try:
          doc = raw.decode("utf-8").strip("\r\n")
        except UnicodeDecodeError as e:
          raise DataError(f"{p}: not UTF-8 text (byte {offset + e.start})") from None
        if doc and not doc.isspace():
          yield doc


def prepare_shards(paths: Sequence[str | Path], out_dir: str | Path, tokenizer, *,
                   shard_tokens: int = DEFAULT_SHARD_TOKENS, overwrite: bool = False,
                   text_field: str = "text") -> Path:
  """Tokenizes input files into a shard directory: UTF-8 text (documents split on
  `DOC_SEP`), or JSONL / Parquet rows' `text_field` (by suffix, see formats.py)."""
  from jaxnet.data.formats import Inputs   # formats imports this module
  if not paths:
    raise DataError("prepare_shards: no input files")
  inputs = Inputs(paths, text_field)
  return write_shards(inputs, out_dir, tokenizer, shard_tokens=shard_tokens,
                      sources=inputs.sources, overwrite=overwrite, extra_meta=inputs.meta)
