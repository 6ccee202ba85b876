"""Copy detection over all pairs of P peers: jaxnet's sketches against exact index overlap.

Issue 12: templar's detector compares the top-k index sets of every pair of peers exactly
(`jaxnet.gauntlet.overlap.index_overlap`, P^2 x chunks x k lookups); at P = 256 on the
150m layout that is minutes per round on 2 CPU cores. jaxnet's detector
(`jaxnet.gauntlet.copies`) samples `copy_sample_chunks` chunks from the round key and
count-sketches them (value cosines) and hashes them (shared index-and-sign chunks), so its
cost is O(P x sample x k) plus a [P, buckets] x [buckets, P] product.

Measured in one process on the same synthetic round (DeMo format of the config's layout;
uid 1 is an exact copy of uid 0 and uid 2 re-randomises 10 % of uid 3's chunks, so the
flags are checked as well as timed):
  (a) jaxnet's detector at P peers, jitted, best of `--reps` after a warm-up;
  (b) the exact all-pairs index overlap on the first `--exact-peers` peers, scaled by
      (P / exact_peers)^2 to P peers (its cost is quadratic in P; running it at P = 256 on
      the 150m layout takes minutes, which is the point);
  (c) the ceiling: host memory bandwidth (a numpy copy of a 1 GiB buffer, best of 3), as
      the share of it that (a) reaches reading the submissions once.
Output: a table and JSON (`--out`).

  python benchmarks/copy_detection.py [--config configs/150m.yaml] [--peers 256]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import model as jmodel, schemes
from jaxnet.config import load_config
from jaxnet.gauntlet import copies, overlap


def synthetic_round(layout, p: int, rng) -> tuple:
  """Stacked random submissions [P, ...] of the layout's shapes and dtypes (host numpy)."""
  abstract = layout.abstract()
  chunk_len = {t.name: t.chunk_len for t in layout.tensors}
  fields = {}
  for f in ("idx", "val", "qmean", "qscale", "qlut"):
    out = {}
    for name, s in getattr(abstract, f).items():
      shape, dtype = (p,) + tuple(s.shape), np.dtype(s.dtype)
      if f == "idx":
        out[name] = rng.integers(0, chunk_len[name], shape).astype(dtype)
      elif dtype.kind in "ui":
        out[name] = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
      else:
        out[name] = (rng.standard_normal(shape) * 1e-3).astype(dtype)
    fields[f] = out
  sub = abstract._replace(**fields, uid=np.arange(p, dtype=np.int32),
                          window=np.zeros(p, np.int32),
                          pages=np.zeros((p,) + tuple(abstract.pages.shape), np.int32))
  # uid 1 copies uid 0; uid 2 copies uid 3 but replaces 10 % of its chunks
  for f in ("idx", "val"):
    for name, x in getattr(sub, f).items():
      x[1] = x[0]
      rows = x[3].reshape(-1, x.shape[-1]).copy()
      keep = rng.random(rows.shape[0]) >= 0.1
      fresh = x[2].reshape(-1, x.shape[-1])
      x[2] = np.where(keep[:, None], rows, fresh).reshape(x[2].shape)
  for f in ("qmean", "qscale", "qlut"):
    for name, x in getattr(sub, f).items():
      x[1] = x[0]
      x[2] = x[3]
  return sub


def bandwidth_gbs() -> float:
  a = np.ones(1 << 28, np.float32)   # 1 GiB
  b = np.empty_like(a)
  best = min(_timed(lambda: np.copyto(b, a)) for _ in range(3))
  return 2 * a.nbytes / best / 1e9   # read + write


