"""`jaxnet train` and `jaxnet simulate` under `jax.distributed`: 2 processes on loopback
(CPU collectives, one device each) give the numbers of one process, and only process 0
writes the run directory.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jaxnet.rundir import read_metrics

ROOT = Path(__file__).parent.parent
TIMEOUT_S = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(extra: dict) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", HF_HUB_OFFLINE="1", **extra)
  return env


def _jaxnet(args: list[str]) -> list[str]:
  return [sys.executable, "-m", "jaxnet.cli", *args]


def _launch(args: list[str], n: int, log_dir: Path) -> None:
  port = _free_port()
  procs = []
  for i in range(n):
    env = _env({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(n),
                "JAX_PROCESS_ID": str(i)})
    log = open(log_dir / f"process{i}.log", "w")
    procs.append((subprocess.Popen(_jaxnet(args), cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT), log))
  try:
    for p, _ in procs:
      p.wait(timeout=TIMEOUT_S)
  finally:
    for p, log in procs:
      if p.poll() is None:
        p.kill()
      log.close()
  for i, (p, _) in enumerate(procs):
    assert p.returncode == 0, (log_dir / f"process{i}.log").read_text()[-3000:]


def _single(args: list[str]) -> None:
  out = subprocess.run(_jaxnet(args), cwd=ROOT, env=_env({}), capture_output=True, text=True,
                       timeout=TIMEOUT_S)
  assert out.returncode == 0, out.stderr[-3000:]


def _compare(one: Path, two: Path, keys: tuple[str, ...]) -> None:
  a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
  assert [r["step"] for r in a] == [r["step"] for r in b] and a
  for ra, rb in zip(a, b):
    for k in keys:
      assert (k in ra) == (k in rb), (ra["step"], k)
      if k in ra:
        assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (ra["step"], k)
  assert (two / "run.json").exists() and (two / "config.yaml").exists()


@pytest.mark.slow   # CI time: the simulator's two-process test below covers jax.distributed
def test_two_processes_train_like_one(tmp_path):
  args = ["train", "--config", "configs/tiny.yaml", "--train.steps", "4", "--train.warmup_steps",
          "1", "--checkpoint.every", "2", "--train.eval_every", "2", "--mesh.data", "-1"]
  _single(args + ["--train.out_dir", str(tmp_path / "one")])
  _launch(args + ["--train.out_dir", str(tmp_path / "two")], 2, tmp_path)
  _compare(tmp_path / "one", tmp_path / "two", ("loss", "grad_norm", "val_loss"))
  # one writer of the metrics; both processes took part in the checkpoints
  assert sum(1 for _ in (tmp_path / "two" / "metrics.jsonl").open()) == 4
  assert (tmp_path / "two" / "checkpoints" / "4").is_dir()


def test_two_processes_split_the_peers_step_exactly(tmp_path):
  """The peers' step (most of a round) with the peer axis split across 2 processes equals the
  same step on one process's devices, leaf for leaf: submissions, scheme states, losses,
  the desynced uid's step on its stale model too (tests/split_peers_check.py)."""
  port = _free_port()
  procs = []
  for i in range(2):
    env = _env({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i)})
    procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "split_peers_check.py"),
                                   str(ROOT / "configs" / "sim-tiny.yaml")], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, out[-3000:]
    assert f"process {i}: split peers' step equals the local one" in out


@pytest.mark.slow   # CI time: the split is checked above; this runs whole rounds (3 min)
def test_two_processes_simulate_like_one(tmp_path):
  """The peer axis splits over the two processes' devices (each computes 3 uids' step, the
  desynced uid's on its stale model too) and every process gathers the whole network."""
  args = ["simulate", "--config", "configs/sim-tiny.yaml", "--sim.rounds", "3",
          "--checkpoint.every", "2", "--sim.peers", '["honest:3", "noise:1", "copier:1", "desync:1"]']
  _single(args + ["--train.out_dir", str(tmp_path / "one")])
  _launch(args + ["--train.out_dir", str(tmp_path / "two")], 2, tmp_path)
  for i in range(2):
    assert (f"process {i}: the peers' step runs on 2 devices of 2 processes"
            in (tmp_path / f"process{i}.log").read_text())
  _compare(tmp_path / "one", tmp_path / "two", ("val_loss",))
  a = read_metrics(tmp_path / "one" / "metrics.jsonl")
  b = read_metrics(tmp_path / "two" / "metrics.jsonl")
  assert [r["report"]["weight"] for r in a] == [r["report"]["weight"] for r in b]
  # one writer: process 1 printed the summary but wrote no records of its own
  assert sum(1 for _ in (tmp_path / "two" / "metrics.jsonl").open()) == 3
  assert json.loads((tmp_path / "two" / "behaviours.json").read_text())[0] == "honest"


def test_peers_that_do_not_split_over_every_device_are_refused():
  """Under jax.distributed the peer axis spans every process's devices (conftest: 4 here)."""
  from jaxnet.configbase import ConfigError
  from jaxnet.sim.network import _global_peer_mesh
  assert _global_peer_mesh(8).size == 4
  with pytest.raises(ConfigError, match="5 uids do not split over the 4 devices"):
    _global_peer_mesh(5)
