"""The simulator under jax.distributed: 2 processes x 1 core against 1 process x 2 devices.

Issue 15 item 3. The same `jaxnet simulate` (N honest peers on sim-tiny) four ways, one
after the other, each in fresh processes on loopback:

  one core     1 process, 1 CPU device, pinned to core 0 (taskset): the single-core baseline
  1 x 2 dev    1 process, 2 CPU devices (the peers' step shards over them), both cores
  2 x 1 core   2 processes (jax.distributed, one CPU device each, each pinned to its own
               core): the peers' step splits the peer axis across the processes
               (`Network.peer_mesh`), the rest of the round runs in both
  1 x 1 dev    1 process, 1 CPU device, unpinned (XLA's own threads on both cores)

Seconds per round are the median over rounds 2..R-1 (rounds 0 and 1 compile), read from
each run's metrics (`time` of consecutive records). The ceiling is perfect scaling:
half the one-core time; each way's share of it is (one core / 2) / its time. The per-uid
weights of every round are checked equal across the four ways first (the same numbers on 1
or N devices or processes); a mismatch stops the run.

  python benchmarks/distributed_sim.py [--peers 64] [--rounds 6] [--out results/bench/distributed_sim.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, extra: dict | None = None) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", HF_HUB_OFFLINE="1",
             **(extra or {}))
  return env


def run_way(name: str, args: list[str], out: Path, processes: int, devices: int,
            cores: list[str | None]) -> dict:
  port = _free_port()
  procs = []
  for i in range(processes):
    extra = ({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(processes),
              "JAX_PROCESS_ID": str(i)} if processes > 1 else {})
    pin = ["taskset", "-c", cores[i]] if cores[i] is not None else []
    cmd = pin + [sys.executable, "-m", "jaxnet.cli", *args, "--train.out_dir", str(out)]
    log = open(out.parent / f"{name}-{i}.log", "w")
    procs.append((subprocess.Popen(cmd, cwd=ROOT, env=_env(devices, extra), stdout=log,
                                   stderr=subprocess.STDOUT), log))
  t0 = time.perf_counter()
  for p, log in procs:
    p.wait()
    log.close()
  wall = time.perf_counter() - t0
  for i, (p, _) in enumerate(procs):
    if p.returncode:
      raise SystemExit(f"{name} process {i} failed:\n"
                       + (out.parent / f"{name}-{i}.log").read_text()[-3000:])
  recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  times = np.array([r["time"] for r in recs])
  return {"way": name, "processes": processes, "devices_per_process": devices,
          "pinned": [c for c in cores if c is not None], "wall_s": wall,
          # a record is written when the next round is done (the last one at once): the gaps
          # between records 1..R-1 are the durations of rounds 2..R-1 (0 and 1 compile)
          "s_per_round": float(np.median(np.diff(times)[1:-1])),
          "weights": [r["report"]["weight"] for r in recs]}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--peers", type=int, default=64)
  ap.add_argument("--rounds", type=int, default=6)
  ap.add_argument("--config", default="configs/sim-tiny.yaml")
  ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "distributed_sim.json"))
  a = ap.parse_args(argv)
  if a.rounds < 4:
    raise SystemExit("--rounds must be >= 4 (two rounds of compilation, then timed ones)")
  args = ["simulate", "--config", a.config, "--sim.rounds", str(a.rounds), "--sim.peers",
          json.dumps([f"honest:{a.peers}"]), "--checkpoint.every", "0"]
  ways = [("one core", 1, 1, ["0"]), ("1 x 2 dev", 1, 2, [None]),
          ("2 x 1 core", 2, 1, ["0", "1"]), ("1 x 1 dev", 1, 1, [None])]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, procs, devs, cores in ways:
      out = Path(tmp) / name.replace(" ", "_")
      rows.append(run_way(name.replace(" ", "_"), args, out, procs, devs, cores))
      rows[-1]["way"] = name
      print(f"[{name}] {rows[-1]['s_per_round']:.2f} s/round ({rows[-1]['wall_s']:.0f} s in all)",
            flush=True)
  ref = np.array(rows[0]["weights"])
  for r in rows[1:]:
    r["max_weight_diff"] = float(np.max(np.abs(np.array(r["weights"]) - ref)))
    if r["max_weight_diff"] > 1e-6:
      raise SystemExit(f"{r['way']}: weights differ from one core by {r['max_weight_diff']:.2e}")
  base = rows[0]["s_per_round"]
  for r in rows:
    r["speedup_vs_one_core"] = base / r["s_per_round"]
    r["share_of_perfect_two_core"] = (base / 2) / r["s_per_round"]
    del r["weights"]
  print(f"\n{'way':<12}{'s/round':>9}{'vs 1 core':>11}{'of 2x ideal':>13}")
  for r in rows:
    print(f"{r['way']:<12}{r['s_per_round']:>9.2f}{r['speedup_vs_one_core']:>10.2f}x"
          f"{r['share_of_perfect_two_core']:>12.0%}")
  print("per-uid weights of every round equal across the four ways "
        f"(max |diff| {max(r.get('max_weight_diff', 0.0) for r in rows):.1e})")
  import jax
  result = {"benchmark": "distributed_sim", "jax": jax.__version__, "cpu_count": os.cpu_count(),
            "peers": a.peers, "rounds": a.rounds, "config": a.config, "rows": rows}
  Path(a.out).parent.mkdir(parents=True, exist_ok=True)
  Path(a.out).write_text(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main()
