"""Experiment tracking (`log.tensorboard`, jaxnet.tracking): the events read back equal
metrics.jsonl, odd values are skipped, only process 0 writes, a failing writer never stops
a run.

The event files are read here without TensorBoard: TFRecord framing (length u64, masked
CRC-32C of the length, data, masked CRC-32C of the data) around `Event` protos, decoded
with the protobuf classes tensorboardX ships.
"""
import dataclasses
import math
import sys
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2  # noqa: E402

from jaxnet import cli, loop, tracking  # noqa: E402
from jaxnet.config import ConfigError, load_config, to_dict  # noqa: E402
from jaxnet.rundir import config_diff, read_metrics  # noqa: E402
from tb_events import f32, read_events, scalars_by_tag  # noqa: E402

CONFIGS = Path(__file__).parent.parent / "configs"
# the tiny model made smaller still: one compile of a few seconds
SHRINK = ["--model.d_model", "32", "--model.n_layers", "1", "--model.n_heads", "2",
          "--model.d_ff", "64", "--model.max_seq_len", "32", "--data.seq_len", "32",
          "--train.batch_size", "4", "--train.warmup_steps", "1"]


# --------------------------------------------------------------------------- the mapping

def test_record_scalars_maps_names_and_skips_what_is_not_a_finite_number():
  rec = {"step": 3, "round": 2, "time": 12.5, "loss": 2.5, "val_loss": float("nan"),
         "lr": 1e-3, "tokens_per_s": float("inf"), "loss_alone": None, "theta": "ab12",
         "flag": True, "top_uids": [1, 0], "W": [[0.5, 0.5], [1.0, 0.0]],
         "weight_by_class": {"honest": 0.75, "noise": "n/a"},
         "slashes": {"slash_desync": 1, "slash_malformed": 0},
         "report": {"weight": [0.25, float("nan"), "x", [0.1], 0.5],
                    "ordinal": [1.0, 2.0, 3.0, 4.0, 5.0], "bma": [0.1] * 5, "sync": [1.0] * 5,
                    "reason": ["", "copy", "", "", ""], "mu": [9.0] * 5,
                    "slash_desync": [False, True, False, False, True],
                    "slash_malformed": [False, True, False, False, False]}}
  out = tracking.record_scalars(rec)
  assert {k for k in out if not k.startswith("peer/")} == {
      "loss", "lr", "weight_by_class/honest", "slashes/slash_desync", "slashes/slash_malformed"}
  assert out["loss"] == 2.5 and out["lr"] == 1e-3
  # per uid: zero-padded, the listed keys only, the bad entries of a list left out
  assert out["peer/uid_00/weight"] == 0.25 and out["peer/uid_04/weight"] == 0.5
  assert not any(f"peer/uid_0{u}/weight" in out for u in (1, 2, 3))
  assert out["peer/uid_03/ordinal"] == 4.0 and out["peer/uid_02/sync"] == 1.0
  assert [out[f"peer/uid_0{u}/slashes"] for u in range(5)] == [0, 2, 0, 0, 1]
  assert not any(k.endswith("/mu") for k in out)
  assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())


def test_record_scalars_pads_uids_by_the_network_size_and_maps_validators_and_market():
  many = tracking.record_scalars({"report": {"weight": [0.0] * 120}})
  assert "peer/uid_007/weight" in many and "peer/uid_119/weight" in many
  sim = tracking.record_scalars({"validator_weights": [[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]],
                                 "ledger": {"epoch": 1, "minted": 1000, "miner_units": [3, 4],
                                            "validator_units": [7, 8, 9], "committed": [True]}})
  assert sim["validator/v01/uid_00/weight"] == 1.0 and sim["validator/v02/uid_01/weight"] == 1.0
  assert sim["ledger/minted"] == 1000 and sim["peer/uid_01/miner_units"] == 4
  assert sim["validator/v02/units"] == 9
  # one validator: its row is report.weight already
  assert not any(k.startswith("validator/") for k in
                 tracking.record_scalars({"validator_weights": [[0.5, 0.5]]}))
  market = tracking.record_scalars({"block": 4, "loss": 3.0, "cabal_share": 0.25,
                                    "stake": [10, 20], "peer_loss": [2.0, 4.0],
                                    "value": [0.5, 0.25], "ledger": {"epoch": 2, "paid": [1, 2]}})
  assert market == {"loss": 3.0, "cabal_share": 0.25, "ledger/epoch": 2.0,
                    "peer/uid_00/stake": 10.0, "peer/uid_01/stake": 20.0,
                    "peer/uid_00/value": 0.5, "peer/uid_01/value": 0.25,
                    "peer/uid_00/loss": 2.0, "peer/uid_01/loss": 4.0,
                    "peer/uid_00/paid": 1.0, "peer/uid_01/paid": 2.0}
  assert tracking.record_scalars("not a record") == {}


