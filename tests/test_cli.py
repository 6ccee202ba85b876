"""The command line tells the truth: generated --help, --print-config, one-line errors.

Every command runs in-process through `jaxnet.cli.main`; a user error must give exit
status 2 and exactly one line on stderr, never a traceback.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxnet.cli import main
from jaxnet.config import ConfigError, config_from_dict, describe_fields, load_config

CONFIGS = Path(__file__).parent.parent / "configs"


def _one_line_error(capsys, rc) -> str:
  out = capsys.readouterr()
  assert rc == 2, out
  lines = out.err.strip().splitlines()
  assert len(lines) == 1, out.err
  assert "Traceback" not in out.err
  return lines[0]


# --------------------------------------------------------------------------- help

@pytest.mark.parametrize("command", ["train", "simulate", "launch", "validator", "peer"])
def test_help_lists_every_config_field(command, capsys):
  assert main([command, "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: jaxnet {command}")
  rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
  fields = describe_fields()
  for f in fields:
    row = rows[f.name]   # every field, by its dotted name, then type, default and doc
    assert row.startswith(f"  {f.name}  ")
    rest = row[len(f"  {f.name}"):].strip()
    assert rest.startswith(f"{f.type} ")
    assert rest[len(f.type):].strip().startswith(f"{f.default} ")
    assert row.endswith(f"  {f.doc}"), row
  # a few spot checks against the dataclasses themselves
  assert rows["train.steps"].split()[1:3] == ["int", "20"]
  assert rows["gauntlet.rating.beta"].split()[1:3] == ["float", "7.0"]
  assert rows["ledger.mechanism"].split()[1:3] == ["yuma|bittensor2020", "yuma"]


def test_help_of_the_other_commands(capsys):
  assert main(["report", "--help"]) == 0
  assert "--round" in capsys.readouterr().out
  assert main(["data", "prepare", "--help"]) == 0
  assert "--out" in capsys.readouterr().out
  assert main(["data", "--help"]) == 0
  assert "jaxnet data prepare" in capsys.readouterr().out
  assert main(["--help"]) == 0
  assert "jaxnet simulate" in capsys.readouterr().out


def test_help_wins_over_a_bad_config(capsys):
  assert main(["train", "--config", "nope.yaml", "--train.bogus", "1", "--help"]) == 0
  assert "train.steps" in capsys.readouterr().out


def test_print_config_is_the_resolved_config(capsys):
  args = ["--config", str(CONFIGS / "sim-tiny.yaml"), "--sim.rounds", "7",
          "--gauntlet.rating.beta=5"]
  assert main(["simulate", *args, "--print-config"]) == 0
  printed = yaml.safe_load(capsys.readouterr().out)
  cfg = config_from_dict(printed)
  assert cfg == load_config(CONFIGS / "sim-tiny.yaml", args[2:])
  assert cfg.sim.rounds == 7 and cfg.gauntlet.rating.beta == 5.0
  assert cfg.sim.peers == load_config(CONFIGS / "sim-tiny.yaml").sim.peers   # from the file


def test_unknown_command(capsys):
  line = _one_line_error(capsys, main(["foo"]))
  assert line == ("jaxnet: unknown command 'foo' (known: data, export, launch, market, peer, report, "
                  "simulate, train, validator)")
  line = _one_line_error(capsys, main(["data", "bar"]))
  assert "unknown command 'bar'" in line


@pytest.mark.parametrize("args, text", [
    (["train", "--train.steps", "ten"], "train.steps"),
    (["train", "--config"], "--config needs a FILE"),
    (["simulate", "--config", "does-not-exist.yaml"], "file not found"),
    (["train", "--train.log_every", "10"], "train.log_every: unknown field"),
    (["report"], "required: run_dir"),
])
def test_bad_command_lines_fail_in_one_line(args, text, capsys):
  assert text in _one_line_error(capsys, main(args))


# --------------------------------------------------------------------------- OS errors

def test_unwritable_output_is_one_line(tmp_path, capsys):
  """A real OSError from creating an output directory (the parent is a file)."""
  text = tmp_path / "in.txt"
  text.write_text("in the beginning\n")
  blocker = tmp_path / "file"
  blocker.write_text("")
  rc = main(["data", "prepare", str(text), "--out", str(blocker / "shards")])
  line = _one_line_error(capsys, rc)
  assert line.startswith("jaxnet: ") and str(blocker) in line and "Not a directory" in line


def test_train_into_an_unwritable_run_dir_is_one_line(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("")
  rc = main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--train.steps", "2",
             "--train.warmup_steps", "0", "--train.out_dir", str(blocker / "run")])
  line = _one_line_error(capsys, rc)
  assert line.startswith(f"jaxnet: NotADirectoryError: {blocker}") and "Not a directory" in line


@pytest.mark.parametrize("error, expected", [
    (PermissionError(13, "Permission denied", "/ro/run/metrics.jsonl"),
     "jaxnet: PermissionError: /ro/run/metrics.jsonl: Permission denied"),
    (OSError(28, "No space left on device", "/full/run/checkpoints/5"),
     "jaxnet: OSError: /full/run/checkpoints/5: No space left on device"),
])
def test_os_errors_name_path_and_reason(monkeypatch, capsys, error, expected):
  from jaxnet import cli

  def raises(argv):
    try:
      raise error
    except OSError as e:   # as a checkpoint library wraps it
      raise RuntimeError("save failed\ninner details") from e
  monkeypatch.setitem(cli.COMMANDS, "train", raises)
  assert _one_line_error(capsys, main(["train"])) == expected


def test_a_bug_still_shows_its_traceback(monkeypatch):
  from jaxnet import cli

  def buggy(argv):
    try:
      open("/nonexistent/cache")
    except FileNotFoundError:
      raise KeyError("not a user error")   # raised while handling: context, not cause
  monkeypatch.setitem(cli.COMMANDS, "train", buggy)
  with pytest.raises(KeyError):
    main(["train"])


# --------------------------------------------------------------------------- data prepare

def test_prepare_out_is_an_existing_file(tmp_path, capsys):
  target = tmp_path / "shards"
  target.write_text("not a directory")
  line = _one_line_error(capsys, main(["data", "prepare", "--out", str(target)]))
  assert str(target) in line and "existing file" in line
  assert target.read_text() == "not a directory"


# --------------------------------------------------------------------------- report

def _report(n: int, value: float) -> dict:
  keys = ["r_own", "r_rand", "indicator", "bma", "sync", "ordinal", "final", "weight"]
  rep = {k: [value] * n for k in keys}
  rep.update(uid=list(range(n)), scored=[True] * n, reason=[""] * n, copy_level=[0] * n,
             slash_gather_skipped=[False] * n, slash_desync=[False] * n,
             slash_eval_missing=[False] * n, slash_malformed=[False] * n,
             slash_inactive_reset=[False] * n)
  return rep


@pytest.fixture
def sim_run(tmp_path):
  recs = [{"round": r, "step": r + 1, "val_loss": 5.0 - r, "evaluated": 2, "gathered": 2,
           "report": _report(2, 0.1 * (r + 1))} for r in range(3)]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
  return tmp_path


def test_report_shows_the_asked_round(sim_run, capsys):
  assert main(["report", str(sim_run), "--round", "1", "--no-plots"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("round 1: validation loss 4.0000")
  assert main(["report", str(sim_run), "--no-plots"]) == 0
  assert capsys.readouterr().out.startswith("round 2: ")   # default: the last round


def test_report_round_out_of_range(sim_run, capsys):
  line = _one_line_error(capsys, main(["report", str(sim_run), "--round", "999", "--no-plots"]))
  assert "--round 999" in line and "out of range" in line and "0..2" in line


def test_report_rejects_a_negative_round(sim_run, capsys):
  line = _one_line_error(capsys, main(["report", str(sim_run), "--round", "-5", "--no-plots"]))
  assert "-5" in line and "count from 0" in line


def test_report_of_a_missing_run(tmp_path, capsys):
  line = _one_line_error(capsys, main(["report", str(tmp_path / "nope"), "--no-plots"]))
  assert str(tmp_path / "nope") in line


# --------------------------------------------------------------------------- sim ledger

def _bridge(mechanism, layout="split", *extra):
  from jaxnet.sim.ledger_bridge import LedgerBridge
  cfg = load_config(CONFIGS / "sim-tiny.yaml",
                    ["--sim.ledger_every", "5", "--ledger.mechanism", mechanism,
                     "--ledger.yuma.layout", layout, "--sim.validators", "2",
                     "--sim.validator_stake", "[1.0, 3.0]", "--ledger.reveal_period", "0",
                     *extra])
  return LedgerBridge(cfg, 4)


def test_sim_ledger_runs_the_2020_mechanism():
  """`--sim.ledger_every 5 --ledger.mechanism bittensor2020` once raised a ValueError
  traceback; the network's validators and peers now share one 2020 index space."""
  bridge = _bridge("bittensor2020")
  state = bridge.init()
  w = np.array([0.5, 0.3, 0.2, 0.0])
  logs = []
  for window in range(10):
    state, log = bridge.maybe_epoch(state, window, w)
    logs += [log] if log else []
  assert [g["epoch"] for g in logs] == [0, 1]   # after rounds 4 and 9
  total = 4_000_000   # 1.0 + 3.0 stake at 1e6 units each
  for g in logs:
    # 2020 inflation: tau x total stake, all of it paid by incentive (spec §1.2)
    assert g["minted"] == int(0.1 * total) and g["owner"] == 0
    assert sum(g["miner_units"]) == g["minted"] and g["validator_units"] == [0, 0]
    np.testing.assert_allclose(np.array(g["miner_units"]) / g["minted"], w, atol=1e-6)
    total += g["minted"]   # paid into stake, so the next epoch mints more
  assert int(np.asarray(state.ledger.minted)) == 400_000 + 440_000


