"""The one host loop (`jaxnet.loop.run`) on a toy task: dispatch order, NaN check,
checkpoint cadence, resume and hooks, the same for every mode that uses it."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import loop
from jaxnet.config import load_config
from jaxnet.rundir import read_metrics


def _cfg(tmp_path, *extra):
  return load_config(None, ["--train.out_dir", str(tmp_path / "run"), "--train.steps", "6",
                            "--train.warmup_steps", "1", *extra])


def _task(events, nan_at=None, hooks=()):
  """State x -> x * 1.5 + index; its 'loss' is the new x (NaN at step `nan_at`)."""
  def step(state, i):
    events.append(("dispatch", i + 1))
    x = state["x"] * 1.5 + i
    return {"x": x}, x if i + 1 != nan_at else jnp.float32(jnp.nan)

  def host(s, out):
    events.append(("host", s))
    return {"loss": float(out)}

  return lambda run_id: loop.Task(state={"x": jnp.float32(1.0)}, total=6, step=step, host=host,
                                  hooks=list(hooks))


def test_step_t_is_read_after_step_t_plus_1_is_dispatched_except_before_a_checkpoint(tmp_path):
  events = []
  loop.run(_cfg(tmp_path, "--checkpoint.every", "3"), "train", _task(events), compat={},
           progress=False)
  assert events == [("dispatch", 1), ("dispatch", 2), ("host", 1), ("dispatch", 3), ("host", 2),
                    ("host", 3),                       # checkpoint 3: its record first
                    ("dispatch", 4), ("dispatch", 5), ("host", 4), ("dispatch", 6), ("host", 5),
                    ("host", 6)]


def test_a_nan_loss_stops_the_run_naming_the_step(tmp_path):
  with pytest.raises(FloatingPointError, match="loss is nan at step 4"):
    loop.run(_cfg(tmp_path), "train", _task([], nan_at=4), compat={}, progress=False)


def test_resume_continues_the_same_numbers_and_calls_hooks_per_record(tmp_path):
  seen = []
  straight = loop.run(_cfg(tmp_path / "a"), "train", _task([], hooks=[seen.append]), compat={},
                      progress=False)
  assert [r["step"] for r in seen] == list(range(1, 7))
  cfg = _cfg(tmp_path / "b", "--checkpoint.every", "2")
  first = loop.run(cfg, "train", _task([]), compat={}, progress=False, stop_after=3)
  assert (first["start"], first["end"]) == (0, 3)
  again = loop.run(cfg, "train", _task([]), compat={}, progress=False)
  assert again["start"] == 3 and float(again["state"]["x"]) == float(straight["state"]["x"])
  losses = [r["loss"] for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")]
  np.testing.assert_array_equal(losses, [r["loss"] for r in straight["history"]])
