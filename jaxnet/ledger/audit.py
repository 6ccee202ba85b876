"""Ledger persistence: Orbax checkpoints of `LedgerState` and a JSONL epoch log.

The log has one JSON object per epoch: what was minted, the owner cut, and every non-zero
payout as [uid, units]. `audit_epoch_log` re-reads it, checks minted == paid on every line
(exact integers), and returns per-UID totals, which must equal the state's balances; so
anyone holding the log can check who got what without trusting the process that wrote it.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from jaxnet.checkpoint import Checkpointer
from jaxnet.ledger.state import EpochRecord, LedgerState


class LedgerAuditError(ValueError):
  """An epoch log that does not add up (minted != paid) or cannot be parsed."""


# --------------------------------------------------------------------------- checkpoints

class LedgerCheckpointer(Checkpointer):
  """`jaxnet.checkpoint.Checkpointer` for `LedgerState` (Orbax `CheckpointManager`).

  Use as a context manager, or call `close()`; saves are async until `close()` or
  `wait()`. A damaged or mismatched checkpoint raises `CheckpointError`.
  """

  def __init__(self, directory: str | Path, keep: int = 3):
    super().__init__(directory, every=0, keep=keep, compat={"kind": "ledger"})

  def save(self, state: LedgerState, step: int | None = None) -> int:
    """Saves at `step` (default: the state's epoch counter); returns the step."""
    step = int(np.asarray(state.epoch)) if step is None else int(step)
    super().save(step, state._asdict())
    return step

  def restore(self, like: LedgerState, step: int | None = None) -> LedgerState:
    """Restores into the shapes/dtypes/shardings of `like` (a state of the same ledger)."""
    self.wait()
    if step is None and self.latest_step() is None:
      raise FileNotFoundError(f"{self.directory}: no ledger checkpoint to restore")
    restored, _ = super().restore(step, like._asdict())
    return LedgerState(**restored)

  def wait(self):
    self._mngr.wait_until_finished()


# --------------------------------------------------------------------------- JSONL log

def _nonzero_pairs(units) -> list[list[int]]:
  units = np.asarray(units)
  idx = np.flatnonzero(units)
  return [[int(i), int(units[i])] for i in idx]


def epoch_log_lines(records: EpochRecord) -> list[dict]:
  """One dict per epoch from stacked `EpochRecord`s (host side)."""
  rec = jax.tree.map(np.asarray, records)
  lines = []
  for t in range(rec.minted.shape[0]):
    miners = _nonzero_pairs(rec.server_units[t])
    validators = _nonzero_pairs(rec.validator_units[t])
    paid = sum(u for _, u in miners) + sum(u for _, u in validators) + int(rec.owner[t])
    lines.append({"epoch": int(rec.epoch[t]), "minted": int(rec.minted[t]),
                  "owner": int(rec.owner[t]), "paid": paid, "miners": miners,
                  "validators": validators})
  return lines


def write_epoch_log(path: str | Path, records: EpochRecord, append: bool = True) -> int:
  """Appends (or writes) one JSON line per epoch; returns the number of lines written."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  lines = epoch_log_lines(records)
  with path.open("a" if append else "w") as f:
    for line in lines:
      f.write(json.dumps(line, separators=(",", ":")) + "\n")
  return len(lines)


def audit_epoch_log(path: str | Path) -> dict:
  """Checks every line's minted == owner + miners + validators; returns the totals.

  Returns:
    {"epochs": n, "minted": int, "owner": int, "miners": {uid: units},
     "validators": {uid: units}}.
  Raises:
    LedgerAuditError: a malformed line, or one whose payouts do not add up.
  """
  totals = {"epochs": 0, "minted": 0, "owner": 0, "miners": {}, "validators": {}}
  with Path(path).open() as f:
    for n, raw in enumerate(f, 1):
      try:
        line = json.loads(raw)
        minted, owner = int(line["minted"]), int(line["owner"])
        miners, validators = line["miners"], line["validators"]
      except (ValueError, KeyError, TypeError) as e:
        raise LedgerAuditError(f"{path}:{n}: malformed epoch line ({e})") from None
      paid = owner + sum(int(u) for _, u in miners) + sum(int(u) for _, u in validators)
      if paid != minted:
        raise LedgerAuditError(f"{path}:{n}: epoch {line.get('epoch')} minted {minted} "
                               f"but paid {paid}")
      totals["epochs"] += 1
      totals["minted"] += minted
      totals["owner"] += owner
      for key, pairs in (("miners", miners), ("validators", validators)):
        for uid, units in pairs:
          totals[key][int(uid)] = totals[key].get(int(uid), 0) + int(units)
  return totals
