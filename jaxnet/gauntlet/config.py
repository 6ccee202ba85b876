"""Every constant of the Gauntlet validator in one frozen, static config section.

Defaults are the reference commit templar @9ce04f64 (gauntlet.md §15.2, and the validator's
hard-coded values listed under it) or the default column of gauntlet.md §18. Each field cites
its section. The section is passed straight into jitted functions (it is a static pytree).

Presets (`preset`). "paper" is the rule set above. "templar-final" is templar's last validator
(templar @142666f0, schemes.md §5): the rules of `jaxnet.gauntlet.templar`, whose constants
are the fields under "templar-final rules" (their defaults are templar's values and only that
preset reads them), plus the shared fields that `PRESETS["templar-final"]` changes.
"hardened" is the paper's rules with jaxnet's fixes of issue 12 (proof of assigned data
with a stated false-positive rate, gather hygiene, copy blame by evidence, calibrated copy
flags); each fix is its own field, off under "paper".

How a preset fills fields. The preset is expanded when the section is built, in
`__post_init__`: every field the caller did not pass takes the preset's value. "Did not
pass" is known exactly, because `__new__` records the keyword arguments of the call; the
config loader passes only the keys of the YAML file and the command-line overrides, so an
explicit override always wins, even one equal to the paper default (a rule that compared
values with the paper defaults could not tell). The expanded values are ordinary field
values: `to_yaml` writes them and reading that YAML back gives an equal config. One
consequence: `dataclasses.replace` passes every field, so it never re-expands; switch a
preset by building a new section, `GauntletConfig(preset=..., **overrides)`.
"""
from __future__ import annotations

from dataclasses import field
from typing import Literal

import jax.numpy as jnp

from jaxnet.configbase import require, static_config
from jaxnet.gauntlet.rating import RatingParams

__all__ = ["GauntletConfig", "GauntletError", "check_pool_array", "PRESETS", "preset_overrides"]

Preset = Literal["paper", "templar-final", "hardened"]

# The shared fields each preset changes (schemes.md §5). The templar-only rule constants are
# not listed: their defaults already are templar's values, and the paper path never reads them.
PRESETS: dict[str, dict] = {
  "paper": {},
  "templar-final": {
    "uids_per_window": 20,           # 20 evaluated per window; every one when <= 20 active
    "num_evaluation_bins": 5,        # one bin below 5 x 20 candidates (schemes.md §5)
    "gather_size": 20,               # the top-20 "gather" group of the weights
    "sync_saturation": 3.0,          # (1 - min(x, 3)/3)^2.5
    "sync_estimate": "iqm",          # x = interquartile mean of the steps-behind estimates
    "reset_inactivity_windows": 3,   # full reset after 3 inactive windows
    "overlap_detection": True,       # copy detection on (threshold 0.4: the default)
    "overlap_scope": "gathered",     # checked over the gathered peers only
    "overlap_warmup_windows": 20,    # skipped in the first 20 steps
  },
  # jaxnet's hardened paper rules (issue 12): pay for evidence of own-page training only,
  # gather only positive scores, blame the copier by evidence, calibrated copy flags.
  "hardened": {
    "indicator_foils": True,         # own pages must beat the random AND a foil's pages
    "evidence_alpha": 5e-4,          # pay once the binomial test rejects at 0.05 %
    "gather_rule": "scored",         # no timed-out, unscored or non-positive uid gathered
    "overlap_detection": True,
    "overlap_statistic": "values",   # sketched cosine of the coefficient values
    "overlap_calibration": "round",  # thresholds from the round's own pair distances
    "copy_blame": "evidence",        # the member without own-page evidence is the copier
    # fair shares among equals (experiments/fairness.py): the conservative ordinal and
    # F^2.2 turn the rating noise of identical peers into a lottery
    "score_statistic": "mu",
    "power": 1.0,
    # linear weights pay a weak peer more than F^2.2 would: the sync score reaches 0 at
    # 2 steps behind, (1 - min(x, 2)/2)^2.5 (§7.2: 5 in the paper, 3 in templar-final)
    "sync_saturation": 2.0,
  },
}


def preset_overrides(name: str) -> dict:
  """The shared fields preset `name` sets, as {field: value} (a copy)."""
  if name not in PRESETS:
    raise GauntletError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
  return dict(PRESETS[name])


