"""`jaxnet data prepare PATH... --out DIR [--tokenizer byte|FILE] [--bpe-vocab N] [--text-field F]`.

PATHs are read by formats.Inputs (text, JSONL, Parquet, by suffix) as a stream."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jaxnet.data.embedded import embedded_documents
from jaxnet.data.errors import DataError
from jaxnet.data.formats import MAX_LINE_BYTES, Inputs
from jaxnet.data.shards import META
from jaxnet.data.writer import DEFAULT_SHARD_TOKENS, write_shards
from jaxnet.data.tokenizer import load_tokenizer, train_bpe


def _parser() -> argparse.ArgumentParser:
  from jaxnet.cli import OneLineArgumentParser   # usage errors in one line, as every command
  p = OneLineArgumentParser(
      prog="jaxnet data prepare",
      description="Tokenize files into memory-mapped token shards, streaming (a file may be "
                  "larger than memory). By suffix: .jsonl / .jsonl.gz (one JSON object per "
                  "line) and .parquet (needs pyarrow: pip install -e '.[data]') give one "
                  "document per row, its --text-field string; rows whose text is empty, "
                  "null or whitespace are skipped and counted in meta.json; a malformed row "
                  "stops with an error naming the file and line. Any other file is UTF-8 "
                  "text split into documents on the ASCII record separator (U+001E); a file "
                  "without one is one document. No PATH: the embedded KJV corpus.")
  p.add_argument("paths", nargs="*", metavar="PATH",
                 help="UTF-8 text, .jsonl, .jsonl.gz or .parquet files")
  p.add_argument("--out", required=True, help="output shard directory")
  p.add_argument("--tokenizer", default="byte",
                 help="'byte' (default) or a tokenizers JSON file")
  p.add_argument("--bpe-vocab", type=int, default=0, metavar="N",
                 help="train a byte-level BPE of N tokens on the inputs, save it as "
                      "OUT/tokenizer.json and use it (needs the 'tokenizers' package)")
  p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS,
                 help=f"tokens per shard file (default {DEFAULT_SHARD_TOKENS})")
  p.add_argument("--text-field", default="text", metavar="NAME",
                 help="JSONL field / Parquet column holding each document's text (default "
                      f"'text', as in FineWeb); a JSONL line may be up to "
                      f"{MAX_LINE_BYTES >> 20} MiB")
  p.add_argument("--force", action="store_true", help="overwrite an existing shard directory")
  return p


def prepare_main(argv: list[str] | None = None) -> int:
  """Runs `jaxnet data prepare`; returns the exit status (2 on a DataError, printed in one line)."""
  args = _parser().parse_args(argv)
  out = Path(args.out)
  try:
    if out.exists() and not out.is_dir():
      raise DataError(f"{out}: --out must be a directory, and this is an existing file")
    if (out / META).exists() and not args.force:
      raise DataError(f"{out / META}: already exists (use --force to overwrite)")
    # Inputs stream from disk, once to train a BPE and once to write the shards.
    inputs = Inputs(args.paths, args.text_field) if args.paths else None
    docs = inputs if inputs is not None else embedded_documents()
    sources = inputs.sources if inputs is not None else ["kjv.txt.xz"]
    if args.bpe_vocab:
      if args.tokenizer != "byte":
        raise DataError("--bpe-vocab trains a new tokenizer: do not also pass --tokenizer")
      tokenizer = train_bpe(docs, args.bpe_vocab, out / "tokenizer.json")
    else:
      tokenizer = load_tokenizer(args.tokenizer)
    write_shards(docs, out, tokenizer, shard_tokens=args.shard_tokens, sources=sources,
                 overwrite=args.force, extra_meta=inputs.meta if inputs is not None else None)
  except DataError as e:
    print(f"jaxnet data prepare: error: {e}", file=sys.stderr)
    return 2
  meta = json.loads((out / META).read_text())
  tok_arg = str(out / "tokenizer.json") if args.bpe_vocab else args.tokenizer
  print(f"wrote {meta['n_tokens']} tokens ({meta['n_documents']} documents, "
        f"{len(meta['shards'])} shard(s), {meta['dtype']}) to {out}")
  if "rows_read" in meta:
    print(f"read {meta['rows_read']} rows (field {meta['text_field']!r}); skipped "
          f"{meta['rows_skipped_empty']} with empty text")
  print(f"use with: --data.shards {out} --data.tokenizer {tok_arg}")
  return 0


if __name__ == "__main__":
  sys.exit(prepare_main())
