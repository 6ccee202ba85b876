"""Baseline training: learns, 1 vs 4 devices agree, bit-exact resume, clear checkpoint errors."""
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import skip_if_not_enough_devices
from jaxnet import train
from jaxnet.checkpoint import CheckpointError
from jaxnet.config import load_config
from jaxnet.rundir import RunError

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"


def _cfg(tmp_path, name, **over):
  flat = {"train.out_dir": str(tmp_path / name), "train.steps": 8, "train.warmup_steps": 2,
          "checkpoint.every": 0, **over}
  args = []
  for k, v in flat.items():
    args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
  return load_config(TINY, args)


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state, state.step))]


def test_loss_decreases_and_outputs_written(tmp_path):
  cfg = _cfg(tmp_path, "run", **{"train.steps": 30})
  out = train.train(cfg, progress=False, devices=jax.devices()[:1])
  losses = [r["loss"] for r in out["history"]]
  assert len(losses) == 30
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
  run_dir = Path(cfg.train.out_dir)
  assert (run_dir / "loss.png").stat().st_size > 1000
  recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in recs] == list(range(1, 31))


@skip_if_not_enough_devices(4)
def test_one_and_four_devices_give_the_same_losses(tmp_path):
  cfg1 = _cfg(tmp_path, "d1", **{"train.microbatch": 4})
  cfg4 = _cfg(tmp_path, "d4", **{"train.microbatch": 4})
  h1 = train.train(cfg1, progress=False, devices=jax.devices()[:1])["history"]
  h4 = train.train(cfg4, progress=False, devices=jax.devices()[:4])["history"]
  np.testing.assert_allclose([r["loss"] for r in h1], [r["loss"] for r in h4], rtol=0, atol=1e-5)


def test_microbatching_equals_full_batch(tmp_path):
  full = train.train(_cfg(tmp_path, "full"), progress=False, devices=jax.devices()[:1])
  micro = train.train(_cfg(tmp_path, "micro", **{"train.microbatch": 2}), progress=False,
                      devices=jax.devices()[:1])
  np.testing.assert_allclose([r["loss"] for r in full["history"]],
                             [r["loss"] for r in micro["history"]], atol=1e-5)


def test_resume_is_bit_exact(tmp_path):
  straight = train.train(_cfg(tmp_path, "straight"), progress=False, devices=jax.devices()[:1])
  cfg = _cfg(tmp_path, "resumed")
  first = train.train(cfg, progress=False, devices=jax.devices()[:1], stop_after=4)
  assert first["end"] == 4
  second = train.train(cfg, progress=False, devices=jax.devices()[:1])
  assert second["start"] == 4 and second["end"] == 8
  for a, b in zip(_leaves(straight["state"]), _leaves(second["state"])):
    np.testing.assert_array_equal(a, b)
  # the data position is part of the checkpoint and the metrics log is continuous
  recs = [json.loads(l) for l in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in recs] == list(range(1, 9))
  assert [r["loss"] for r in recs] == [r["loss"] for r in straight["history"]]


def test_incompatible_checkpoint_is_an_error(tmp_path):
  cfg = _cfg(tmp_path, "a", **{"train.steps": 2, "train.warmup_steps": 1})
  train.train(cfg, progress=False, devices=jax.devices()[:1])
  bigger = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=32, d_ff=64))
  bigger = dataclasses.replace(bigger, train=dataclasses.replace(cfg.train, steps=4))
  # the run directory refuses first (its stored config) ...
  with pytest.raises(RunError, match="was made with model.d_ff=172, the config now says 64"):
    train.train(bigger, progress=False, devices=jax.devices()[:1])
  # ... and the checkpoint itself when it is reached from another run directory
  elsewhere = dataclasses.replace(bigger, train=dataclasses.replace(bigger.train, out_dir=str(tmp_path / "a2")),
                                  checkpoint=dataclasses.replace(cfg.checkpoint, dir=str(tmp_path / "a" / "checkpoints")))
  with pytest.raises(CheckpointError, match="incompatible checkpoint, model"):
    train.train(elsewhere, progress=False, devices=jax.devices()[:1])


def test_partial_checkpoint_is_an_error(tmp_path):
  cfg = _cfg(tmp_path, "b", **{"train.steps": 2, "train.warmup_steps": 1})
  train.train(cfg, progress=False, devices=jax.devices()[:1])
  step_dir = Path(cfg.train.out_dir) / "checkpoints" / "2" / "state"
  victims = [p for p in step_dir.rglob("*") if p.is_file()]
  assert victims
  for p in victims:
    p.write_bytes(b"")  # truncated files, as after a crash mid-copy
  longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=4))
  with pytest.raises(CheckpointError, match="partial"):
    train.train(longer, progress=False, devices=jax.devices()[:1])


def test_missing_required_and_leftover_directory(tmp_path):
  cfg = _cfg(tmp_path, "c", **{"checkpoint.resume": "required"})
  with pytest.raises(CheckpointError, match="no checkpoint exists"):
    train.train(cfg, progress=False, devices=jax.devices()[:1])
  junk = tmp_path / "junk"
  junk.mkdir()
  (junk / "notes.txt").write_text("x")
  cfg = _cfg(tmp_path, "d", **{"checkpoint.dir": str(junk)})
  with pytest.raises(CheckpointError, match="no complete checkpoint"):
    train.train(cfg, progress=False, devices=jax.devices()[:1])


def test_resume_never_refuses_to_mix_with_old_checkpoints(tmp_path):
  cfg = _cfg(tmp_path, "e", **{"train.steps": 2, "train.warmup_steps": 1})
  train.train(cfg, progress=False, devices=jax.devices()[:1])
  again = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, resume="never"))
  with pytest.raises(RunError, match="checkpoint.resume=never"):
    train.train(again, progress=False, devices=jax.devices()[:1])
  # a new run directory that points at the old checkpoints is refused by the checkpointer
  other = dataclasses.replace(again, train=dataclasses.replace(cfg.train, out_dir=str(tmp_path / "e2")),
                              checkpoint=dataclasses.replace(again.checkpoint, dir=str(tmp_path / "e" / "checkpoints")))
  with pytest.raises(CheckpointError, match="resume=never but it holds checkpoints"):
    train.train(other, progress=False, devices=jax.devices()[:1])
