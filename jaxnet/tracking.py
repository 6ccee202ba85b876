"""Experiment tracking: each metrics record as TensorBoard scalars (`log.tensorboard`).

metrics.jsonl stays the record of a run; a tracker is a loop hook on process 0 that turns
each record into scalars at the record's global `step` (`record_scalars`, a pure
function) and hands them to its writers. Tracking never stops a run: a value that is not
a finite number is skipped, and a writer that fails is reported once as a warning and
dropped for the rest of the run.

Tags: a number in the record is tagged by its key path (`loss`, `val_loss`, `lr`,
`tokens_per_s`, `weight_by_class/honest`, `slashes/slash_desync`, `ledger/minted`); the
per-uid lists listed in `PEER_LISTS` become `peer/uid_03/weight` (uids zero-padded so that
TensorBoard sorts them), and with several validators each one's weights become
`validator/v01/uid_03/weight`. The writer is chosen by name (`WRITERS`); "tensorboard"
writes event files with tensorboardX (extra `.[track]`), synchronously: no queue or thread
that could hang a run, and what was written is flushed at every checkpoint.
"""
from __future__ import annotations

import math
import numbers
import time
import warnings
from pathlib import Path
from typing import Any

from jaxnet.configbase import ConfigError

__all__ = ["record_scalars", "logdir", "check", "open_tracker", "Tracker", "TensorBoardWriter",
           "WRITERS"]

# The x axis of a record, not a metric.
INDEX_KEYS = frozenset({"step", "time", "round", "block"})

# Per-uid lists of the records (key path -> tag name under peer/uid_NN/); uid = position.
PEER_LISTS = (
    (("report", "weight"), "weight"),        # simulate, validator: the validator's weights
    (("report", "ordinal"), "ordinal"),      # the OpenSkill ordinal
    (("report", "bma"), "bma"),              # the binary moving average of the indicator
    (("report", "sync"), "sync"),            # the sync score
    (("ledger", "miner_units"), "miner_units"),  # simulate: a ledger epoch's pay per uid
    (("ledger", "incentive"), "incentive"),  # simulate: the epoch's incentive per uid
    (("stake",), "stake"),                   # market: stake units held
    (("value",), "value"),                   # market: leave-one-out value to its queriers
    (("peer_loss",), "loss"),                # market: loss with its neighbours
    (("peer_loss_alone",), "loss_alone"),    # market: the same peer alone (baseline)
    (("ledger", "paid"), "paid"),            # market: a ledger epoch's pay per peer
)
# Per-validator lists of a simulated ledger epoch -> validator/vNN/<name>.
VALIDATOR_LISTS = ((("ledger", "validator_units"), "units"),
                   (("ledger", "stake_units"), "stake_units"),
                   (("ledger", "dividends"), "dividends"),
                   (("ledger", "vtrust"), "vtrust"))


