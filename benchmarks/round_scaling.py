"""Seconds per network round against the number of peers, phase by phase (issue 15 item 1).

For each case (a config and a peer count N, all peers honest) a fresh process builds the
in-process network (`jaxnet.sim.network.Network`), runs `--warmup` rounds (compilation),
then times `--rounds` rounds with the network's phase timer on (each phase waits for its own
device work; `Network.phases`):

  peers: gradient + encode   every uid's scheme step in one jitted call (DeMo: gradient,
                             momentum, DCT, top-k, quantise); the gradient alone is timed
                             beside it (the same lax.map), the encode share is the rest
  serialise + upload         the wire format of every upload (safetensors) into the storage
  download + parse           the validator reads and checks every object (bounded, §5.1)
  validator                  the jitted validator round(s): fast checks, LossScore, rating,
                             copy detection, weights
  aggregate + outer step     the gather peers' mean direction and the scheme's outer step
  ledger, metrics            the chain epoch (sim.ledger_every) and the round's metrics

Beside them, in the same process:
  - what a user would otherwise write: one jitted peer step called from a Python loop, one
    uid at a time (timed on the first `--loop-peers` peers, scaled to N): the ratio of the
    vectorised peers phase against it;
  - the ceiling: a float32 2048^3 jit matmul (as benchmarks/train_step.py); the round's model
    FLOPs (each peer's training step, 3 forward passes per evaluated peer plus the shared one)
    over the round's seconds, as a share of it;
  - peak resident memory of the process (VmHWM).
The parent fits the growth exponent b of seconds/round = a N^b over the sim-tiny cases with
N >= 64, prints a table and writes JSON.

1000, not 1024, is the largest network: uids from 1000 up are reserved for the seeds of the
random pages (gauntlet.md §2.2; `jaxnet.data.pages`).

Two validator settings per peer count: every peer evaluated every round (jaxnet's default,
`gauntlet.uids_per_window: 0`) and templar's 20 per window (`--uids-per-window 20`).

  python benchmarks/round_scaling.py [--peers 16 64 256 1000] [--small-peers 64]
      [--uids-per-window 0 20] [--rounds 2] [--out results/bench/round_scaling.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def one_case(config: str, n: int, upw: int, warmup: int, rounds: int, loop_peers: int) -> dict:
  """Runs in its own process: the network at N peers, timed by phase."""
  import jax
  import numpy as np
  from jaxnet import model as jmodel
  from jaxnet.config import load_config
  from jaxnet.sim.network import Network, Phases
  from train_step import matmul_ceiling

  cfg = load_config(ROOT / "configs" / f"{config}.yaml", [
      "--sim.peers", json.dumps([f"honest:{n}"]), "--gauntlet.uids_per_window", str(upw),
      "--train.out_dir", "/tmp/jaxnet-round-scaling"])
  t0 = time.perf_counter()
  net = Network(cfg, run_id=f"scaling-{config}-{n}")
  st = net.place(net.init_state())
  for _ in range(warmup):
    st, _ = net.run_round(st)
  jax.block_until_ready(st)
  warm_s = time.perf_counter() - t0
  net.phases = Phases()
  t0, c0 = time.perf_counter(), time.process_time()
  evaluated = 0
  for _ in range(rounds):
    st, m = net.run_round(st)
    evaluated += m["evaluated"]
  jax.block_until_ready(st)
  wall, cpu = (time.perf_counter() - t0) / rounds, (time.process_time() - c0) / rounds
  phases = {k: v / rounds for k, v in net.phases.seconds.items()}

  # a Python loop over uids: one jitted single-peer step each (the first loop_peers uids)
  k = min(loop_peers, n)
  batches = net._batches(int(st.window))
  one = lambda u: net._peers_one_device(st.params, jax.tree.map(lambda x: x[u:u + 1], st.peers),
                                        {key: v[u:u + 1] for key, v in batches.items()}, 1e-3)
  jax.block_until_ready(one(0))
  t1 = time.perf_counter()
  for u in range(k):
    jax.block_until_ready(one(u))
  loop_s = (time.perf_counter() - t1) / k * n

  # the gradient alone (the same lax.map over peers): the encode share is the rest
  from jax import lax
  grad = jax.jit(lambda p, b: lax.map(lambda x: jax.grad(jmodel.loss_fn)(p, x, cfg.model), b,
                                      batch_size=cfg.demo.peer_batch))
  jax.block_until_ready(grad(st.params, batches))
  t1 = time.perf_counter()
  jax.block_until_ready(grad(st.params, batches))
  grad_s = time.perf_counter() - t1

  L = cfg.data.seq_len
  tokens_peer = batches["inputs"].shape[1] * L
  rows = max(1, int(round(cfg.gauntlet.sample_rate * batches["inputs"].shape[1])))
  fwd_tok = jmodel.flops_per_token(cfg.model, L, training=False)
  model_flop = (n * tokens_peer * jmodel.flops_per_token(cfg.model, L)
                + (3 * evaluated / rounds + 1) * rows * L * fwd_tok)
  ceiling = matmul_ceiling()
  peers_s = phases["peers: gradient + encode"]
  return {"config": config, "peers": n, "uids_per_window": upw, "s_per_round": wall,
          "cpu_s_per_round": cpu, "phases_s": phases, "evaluated_per_round": evaluated / rounds,
          "warmup_s": warm_s, "python_loop_peers_s": loop_s, "loop_timed_peers": k,
          "peers_speedup_vs_loop": loop_s / peers_s, "gradient_only_s": grad_s,
          "encode_s_derived": max(peers_s - grad_s, 0.0), "model_flop_per_round": model_flop,
          "ceiling_gflops": ceiling / 1e9, "share_of_ceiling": model_flop / wall / ceiling,
          "peak_rss_mb": peak_rss_mb(), "devices": jax.device_count()}


def fit_exponent(rows: list[dict]) -> float | None:
  import numpy as np
  pts = [(r["peers"], r["s_per_round"]) for r in rows if r["peers"] >= 64]
  if len(pts) < 2:
    return None
  x, y = np.log([p for p, _ in pts]), np.log([s for _, s in pts])
  return float(np.polyfit(x, y, 1)[0])


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--peers", type=int, nargs="+", default=[16, 64, 256, 1000])
  ap.add_argument("--small-peers", type=int, nargs="*", default=[64], help="N on sim-small")
  ap.add_argument("--uids-per-window", type=int, nargs="+", default=[0, 20])
  ap.add_argument("--warmup", type=int, default=2, help="rounds before timing (compilation)")
  ap.add_argument("--rounds", type=int, default=2, help="timed rounds per case")
  ap.add_argument("--loop-peers", type=int, default=8)
  ap.add_argument("--one", nargs=3, metavar=("CONFIG", "N", "UPW"), help=argparse.SUPPRESS)
  ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "round_scaling.json"))
  args = ap.parse_args(argv)
  if args.one:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    r = one_case(args.one[0], int(args.one[1]), int(args.one[2]), args.warmup, args.rounds,
                 args.loop_peers)
    print("RESULT " + json.dumps(r))
    return r
  cases = [("sim-tiny", n, u) for u in args.uids_per_window for n in args.peers]
  cases += [("sim-small", n, u) for u in args.uids_per_window for n in args.small_peers]
  rows = []
  for config, n, upw in cases:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--one", config, str(n), str(upw),
                           "--warmup", str(args.warmup), "--rounds", str(args.rounds),
                           "--loop-peers", str(args.loop_peers)],
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
      raise SystemExit(f"{config} N={n}: case failed\n{proc.stderr[-3000:]}")
    rows.append(json.loads(lines[-1][len("RESULT "):]))
    r = rows[-1]
    print(f"[{config} N={n} uids/window={upw or 'all'}] {r['s_per_round']:.2f} s/round, "
          f"{r['peak_rss_mb']:.0f} MB, {time.perf_counter() - t0:.0f} s", flush=True)
  fits = {f"uids_per_window_{u}": fit_exponent([r for r in rows if r["config"] == "sim-tiny"
                                                and r["uids_per_window"] == u])
          for u in args.uids_per_window}
  phases = list(rows[0]["phases_s"])
  short = {"peers: gradient + encode": "peers", "serialise + upload": "upload",
           "download + parse": "parse", "validator": "valid.", "aggregate + outer step": "outer",
           "ledger": "ledger", "metrics": "metrics"}
  head = (f"{'config':<10}{'N':>6}{'eval':>6}{'s/round':>9}" + "".join(f"{short.get(p, p)[:8]:>9}" for p in phases)
          + f"{'grad':>8}{'encode':>8}{'loop x':>8}{'%ceil':>7}{'RSS MB':>8}")
  print("\n" + head)
  for r in rows:
    print(f"{r['config']:<10}{r['peers']:>6}{r['evaluated_per_round']:>6.0f}{r['s_per_round']:>9.2f}"
          + "".join(f"{r['phases_s'].get(p, 0.0):>9.3f}" for p in phases)
          + f"{r['gradient_only_s']:>8.3f}{r['encode_s_derived']:>8.3f}{r['peers_speedup_vs_loop']:>8.2f}{r['share_of_ceiling']:>7.1%}{r['peak_rss_mb']:>8.0f}")
  print("growth exponent b (s/round ~ N^b, sim-tiny, N >= 64): "
        + ", ".join(f"{k}: {v:.2f}" for k, v in fits.items() if v is not None))
  import jax
  out = {"benchmark": "round_scaling", "jax": jax.__version__, "machine": platform.processor()
         or platform.machine(), "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "warmup": args.warmup, "rounds": args.rounds, "growth_exponent": fits, "rows": rows}
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(out, indent=2))
  return out


if __name__ == "__main__":
  main()