# --------------------------------------------------------------------------- through the loop

def _cfg(tmp_path, *extra):
  return load_config(None, ["--train.out_dir", str(tmp_path / "run"), "--train.steps", "6",
                            "--train.warmup_steps", "1", *extra])


def _task(run_id=None):
  """A toy mode whose records look like the simulator's: loss, a NaN, text, per-uid lists."""
  def step(state, i):
    x = state["x"] * 0.5 + i
    return {"x": x}, x

  def host(s, out):
    x = float(out)
    return {"loss": x, "val_loss": float("nan"), "note": "text",
            "report": {"weight": [x / 10, 1 - x / 10, 1 / 3], "sync": [1.0, 0.0, 1.0],
                       "slash_desync": [False, True, False]}}

  return loop.Task(state={"x": jnp.float32(1.0)}, total=6, step=step, host=host)


def test_events_equal_the_metrics_across_a_resume(tmp_path):
  cfg = _cfg(tmp_path, "--checkpoint.every", "2", "--log.tensorboard", str(tmp_path / "tb"))
  first = loop.run(cfg, "train", _task, compat={}, progress=False, stop_after=3)
  assert first["end"] == 3 and len(list((tmp_path / "tb").iterdir())) == 1
  loop.run(cfg, "train", _task, compat={}, progress=False)
  recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
  tags = scalars_by_tag(tmp_path / "tb")
  assert set(tags["loss"]) == set(range(1, 7))
  for r in recs:
    assert tags["loss"][r["step"]] == f32(r["loss"])
    assert tags["peer/uid_01/weight"][r["step"]] == f32(r["report"]["weight"][1])
    assert tags["peer/uid_01/slashes"][r["step"]] == 1.0
  assert "val_loss" not in tags and "note" not in tags and "step" not in tags
  # the resumed session's file starts with TensorBoard's purge marker at its first step
  starts = [e for e in read_events(tmp_path / "tb") if e.HasField("session_log")]
  assert [(e.step, e.session_log.status) for e in starts] == [(4, event_pb2.SessionLog.START)]


def test_tracking_can_be_turned_on_when_resuming():
  off = load_config(CONFIGS / "tiny.yaml")
  on = load_config(CONFIGS / "tiny.yaml", ["--log.tensorboard", "runs/tb"])
  assert config_diff(to_dict(off), to_dict(on)) == []


def test_only_process_0_tracks(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path, "--log.tensorboard", str(tmp_path / "tb"))
  assert tracking.open_tracker(cfg, main=False) is None

  class NotMain(loop.RunDir):   # what every process but 0 sees under jax.distributed
    def __init__(self, *a, **k):
      super().__init__(*a, **k)
      self.main = False

  monkeypatch.setattr(loop, "RunDir", NotMain)
  out = loop.run(cfg, "train", _task, compat={}, progress=False)
  assert len(out["history"]) == 6 and not (tmp_path / "tb").exists()


def test_a_failing_writer_is_reported_once_and_the_run_goes_on(tmp_path, monkeypatch):
  write = tracking.TensorBoardWriter.write

  def fail_at_2(self, step, scalars):
    if step >= 2:
      raise OSError(28, "No space left on device")
    write(self, step, scalars)

  monkeypatch.setattr(tracking.TensorBoardWriter, "write", fail_at_2)
  cfg = _cfg(tmp_path, "--checkpoint.every", "2", "--log.tensorboard", str(tmp_path / "tb"))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = loop.run(cfg, "train", _task, compat={}, progress=False)
  said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
  assert len(said) == 1 and "No space left" in said[0] and "tracking is off" in said[0]
  assert len(out["history"]) == 6
  assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 6
  assert set(scalars_by_tag(tmp_path / "tb")["loss"]) == {1}   # written before the failure