class GauntletError(ValueError):
  """Bad input to a Gauntlet array function (shape, dtype or range); the message names it."""


def check_pool_array(name: str, x, n: int, kind: str | None = None) -> None:
  """Trace-time check that `x` is [n] of kind 'bool', 'float' or 'num' (shapes are static)."""
  if jnp.shape(x) != (n,):
    raise GauntletError(f"{name} has shape {jnp.shape(x)}, expected ({n},)")
  dtype = jnp.result_type(x)
  if kind == "bool" and dtype != jnp.bool_:
    raise GauntletError(f"{name} must be bool, got {dtype}")
  if kind == "float" and not jnp.issubdtype(dtype, jnp.floating):
    raise GauntletError(f"{name} must be floating, got {dtype}")
  if kind == "num" and not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise GauntletError(f"{name} must be numeric, got {dtype}")


@static_config
class GauntletConfig:
  """The validator's constants (gauntlet.md §6-§14, §15.2, §18).

  Slash factors multiply positive scores only (§14, issue #45); every slashed F that ends
  below `score_floor` becomes 0 (§18 row 10g). `preset` fills the fields the caller did not
  set (module docstring).
  """
  preset: Preset = "paper"               # paper: gauntlet.md rules; templar-final: templar's
                                         # last validator (schemes.md §5); hardened: paper +
                                         # issue 12's fixes; fills the fields not set
                                         # explicitly (PRESETS), explicit ones win
  # --- slashes (§7.1-§7.3, §9.2 step 2, §14; hard-coded 0.75 in the reference validator)
  slash_inactive: float = 0.75           # per inactive window (§7.1)
  slash_missing: float = 0.75            # gather peer skipped / evaluated peer missing or late
  slash_desync: float = 0.75             # debug dict missing or x > sync_max_steps_behind (§7.2)
  gather_slash_threshold: float = 0.0    # §7.3 post-paper: skipped gather peers get x 0, not
                                         # x slash_missing, when the round's gather success
                                         # rate is below this; 0 = off (reference commit)
  score_floor: float = 1e-4              # F < floor after a slash -> 0 (§14 HEAD, §18 row 10g)

  # --- uptime and inactivity (§6, §7.1)
  recent_windows: int = 5                # active = an upload in [current - 5, current]
  reset_inactivity_windows: int = 25     # full reset after more than 25 inactive windows
  candidate_stake_cap: float = 20000.0   # evaluation candidates: stake <= 20 000 (§6)

  # --- unique-computation indicator and its EMA (§10, §18 row 4)
  bma_alpha: float = 0.05                # binary_score_ma_alpha
  bma_init: float = 0.0                  # BMA starts at 0 at the reference commit

  # --- proof of assigned data (issue 12; beyond the paper, `preset: hardened`)
  indicator_foils: bool = False          # I = +1 only when the own pages improve more than
                                         # the random pages AND a foil (another evaluated
                                         # peer's assigned pages): null rate 1/3, not 1/2
  evidence_alpha: float = 0.0            # F > 0 only once a one-sided binomial test of the
                                         # last evidence_window indicators rejects "not
                                         # trained on its own pages" at this level (a false
                                         # positive rate per look); 0 = off: the paper pays
                                         # max(0, BMA), the positive half of a random walk
  evidence_window: int = 20              # indicators the test looks at (<= 30)
  gather_rule: Literal["reference", "scored"] = "reference"  # §13 reference: top-G by
                                         # weight, zero-weight uids fill free slots at random;
                                         # scored: only uids with a positive score (ordinal
                                         # x BMA+ x sync), never timed out, and once
                                         # minimum_peers uids have own-page evidence only
                                         # those; fewer than G is fine

  # --- sync score (§7.2)
  sync_saturation: float = 5.0           # x is capped at 5 steps behind
  sync_exponent: float = 2.5             # (1 - min(x, 5)/5)^2.5
  sync_max_steps_behind: float = 3.0     # desync slash when x > 3
  sync_estimate: Literal["mean", "iqm"] = "mean"  # x from the probe positions' steps-behind
                                         # estimates: their mean (§7.2) or interquartile mean
                                         # (templar-final, schemes.md §5)

  # --- LossScore (§9, §18 rows 2, 3)
  eval_lr_factor: float = 0.2            # e in theta - eta * e * sign(delta)
  eval_apply_sign: bool = True           # §18 row 3: sign step (immune to magnitude gaming)
  sample_rate: float = 0.1               # fraction of batches evaluated, at least 1
  score_source: Literal["random", "assigned", "both"] = "random"  # §18 row 2: the score the
                                         # match ranks: r_rand, r_own or their mean
  relative_improvement: bool = True      # §9.2 step 6: r = (L_before - L_after) / L_before;
                                         # false: the absolute L_before - L_after (§18 row 2)
  score_mode: Literal["exact", "first_order"] = "exact"  # exact losses or a linearisation
  eval_batch: int = 1                    # lax.map batch size over evaluated peers

  # --- choosing whom to evaluate (§8)
  uids_per_window: int = 0               # 0 = evaluate every candidate (jaxnet default);
                                         # 4 reproduces the reference sampling
  num_evaluation_bins: int = 10          # binning by ordinal (10 from 2025-05-25)

  # --- LossRating and final score (§11, §18 rows 5, 10f)
  rating: RatingParams = field(default_factory=RatingParams)  # beta 7, tau 0.1, mu 25, ...
  score_statistic: Literal["ordinal", "mu"] = "ordinal"       # §18 row 5 (#270: ordinal)
  carry_unmatched_scores: bool = False   # §18 row 10f: false drops the score of a peer scored
                                         # alone; true carries it into the next match (reference)

  # --- weights (§12, §18 row 6; the simulator sets them before every ledger epoch)
  power: float = 2.2                     # power_normalisation p: w = F^p / sum F^p
  weight_min_sum: float = 1e-8           # all weights 0 when sum F^p < 1e-8

  # --- gather peers (§13)
  gather_size: int = 15                  # max_topk_peers G
  minimum_peers: int = 5                 # no list is posted with fewer active peers
  peer_replacement_frequency: int = 5    # refresh every 5 windows
  peer_list_window_margin: int = 2       # a refreshed list takes effect 2 windows later

  # --- put window (§1.3, §1.4: the simulator's round is one window; it has no block clock)
  put_window_s: float = 10.0             # time_window_delta_seconds: uploads count only at
                                         # 0 <= offset <= this after the window boundary
  # §18 row 7: whom the skipped-upload and desync slashes hit: the gather peers (reference)
  # or every active uid (the evaluated peers have their own missing/late slash either way)
  fast_scope: Literal["gather_evaluated", "all_active"] = "gather_evaluated"

  # --- index-overlap copy detection (§14, §16, §18 row 4; templar PR #382/#435, post-paper)
  overlap_detection: bool = False        # off by default: not part of the paper's Gauntlet
  overlap_threshold: float = 0.4         # "high": F, BMA x overlap_slash
  overlap_max_threshold: float = 0.5     # "max": full reset
  overlap_mega_threshold: float = 0.6    # "mega": full reset and a timeout
  overlap_slash: float = 0.5             # templar HEAD multiplier for "high"
  overlap_timeout_windows: int = 200     # templar HEAD naughty_peer_timeout for "mega"
  # templar weights each tensor by its number of transmitted indices (C * k); "elements"
  # weights by the tensor's element count (C * chunk_len) instead.
  overlap_size_weight: Literal["indices", "elements"] = "indices"
  overlap_scope: Literal["all", "gathered"] = "all"  # peers compared: every valid upload, or
                                         # the gathered peers only (templar-final)
  overlap_warmup_windows: int = 0        # no copy verdict in windows < this (templar-final 20:
                                         # "skipped in the first 20 steps"); 0 = always checked
  # the pair statistic: templar's index overlap, or the cosine of the per-chunk-normalised
  # coefficient values, sketched (jaxnet.gauntlet.copies; issue 12)
  overlap_statistic: Literal["indices", "values"] = "indices"  # see the comment above
  # fixed: the thresholds above; round: a pair is flagged when its distance d = 1 - stat
  # is <= overlap_ratio x the round's median nearest-neighbour distance, or the uploads
  # are identical: calibrated to the model and layout (jaxnet.gauntlet.copies)
  overlap_calibration: Literal["fixed", "round"] = "fixed"  # see the comment above
  overlap_ratio: float = 0.1             # a copy is 10x closer than peers typically are
  copy_sample_chunks: int = 4096         # chunks the value statistic samples per round
  copy_sketch_buckets: int = 16384       # count-sketch width (power of 2; ~1 % distance error)
  copy_share_ratio: float = 0.3          # values statistic: a pair whose share of sampled
                                         # chunks equal in indices and signs leaves 1 - share
                                         # <= this x the round's typical nearest-neighbour
                                         # value is flagged (a copy re-randomising the rest)
  # time: the later uploader of a flagged pair is the copier (§14); evidence: the member
  # without own-page evidence (`evidence_alpha`) while its partner has it; a pair that the
  # evidence cannot orient is reported and left alone (time is not evidence of authorship)
  copy_blame: Literal["time", "evidence"] = "time"  # see the comment above

  # --- templar-final rules (schemes.md §5; read only when preset is templar-final)
  missing_score: float = -99.0           # a missing or invalid evaluated gradient enters the
                                         # match with this score: last place (L3330-3343)
  bma_threshold: float = 0.10            # BMA' = 0 when BMA < 0.10 once warm
  bma_warmup_windows: int = 10           # a uid's evaluated windows before bma_threshold applies
  burn_share: float = 0.5                # weight share burned (update_weights, L1084-1164)
  burn_uid: int = -1                     # uid paid the burn share; -1 = none: the share is
                                         # withheld and the weights sum to 1 - burn_share
  weight_top_count: int = 20             # top positive final scores on the linear ramp
  weight_top_share: float = 0.75         # of the non-burned weight, to the top group
  weight_top_ratio: float = 2.0          # w_1 / w_last of the top group's linear ramp
  weight_reserve_count: int = 10         # the next uids, on a geometric ramp (reserve group)
  weight_reserve_decay: float = 0.5      # reserve ramp ratio; also the cap factor below the
                                         # smallest top weight
  missing_escalation: tuple[float, ...] = (0.75, 0.5, 0.0)  # F and BMA factor of the k-th
                                         # consecutive missing gradient (last entry repeats)
  missing_history: int = 8               # missing flags kept per uid (last 8 observed windows)
  missing_reset_fraction: float = 0.5    # missing >= this fraction of them: reset and timeout
  missing_timeout_windows: int = 20      # timeout after that reset (as the overlap timeout)
  negative_history: int = 8              # evaluation signs kept per uid (last 8 evaluations)
  negative_fraction: float = 0.5         # more than this fraction negative: F x negative_slash
  negative_slash: float = 0.25           # F factor of that penalty
  negative_streak: int = 3               # this many negative evaluations in a row: excluded
                                         # from the gather list until a non-negative one
  negative_skip_rank: int = 5            # both negative penalties skipped when the peer ranked
                                         # here (or the last, if fewer) scored negative (L587-618)

  def __new__(cls, **kwargs):
    # Records which fields the caller set, so the preset fills only the others (docstring).
    self = super().__new__(cls)
    object.__setattr__(self, "_explicit", frozenset(kwargs))
    return self

  def __post_init__(self):
    require(self.preset in PRESETS, "gauntlet.preset",
            f"{self.preset!r} is not one of {list(PRESETS)}")
    explicit = getattr(self, "_explicit", frozenset())
    for name, value in PRESETS[self.preset].items():
      if name not in explicit:
        object.__setattr__(self, name, value)
    for name in ("slash_inactive", "slash_missing", "slash_desync", "overlap_slash",
                 "gather_slash_threshold", "bma_threshold", "burn_share", "weight_top_share",
                 "weight_reserve_decay", "missing_reset_fraction", "negative_fraction",
                 "negative_slash"):
      value = getattr(self, name)
      require(0.0 <= value <= 1.0, f"gauntlet.{name}", f"must be in [0, 1], got {value}")
    require(self.score_floor >= 0.0, "gauntlet.score_floor", "must be >= 0")
    for name in ("recent_windows", "reset_inactivity_windows", "num_evaluation_bins",
                 "gather_size", "minimum_peers", "peer_replacement_frequency", "eval_batch"):
      value = getattr(self, name)
      require(value > 0, f"gauntlet.{name}", f"must be positive, got {value}")
    for name in ("weight_top_count", "missing_history", "negative_history", "negative_streak",
                 "negative_skip_rank"):
      value = getattr(self, name)
      require(value > 0, f"gauntlet.{name}", f"must be positive, got {value}")
    for name in ("uids_per_window", "peer_list_window_margin", "overlap_timeout_windows",
                 "overlap_warmup_windows", "bma_warmup_windows", "weight_reserve_count",
                 "missing_timeout_windows"):
      value = getattr(self, name)
      require(value >= 0, f"gauntlet.{name}", f"must be >= 0, got {value}")
    require(0.0 <= self.evidence_alpha < 0.5, "gauntlet.evidence_alpha",
            f"must be in [0, 0.5), got {self.evidence_alpha}")
    require(1 <= self.evidence_window <= 30, "gauntlet.evidence_window",
            f"must be in 1..30 (a bit history), got {self.evidence_window}")
    require(0.0 < self.overlap_ratio < 1.0, "gauntlet.overlap_ratio",
            f"must be in (0, 1), got {self.overlap_ratio}")
    require(0.0 < self.copy_share_ratio < 1.0, "gauntlet.copy_share_ratio",
            f"must be in (0, 1), got {self.copy_share_ratio}")
    require(self.copy_sample_chunks >= 1, "gauntlet.copy_sample_chunks", "must be >= 1")
    b = self.copy_sketch_buckets
    require(b >= 2 and b & (b - 1) == 0, "gauntlet.copy_sketch_buckets",
            f"must be a power of two >= 2, got {b}")
    require(self.copy_blame == "time" or self.evidence_alpha > 0, "gauntlet.copy_blame",
            "evidence blame needs evidence_alpha > 0")
    require(self.candidate_stake_cap >= 0, "gauntlet.candidate_stake_cap", "must be >= 0")
    require(0.0 < self.bma_alpha <= 1.0, "gauntlet.bma_alpha",
            f"must be in (0, 1], got {self.bma_alpha}")
    require(-1.0 <= self.bma_init <= 1.0, "gauntlet.bma_init",
            f"must be in [-1, 1] (the indicator is +-1), got {self.bma_init}")
    require(self.sync_saturation > 0, "gauntlet.sync_saturation", "must be positive")
    require(self.sync_exponent > 0, "gauntlet.sync_exponent", "must be positive")
    require(self.sync_max_steps_behind >= 0, "gauntlet.sync_max_steps_behind", "must be >= 0")
    require(self.eval_lr_factor > 0, "gauntlet.eval_lr_factor", "must be positive")
    require(0.0 < self.sample_rate <= 1.0, "gauntlet.sample_rate",
            f"must be in (0, 1], got {self.sample_rate}")
    require(self.power > 0, "gauntlet.power", f"must be positive, got {self.power}")
    require(self.weight_min_sum >= 0, "gauntlet.weight_min_sum", "must be >= 0")
    require(self.minimum_peers <= self.gather_size, "gauntlet.minimum_peers",
            f"{self.minimum_peers} exceeds gather_size={self.gather_size}")
    require(self.put_window_s >= 0, "gauntlet.put_window_s", "must be >= 0")
    require(0.0 <= self.overlap_threshold <= self.overlap_max_threshold
            <= self.overlap_mega_threshold <= 1.0, "gauntlet.overlap_threshold",
            "need 0 <= overlap_threshold <= overlap_max_threshold <= "
            f"overlap_mega_threshold <= 1, got {self.overlap_threshold}, "
            f"{self.overlap_max_threshold}, {self.overlap_mega_threshold}")
    require(self.weight_top_ratio >= 1.0, "gauntlet.weight_top_ratio",
            f"must be >= 1 (w_1 >= w_last), got {self.weight_top_ratio}")
    require(self.burn_uid >= -1, "gauntlet.burn_uid", f"must be a uid or -1, got {self.burn_uid}")
    require(len(self.missing_escalation) > 0
            and all(0.0 <= f <= 1.0 for f in self.missing_escalation),
            "gauntlet.missing_escalation",
            f"needs at least one factor, each in [0, 1], got {list(self.missing_escalation)}")
