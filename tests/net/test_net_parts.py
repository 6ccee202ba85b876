"""The pieces of the network of processes that need no network: the run's objects and the
refusals (one line each), the gather list's checks, the store's clock, the validator's
view of a window. Seconds, no compilation."""
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxnet import cli
from jaxnet.config import load_config
from jaxnet.net.clock import (RUN_LAUNCH, Clock, NetError, RunStart, config_digest,
                              store_offset, write_run_launch, write_run_start)
from jaxnet.net.gather import GatherList, gather_limit, gather_name, read_gather
from jaxnet.net.node import Joined, with_storage
from jaxnet.sim import network
from jaxnet.sim.storage import LocalDirStorage, ObjectTooLarge, StorageUnavailable

TINY = Path(__file__).resolve().parents[2] / "configs" / "sim-tiny.yaml"
HONEST = ["--sim.peers", '["honest:3"]']
LOG = logging.getLogger("test")


def config(tmp_path, *more):
  return with_storage(load_config(TINY, [*HONEST, *more]), str(tmp_path / "store"))


def test_config_digest_ignores_only_where_files_live_and_how_the_store_is_reached(tmp_path):
  cfg = config(tmp_path)
  same = config(tmp_path / "elsewhere", "--train.out_dir", "x", "--net.workers", "2",
                "--net.timeout_s", "3", "--net.retries", "1", "--checkpoint.keep", "1")
  assert config_digest(same) == config_digest(cfg)
  for field, value in (("net.window_s", "7"), ("net.put_window_s", "1.5"), ("sim.seed", "1"),
                       ("gauntlet.gather_size", "3"), ("sim.rounds", "4")):
    assert config_digest(config(tmp_path, f"--{field}", value)) != config_digest(cfg), field


def test_a_process_refuses_a_run_it_cannot_join(tmp_path):
  cfg = config(tmp_path)
  with pytest.raises(NetError, match=r"^run run-x was never launched .*--run-id"):
    Joined(cfg, "run-x")
  store = LocalDirStorage(tmp_path / "store", "run-x")
  write_run_launch(store, cfg, time.time())
  assert Joined(cfg, "run-x").start is None   # launched, not started: it may compile
  other = config(tmp_path, "--net.window_s", "7")
  with pytest.raises(NetError, match=r"^run run-x was launched with another config \(digest"):
    Joined(other, "run-x")
  start = write_run_start(store, cfg, time.time(), 3.0)
  assert Joined(cfg, "run-x").start == start and start.t0 == math.ceil(start.t0)
  with pytest.raises(NetError, match="another config"):
    Joined(other, "run-x")
  with pytest.raises(NetError, match="launched already"):
    write_run_launch(store, cfg, time.time())
  with pytest.raises(NetError, match="started already"):
    write_run_start(store, cfg, time.time(), 3.0)
  with pytest.raises(NetError, match=r"^run-launch: not a run-launch object"):
    RunStart.from_bytes(b"[]", RUN_LAUNCH)


def run_cli(argv, capsys):
  code = cli.main(argv)
  err = capsys.readouterr().err.strip()
  return code, err


@pytest.mark.parametrize("argv, message", [
    (["launch", "--config", str(TINY), "--storage", "/tmp/x"],
     "NetError: sim.peers: a network of processes runs honest peers only, not copier"),
    (["launch", "--config", str(TINY), *HONEST],
     "NetError: storage 'memory' lives in one process"),
    (["validator", "--config", str(TINY)], "jaxnet validator: --run-id is required"),
    (["launch", "--config", str(TINY), *HONEST, "--storage", "s3://"],
     "NetError: storage spec 's3://': needs a bucket"),
    (["validator", "--config", str(TINY), "--run-id", "../x", "--storage", "/tmp/x"],
     "NetError: run id '../x' must be 1-128 of [A-Za-z0-9._-]"),
    (["peer", "--config", str(TINY), "--uid", "-1", "--run-id", "r"],
     "jaxnet peer: --uid '-1' must be an integer >= 0"),
    (["peer", "--config", str(TINY), "--run-id", "r", "--uid"], "jaxnet peer: --uid needs a value"),
    (["peer", "--config", str(TINY), "--uid", "0", "--run-id", "r", "--net.window_s", "1"],
     "ConfigError: net.put_window_s: put_window_s + read_delay_s must be < window_s=1.0"),
])
def test_user_mistakes_are_one_line(argv, message, capsys):
  code, err = run_cli(argv, capsys)
  assert code == 2 and message in err and "\n" not in err