def _number(value: Any) -> float | None:
  """`value` as a float when it is a finite real number (not a bool), else None."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def _at(record: dict, path: tuple[str, ...]) -> Any:
  for key in path:
    if not isinstance(record, dict):
      return None
    record = record.get(key)
  return record


def _label(i: int, n: int) -> str:
  return f"{i:0{max(2, len(str(n - 1)))}d}"


def _per_index(values: Any, tag) -> dict[str, float]:
  """{tag(i, n): value} for the finite numbers of a flat list (anything else is skipped)."""
  if not isinstance(values, list):
    return {}
  out = {}
  for i, v in enumerate(values):
    if (x := _number(v)) is not None:
      out[tag(_label(i, len(values)))] = x
  return out


def record_scalars(record: dict) -> dict[str, float]:
  """The scalars of one metrics record, by tag (module docstring); never raises on odd
  values: NaN, infinities, strings, None, bools and nested lists are left out."""
  if not isinstance(record, dict):
    return {}
  out = {}
  for key, value in record.items():
    if key in INDEX_KEYS:
      continue
    if (x := _number(value)) is not None:
      out[str(key)] = x
    elif isinstance(value, dict):   # weight_by_class, slashes, a ledger epoch's totals
      for sub, v in value.items():
        if (x := _number(v)) is not None:
          out[f"{key}/{sub}"] = x
  for path, name in PEER_LISTS:
    out.update(_per_index(_at(record, path), lambda u, name=name: f"peer/uid_{u}/{name}"))
  report = record.get("report")
  if isinstance(report, dict):   # slashes per uid this round: how many kinds hit it
    flags = [v for k, v in report.items() if str(k).startswith("slash_") and isinstance(v, list)]
    if flags and all(len(f) == len(flags[0]) for f in flags):
      counts = [sum(bool(f[i]) for f in flags) for i in range(len(flags[0]))]
      out.update(_per_index(counts, lambda u: f"peer/uid_{u}/slashes"))
  for path, name in VALIDATOR_LISTS:
    out.update(_per_index(_at(record, path), lambda v, name=name: f"validator/v{v}/{name}"))
  rows = record.get("validator_weights")
  if isinstance(rows, list) and len(rows) > 1:   # one validator's row is report.weight
    for v, row in enumerate(rows):
      prefix = f"validator/v{_label(v, len(rows))}"
      out.update(_per_index(row, lambda u, p=prefix: f"{p}/uid_{u}/weight"))
  return out


# --------------------------------------------------------------------------- writers

def _tensorboardx():
  try:
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2, summary_pb2
  except ImportError:
    raise ConfigError("log.tensorboard: needs tensorboardX; install it with "
                      "pip install -e '.[track]'") from None
  return EventsWriter, event_pb2, summary_pb2


class TensorBoardWriter:
  """One event file per session in `directory`, one event per record. A resumed session
  first writes TensorBoard's purge marker at `start + 1`, so the steps that a killed
  session wrote after its last checkpoint are replaced by the ones redone."""
  name = "tensorboard"

  def __init__(self, directory: Path, start: int = 0):
    EventsWriter, self._event, self._summary = _tensorboardx()
    directory.mkdir(parents=True, exist_ok=True)
    # the nanosecond suffix orders two sessions started within one second (file names sort)
    self._writer = EventsWriter(str(directory / "events"), f".{time.time_ns()}")
    if start > 0:
      log = self._event.SessionLog(status=self._event.SessionLog.START)
      self._writer.write_event(self._event.Event(wall_time=time.time(), step=start + 1,
                                                 session_log=log))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    values = [self._summary.Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()]
    self._writer.write_event(self._event.Event(wall_time=time.time(), step=step,
                                               summary=self._summary.Summary(value=values)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def logdir(cfg) -> Path | None:
  """Where `log.tensorboard` puts its events (None = off; "auto" = <train.out_dir>/tensorboard)."""
  where = cfg.log.tensorboard
  if not where:
    return None
  return Path(cfg.train.out_dir) / "tensorboard" if where == "auto" else Path(where)


def _open_tensorboard(cfg, start: int) -> TensorBoardWriter | None:
  directory = logdir(cfg)
  return None if directory is None else TensorBoardWriter(directory, start)


# name -> (cfg, first step of this session) -> a writer, or None when the config leaves it off
WRITERS = {"tensorboard": _open_tensorboard}


def check(cfg) -> None:
  """A one-line ConfigError now (on every process, before any work) when a writer is asked
  for whose package is missing."""
  if logdir(cfg) is not None:
    _tensorboardx()


class Tracker:
  """The loop hook: `tracker(record)` writes the record's scalars with every writer;
  `flush()` at each checkpoint, `close()` at the end. A failing writer is dropped."""

  def __init__(self, writers: list):
    self.writers = list(writers)

  def _guard(self, writer, call) -> None:
    try:
      call()
    except Exception as e:   # noqa: BLE001 - tracking must never stop a run
      self.writers.remove(writer)
      warnings.warn(f"log.{writer.name}: {type(e).__name__}: {e}; {writer.name} tracking is off "
                    "for the rest of this run (metrics.jsonl is complete)", RuntimeWarning,
                    stacklevel=3)
      try:
        writer.close()
      except Exception:   # noqa: BLE001 - already reported
        pass

  def __call__(self, record: dict) -> None:
    step = record.get("step") if isinstance(record, dict) else None
    if not self.writers or isinstance(step, bool) or not isinstance(step, int):
      return
    scalars = record_scalars(record)
    for writer in list(self.writers):
      self._guard(writer, lambda w=writer: w.write(step, scalars))

  def flush(self) -> None:
    for writer in list(self.writers):
      self._guard(writer, writer.flush)

  def close(self) -> None:
    for writer in list(self.writers):
      self._guard(writer, writer.close)
    self.writers = []


def open_tracker(cfg, *, main: bool = True, start: int = 0) -> Tracker | None:
  """The run's tracker, or None when no writer is on or this is not process 0. A writer
  that cannot open (an unwritable directory, say) is a warning, not a failed run."""
  if not main:
    return None
  writers = []
  for name, make in WRITERS.items():
    try:
      if (writer := make(cfg, start)) is not None:
        writers.append(writer)
    except ConfigError:
      raise
    except Exception as e:   # noqa: BLE001 - see the docstring
      warnings.warn(f"log.{name}: {type(e).__name__}: {e}; {name} tracking is off for this run "
                    "(metrics.jsonl is complete)", RuntimeWarning, stacklevel=2)
  return Tracker(writers) if writers else None