def test_an_unwritable_directory_is_a_warning_not_a_failed_run(tmp_path):
  (tmp_path / "file").write_text("not a directory")
  cfg = _cfg(tmp_path, "--log.tensorboard", str(tmp_path / "file" / "tb"))
  with pytest.warns(RuntimeWarning, match="log.tensorboard: .*tracking is off"):
    out = loop.run(cfg, "train", _task, compat={}, progress=False)
  assert len(out["history"]) == 6


def test_missing_tensorboardx_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
  for name in [m for m in sys.modules if m == "tensorboardX" or m.startswith("tensorboardX.")]:
    monkeypatch.setitem(sys.modules, name, None)
  with pytest.raises(ConfigError, match=r"pip install -e '\.\[track\]'"):
    tracking.check(_cfg(tmp_path, "--log.tensorboard", "auto"))
  tracking.check(_cfg(tmp_path))   # off: nothing is imported
  rc = cli.main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--train.out_dir",
                 str(tmp_path / "run"), "--log.tensorboard"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "tensorboardX" in err[0], err
  assert not (tmp_path / "run").exists()
  # the launcher says it too, before it starts any process
  rc = cli.main(["launch", "--config", str(CONFIGS / "sim-tiny.yaml"), "--train.out_dir",
                 str(tmp_path / "net"), "--storage", str(tmp_path / "store"), "--log.tensorboard"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "tensorboardX" in err[0], err
  assert not (tmp_path / "net").exists() and not (tmp_path / "store").exists()


def test_a_bare_flag_means_the_default_directory():
  parse = cli._parse_run_args
  assert parse(["--log.tensorboard"])[1] == ["--log.tensorboard", "auto"]
  assert parse(["--log.tensorboard", "--train.steps", "3"])[1] == [
      "--log.tensorboard", "auto", "--train.steps", "3"]
  assert parse(["--log.tensorboard", "runs/tb", "-h"])[1:] == (["--log.tensorboard", "runs/tb"],
                                                                False, True)
  cfg = load_config(None, ["--train.out_dir", "runs/x", "--log.tensorboard", "auto"])
  assert tracking.logdir(cfg) == Path("runs/x/tensorboard")
  assert tracking.logdir(load_config(None)) is None


def test_the_decentralised_baseline_tracks_beside_the_run(tmp_path):
  from jaxnet.decentral import baseline_config
  cfg = load_config(CONFIGS / "tiny.yaml", ["--train.out_dir", str(tmp_path), "--log.tensorboard",
                                            str(tmp_path / "tb")])
  assert baseline_config(cfg).log.tensorboard == str(tmp_path / "tb" / "adamw_baseline")
  auto = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, tensorboard="auto"))
  assert tracking.logdir(baseline_config(auto)) == tmp_path / "tensorboard" / "adamw_baseline"
  off = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, tensorboard=""))
  assert baseline_config(off).log.tensorboard == ""


# --------------------------------------------------------------------------- real modes

def test_jaxnet_train_logs_loss_lr_and_throughput_per_step(tmp_path, capsys):
  out = tmp_path / "tiny"
  rc = cli.main(["train", "--config", str(CONFIGS / "tiny.yaml"), *SHRINK, "--train.steps", "3",
                 "--train.eval_every", "3", "--train.out_dir", str(out), "--log.tensorboard"])
  assert rc == 0, capsys.readouterr().err
  recs = read_metrics(out / "metrics.jsonl")
  tags = scalars_by_tag(out / "tensorboard")
  for key in ("loss", "lr", "tokens_per_s", "grad_norm"):
    assert tags[key] == {r["step"]: f32(r[key]) for r in recs}, key
  assert tags["val_loss"] == {3: f32(recs[-1]["val_loss"])}
