"""Stored state is verified and runs never mix (issue: trustworthy runs).

Each test is a repro that failed before run directories and checkpoint digests existed:
a flipped byte restored silently, two runs shared one out_dir, a resume accepted another
learning rate, a kill after a checkpoint lost its metrics record, val_loss was measured a
step late, and a torn metrics line broke resume and `jaxnet report`.
"""
import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import train
from jaxnet import model as jmodel
from jaxnet.checkpoint import Checkpointer, CheckpointError
from jaxnet.config import load_config
from jaxnet.rundir import RunDir, RunError, config_diff, read_metrics

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"


def _cfg(tmp_path, name, *extra):
  return load_config(TINY, ["--train.out_dir", str(tmp_path / name), "--train.steps", "6",
                            "--train.warmup_steps", "1", *extra])


def _train(cfg, **kw):
  return train.train(cfg, progress=False, devices=jax.devices()[:1], **kw)


# ------------------------------------------------------------------ checkpoints

def _tree():
  return {"a": jnp.asarray(np.arange(4096, dtype=np.float32) * 3.25 + 1000.0),
          "b": {"c": jnp.arange(7, dtype=jnp.int32)}, "key": jax.random.key(3)}


def _same(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(jax.tree.map(_raw, a)), jax.tree.leaves(jax.tree.map(_raw, b))))


def _raw(x):
  return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def test_swapped_array_data_is_named_with_step_and_array(tmp_path):
  tree = _tree()
  other = dict(tree, a=tree["a"].at[123].set(-1.09e26))
  with Checkpointer(tmp_path / "ck") as ck:
    ck.save(1, tree)
    ck.save(2, other)
  # step 1's arrays replaced by step 2's: its metadata (and digests) still describe step 1
  shutil.rmtree(tmp_path / "ck" / "1" / "state")
  shutil.copytree(tmp_path / "ck" / "2" / "state", tmp_path / "ck" / "1" / "state")
  with Checkpointer(tmp_path / "ck") as ck:
    with pytest.raises(CheckpointError, match=r"ck/1: array \['a'\] fails its SHA-256 digest"):
      ck.restore(1, tree)
    restored, _ = ck.restore(2, tree)
    assert _same(restored, other)


def test_a_flipped_byte_never_restores_silently(tmp_path):
  tree = _tree()
  with Checkpointer(tmp_path / "ck") as ck:
    ck.save(1, tree)
  files = sorted((p for p in (tmp_path / "ck" / "1" / "state").rglob("*") if p.is_file()),
                 key=lambda p: -p.stat().st_size)
  data_file = files[0]
  original = data_file.read_bytes()
  outcomes = {"error": 0, "same": 0}
  for pos in np.linspace(0, len(original) - 1, 40).astype(int):
    damaged = bytearray(original)
    damaged[pos] ^= 0x5A
    data_file.write_bytes(bytes(damaged))
    with Checkpointer(tmp_path / "ck") as ck:
      try:
        restored, _ = ck.restore(1, tree)
      except CheckpointError as e:
        assert "\n" not in str(e) and "/1" in str(e)
        outcomes["error"] += 1
        continue
    assert _same(restored, tree), f"byte {pos} changed the restored arrays silently"
    outcomes["same"] += 1
  data_file.write_bytes(original)
  assert outcomes["error"] > 0, outcomes


# ------------------------------------------------------------------ one writer, one config

def test_two_runs_in_one_out_dir_are_refused(tmp_path):
  cfg = _cfg(tmp_path, "run")
  with RunDir(cfg, "train") as first:
    first.begin(0)
    with pytest.raises(RunError, match="in use by a live run"):
      RunDir(cfg, "train")
  with RunDir(cfg, "train") as again:   # released on close
    assert again.run_id == first.run_id


def test_resume_refuses_a_changed_learning_rate_or_seed(tmp_path, capsys):
  cfg = _cfg(tmp_path, "run")
  _train(cfg, stop_after=3)
  for field, value in (("train.lr", "0.002"), ("train.seed", "1"), ("data.seed", "4")):
    changed = _cfg(tmp_path, "run", f"--{field}", value)
    with pytest.raises(RunError, match=f"was made with {field}="):
      _train(changed)
  longer = _cfg(tmp_path, "run", "--train.steps", "8", "--train.eval_every", "4")
  out = _train(longer)
  run_id = json.loads((tmp_path / "run" / "run.json").read_text())["run_id"]
  assert f"resumed run {run_id} from step 3" in capsys.readouterr().out
  assert out["start"] == 3 and out["end"] == 8
  assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == list(range(1, 9))
  # the manifest has one entry per session: what ran, on what, from which step to which
  info = json.loads((tmp_path / "run" / "run.json").read_text())
  assert (info["mode"], info["name"]) == ("train", "run")
  s0, s1 = info["sessions"]
  assert (s0["from_step"], s0["to_step"], s1["from_step"], s1["to_step"]) == (0, 3, 3, 8)
  assert s0["end"] and s1["end"] and s1["packages"]["jax"] == jax.__version__
  assert s1["devices"]["count"] == jax.device_count() and s1["git_commit"]
  from jaxnet import cli
  capsys.readouterr()
  assert cli.main(["report", str(tmp_path / "run"), "--no-plots"]) == 0
  printed = capsys.readouterr().out
  assert f"run {run_id} (train, run)" in printed and "session 1: steps 3..8" in printed


