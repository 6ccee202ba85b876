"""One market block of N peers in one jitted call against a per-peer Python loop.

The block (`jaxnet.market.block.block_step`): every peer's neighbour queries (each of its K
neighbours encodes its batch), its loss and gradients (with the gradients returned to the
neighbours' encoders), its Adam step, the valuation of every neighbour (the 2020 score and
the exact leave-one-out) and its row of W, plus the alone baseline, for all N peers at
once. What a user would otherwise write: a Python loop over peers calling jitted pieces of
the same computation for one peer at a time (its neighbours' embeddings, its loss and
gradients, its valuations), accumulating the returned gradients, then the same Adam step.
The loop is checked equal to the block first (losses, scores, leave-one-out values).

Ceiling: float32 matmul throughput of this machine measured in the same run (a 2048^3
product, best of 3); the block's share of it uses XLA's own FLOP count of the compiled
block. Output: a table and JSON (`--out`).

  python benchmarks/market.py [--peers 64 256] [--neighbours 6]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet.config import load_config
from jaxnet.market import block as mblock
from jaxnet.market import peers, valuation
from jaxnet.market import run as mrun


def _best(fn, reps: int) -> float:
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


def matmul_gflops(n: int = 2048) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  return 2 * n ** 3 / _best(lambda: f(a), 3) / 1e9


@partial(jax.jit, static_argnames=("center",))
def _one_peer(params, i, tokens, targets, mask, nbr, src, center):
  """Peer i alone: its neighbours' embeddings of its batch, its loss, the gradients for
  its own parameters and for the served embeddings, its 2020 scores and leave-one-out."""
  own = jax.tree.map(lambda x: x[i], params)
  p_K = jax.tree.map(lambda x: x[src[nbr[i]]], params)
  d_K = jax.vmap(lambda p: peers.encode(p, tokens[i]))(p_K)

  def L(p, d):
    return peers.loss(p, peers.encode(p, tokens[i]), d, targets[i], mask[i], center)

  loss, (g_p, g_d) = jax.value_and_grad(L, argnums=(0, 1))(own, d_K)
  # the returned gradients: d(embedding)/d(neighbour's parameters) transposed
  _, vjp = jax.vjp(lambda p: jax.vmap(lambda q: peers.encode(q, tokens[i]))(p), p_K)
  g_nbr = vjp(g_d)[0]
  score = jax.vmap(valuation.fisher2020)(d_K, g_d)
  h = peers.encode(own, tokens[i])
  loo = valuation.loo(lambda dd: peers.loss(own, h, dd, targets[i], mask[i], center), d_K)
  return loss, g_p, g_nbr, score, loo


@jax.jit
def _accumulate(grads, i, g_p, g_nbr, nbr_i):
  grads = jax.tree.map(lambda g, x: g.at[i].add(x), grads, g_p)
  return jax.tree.map(lambda g, x: g.at[nbr_i].add(x), grads, g_nbr)


def loop_block(st, topo, batch, cfg):
  """The per-peer Python loop (honest peers only: no noise to draw)."""
  n = topo.nbr.shape[0]
  grads = jax.tree.map(jnp.zeros_like, st.params)
  losses, scores, loos = [], [], []
  for i in range(n):
    loss, g_p, g_nbr, score, loo = _one_peer(st.params, i, batch["inputs"], batch["targets"],
                                             batch["mask"], topo.nbr, topo.src, cfg.center)
    grads = _accumulate(grads, i, g_p, g_nbr, topo.nbr[i])
    losses.append(loss)
    scores.append(score)
    loos.append(loo)
  updates, _ = optax.adam(cfg.lr).update(grads, st.opt, st.params)
  return optax.apply_updates(st.params, updates), jnp.stack(losses), jnp.stack(scores), \
      jnp.stack(loos)


def bench(n: int, k: int, reps: int) -> dict:
  cfg = load_config("configs/market-small.yaml", [
      "--market.peers", f'["honest:{n}"]', "--market.topology", "k_random",
      "--market.neighbours", str(k), "--market.alone_baseline", "false",
      "--market.shard_sequences", "16", "--train.out_dir", "/tmp/jaxnet-bench-market"])
  mk = mrun.Market(cfg)
  st = mk.init_state()
  batch = {k2: jnp.asarray(v) for k2, v in mrun.block_batch(cfg, mk.shards, 0,
                                                            mk.corpus.eos_id).items()}
  key = jax.random.key(0)
  step = lambda: mblock.block_step_jit(st, mk.topo, batch, key, cfg=cfg.market)  # noqa: E731
  t = time.perf_counter()
  new, out = jax.block_until_ready(step())
  compile_s = time.perf_counter() - t
  _, loss_l, score_l, loo_l = loop_block(st, mk.topo, batch, cfg.market)
  np.testing.assert_allclose(np.asarray(loss_l), np.asarray(out["loss"]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(score_l), np.asarray(out["score"]), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(loo_l), np.asarray(out["loo"]), rtol=1e-4, atol=1e-5)
  t_block = _best(step, reps)
  t_loop = _best(lambda: loop_block(st, mk.topo, batch, cfg.market)[0], max(1, reps - 1))
  lowered = jax.jit(partial(mblock.block_step, cfg=cfg.market)).lower(st, mk.topo, batch, key)
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  return {"peers": n, "neighbours": k, "compile_s": compile_s, "block_s": t_block,
          "loop_s": t_loop, "ms_per_peer_block": 1e3 * t_block / n,
          "ms_per_peer_loop": 1e3 * t_loop / n, "speedup": t_loop / t_block,
          "block_gflop": flops / 1e9, "block_gflops": flops / t_block / 1e9}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--peers", type=int, nargs="+", default=[64, 256])
  ap.add_argument("--neighbours", type=int, default=6)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default="results/bench/market.json")
  args = ap.parse_args(argv)
  ceiling = matmul_gflops()
  rows = [bench(n, args.neighbours, args.reps) for n in args.peers]
  print(f"matmul ceiling: {ceiling:.1f} GFLOP/s float32 ({jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs)")
  print(f"{'peers':>6} {'block s':>8} {'loop s':>8} {'ms/peer':>8} {'loop ms/peer':>12} "
        f"{'speed-up':>8} {'GFLOP/s':>8} {'of ceiling':>10}")
  for r in rows:
    r["share_of_matmul_ceiling"] = r["block_gflops"] / ceiling
    print(f"{r['peers']:>6} {r['block_s']:>8.3f} {r['loop_s']:>8.3f} "
          f"{r['ms_per_peer_block']:>8.2f} {r['ms_per_peer_loop']:>12.2f} "
          f"{r['speedup']:>7.1f}x {r['block_gflops']:>8.2f} "
          f"{r['share_of_matmul_ceiling']:>10.1%}")
  result = {"benchmark": "market", "device": str(jax.devices()[0]),
            "platform": platform.platform(), "jax": jax.__version__,
            "matmul_gflops": ceiling, "rows": rows}
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
