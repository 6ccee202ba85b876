"""The `net` section of the config: the network as separate processes (gauntlet.md §1)."""
from __future__ import annotations

from jaxnet.configbase import require, static_config


@static_config
class NetConfig:
  """Peers and validators as OS processes that meet only in object storage (jaxnet launch).

  Window w is [t0 + w*window_s, t0 + (w+1)*window_s) on the store's clock, t0 written once
  by the launcher when its processes are ready (gauntlet.md §1.1); uploads of round w count
  in [T_{w+1}, T_{w+1} + put_window_s] by the store's LastModified (§1.3). The defaults fit
  the tiny model on 2 CPU cores.
  """
  window_s: float = 6.0            # length of a window on the store's clock (§1.1: 8 blocks
                                   #   of 12 s in the paper's run)
  put_window_s: float = 2.0        # Δ_put on the store's clock (§1.3); the validator process
                                   #   checks uploads against it in place of
                                   #   gauntlet.put_window_s (the simulator's abstract clock)
  read_delay_s: float = 0.5        # the validator reads a round this long after its put
                                   #   window closes (§1.3: readers wait a little past it)
  timeout_s: float = 10.0          # connect and read timeout of every store request
  retries: int = 3                 # attempts of every store request (boto3's retries), and
                                   #   of each object a get_many could not read
  workers: int = 16                # parallel downloads of one get_many
  warmup_s: float = 300.0          # the longest the launcher waits for its processes to
                                   #   compile (each says when it is ready) before it starts
                                   #   window 0 anyway

  def __post_init__(self):
    require(self.window_s > 0, "net.window_s", "must be positive")
    require(0 < self.put_window_s, "net.put_window_s", "must be positive")
    require(self.read_delay_s >= 0, "net.read_delay_s", "must be >= 0")
    require(self.put_window_s + self.read_delay_s < self.window_s, "net.put_window_s",
            f"put_window_s + read_delay_s must be < window_s={self.window_s} (the validator "
            "reads a round before the next one closes)")
    require(self.timeout_s > 0, "net.timeout_s", "must be positive")
    require(self.retries >= 1, "net.retries", "must be >= 1")
    require(self.workers >= 1, "net.workers", "must be >= 1")
    require(self.warmup_s >= 0, "net.warmup_s", "must be >= 0")