def test_config_diff_ignores_only_fields_that_extend_the_run():
  base = {"train": {"steps": 5, "lr": 1e-3, "out_dir": "a"}, "sim": {"rounds": 3, "seed": 0}}
  longer = {"train": {"steps": 9, "lr": 1e-3, "out_dir": "b"}, "sim": {"rounds": 30, "seed": 0}}
  assert config_diff(base, longer) == []
  other = {"train": {"steps": 5, "lr": 2e-3, "out_dir": "a"}, "sim": {"rounds": 3, "seed": 1}}
  assert config_diff(base, other) == [("sim.seed", 0, 1), ("train.lr", 1e-3, 2e-3)]


def test_resume_never_refuses_an_existing_run(tmp_path):
  cfg = _cfg(tmp_path, "run", "--train.steps", "2")
  _train(cfg)
  assert load_config(tmp_path / "run" / "config.yaml") == cfg   # the stored config reads back
  with pytest.raises(RunError, match="holds run .* checkpoint.resume=never"):
    _train(_cfg(tmp_path, "run", "--train.steps", "2", "--checkpoint.resume", "never"))


# ------------------------------------------------------------------ metrics

class _Killed(Exception):
  pass


@pytest.mark.slow   # CI time: the other kill/resume tests of this file stay
def test_kill_right_after_a_checkpoint_keeps_its_metrics_record(tmp_path, monkeypatch):
  straight = _train(_cfg(tmp_path, "straight", "--train.eval_every", "2"))
  cfg = _cfg(tmp_path, "killed", "--checkpoint.every", "2", "--train.eval_every", "2")
  real_save = Checkpointer.save

  def save_then_die(self, step, state, meta=None):
    real_save(self, step, state, meta)
    if step == 4:
      self._mngr.wait_until_finished()
      raise _Killed()

  monkeypatch.setattr(Checkpointer, "save", save_then_die)
  with pytest.raises(_Killed):
    _train(cfg)
  monkeypatch.setattr(Checkpointer, "save", real_save)
  recs = read_metrics(tmp_path / "killed" / "metrics.jsonl")
  assert [r["step"] for r in recs] == [1, 2, 3, 4]   # step 4's record was on disk
  resumed = _train(cfg)
  assert resumed["start"] == 4
  recs = read_metrics(tmp_path / "killed" / "metrics.jsonl")
  assert [r["step"] for r in recs] == list(range(1, 7))
  keys = ("loss", "grad_norm", "lr", "val_loss")
  assert [[r.get(k) for k in keys] for r in recs] == [[r.get(k) for k in keys] for r in straight["history"]]


def test_val_loss_is_measured_on_the_params_of_its_step(tmp_path):
  full = _train(_cfg(tmp_path, "full", "--train.eval_every", "2"))
  part = _train(_cfg(tmp_path, "part"), stop_after=2)   # same schedule, stopped after step 2
  run = train.Run(_cfg(tmp_path, "x"), devices=jax.devices()[:1])
  expected = float(jmodel.loss_fn(part["state"].params, run.val_batch, cfg=run.cfg.model))
  rec = next(r for r in full["history"] if r["step"] == 2)
  assert rec["val_loss"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
  assert [r["step"] for r in full["history"] if "val_loss" in r] == [2, 4, 6]


def test_a_torn_last_metrics_line_is_dropped_on_resume_and_report(tmp_path):
  cfg = _cfg(tmp_path, "run")
  _train(cfg, stop_after=3)
  path = tmp_path / "run" / "metrics.jsonl"
  with path.open("a") as f:
    f.write('{"step": 4, "loss": 2.')       # killed mid-write
  assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
  from jaxnet import report
  assert [r["step"] for r in report.load_metrics(tmp_path / "run")] == [1, 2, 3]
  out = _train(cfg)
  assert out["start"] == 3
  assert [r["step"] for r in read_metrics(path)] == list(range(1, 7))
  # a damaged line that is not the last is an error that names the line
  lines = path.read_text().splitlines()
  lines[1] = lines[1][:10]
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(RunError, match=r"metrics.jsonl:2: unreadable"):
    read_metrics(path)


def test_a_run_made_before_a_field_existed_still_resumes():
  """A config.yaml written before model.init_from / log.tensorboard existed: a resume with
  those fields at their defaults is not a change, and one that sets them is."""
  from jaxnet.config import Config, model_compat, to_dict
  new = to_dict(Config())
  old = json.loads(json.dumps(new))
  del old["model"]["init_from"], old["log"]
  assert config_diff(old, new) == []
  changed = to_dict(load_config(None, ["--model.init_from", "runs/x-hf"]))
  assert config_diff(old, changed) == [("model.init_from", None, "runs/x-hf")]
  # a checkpoint's compat never held init_from: where a fresh run started is not its shape
  assert "init_from" not in model_compat(Config().model)
