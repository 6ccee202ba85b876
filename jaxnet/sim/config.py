"""Simulation section of the config: who the peers are and how the network runs."""
from __future__ import annotations

from typing import Literal

from jaxnet.configbase import behaviour_groups, require, static_config

BEHAVIOURS = ("honest", "free_rider", "zeros", "copier", "noise", "malformed", "late", "early",
              "desync", "wrong_data", "replay", "sybil", "degraded",
              # issue 12: attacks on the blame and time rules, on information already
              # public, and on values (all copy a victim; none computes)
              "copier_first", "partial_copier", "stale_copier", "scaled_copier")


@static_config
class SimConfig:
  """A permissionless network on one machine (gauntlet.md §1.4, §2.3, §16).

  `peers` lists behaviour groups as "behaviour:count" in uid order, e.g.
  ("honest:8", "noise:1", "copier:1"). The validator never sees these labels.
  """
  peers: tuple[str, ...] = ("honest:6", "noise:1", "copier:1")  # "behaviour:count", uid order
  rounds: int = 20                 # rounds (windows) to simulate
  seed: int = 0                    # upload times, adversaries, evaluated rows, validator keys
  honest_upload_s: tuple[float, float] = (0.5, 3.0)  # honest upload offsets in the put window
  copy_delay_s: float = 2.0        # a copier re-uploads this long after its victim (§1.3)
  copy_noise: float = 0.0          # relative noise a copier adds to the copied values
  partial_copy_fraction: float = 0.05  # partial_copier: share of the victim's chunks it
                                   # replaces with noise (to dodge copy detection)
  copy_scale: float = 100.0        # scaled_copier: factor on the victim's values
  late_s: float = 15.0             # late uploaders: offset past the 10 s put window
  early_s: float = -5.0            # early uploaders: before the window boundary
  desync_every: int = 3            # desynced peers apply only every n-th outer step
  sybil_uids_per_operator: int = 3  # sybil group: one computation uploaded under n uids
  degraded_max: float = 0.9        # degraded peer j of K replaces (j+1)/K * this of its chunks
                                   # with noise: honest peers of graded true contribution
  validators: int = 1              # validators with stake, each with its own Gauntlet state
  validator_stake: tuple[float, ...] = (1.0,)  # stake of each validator (one per validator)
  validator_behaviours: tuple[str, ...] = ()  # one per validator (empty = all honest):
                                   # honest, sampled[:K], copier[:consensus|:V], lazy[:uniform|
                                   # :stale], colluding, offline (jaxnet.sim.validators)
  validator_seeds: Literal["independent", "shared"] = "independent"  # each validator's own
                                   # random pages and keys from (seed, validator, window), or
                                   # validator 0's for all (they then agree but for behaviour)
  coalition_uids: tuple[int, ...] = ()  # the miners colluding validators boost
  collusion_boost: float = 1.0     # share of a colluding validator's row moved onto them
  ledger_every: int = 5            # rounds between ledger epochs, each on that round's
                                   # weights (the chain's tempo; 0 = no ledger)
  storage: str = "memory"          # "memory", a directory path for the local backend, or
                                   # "s3://bucket/prefix" (an S3-compatible store; .[net])

  def __post_init__(self):
    total = len(self.behaviours())   # checks every group (one-line errors)
    require(total >= 2, "sim.peers", "need at least 2 peers")
    require(self.rounds > 0, "sim.rounds", "must be positive")
    require(self.desync_every >= 2, "sim.desync_every", "must be >= 2")
    require(self.validators >= 1, "sim.validators", "must be >= 1")
    require(len(self.validator_stake) == self.validators, "sim.validator_stake",
            f"needs {self.validators} entries (one per validator), got "
            f"{len(self.validator_stake)}")
    require(all(s >= 0 for s in self.validator_stake), "sim.validator_stake", "must be >= 0")
    require(self.ledger_every >= 0, "sim.ledger_every", "must be >= 0")
    require(0.0 <= self.degraded_max <= 1.0, "sim.degraded_max", "must be in [0, 1]")
    require(0.0 <= self.partial_copy_fraction <= 1.0, "sim.partial_copy_fraction",
            "must be in [0, 1]")
    require(self.copy_scale > 0, "sim.copy_scale", "must be positive")
    require(not self.validator_behaviours or len(self.validator_behaviours) == self.validators,
            "sim.validator_behaviours",
            f"needs {self.validators} entries (one per validator) or none")
    from jaxnet.sim.validators import parse_behaviour   # here: that module imports this one
    for i, b in enumerate(self.validator_behaviours):
      parse_behaviour(b, i, self.validators, f"sim.validator_behaviours[{i}]")
    require(all(0 <= u < total for u in self.coalition_uids), "sim.coalition_uids",
            f"every uid must be in [0, {total})")
    require(0.0 <= self.collusion_boost <= 1.0, "sim.collusion_boost", "must be in [0, 1]")

  def degraded_fraction(self) -> list[float]:
    """Per uid: the fraction of chunks a degraded peer replaces with noise (0 otherwise)."""
    beh = self.behaviours()
    k = beh.count("degraded")
    out, j = [], 0
    for b in beh:
      if b == "degraded":
        j += 1
        out.append(self.degraded_max * j / k)
      else:
        out.append(0.0)
    return out

  def validator_kinds(self) -> list[tuple[str, int]]:
    """(kind, argument) of every validator (jaxnet.sim.validators.parse_behaviour)."""
    from jaxnet.sim.validators import parse_behaviour
    beh = self.validator_behaviours or ("honest",) * self.validators
    return [parse_behaviour(b, i, self.validators, f"sim.validator_behaviours[{i}]")
            for i, b in enumerate(beh)]

  def behaviours(self) -> list[str]:
    """Behaviour of every uid, in uid order."""
    return behaviour_groups(self.peers, BEHAVIOURS, "sim.peers")
