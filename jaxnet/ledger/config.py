"""Ledger config sections: the 2020 mechanism, Yuma Consensus, and the ledger run.

Every default cites `bittensor.md` (the spec). Sections are frozen, hashable and static
under `jax.jit` (`static_config`), so a config is passed straight into jitted functions
as the `params` argument of `yuma.epoch` / `bittensor.legacy_epoch_2020`.
"""
from __future__ import annotations

from dataclasses import field
from typing import Literal

from jaxnet.configbase import require, static_config

U16_MAX = 65535  # chain u16 proportions: 65535 = 1.0 (spec §2, "Chain arithmetic")
# Integer ledger totals stay <= 2**30 in int32 mode, so float rounding of a total never
# overflows int32 (the ledger in state.py checks its totals against this too).
INT32_SAFE = 2**30


@static_config
class BitTensorConfig:
  """The 2020 trust-weighted mechanism (spec §1.2, §1.3)."""
  rho: float = 10.0              # §1.2: sigmoid temperature (`temp` in the paper's toy code);
                                 # 0 = plain ranks (the consensus is a constant 1/2)
  kappa: float = 0.5             # §1.2: consensus shift, "non-zero rankings from > 50% of stake"
  tau: float = 0.1               # §1.3: inflation per block in the paper's cabal toy run

  def __post_init__(self):
    require(self.rho >= 0, "ledger.bittensor.rho", "must be >= 0")
    require(0.0 <= self.kappa <= 1.0, "ledger.bittensor.kappa", "must be in [0, 1]")
    require(0.0 <= self.tau <= 10.0, "ledger.bittensor.tau", "must be in [0, 10]")


@static_config
class YumaConfig:
  """Yuma Consensus epoch parameters (spec §2.1, defaults from §2.2)."""
  kappa: float = 32767 / U16_MAX          # §2.2 Kappa = u16 32767, i.e. 0.4999924 (not 0.5)
  bonds_penalty: float = 1.0              # §2.2 BondsPenalty = 65535, beta = 1
  bonds_alpha: float = 0.1                # §2.2 BondsMovingAverage 900_000: alpha = 1 - 0.9
  yuma3: bool = False                     # §2.2 Yuma3On = false (Yuma 2 bonds by default)
  liquid_alpha: bool = False              # §2.2 LiquidAlphaOn = false
  alpha_low: float = 45875 / U16_MAX      # §2.2 AlphaValues low, about 0.7
  alpha_high: float = 58982 / U16_MAX     # §2.2 AlphaValues high, about 0.9
  alpha_steepness: float = 1000.0         # §2.2 AlphaSigmoidSteepness; slope = 1000/100 = 10
  max_validators: int = 128               # §2.2 MaxAllowedValidators (top-k permits)
  stake_threshold: float = 0.0            # §2.2 StakeThreshold, in the units of S
  owner: int = -1                         # §2.1 steps 2, 3, 5: subnet owner's row; -1 = none
  layout: Literal["split", "combined"] = "split"  # §5.1: V x M rows/cols, or one n x n index
  miner_split: float = 0.5                # §2.1 step 12 / §5.2 `inflate`: 50/50 split
  u16: bool = False                       # §5.1: fixed-point emulation (u16 proportions)
  median: Literal["bisect", "sort"] = "bisect"  # §5.2: two exact kappa-median algorithms

  def __post_init__(self):
    p = "ledger.yuma."
    require(0.0 <= self.kappa <= 1.0, p + "kappa", "must be in [0, 1]")
    require(0.0 <= self.bonds_penalty <= 1.0, p + "bonds_penalty", "must be in [0, 1]")
    require(0.0 < self.bonds_alpha <= 1.0, p + "bonds_alpha", "must be in (0, 1]")
    require(0.0 < self.alpha_low <= self.alpha_high <= 1.0, p + "alpha_low",
            f"need 0 < alpha_low <= alpha_high <= 1, got {self.alpha_low}, {self.alpha_high}")
    require(self.alpha_steepness >= 0, p + "alpha_steepness", "must be >= 0")
    require(self.max_validators > 0, p + "max_validators", "must be positive")
    require(self.stake_threshold >= 0, p + "stake_threshold", "must be >= 0")
    require(self.owner >= -1, p + "owner", "must be a row index or -1")
    require(0.0 <= self.miner_split <= 1.0, p + "miner_split", "must be in [0, 1]")


@static_config
class LedgerConfig:
  """The ledger run: mechanism choice, emission per epoch and accounting.

  The simulator runs an epoch every `sim.ledger_every` rounds (its tempo) and keeps the
  ledger state in its own checkpoints and its epochs in metrics.jsonl.
  """
  mechanism: Literal["yuma", "bittensor2020"] = "yuma"  # Yuma Consensus (§2) or 2020 (§1)
  yuma: YumaConfig = field(default_factory=YumaConfig)
  bittensor: BitTensorConfig = field(default_factory=BitTensorConfig)
  epoch_emission: int = 1_000_000   # integer units minted per Yuma epoch (ledger accounting;
                                    # <= 2**30, the int32 ledger's limit on its totals)
  owner_cut: float = 11796 / U16_MAX  # §2.1 step 12: SubnetOwnerCut 11796/65535 = 18%
  compound: bool = True             # payouts are staked, as emissions are on chain (§1.2, §2.1)
  reveal_period: int = 1            # commit-reveal: tempos before set weights are readable
                                    # (chain default 1 since 2025-08; 0 = off), §2.1 step 5
  activity_cutoff: int = 13         # §2.2 ActivityCutoff 5000 blocks / Tempo 360: epochs a
                                    # validator stays active after it last set weights

  def __post_init__(self):
    require(self.epoch_emission >= 0, "ledger.epoch_emission", "must be >= 0")
    # The int32 ledger refuses totals above INT32_SAFE, so a larger emission could never
    # run one epoch; configs cannot see jax_enable_x64, so the bound is the int32 one.
    require(self.epoch_emission <= INT32_SAFE, "ledger.epoch_emission",
            f"must be <= 2**30 ({INT32_SAFE}), the int32 ledger's limit; larger emissions "
            "need jax_enable_x64")
    require(0.0 <= self.owner_cut < 1.0, "ledger.owner_cut", "must be in [0, 1)")
    require(0 <= self.reveal_period <= 64, "ledger.reveal_period", "must be in [0, 64] tempos")
    require(self.activity_cutoff >= 0, "ledger.activity_cutoff", "must be >= 0")
