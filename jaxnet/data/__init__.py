"""Offline data layer: tokenizers, embedded corpus, memmapped token shards, deterministic pages.

Batch format (every batch this package returns; NumPy host arrays, the trainer places them):

  batch["inputs"]   int32[B, L]    tokens t_0 .. t_{L-1} of a packed sequence
  batch["targets"]  int32[B, L]    tokens t_1 .. t_L (next-token targets; no shift needed)
  batch["mask"]     float32[B, L]  1.0 where the target is not EOS, else 0.0

EOS is also pad (gauntlet.md §2.1, §2.2), so EOS targets are masked out of the loss; the
first token of the next document (whose input is EOS) is still learned. Loss = sum(ce * mask)
/ sum(mask). Peer batches carry a leading peer axis: [P, pages_per_window * page_size, L].

Pieces:
  tokenizer.py  ByteTokenizer (vocab 257, EOS 256), BPETokenizer (tokenizers JSON), train_bpe
  writer.py     prepare_shards / write_shards -> uint16|uint32 .bin + meta.json
  shards.py     the layout; open_shards
                (checks each shard's sha256 and ids < vocab, cached per unchanged file)
  embedded.py   the KJV asset (one document per chapter); default_shards (cached build)
  pages.py      pages(uid, window), random_pages(window, salt), epoch_permutation (pure)
  corpus.py     Corpus: packing, train/val split, batch_from_pages, train_batches, val_batch
  formats.py    input files by suffix: UTF-8 text, JSONL (.jsonl, .jsonl.gz), Parquet (pyarrow,
                lazily); streamed with bounded memory; rows with empty text skipped, counted
  prepare.py    prepare_main(argv): `jaxnet data prepare`
"""
from jaxnet.data.corpus import Corpus, batch_from_pages, load_corpus, loss_mask, make_batch
from jaxnet.data.embedded import cache_dir, default_shards, embedded_documents
from jaxnet.data.errors import DataError
from jaxnet.data.pages import (RANDOM_SEED_MAX, RANDOM_SEED_MIN, epoch_permutation, pages,
                               pages_for, random_pages, random_seed)
from jaxnet.data.prepare import prepare_main
from jaxnet.data.shards import DOC_SEP, TokenStream, open_shards
from jaxnet.data.writer import prepare_shards, split_documents, write_shards
from jaxnet.data.tokenizer import (BYTE_EOS, BYTE_VOCAB, BPETokenizer, ByteTokenizer,
                                   load_tokenizer, train_bpe)

__all__ = [
    "BYTE_EOS", "BYTE_VOCAB", "BPETokenizer", "ByteTokenizer", "Corpus", "DOC_SEP", "DataError",
    "RANDOM_SEED_MAX", "RANDOM_SEED_MIN", "TokenStream", "batch_from_pages", "cache_dir",
    "default_shards", "embedded_documents", "epoch_permutation", "load_corpus",
    "load_tokenizer", "loss_mask", "make_batch", "open_shards", "pages", "pages_for",
    "prepare_main", "prepare_shards", "random_pages", "random_seed", "split_documents",
    "train_bpe", "write_shards",
]
