"""Training-step throughput and MFU against a matmul ceiling measured in the same run.

  python benchmarks/train_step.py [--configs tiny small] [--steps 10] [--out results/bench/train_step.json]

MFU = model FLOPs per second (jaxnet.model.flops_per_token: 3x forward matmuls plus full
T x T attention) / the best float32 matmul rate of this process (2048^3 by default,
jax.md §6.3: about 190 GFLOP/s on the 2-core dev machines). Both are measured here.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import model as jmodel
from jaxnet import train as jtrain
from jaxnet.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def _timeit(fn, reps: int) -> list[float]:
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def matmul_ceiling(n: int = 2048, reps: int = 10) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  best = min(_timeit(lambda: f(a, b), reps))
  return 2 * n ** 3 / best


def bench_config(name: str, steps: int, overrides: list[str]) -> dict:
  cfg = load_config(ROOT / "configs" / f"{name}.yaml", overrides)
  tx = jtrain.make_optimizer(cfg.train)
  state = jax.jit(partial(jtrain.init_state, cfg, tx=tx))(jax.random.key(0))
  step = jax.jit(partial(jtrain.train_step, cfg=cfg, tx=tx), donate_argnums=(0,))
  B, L = cfg.train.batch_size, cfg.data.seq_len
  mb = cfg.train.microbatch or B
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (B, L + 1)).astype(np.int32)
  host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones((B, L), np.float32)}
  batch = jax.device_put(jtrain.split_micro(host, mb))
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  med = float(np.median(times))
  tok_s = B * L / med
  flops = jmodel.flops_per_token(cfg.model, L) * tok_s
  return {"config": name, "batch": B, "seq_len": L, "params": jmodel.count_params(state.params),
          "step_ms_median": med * 1e3, "tokens_per_s": tok_s, "model_gflops": flops / 1e9,
          "compile_s": compile_s}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--configs", nargs="+", default=["tiny", "small"])
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--override", nargs="*", default=[], help="dotted overrides, e.g. --train.batch_size=32")
  ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "train_step.json"))
  args = ap.parse_args(argv)
  ceiling = matmul_ceiling()
  rows = [bench_config(c, args.steps, args.override) for c in args.configs]
  for r in rows:
    r["mfu_vs_ceiling"] = r["model_gflops"] * 1e9 / ceiling
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({platform.processor() or platform.machine()}), "
        f"jax {jax.__version__}")
  print(f"matmul ceiling (f32 2048^3, best of 10): {ceiling / 1e9:.1f} GFLOP/s")
  print(f"{'config':<8}{'params':>12}{'tokens/s':>12}{'GFLOP/s':>10}{'MFU/ceiling':>13}{'step ms':>10}")
  for r in rows:
    print(f"{r['config']:<8}{r['params']:>12,}{r['tokens_per_s']:>12,.0f}{r['model_gflops']:>10.1f}"
          f"{r['mfu_vs_ceiling']:>12.1%}{r['step_ms_median']:>10.1f}")
  out = {"ceiling_gflops": ceiling / 1e9, "device": str(jax.devices()[0]),
         "n_devices": jax.device_count(), "jax": jax.__version__, "rows": rows}
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(out, indent=2))
  return out


if __name__ == "__main__":
  main()