def test_sim_ledger_combined_yuma_matches_the_split_layout():
  logs = []
  for layout in ("split", "combined"):
    bridge = _bridge("yuma", layout)
    _, log = bridge.maybe_epoch(bridge.init(), 4, np.array([0.5, 0.3, 0.2, 0.0]))
    logs.append(log)
  assert logs[0] == logs[1]
  assert sum(logs[0]["miner_units"]) + sum(logs[0]["validator_units"]) + logs[0]["owner"] \
      == logs[0]["minted"]


def test_sim_ledger_that_would_overflow_is_refused_in_one_line():
  with pytest.raises(ConfigError) as e:
    _bridge("bittensor2020", "split", "--sim.rounds", "1000", "--sim.ledger_every", "1")
  msg = str(e.value)
  assert msg.startswith("sim.rounds: 1000 rounds with sim.ledger_every 1") and "\n" not in msg


@pytest.mark.slow
def test_simulate_with_the_2020_ledger_end_to_end(tmp_path, capsys):
  rc = main(["simulate", "--config", str(CONFIGS / "sim-tiny.yaml"), "--sim.rounds", "6",
             "--sim.ledger_every", "5", "--ledger.mechanism", "bittensor2020",
             "--train.out_dir", str(tmp_path / "run")])
  assert rc == 0, capsys.readouterr().err
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  recs = [json.loads(line) for line in lines]
  paid = [r["ledger"] for r in recs if r["ledger"]]
  assert len(paid) == 1 and sum(paid[0]["miner_units"]) == paid[0]["minted"] > 0
