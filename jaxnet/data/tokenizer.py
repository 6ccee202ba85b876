"""Offline tokenizers: bytes, or a byte-level BPE from a local `tokenizers` JSON (jax.md §6.8).

No hub access at run time: the byte tokenizer needs nothing, and a BPE tokenizer is a JSON
file trained locally with `train_bpe` (tokenizers 0.23 trains one on the KJV in < 1 s).
`tokenizers` is optional and imported only when a BPE file is used.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from jaxnet.data.errors import DataError, optional_package

BYTE_VOCAB = 257        # 256 byte values + EOS
BYTE_EOS = 256          # EOS doubles as pad, as in the reference run (gauntlet.md §2.1)
BPE_EOS_TOKEN = "<|endoftext|>"
# Special tokens accepted as EOS in a user's tokenizer file, in order of preference.
EOS_NAMES = (BPE_EOS_TOKEN, "</s>", "<eos>", "<|eos|>", "[EOS]")


class Tokenizer(Protocol):
  """What the data layer needs from a tokenizer."""
  vocab_size: int
  eos_id: int

  def encode(self, text: str) -> np.ndarray: ...
  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...
  def decode(self, ids: Iterable[int]) -> str: ...
  def fingerprint(self) -> dict: ...


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255; id 256 is EOS (and pad). Vocabulary 257."""
  vocab_size = BYTE_VOCAB
  eos_id = BYTE_EOS

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, np.int64).ravel()
    # EOS/pad carries no text; a split multi-byte character decodes to U+FFFD, never raises.
    return arr[(arr >= 0) & (arr < 256)].astype(np.uint8).tobytes().decode("utf-8", "replace")

  def fingerprint(self) -> dict:
    return {"kind": "byte", "vocab_size": self.vocab_size, "eos_id": self.eos_id}

  def __repr__(self) -> str:
    return "ByteTokenizer()"


class BPETokenizer:
  """A `tokenizers` JSON file (byte-level BPE or any other model); EOS read from the file."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    if not self.path.is_file():
      raise DataError(f"{self.path}: tokenizer file not found")
    tk = optional_package("tokenizers", f"{self.path}:", "pip install tokenizers")
    raw = self.path.read_bytes()
    try:
      self._tok = tk.Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception subclasses
      raise DataError(f"{self.path}: not a tokenizers JSON file ({str(e).splitlines()[0]})") from None
    self.sha256 = hashlib.sha256(raw).hexdigest()
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    eos = next((self._tok.token_to_id(n) for n in EOS_NAMES
                if self._tok.token_to_id(n) is not None), None)
    if eos is None:
      raise DataError(f"{self.path}: no EOS special token (looked for {', '.join(EOS_NAMES)})")
    self.eos_id = int(eos)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int64)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int64) for e in encs]

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def fingerprint(self) -> dict:
    # The file's hash, not its path, identifies it: shards stay valid if the file moves.
    return {"kind": "bpe", "vocab_size": self.vocab_size, "eos_id": self.eos_id,
            "sha256": self.sha256, "file": self.path.name}

  def __repr__(self) -> str:
    return f"BPETokenizer({str(self.path)!r}, vocab={self.vocab_size}, eos={self.eos_id})"


def load_tokenizer(spec: str) -> ByteTokenizer | BPETokenizer:
  """`DataConfig.tokenizer`: "byte" or a path to a `tokenizers` JSON file."""
  if spec == "byte":
    return ByteTokenizer()
  return BPETokenizer(spec)


def train_bpe(texts: Iterable[str], vocab_size: int, path: str | Path,
              min_frequency: int = 2) -> BPETokenizer:
  """Trains a byte-level BPE locally (jax.md §6.8), saves the JSON to `path`, returns it.

  `<|endoftext|>` is the only special token, so it gets id 0 and is the EOS/pad.
  Byte-level pre-tokenisation without a prefix space makes `decode(encode(s)) == s`.
  `min_frequency = 2` as measured in jax.md §6.8 (16384 asked, 15,227 reached on the KJV).
  """
  if vocab_size < 257 + 1:
    raise DataError(f"bpe vocab_size {vocab_size}: must exceed 257 (256 bytes + EOS)")
  tk = optional_package("tokenizers", "train_bpe:", "pip install tokenizers")
  from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
  tok = tk.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=[BPE_EOS_TOKEN], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tok.save(str(path))
  return BPETokenizer(path)
