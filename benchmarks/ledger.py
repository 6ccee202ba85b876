"""Yuma epoch speed: jitted JAX against a straightforward NumPy epoch, plus vmapped scenarios.

Both sides compute the same epoch (spec §2.1, float32, `jaxnet.ledger.reference.epoch_numpy`
is vectorised NumPy with an argsort median); outputs are checked equal before any timing.
Runs are interleaved (JAX, NumPy, JAX, ...) so machine load hits both sides alike; the
median of the repeats is reported, with the minimum beside it.

  python benchmarks/ledger.py [--out results/bench/ledger.json] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.ledger import YumaConfig, epoch_core
from jaxnet.ledger.reference import epoch_numpy

CONFIGS = {"yuma2": YumaConfig(), "yuma2_sort_median": YumaConfig(median="sort"),
           "yuma3_liquid": YumaConfig(yuma3=True, liquid_alpha=True)}


def make_inputs(V, M, seed=0, density=0.9):
  """Validators score miner quality q_j with noise and skip ~10% of miners, so medians are
  non-trivial (a sparse random W would put most medians at 0 and clip everything)."""
  rng = np.random.default_rng(seed)
  q = rng.lognormal(0, 1, M)
  W = (q[None, :] * rng.uniform(0.5, 1.5, (V, M)) * (rng.random((V, M)) < density))
  S = rng.lognormal(0, 1, V).astype(np.float32)
  B = (rng.random((V, M)) * (rng.random((V, M)) < density)).astype(np.float32)
  return W.astype(np.float32), S, B


def check_equal(jax_out, ref, what):
  for k, v in ref.items():
    got = np.asarray(getattr(jax_out, k), np.float64)
    if not np.allclose(got, v.astype(np.float64), atol=1e-5, rtol=1e-4):
      raise SystemExit(f"{what}: JAX and NumPy disagree on {k} "
                       f"(max diff {np.max(np.abs(got - v)):.3g}); not timing")


def timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def bench_epoch(V, M, name, p, repeats):
  W, S, B = make_inputs(V, M)
  f = jax.jit(epoch_core, static_argnums=3)
  Wj, Sj, Bj = map(jnp.asarray, (W, S, B))
  t_compile = timed(lambda: jax.block_until_ready(f(Wj, Sj, Bj, p)))
  check_equal(f(Wj, Sj, Bj, p), epoch_numpy(W, S, B, p, dtype=np.float32), f"{name} {V}x{M}")
  tj, tn = [], []
  for _ in range(repeats):
    tj.append(timed(lambda: jax.block_until_ready(f(Wj, Sj, Bj, p))))
    tn.append(timed(lambda: epoch_numpy(W, S, B, p, dtype=np.float32)))
  row = {"size": f"{V}x{M}", "config": name, "jax_ms": 1e3 * statistics.median(tj),
         "jax_min_ms": 1e3 * min(tj), "numpy_ms": 1e3 * statistics.median(tn),
         "numpy_min_ms": 1e3 * min(tn), "compile_s": t_compile}
  row["speedup"] = row["numpy_ms"] / row["jax_ms"]
  return row


def scenario_batch(N, V, M, seed=1):
  """N scenarios: stake draws and coalition sizes (a coalition weights only its miners)."""
  rng = np.random.default_rng(seed)
  W = np.zeros((N, V, M), np.float32)
  S = rng.lognormal(0, 0.3, (N, V)).astype(np.float32)
  n_coal = rng.integers(1, V // 2, N)
  m_coal = M // 4
  base = rng.random((V, M)).astype(np.float32)
  for b in range(N):
    W[b] = base * rng.uniform(0.8, 1.2, (V, M))
    W[b, :, M - m_coal:] = 0
    W[b, V - n_coal[b]:] = 0
    W[b, V - n_coal[b]:, M - m_coal:] = 1
  return W, S


def bench_scenarios(N, V, M, p, repeats):
  """Scenarios per second: one jitted `vmap` over N scenarios, `lax.map` (sequential inside
  one jit; jax.md §6.6 finds it faster than vmap on CPU), and a NumPy loop."""
  W, S = scenario_batch(N, V, M)
  one = lambda w, s: epoch_core(w, s, None, p)  # noqa: E731
  f_vmap = jax.jit(jax.vmap(one))
  f_map = jax.jit(lambda W, S: jax.lax.map(lambda x: one(*x), (W, S)))
  Wj, Sj = jnp.asarray(W), jnp.asarray(S)
  t_compile = timed(lambda: jax.block_until_ready(f_vmap(Wj, Sj)))
  jax.block_until_ready(f_map(Wj, Sj))
  out, out_map = f_vmap(Wj, Sj), f_map(Wj, Sj)
  for b in (0, N // 2, N - 1):
    ref = epoch_numpy(W[b], S[b], None, p, dtype=np.float32)
    check_equal(jax.tree.map(lambda x: x[b], out), ref, f"vmap scenario {b}")
    check_equal(jax.tree.map(lambda x: x[b], out_map), ref, f"lax.map scenario {b}")
  tv, tm, tn = [], [], []
  for _ in range(repeats):
    tv.append(timed(lambda: jax.block_until_ready(f_vmap(Wj, Sj))))
    tm.append(timed(lambda: jax.block_until_ready(f_map(Wj, Sj))))
    tn.append(timed(lambda: [epoch_numpy(W[b], S[b], None, p, dtype=np.float32)
                             for b in range(N)]))
  row = {"size": f"{V}x{M}", "scenarios": N, "jax_vmap_per_s": N / statistics.median(tv),
         "jax_lax_map_per_s": N / statistics.median(tm),
         "numpy_loop_per_s": N / statistics.median(tn), "vmap_compile_s": t_compile}
  row["vmap_speedup"] = row["jax_vmap_per_s"] / row["numpy_loop_per_s"]
  row["lax_map_speedup"] = row["jax_lax_map_per_s"] / row["numpy_loop_per_s"]
  return row


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="results/bench/ledger.json")
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--sizes", default="64x256,256x4096")
  ap.add_argument("--scenarios", type=int, default=256)
  args = ap.parse_args(argv)
  rows = []
  print(f"{'size':>9} {'config':>18} {'jax ms':>9} {'numpy ms':>9} {'speedup':>8}")
  for size in args.sizes.split(","):
    V, M = (int(x) for x in size.split("x"))
    for name, p in CONFIGS.items():
      r = bench_epoch(V, M, name, p, args.repeats)
      rows.append(r)
      print(f"{r['size']:>9} {name:>18} {r['jax_ms']:9.2f} {r['numpy_ms']:9.2f} "
            f"{r['speedup']:7.1f}x")
  scen = bench_scenarios(args.scenarios, 64, 256, CONFIGS["yuma2"], max(3, args.repeats // 2))
  print(f"{scen['scenarios']} scenarios at {scen['size']}: vmap {scen['jax_vmap_per_s']:.0f}/s "
        f"({scen['vmap_speedup']:.1f}x), lax.map {scen['jax_lax_map_per_s']:.0f}/s "
        f"({scen['lax_map_speedup']:.1f}x), NumPy loop {scen['numpy_loop_per_s']:.0f}/s")
  result = {"benchmark": "ledger_epoch", "epoch": rows, "scenarios": scen,
            "jax": jax.__version__, "numpy": np.__version__, "device": str(jax.devices()[0]),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "note": "median of interleaved repeats; float32 both sides; outputs checked equal"}
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
