"""Plackett-Luce rating: jaxnet (JAX, jitted, warmed) against the `openskill` package.

Cases (gauntlet.md §11; openskill timings in jax.md §6.7):
* one match of 4, 64 and 256 players (pool = the players);
* 1000 independent matches of 20 players in a pool of 256 uids: one vmapped JAX call against
  a Python loop over `PlackettLuce.rate`.

Before timing, every case checks that both sides agree on mu and sigma to a relative 1e-6
(|ours - ref| <= 1e-6 * max(1, |ref|); float32 against the package's float64, see
jaxnet/gauntlet/rating.py). The package is timed on pre-built rating objects with ranks
given (its fastest use); JAX timings include dispatch and `block_until_ready`. On CPU the
JAX side runs with synchronous dispatch (`jax_cpu_enable_async_dispatch=False`): a validator
rates one small match per round, so latency is what counts, and handing a 30-microsecond
computation to a worker thread only adds a thread hop (on a loaded 2-core host it more than
doubled the median). `--async-dispatch` measures the default instead.

  python benchmarks/rating.py [--out results/bench/rating.json] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from openskill.models import PlackettLuce

from jaxnet.gauntlet.rating import RatingParams, RatingState, rate

PARAMS = RatingParams()   # beta 7, tau 0.1 (gauntlet.md §11.1)
RTOL = 1e-6


def _timeit(fn, repeats: int, budget_s: float = 0.2) -> tuple[float, float]:
  """(median, min) seconds per call over `repeats`; each repeat runs enough calls to fill
  about `budget_s` (the min is the less noisy figure on a shared host)."""
  start = time.perf_counter()
  fn()
  once = max(time.perf_counter() - start, 1e-7)
  inner = max(1, int(budget_s / once))
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(inner):
      fn()
    samples.append((time.perf_counter() - start) / inner)
  return statistics.median(samples), min(samples)


def _random_state(rng, shape):
  """Rated priors: mu in [0, 50], sigma in [0.5, 25/3] (the range a live validator sees)."""
  mu = rng.uniform(0.0, 50.0, shape).astype(np.float32)
  sigma = rng.uniform(0.5, 25.0 / 3.0, shape).astype(np.float32)
  return mu, sigma


def _package_match(model, mu, sigma, scores):
  """Pre-built one-player teams and ranks (1 = best) for the package."""
  teams = [[model.rating(mu=float(m), sigma=float(s))] for m, s in zip(mu, sigma)]
  ranks = np.empty(len(scores), int)
  ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
  return teams, ranks.tolist()


def _max_rel_err(ours, ref) -> float:
  ref = np.asarray(ref, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref) / np.maximum(1.0, np.abs(ref))))


def _check(name, ours_mu, ours_sigma, ref_mu, ref_sigma) -> float:
  err = max(_max_rel_err(ours_mu, ref_mu), _max_rel_err(ours_sigma, ref_sigma))
  if not err <= RTOL:
    sys.exit(f"{name}: JAX and openskill disagree (max relative error {err:.2e} > {RTOL})")
  return err


def _row(case, players, matches, pool, jax_s, pkg_s, err) -> dict:
  return {"case": case, "players": players, "matches": matches, "pool": pool,
          "jax_ms": jax_s[0] * 1e3, "openskill_ms": pkg_s[0] * 1e3,
          "speedup": pkg_s[0] / jax_s[0], "jax_ms_min": jax_s[1] * 1e3,
          "openskill_ms_min": pkg_s[1] * 1e3, "speedup_of_min": pkg_s[1] / jax_s[1],
          "max_rel_err": err}


def bench_single(model, rng, n: int, repeats: int) -> dict:
  mu, sigma = _random_state(rng, n)
  scores = rng.normal(size=n).astype(np.float32)
  state = RatingState(jnp.asarray(mu), jnp.asarray(sigma), jnp.ones(n, bool))
  in_match, scores_j = jnp.ones(n, bool), jnp.asarray(scores)
  step = jax.jit(lambda s, m, x: rate(s, m, x, PARAMS))
  new, _ = jax.block_until_ready(step(state, in_match, scores_j))
  teams, ranks = _package_match(model, mu, sigma, scores)
  out = model.rate(teams, ranks=ranks)
  err = _check(f"{n} players", new.mu, new.sigma,
               [t[0].mu for t in out], [t[0].sigma for t in out])
  jax_s = _timeit(lambda: jax.block_until_ready(step(state, in_match, scores_j)), repeats)
  pkg_s = _timeit(lambda: model.rate(teams, ranks=ranks), repeats)
  return _row(f"1 match, {n} players", n, 1, n, jax_s, pkg_s, err)


def bench_batch(model, rng, matches: int, players: int, pool: int, repeats: int) -> dict:
  mu, sigma = _random_state(rng, (matches, pool))
  scores = rng.normal(size=(matches, pool)).astype(np.float32)
  in_match = np.zeros((matches, pool), bool)
  for b in range(matches):
    in_match[b, rng.choice(pool, players, replace=False)] = True
  state = RatingState(jnp.asarray(mu), jnp.asarray(sigma), jnp.ones((matches, pool), bool))
  in_match_j, scores_j = jnp.asarray(in_match), jnp.asarray(scores)
  step = jax.jit(jax.vmap(lambda s, m, x: rate(s, m, x, PARAMS)))
  new, _ = jax.block_until_ready(step(state, in_match_j, scores_j))
  games = []
  for b in range(matches):
    idx = np.flatnonzero(in_match[b])
    games.append((idx, *_package_match(model, mu[b, idx], sigma[b, idx], scores[b, idx])))
  ref_mu, ref_sigma = mu.astype(np.float64), sigma.astype(np.float64)
  for b, (idx, teams, ranks) in enumerate(games):
    out = model.rate(teams, ranks=ranks)
    ref_mu[b, idx] = [t[0].mu for t in out]
    ref_sigma[b, idx] = [t[0].sigma for t in out]
  err = _check(f"{matches} x {players} players", new.mu, new.sigma, ref_mu, ref_sigma)

  def package_loop():
    for _, teams, ranks in games:
      model.rate(teams, ranks=ranks)

  jax_s = _timeit(lambda: jax.block_until_ready(step(state, in_match_j, scores_j)), repeats)
  pkg_s = _timeit(package_loop, max(3, repeats // 2), budget_s=0.0)
  return _row(f"{matches} matches x {players} players (pool {pool}), vmap vs loop", players,
              matches, pool, jax_s, pkg_s, err)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="results/bench/rating.json")
  parser.add_argument("--sizes", default="4,64,256", help="players per single match")
  parser.add_argument("--matches", type=int, default=1000)
  parser.add_argument("--batch-players", type=int, default=20)
  parser.add_argument("--pool", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--async-dispatch", action="store_true",
                      help="keep JAX's default asynchronous CPU dispatch")
  args = parser.parse_args(argv)
  # Must precede the first computation (the CPU client reads it when it starts).
  jax.config.update("jax_cpu_enable_async_dispatch", bool(args.async_dispatch))
  if args.batch_players > args.pool or args.batch_players < 2:
    parser.error(f"--batch-players must be in [2, --pool={args.pool}]")

  rng = np.random.default_rng(args.seed)
  model = PlackettLuce(mu=PARAMS.mu0, sigma=PARAMS.sigma0, beta=PARAMS.beta, tau=PARAMS.tau,
                       kappa=PARAMS.kappa)
  rows = [bench_single(model, rng, int(n), args.repeats) for n in args.sizes.split(",")]
  rows.append(bench_batch(model, rng, args.matches, args.batch_players, args.pool,
                          args.repeats))

  print(f"{'case (medians; ratio of mins in brackets)':<58} {'jax ms':>9} {'openskill ms':>13} "
        f"{'ratio':>8} {'(min)':>8} {'max rel err':>12}")
  for r in rows:
    print(f"{r['case']:<58} {r['jax_ms']:>9.4f} {r['openskill_ms']:>13.3f} "
          f"{r['speedup']:>7.1f}x {r['speedup_of_min']:>7.1f}x {r['max_rel_err']:>12.1e}")
  result = {
    "benchmark": "rating", "params": {k: getattr(PARAMS, k) for k in
                                      ("beta", "tau", "mu0", "sigma0", "kappa", "z")},
    "dtype": "float32", "tolerance": f"relative {RTOL} (|d| <= {RTOL} * max(1, |ref|))",
    "jax": jax.__version__, "openskill": version("openskill"), "python": platform.python_version(),
    "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "repeats": args.repeats,
    "cpu_async_dispatch": bool(args.async_dispatch),
    "seed": args.seed, "rows": rows,
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
