"""Token shards on disk: one EOS-separated token stream, cut into `.bin` files, read by memmap.

Layout of a shard directory (written by `write_shards` / `prepare_shards`):

  shard_00000.bin ...  raw little-endian token ids, uint16 (uint32 if vocab > 65535)
  meta.json            {"format", "tokenizer" (fingerprint), "dtype", "n_tokens",
                        "n_documents", "shards": [{"file", "n_tokens", "sha256"}], "sources"}

Documents: every input file is split on the ASCII record separator U+001E (`DOC_SEP`); a file
without one is one document. Surrounding newlines are stripped and empty documents dropped.
Each document is followed by EOS, so the stream is `doc0 EOS doc1 EOS ...` (gauntlet.md §2.2
packing); shards cut the stream at fixed token counts, so a document may span two shards.
`meta.json` is written last: a directory without it is incomplete.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from jaxnet.data.errors import DataError

DOC_SEP = "\x1e"                 # ASCII RS: the document delimiter in files and the embedded corpus
META = "meta.json"
FORMAT = "jaxnet-shards/1"
DEFAULT_SHARD_TOKENS = 1 << 24   # 16 Mi tokens = 32 MiB of uint16 per shard
_ROW_BUF = 1 << 20               # tokens buffered before a write


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
    self._n = 0

  def _open(self):
    name = f"shard_{len(self.records):05d}.bin"
    self._f = open(self.out_dir / name, "wb")  # noqa: SIM115 - closed in _close
    self._hash, self._n = hashlib.sha256(), 0
    self.records.append({"file": name, "n_tokens": 0, "sha256": ""})

  def _close(self):
    self._f.close()
    self.records[-1].update(n_tokens=self._n, sha256=self._hash.hexdigest())
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
      data = data[take:]
      if self._n == self.shard_tokens:
        self._close()

  def finish(self) -> list[dict]:
    if self._f is not None:
      self._close()
    return self.records


def write_shards(documents: Iterable[str], out_dir: str | Path, tokenizer, *,
                 shard_tokens: int = DEFAULT_SHARD_TOKENS, sources: Sequence[str] = (),
                 overwrite: bool = False) -> Path:
  """Tokenizes `documents` (EOS after each) into shards + meta.json under `out_dir`."""
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

  for doc in documents:
    batch.append(doc)
    if len(batch) >= 256:          # encode_batch amortises the BPE call overhead
      encode_pending()
  encode_pending()
  flush()
  if n_tokens == 0:
    raise DataError(f"{out}: no documents to write (inputs are empty)")
  meta = {"format": FORMAT, "tokenizer": tokenizer.fingerprint(), "dtype": dtype.name,
          "n_tokens": n_tokens, "n_documents": n_docs, "shards": writer.finish(),
          "sources": list(sources)}
  tmp = out / (META + ".tmp")
  tmp.write_text(json.dumps(meta, indent=1))
  os.replace(tmp, out / META)      # meta.json appears only once every shard is complete
  return out


def read_documents(paths: Sequence[str | Path]) -> Iterable[str]:
  """Documents of UTF-8 text files, in order (see `split_documents`)."""
  for p in map(Path, paths):
    if not p.is_file():
      raise DataError(f"{p}: input text file not found")
    try:
      text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{p}: not UTF-8 text (byte {e.start})") from None
    yield from split_documents(text)


def prepare_shards(paths: Sequence[str | Path], out_dir: str | Path, tokenizer, *,
                   shard_tokens: int = DEFAULT_SHARD_TOKENS, overwrite: bool = False) -> Path:
  """Tokenizes UTF-8 text files (documents split on `DOC_SEP`) into a shard directory."""
  if not paths:
    raise DataError("prepare_shards: no input files")
  return write_shards(read_documents(paths), out_dir, tokenizer, shard_tokens=shard_tokens,
                      sources=[Path(p).name for p in paths], overwrite=overwrite)


class TokenStream:
  """The concatenated token stream of a shard directory (memory-mapped, read-only)."""

  def __init__(self, arrays: list[np.ndarray], meta: dict, directory: Path):
    self.arrays, self.meta, self.directory = arrays, meta, directory
    sizes = np.asarray([a.size for a in arrays], np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(sizes)])   # shard s covers [off[s], off[s+1])
    self.n_tokens = int(self.offsets[-1])
    self.tokenizer = meta["tokenizer"]

  def __len__(self) -> int:
    return self.n_tokens

  def read(self, start: int, length: int) -> np.ndarray:
    """tokens[start:start+length] as int32, across shard boundaries."""
    if start < 0 or start + length > self.n_tokens:
      raise DataError(f"{self.directory}: read [{start}, {start + length}) outside "
                      f"{self.n_tokens} tokens")
    parts, pos, end = [], start, start + length
    s = int(np.searchsorted(self.offsets, start, side="right")) - 1
    while pos < end:
      lo = pos - self.offsets[s]
      hi = min(end, self.offsets[s + 1]) - self.offsets[s]
      parts.append(self.arrays[s][lo:hi])
      pos += hi - lo
      s += 1
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)

  def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
    """Rows tokens[starts[i] : starts[i]+length] -> int32[len(starts), length]."""
    starts = np.asarray(starts, np.int64).reshape(-1)
    if starts.size and (starts.min() < 0 or starts.max() + length > self.n_tokens):
      raise DataError(f"{self.directory}: rows outside the {self.n_tokens}-token stream")
    out = np.empty((starts.size, length), np.int32)
    shard = np.searchsorted(self.offsets, starts, side="right") - 1
    inside = starts + length <= self.offsets[shard + 1]
    cols = np.arange(length, dtype=np.int64)
    for s in np.unique(shard[inside]):       # one fancy-indexed read per shard
      rows = np.nonzero(inside & (shard == s))[0]
      out[rows] = self.arrays[s][(starts[rows] - self.offsets[s])[:, None] + cols]
    for r in np.nonzero(~inside)[0]:          # rare rows that straddle two shards
      out[r] = self.read(int(starts[r]), length)
    return out


def _same_tok(fp: dict) -> dict:
  return {k: v for k, v in fp.items() if k != "file"}   # a moved/renamed file is the same


def _describe(fp: dict) -> str:
  name = fp.get("kind", "?") + (f" {fp['file']} sha256 {str(fp.get('sha256', ''))[:12]}"
                                 if "file" in fp else "")
  return f"{name} (vocab {fp.get('vocab_size')}, eos {fp.get('eos_id')})"


def _fail(path: Path, msg: str):
  raise DataError(f"{path}: {msg}")


def open_shards(directory: str | Path, tokenizer=None, verify: bool = False) -> TokenStream:
  """Memory-maps a shard directory after checking meta.json and file sizes.

  `tokenizer`: if given, its fingerprint must equal the one the shards were written with.
  `verify`: also check every shard's sha256 and that ids are < vocab (reads everything).
  """
  d = Path(directory)
  if not d.is_dir():
    _fail(d, "shard directory not found")
  mpath = d / META
  if not mpath.is_file():
    _fail(mpath, "missing (not a shard directory, or prepare was interrupted)")
  try:
    meta = json.loads(mpath.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    _fail(mpath, f"not valid JSON ({e})")
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    _fail(mpath, f"format is not {FORMAT!r}")
  try:
    dtype = np.dtype(meta["dtype"])
    records = meta["shards"]
    total = int(meta["n_tokens"])
    fp = dict(meta["tokenizer"])
    vocab = int(fp["vocab_size"])
    names = [str(r["file"]) for r in records]
    counts = [int(r["n_tokens"]) for r in records]
    hashes = [str(r["sha256"]) for r in records]
  except (KeyError, TypeError, ValueError) as e:
    _fail(mpath, f"malformed ({type(e).__name__}: {e})")
  if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
    _fail(mpath, f"dtype {dtype} is not uint16 or uint32")
  if not records or sum(counts) != total or min(counts) <= 0:
    _fail(mpath, f"shard token counts {counts} do not add up to n_tokens={total}")
  if tokenizer is not None and _same_tok(tokenizer.fingerprint()) != _same_tok(fp):
    _fail(mpath, f"shards were tokenized with {_describe(fp)}, but the tokenizer given is "
                 f"{_describe(tokenizer.fingerprint())} (set data.tokenizer to match)")
  arrays = []
  for name, count, digest in zip(names, counts, hashes):
    p = d / name
    if Path(name).name != name or not p.is_file():
      _fail(p, "shard file missing")
    want = count * dtype.itemsize
    if p.stat().st_size != want:
      _fail(p, f"size {p.stat().st_size} bytes, meta.json says {want} "
               f"({count} tokens of {dtype.name}); truncated or overwritten")
    if verify and hashlib.sha256(p.read_bytes()).hexdigest() != digest:
      _fail(p, "sha256 does not match meta.json (corrupted)")
    arr = np.memmap(p, dtype=dtype.newbyteorder("<"), mode="r", shape=(count,))
    if verify and int(arr.max()) >= vocab:
      _fail(p, f"token id {int(arr.max())} >= vocab_size {vocab}")
    arrays.append(arr)
  return TokenStream(arrays, meta, d)
