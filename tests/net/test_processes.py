"""The network as separate OS processes over a loopback S3 store (moto), against the
in-process simulator with the same config and seeds.

One network runs once for the module (`jaxnet launch`: 1 validator + 3 honest peers, 11
windows of 5 s): peer 2 is killed (SIGKILL) right after its round-2 upload, so rounds 0-2
are the whole network and round 3 misses uid 2; it is restarted once round 3's gather list
is out, catches up from the store the rounds whose put window passed while it started
(10-15 s on a busy 2-core machine, 20 s and more under CI's two stacks) and uploads again
before round 10. The simulator
(`jaxnet simulate`, 3 rounds) runs beside it once its processes have compiled, at a low
CPU priority: it takes the cores while they wait for their windows, and loads the
validator's round from the persistent compilation cache they share.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxnet.net.s3 import S3Storage
from s3_server import BUCKET, endpoint  # noqa: F401 (endpoint: a fixture)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "sim-tiny.yaml"
RUN_ID = "run-processes-test"
PREFIX = "procs"
ROUNDS = 11       # room for a restart that is slow on a loaded machine (CI runs 2 stacks)
KILLED = 2        # uid killed after its upload of round KILL_AFTER
KILL_AFTER = 2
# The paper preset pays from round 0 (the hardened one needs 20 rounds of evidence), so
# three rounds have non-trivial weights and gather lists to compare. The put window is 2 s
# in both (the simulator's honest offsets drawn in [0.5, 1.5]), so the validator process
# compiles the simulator's round exactly and loads it from the shared cache.
COMMON = ["--config", str(CONFIG), "--sim.peers", '["honest:3"]', "--gauntlet.preset", "paper",
          "--gauntlet.put_window_s", "2", "--sim.honest_upload_s", "[0.5, 1.5]",
          "--net.window_s", "5", "--net.put_window_s", "2", "--net.warmup_s", "120"]


def jaxnet(*args) -> list[str]:
  return [sys.executable, "-m", "jaxnet.cli", *args]


def records(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(store: S3Storage, name: str, deadline: float, launcher) -> None:
  while store.get(name, max_bytes=1 << 20) is None:
    assert launcher.poll() is None, f"the launcher exited before {name} appeared"
    assert time.monotonic() < deadline, f"{name} never appeared"
    time.sleep(0.2)


@pytest.fixture(scope="module")
def run(endpoint, tmp_path_factory):  # noqa: F811 (the fixture above)
  tmp = tmp_path_factory.mktemp("processes")
  env = dict(os.environ, JAXNET_S3_ENDPOINT=endpoint,
             JAX_COMPILATION_CACHE_DIR=str(tmp / "jax-cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  t = time.monotonic()
  out = tmp / "net"
  launcher = subprocess.Popen(jaxnet("launch", *COMMON, "--sim.rounds", str(ROUNDS),
                                     "--train.out_dir", str(out), "--run-id", RUN_ID,
                                     "--storage", f"s3://{BUCKET}/{PREFIX}"),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
  store = S3Storage(BUCKET, PREFIX, RUN_ID, endpoint_url=endpoint, region="us-east-1")
  restarted = sim = None
  try:
    deadline = time.monotonic() + 240
    # every process has compiled: the simulator takes the idle time between windows, at a
    # low priority (the network's deadlines come first)
    wait_for(store, "run-start", deadline, launcher)
    sim = subprocess.Popen(jaxnet("simulate", *COMMON, "--sim.rounds", "3",
                                  "--train.out_dir", str(tmp / "sim")),
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.setpriority(os.PRIO_PROCESS, sim.pid, 10)
    # the debug object is put after the gradient: the round-2 upload is then complete
    wait_for(store, f"debug-{KILL_AFTER}-{KILLED}", deadline, launcher)
    pids = {(p["role"], p["uid"]): p["pid"] for p in json.loads((out / "processes.json").read_text())}
    os.kill(pids[("peer", KILLED)], signal.SIGKILL)
    wait_for(store, f"gather-{KILL_AFTER + 1}", deadline, launcher)
    with open(out / "logs" / f"peer-{KILLED}-restart.log", "wb") as log:
      restarted = subprocess.Popen(jaxnet("peer", "--config", str(out / "config.yaml"),
                                          "--uid", str(KILLED), "--run-id", RUN_ID),
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    said, _ = launcher.communicate(timeout=max(1.0, deadline - time.monotonic()))
    assert launcher.returncode == 0, said[-3000:]
    assert restarted.wait(timeout=30) == 0
    t_net = time.monotonic() - t
    sim_said, _ = sim.communicate(timeout=max(1.0, deadline - time.monotonic()))
    assert sim.returncode == 0, sim_said[-3000:]
  finally:
    for proc in (launcher, restarted, sim):
      if proc is not None and proc.poll() is None:
        proc.kill()
  print(f"\nnetwork {t_net:.0f} s, simulator done {time.monotonic() - t - t_net:.0f} s later")
  return {"sim": records(tmp / "sim" / "metrics.jsonl"), "net": records(out / "metrics.jsonl"),
          "peers": {u: records(out / f"peer-{u}" / "metrics.jsonl") for u in range(3)},
          "events": records(out / "launch.jsonl"), "said": said, "out": out}


def test_processes_give_the_simulators_weights_and_gather_lists(run):
  """Bit for bit: a peer's one-peer local step equals its row of the simulator's lax.map
  (batch 1), its upload's bytes are the simulator's, the validator process parses them with
  the same code and runs the same jitted round; upload offsets differ but all are in the
  put window, which is all the paper preset reads of them."""
  sim, net = run["sim"], run["net"][:3]
  assert [r["round"] for r in net] == [0, 1, 2]
  for s, n in zip(sim, net):
    assert n["report"]["weight"] == s["report"]["weight"]
    assert n["report"]["gather_valid"] == s["report"]["gather_valid"]
    assert n["report"]["reason"] == ["", "", ""]
  assert any(w > 0 for r in net for w in r["report"]["weight"][1:])   # not all on one uid
  # every node took the same outer step: θ digests equal the validator's
  for u, recs in run["peers"].items():
    assert all(r["in_sync"] for r in recs), u
    assert [r["theta"] for r in recs[:2]] == [r["theta"] for r in net[:2]]


def test_a_killed_peer_is_missing_then_catches_up_and_uploads_again(run):
  net, peers = run["net"], run["peers"]
  assert [r["round"] for r in net] == list(range(ROUNDS))
  # round 3: no upload from the killed uid; the others go on
  after = net[KILL_AFTER + 1]["report"]
  assert after["reason"][KILLED] == "missing" and not after["present"][KILLED]
  assert after["reason"][:KILLED] == [""] * KILLED and after["gather_valid"][:KILLED] == [True] * KILLED
  assert [r["round"] for r in peers[0]] == list(range(ROUNDS))
  # the launcher recorded the death and went on
  dead = [e for e in run["events"] if e["event"] == "exited" and e["uid"] == KILLED]
  assert dead and dead[0]["code"] == -signal.SIGKILL
  assert f"peer {KILLED}" in run["said"] and "the network goes on" in run["said"]
  # the restarted peer: rounds 0-1 from its first life, then caught up from the store
  mine = peers[KILLED]
  assert [r["round"] for r in mine] == list(range(ROUNDS))
  assert [r["caught_up"] for r in mine[KILL_AFTER:KILL_AFTER + 2]] == [True, True]
  back = [r["round"] for r in mine if r["uploaded"] and r["round"] > KILL_AFTER]
  assert back, "the restarted peer never uploaded again"
  # its θ after catching up is the others' and the validator's, bit for bit
  for r in mine:
    assert r["theta"] == peers[0][r["round"]]["theta"] == net[r["round"]]["theta"]
    assert r["in_sync"]
  # and the validator scored its new upload in that round
  assert net[back[0]]["report"]["reason"][KILLED] == ""
  assert net[back[0]]["report"]["present"][KILLED]
