"""Commit-reveal of validator weights, as pure functions over a small pytree.

On chain (bittensor.md §2.1 step 5, §3 attack 4) a validator's weights are committed when it
sets them and become readable, by other participants and by the epoch, only `reveal_period`
tempos later (commit-reveal v3; on for every subnet by default since 2025-08, one tempo).
Until then the epoch keeps using the row revealed before. `reveal_period = 0` is the chain
without commit-reveal: a row is readable as soon as it is set.

The state is a ring of R + 1 commit slots (R = reveal_period): what was committed at epoch e
sits in slot e mod (R + 1) and is revealed at epoch e + R, before that epoch's ledger step;
by then only commits from epochs e + 1 .. e + R can be in the other slots, so R + 1 slots
never overwrite an unrevealed commit. A slot entry carries its commit epoch, and reveal
copies only entries whose epoch is exactly e - R, so a stale entry is never revealed.

Per epoch e the network calls `commit` (the rows set now), `reveal(e)`, then reads
`revealed` for the ledger. Without commit-reveal a participant that sets its row after
others (a weight copier) reads the fresh rows between a first commit+reveal and its own.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NONE = -1   # epoch marker: nothing committed / revealed yet


class CommitRevealState(NamedTuple):
  committed: jax.Array       # [R+1, V, M] float32 rows committed, one slot per epoch mod R+1
  commit_epoch: jax.Array    # [R+1, V] int32 epoch of each slot entry (NONE = empty)
  revealed: jax.Array        # [V, M] float32 the rows the chain holds (what anyone can read)
  revealed_epoch: jax.Array  # [V] int32 commit epoch of each revealed row (NONE = none yet)


def init(V: int, M: int, reveal_period: int) -> CommitRevealState:
  """Nothing committed or revealed: every validator's chain row is empty."""
  slots = reveal_period + 1
  return CommitRevealState(committed=jnp.zeros((slots, V, M), jnp.float32),
                           commit_epoch=jnp.full((slots, V), NONE, jnp.int32),
                           revealed=jnp.zeros((V, M), jnp.float32),
                           revealed_epoch=jnp.full((V,), NONE, jnp.int32))


def reveal_period(state: CommitRevealState) -> int:
  """R, static: the ring holds R + 1 slots."""
  return state.committed.shape[0] - 1


def commit(state: CommitRevealState, epoch, rows_VxM, committing_V) -> CommitRevealState:
  """Validators with `committing_V` commit `rows_VxM` at `epoch` (the others' slots keep
  whatever they held; a second commit in one epoch replaces the first)."""
  slot = jnp.asarray(epoch, jnp.int32) % state.committed.shape[0]
  c_V = jnp.asarray(committing_V, bool)
  old_VxM, old_V = state.committed[slot], state.commit_epoch[slot]
  rows_VxM = jnp.where(c_V[:, None], jnp.asarray(rows_VxM, jnp.float32), old_VxM)
  ep_V = jnp.where(c_V, jnp.asarray(epoch, jnp.int32), old_V)
  return state._replace(committed=state.committed.at[slot].set(rows_VxM),
                        commit_epoch=state.commit_epoch.at[slot].set(ep_V))


def reveal(state: CommitRevealState, epoch) -> CommitRevealState:
  """Reveals the commits made exactly R epochs ago (idempotent within one epoch)."""
  R = reveal_period(state)
  due = jnp.asarray(epoch, jnp.int32) - R
  slot = due % (R + 1)
  hit_V = state.commit_epoch[slot] == due
  return state._replace(
      revealed=jnp.where(hit_V[:, None], state.committed[slot], state.revealed),
      revealed_epoch=jnp.where(hit_V, due, state.revealed_epoch))