def _timed(fn) -> float:
  t = time.perf_counter()
  out = fn()
  jax.block_until_ready(out) if out is not None else None
  return time.perf_counter() - t


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/150m.yaml")
  ap.add_argument("--peers", type=int, default=256)
  ap.add_argument("--exact-peers", type=int, default=16)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default="results/bench/copy_detection.json")
  args, overrides = ap.parse_known_args(argv)
  cfg = load_config(args.config, overrides)
  g = cfg.gauntlet
  scheme = schemes.get(cfg)
  layout = scheme.make_layout(jmodel.abstract_params(cfg.model), n_pages=cfg.data.pages_per_window)
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  sub = synthetic_round(layout, args.peers, rng)
  nbytes = sum(x.nbytes for x in jax.tree.leaves(sub))
  print(f"{args.peers} synthetic {cfg.scheme} submissions of the {Path(args.config).stem} "
        f"layout: {nbytes / 1e9:.2f} GB ({time.perf_counter() - t0:.0f} s to build)")
  subs = jax.device_put(sub)

  @jax.jit
  def detect(subs, key):
    sk, codes = copies.sketches(subs, scheme, layout, key, g.copy_sample_chunks,
                                g.copy_sketch_buckets)
    cos, nonzero = copies.cosines(sk)
    share = copies.identical_shares(codes)
    flag = copies.flag_pairs(copies.pair_distances(cos, "values"), share, nonzero,
                             g.overlap_ratio, g.copy_share_ratio)
    return flag, cos, share

  key = jax.random.key(7)
  compile_s = _timed(lambda: detect(subs, key))
  ours = min(_timed(lambda: detect(subs, key)) for _ in range(args.reps))
  flag, cos, share = (np.asarray(x) for x in detect(subs, key))
  want = {(0, 1), (1, 0), (2, 3), (3, 2)}
  got = {(int(a), int(b)) for a, b in zip(*np.nonzero(flag))}
  print(f"flagged pairs {sorted(got)[:8]}{' ...' if len(got) > 8 else ''} "
        f"(expected {sorted(want)}): {'ok' if got == want else 'MISMATCH'}")

  q = args.exact_peers
  small = jax.tree.map(lambda x: x[:q], subs)
  chunk_lens = {t.name: t.chunk_len for t in layout.tensors}

  @jax.jit
  def exact(subs):
    idx = jax.vmap(lambda s: scheme.indices(s, layout))(subs)
    return overlap.index_overlap(idx, chunk_lens, g.overlap_size_weight)

  _timed(lambda: exact(small))
  exact_s = min(_timed(lambda: exact(small)) for _ in range(max(1, args.reps - 1)))
  exact_at_p = exact_s * (args.peers / q) ** 2
  bw = bandwidth_gbs()
  share_bw = nbytes / ours / 1e9 / bw
  row = {"peers": args.peers, "layout": Path(args.config).stem, "scheme": cfg.scheme,
         "submission_gb": nbytes / 1e9, "sample_chunks": g.copy_sample_chunks,
         "sketch_buckets": g.copy_sketch_buckets, "jaxnet_s": ours, "jaxnet_compile_s": compile_s,
         "exact_index_overlap_s_at_exact_peers": exact_s, "exact_peers": q,
         "exact_index_overlap_s_extrapolated": exact_at_p, "speedup": exact_at_p / ours,
         "memory_bandwidth_gbs": bw, "share_of_bandwidth": share_bw,
         "flags_ok": got == want, "copy_cosine": float(cos[0, 1]),
         "partial_copy_shared_chunks": float(max(share[2, 3], share[3, 2]))}
  print(f"{'method':<52} {'s / round':>10}")
  print(f"{'(a) jaxnet sketches, ' + str(args.peers) + ' peers':<52} {ours:>10.2f}")
  print(f"{'(b) exact index overlap, ' + str(q) + ' peers':<52} {exact_s:>10.2f}")
  print(f"{'(b) scaled to ' + str(args.peers) + ' peers (x (P/' + str(q) + ')^2)':<52} "
        f"{exact_at_p:>10.1f}")
  print(f"speed-up (b)/(a): {exact_at_p / ours:.0f}x; (a) reads the submissions at "
        f"{nbytes / ours / 1e9:.2f} GB/s = {100 * share_bw:.1f} % of the host's "
        f"{bw:.1f} GB/s copy bandwidth")
  result = {"benchmark": "copy_detection", "jax": jax.__version__,
            "python": platform.python_version(), "device": str(jax.devices()[0]),
            "cpu_count": os.cpu_count(), "reps": args.reps, "rows": [row]}
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
