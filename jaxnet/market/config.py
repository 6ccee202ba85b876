"""The `market` section: the 2020 intelligence market (market.md; bittensor.md §1).

Every constant cites market.md. The section is frozen and static under jit.
"""
from __future__ import annotations

from typing import Literal

from jaxnet.configbase import behaviour_groups, require, static_config

BEHAVIOURS = ("honest", "noise", "lazy", "copier", "cabal")
VALUATIONS = ("fisher2020", "obd", "loo", "shapley2022")


@static_config
class MarketConfig:
  """N peers that value their neighbours and a ledger that pays them (market.md §1-§5).

  `peers` lists behaviour groups "behaviour:count" in peer order, as `sim.peers` does:
  honest (graded data quality), noise (serves random embeddings of the honest scale), lazy
  (serves one fixed vector), copier (serves the embeddings of the honest peer before it),
  cabal (serves noise and weights only the other cabal members).
  """
  peers: tuple[str, ...] = ("honest:6", "noise:1", "lazy:1")  # "behaviour:count", peer order
  blocks: int = 200                # market blocks to run (market.md §5: one step each)
  topology: Literal["all", "k_random", "ring"] = "all"  # whom each peer queries
  neighbours: int = 4              # k for k_random and ring (all: every other peer)
  d_embed: int = 32                # E: the embedding every peer serves (market.md §1)
  context: int = 4                 # tokens each encoder position reads (a causal conv)
  batch_size: int = 4              # sequences per peer per block (each seq_len tokens)
  shard_sequences: int = 64        # sequences in each peer's own shard of the corpus
  data_noise: tuple[float, float] = (0.0, 0.6)  # honest peers' corrupted-token fraction,
                                   # graded linearly from the first honest peer to the last
  lr: float = 3e-3                 # Adam step size of every peer's own parameters
  valuation: Literal["fisher2020", "obd", "loo", "shapley2022"] = "fisher2020"  # §2, §4
  ema: float = 0.05                # score smoothing s <- (1 - ema) s + ema score (§3)
  shapley_ema: float = 0.1         # the same for shapley2022 (the 2022 code's EMA, §4)
  self_loop: float = 0.5           # W_ii; the neighbours share 1 - self_loop (§3; 0 = none)
  row_rule: Literal["shift", "clip"] = "shift"  # scores -> row: shift by 2|min| (the 2020
                                   # code, §3) or clip negative scores to 0 (cut a neighbour)
  return_gradients: bool = True    # dL_i/dd_j flows back into neighbour j's encoder (§1)
  center: bool = True              # the joiner centres each neighbour's embedding over the
                                   # batch (a fixed vector then tells nothing about the input)
  alone_baseline: bool = True      # also train each peer without neighbours (the §6 claim)
  cabal_stake: float = 0.0         # the cabal's share of the initial stake (§5; 0 = by count)
  ledger_every: int = 1            # blocks per ledger epoch (the 2020 mechanism mints per block)
  seed: int = 0                    # parameters, topology, behaviours' randomness, batches

  def __post_init__(self):
    total = len(self.behaviours())   # checks every group (one-line errors)
    require(total >= 2, "market.peers", "need at least 2 peers")
    require(self.behaviours()[0] == "honest" or "copier" not in self.behaviours(),
            "market.peers", "a copier copies the honest peer before it: list honest peers first")
    require(self.blocks > 0, "market.blocks", "must be positive")
    if self.topology != "all":
      require(1 <= self.neighbours < total, "market.neighbours",
              f"{self.neighbours} neighbours need 1 <= k < {total} peers")
    for name in ("d_embed", "context", "batch_size", "shard_sequences", "ledger_every"):
      require(getattr(self, name) > 0, f"market.{name}", "must be positive")
    lo, hi = self.data_noise
    require(0.0 <= lo <= hi <= 1.0, "market.data_noise", "need 0 <= low <= high <= 1")
    require(self.lr > 0, "market.lr", "must be positive")
    require(0.0 < self.ema <= 1.0, "market.ema", "must be in (0, 1]")
    require(0.0 < self.shapley_ema <= 1.0, "market.shapley_ema", "must be in (0, 1]")
    require(0.0 <= self.self_loop < 1.0, "market.self_loop", "must be in [0, 1)")
    require(0.0 <= self.cabal_stake < 1.0, "market.cabal_stake", "must be in [0, 1)")
    require(self.cabal_stake == 0.0 or "cabal" in self.behaviours(), "market.cabal_stake",
            "is set but market.peers has no cabal")

  def behaviours(self) -> list[str]:
    """Behaviour of every peer, in peer order."""
    return behaviour_groups(self.peers, BEHAVIOURS, "market.peers")

  @property
  def n_peers(self) -> int:
    return len(self.behaviours())

  @property
  def k(self) -> int:
    """Neighbours per peer."""
    return self.n_peers - 1 if self.topology == "all" else self.neighbours