def test_a_peer_process_refuses_a_uid_that_is_not_honest(tmp_path):
  """Through the real command line (a new process): exit 2, one line."""
  out = subprocess.run([sys.executable, "-m", "jaxnet.cli", "peer", "--config", str(TINY),
                        "--uid", "6", "--run-id", "r", "--storage", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip() == ("jaxnet: NetError: --uid 6 is 'noise' in sim.peers; a peer "
                                "process runs honest peers only (the other behaviours live "
                                "in `jaxnet simulate`)")


# --------------------------------------------------------------------------- gather list

def listing(n=3):
  return GatherList(4, 0, (0.5, 0.0, 0.5), (0, 2), {0: "a" * 64, 2: "b" * 64}, "c" * 64)


def test_gather_list_round_trip_and_bound():
  g = listing()
  assert GatherList.from_bytes(g.to_bytes(), 3, 4) == g
  assert len(g.to_bytes()) < gather_limit(3)


@pytest.mark.parametrize("change", [
    {"window": 5}, {"weights": [0.5, 0.5]}, {"weights": [0.5, "x", 0.5]},
    {"weights": [0.5, float("nan"), 0.5]}, {"gather": [0, 3]}, {"gather": [0, 0]},
    {"gather": [0, True]}, {"sha256": {"0": "a" * 64}}, {"sha256": {"0": "A" * 64, "2": "b" * 64}},
    {"theta": "xyz"}, {"extra": 1}, {"validator": "0"},
])
def test_a_malformed_gather_list_is_refused(change):
  d = json.loads(listing().to_bytes())
  d.update(change)
  with pytest.raises(ValueError):
    GatherList.from_bytes(json.dumps(d).encode(), 3, 4)


def test_reading_a_bad_gather_list_waits_for_a_good_one(tmp_path, caplog):
  store = LocalDirStorage(tmp_path, "run-g")
  assert read_gather(store, 4, 3, LOG) is None                      # not yet published
  store.put(gather_name(4), b"{not json", 0.0)
  assert read_gather(store, 4, 3, LOG) is None and "malformed" in caplog.text
  store.put(gather_name(4), b" " * (gather_limit(3) + 1), 0.0)
  assert read_gather(store, 4, 3, LOG) is None and "refused" in caplog.text
  store.put(gather_name(4), listing().to_bytes(), 0.0)
  assert read_gather(store, 4, 3, LOG) == listing()


# --------------------------------------------------------------------------- the clock

class StampingStore:
  """A store whose clock is `skew` s ahead of this machine, stamped in whole seconds."""

  def __init__(self, skew):
    self.skew = skew

  def clock(self):
    return float(math.floor(time.time() + self.skew))


@pytest.mark.parametrize("skew", [0.0, 0.4, -2.7])
def test_store_offset_brackets_the_stores_clock(skew):
  offset, error = store_offset(StampingStore(skew), probes=4, spacing_s=0.27)
  assert abs(offset - skew) <= error + 0.02 and error < 0.5


def test_windows_and_the_put_window_on_whole_second_stamps():
  start = RunStart("r", 100.0, 2.5, 1.5, "d")
  c = Clock(start, offset=0.0, error=0.1)
  assert c.boundary(3) == 107.5 and c.window(107.4) == 2 and c.window(99.0) == -1
  # round 2 ends at 107.5: a stamp of whole seconds must not fall before it -> 108 + margins
  assert c.upload_at(2) == pytest.approx(108.15) and c.upload_by(2) == pytest.approx(108.85)
  assert c.read_at(2, 0.5) == pytest.approx(109.6)


# --------------------------------------------------------------------------- the view

def test_the_validators_view_moves_store_times_onto_the_simulators_clock(tmp_path, caplog):
  from jaxnet.net.validator_node import WindowView

  class Fetched:   # what get_many returned for round 4 (boundary T_5 = 100 + 5 * 2.5)
    run_id = "run-v"

    def get_many(self, names, max_bytes):
      table = {"gradient-4-0": (b"g", 113.0), "gradient-4-1": ObjectTooLarge("gradient-4-1", 9, 8, 112.0),
               "gradient-4-2": StorageUnavailable("gradient-4-2", "down")}
      return [table.get(n) for n in names]

  joined = type("J", (), {"store": Fetched(), "clock": Clock(RunStart("r", 100.0, 2.5, 1.5, "d"))})
  view = WindowView(joined, LOG)
  view.prefetch(4, 3, {"gradient": 8, "debug": 4}, retries=1)
  t5 = 5 * network.WINDOW_S
  assert view.get("gradient-4-0", 8) == (b"g", t5 + 0.5) and view.data("gradient-4-0") == b"g"
  with pytest.raises(ObjectTooLarge) as e:
    view.get("gradient-4-1", 8)
  assert e.value.timestamp == t5 - 0.5
  assert view.get("gradient-4-2", 8) is None and "unreadable" in caplog.text
  assert view.get("debug-4-0", 4) is None


def test_fetch_all_asks_again_for_what_the_store_could_not_serve(caplog):
  from jaxnet.net.node import fetch_all

  class Flaky:   # each name fails its first `fails[name]` reads
    def __init__(self, fails):
      self.fails, self.asked = dict(fails), []

    def get_many(self, names, max_bytes):
      self.asked.append(list(names))
      out = []
      for n in names:
        self.fails[n] = self.fails.get(n, 0) - 1
        out.append(StorageUnavailable(n, "busy") if self.fails[n] >= 0 else (n.encode(), 1.0))
      return out

  store = Flaky({"b": 1, "c": 5})
  got = fetch_all(store, ["a", "b", "c"], 10, retries=3, log=LOG)
  assert got[:2] == [(b"a", 1.0), (b"b", 1.0)] and isinstance(got[2], StorageUnavailable)
  assert store.asked == [["a", "b", "c"], ["b", "c"], ["c"]] and "unreadable" in caplog.text
  store = Flaky({"c": 3})   # past `retries`: until served
  assert fetch_all(store, ["a", "c"], 10, retries=None, log=LOG)[1] == (b"c", 1.0)
  assert len(store.asked) == 4


def test_a_resumed_record_file_keeps_the_checkpoints_rounds_only(tmp_path):
  from jaxnet.net.node import JsonlLog
  path = tmp_path / "peer-0" / "metrics.jsonl"
  log = JsonlLog(path)
  for step in (1, 2, 3):
    log.write({"round": step - 1, "step": step})
  log.close()
  with open(path, "a") as f:
    f.write('{"round": 3, "st')                      # a kill mid-line
  log = JsonlLog(path, keep_upto=2)                  # the checkpoint says 2 rounds
  log.write({"round": 2, "step": 3})
  log.close()
  assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
  assert [json.loads(x) for x in path.read_text().splitlines()][-1] == {"round": 2, "step": 3}
  JsonlLog(path).close()                             # 0: afresh
  assert path.read_text() == ""
