"""Host side of a validator round: uploads (bytes + times) -> `RoundInputs`, then the round.

Parsing never raises: each malformed upload becomes `struct_ok = False` with its
`SubmissionError.reason`, and its slot is filled with zeros so that the pool keeps its
static shape [N]. Any other exception while parsing one upload (a gap in the checks, or
MemoryError) is that upload's 'corrupt' penalty too: no upload can stop a round. Value
checks (index range, NaN/Inf) run vectorised inside the jitted round (`fast.format_ok`),
so the reasons here are only the structural ones.
"""
from __future__ import annotations

import logging
from functools import lru_cache, partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.config import Config
from jaxnet.gauntlet.validator import RoundInputs, ValidatorState, score_round
from jaxnet.submission import Layout, Submission, SubmissionError, from_bytes


log = logging.getLogger(__name__)


def zeros_submission(layout: Layout) -> Submission:
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), layout.abstract())


@lru_cache(maxsize=32)
def _template(layout: Layout):
  want = layout.abstract()
  return jax.tree.structure(want), [(s.shape, np.dtype(s.dtype)) for s in jax.tree.leaves(want)]


def _conforms(sub, layout: Layout) -> bool:
  """Same tree, shapes and dtypes as the layout's template (so the pool can be stacked)."""
  treedef, leaves = _template(layout)
  return jax.tree.structure(sub) == treedef and all(
      (np.shape(a), np.asarray(a).dtype) == want for a, want in zip(jax.tree.leaves(sub), leaves))


def parse_upload(data, layout: Layout, uid: int, window: int
                 ) -> tuple[Submission | None, str, str]:
  """One upload -> (submission or None, reason ('' if fine), message); never raises.

  `data` is the object's bytes, None when absent, or a `SubmissionError` the fetch already
  decided (e.g. 'oversize' when the storage refused to read an object over the bound).
  """
  if data is None:
    return None, "missing", "no upload"
  if isinstance(data, SubmissionError):
    return None, data.reason, str(data)
  try:
    sub = from_bytes(data, layout, uid=uid, window=window, check=False)
  except SubmissionError as e:
    return None, e.reason, str(e)
  except Exception as e:  # noqa: BLE001 -- anything else, MemoryError included, is a penalty
    msg = f"parser raised {type(e).__name__}: {str(e)[:200]}"
    log.warning("uid %d window %d: %s", uid, window, msg)
    return None, "corrupt", msg
  if not _conforms(sub, layout):
    return None, "corrupt", "parsed submission does not match the layout"
  return sub, "", ""


def parse_uploads(uploads: Sequence, layout: Layout, window: int):
  """-> (stacked subs [N, ...], present [N], struct_ok [N], reasons [N] ('' if fine)).

  Each upload is bytes, None (missing) or a `SubmissionError` from the fetch (see
  `parse_upload`); a fetch error counts as present (the peer did upload something).
  """
  zero = zeros_submission(layout)
  subs, present, ok, reasons = [], [], [], []
  for uid, data in enumerate(uploads):
    sub, reason, _ = parse_upload(data, layout, uid, window)
    present.append(data is not None)
    subs.append(zero if sub is None else sub)
    ok.append(sub is not None)
    reasons.append(reason)
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *subs)
  return stacked, np.asarray(present), np.asarray(ok), reasons


def eval_rows(n_rows: int, sample_rate: float, seed: int, window: int, uid: int) -> np.ndarray:
  """Rows of a peer's assigned batch that the validator evaluates (§9.2 step 1).

  A fraction `sample_rate` (at least 1 row), drawn from (seed, window, uid) so every
  validator picks the same rows (§18 row 9); sorted, so the batch order is canonical.
  """
  n = max(1, int(round(sample_rate * n_rows)))
  rng = np.random.default_rng([seed, window, uid, 0x9A0])
  return np.sort(rng.choice(n_rows, size=n, replace=False))


def round_batches(corpus, n_uids: int, window: int, sample_rate: float, seed: int, salt: int = 0):
  """Sampled assigned batches of every uid [N, B, L] and the shared random batch [B', L].

  `salt` gives a validator its own random pages (validators with independent, unseeded
  randomness, §18 row 9); 0 is the shared default every validator agrees on.
  """
  full = corpus.peer_batches(np.arange(n_uids), window)
  n_rows = full["inputs"].shape[1]
  rows = np.stack([eval_rows(n_rows, sample_rate, seed, window, u) for u in range(n_uids)])
  own = {k: np.take_along_axis(v, rows[:, :, None], axis=1) for k, v in full.items()}
  return own, random_batch(corpus, window, sample_rate, seed, salt)


def random_batch(corpus, window: int, sample_rate: float, seed: int, salt: int = 0) -> dict:
  """The sampled rows [B', L] of round `window`'s random pages drawn with `salt` (§9.1)."""
  rand_full = corpus.batch_from_pages(corpus.random_pages(window, salt))
  r_rows = eval_rows(rand_full["inputs"].shape[0], sample_rate, seed, window, -1 & 0xFFFF)
  return {k: v[r_rows] for k, v in rand_full.items()}


# One jitted function for the process: Validators with equal static pieces share its
# compilation cache (configs, layouts and meshes are hashable).
_score_round = jax.jit(score_round, static_argnames=("cfg", "layout", "model_cfg", "mesh"))


class Validator:
  """Holds the static pieces (config, layout, mesh) and calls the jitted `score_round`."""

  def __init__(self, cfg: Config, layout: Layout, n_uids: int, mesh=None):
    self.cfg, self.layout, self.n_uids, self.mesh = cfg, layout, n_uids, mesh
    self._round = partial(_score_round, cfg=cfg.gauntlet, layout=layout, model_cfg=cfg.model,
                          mesh=mesh)

  def inputs(self, uploads, offsets_s, probes, probe_present, stake, own, rand, window) -> tuple:
    subs, present, struct_ok, reasons = parse_uploads(uploads, self.layout, window)
    inputs = RoundInputs(
        subs=subs, present=jnp.asarray(present), struct_ok=jnp.asarray(struct_ok),
        offset_s=jnp.asarray(offsets_s, jnp.float32), probes=jnp.asarray(probes, jnp.float32),
        probe_present=jnp.asarray(probe_present), stake=jnp.asarray(stake, jnp.float32),
        own=own, rand=rand)
    return inputs, reasons

  def round(self, state: ValidatorState, inputs: RoundInputs, params, window: int, lr_t,
            key) -> tuple[ValidatorState, dict]:
    return self._round(state, inputs, params, jnp.int32(window), jnp.float32(lr_t), key)


def validator_round(state: ValidatorState, submissions: Sequence[bytes | None], timestamps,
                    params, data: dict, key, *, validator: Validator, window: int, lr_t):
  """The issue's signature: uploads and their times in, (new state, report) out.

  `data` holds `own`, `rand` (see `round_batches`), `probes`, `probe_present` and `stake`.
  The report gains `reason`, the structural parse result per uid.
  """
  inputs, reasons = validator.inputs(submissions, timestamps, data["probes"], data["probe_present"],
                                     data["stake"], data["own"], data["rand"], window)
  state, report = validator.round(state, inputs, params, window, lr_t, key)
  report = {k: np.asarray(v) for k, v in report.items()}
  report["reason"] = explain(report, reasons)
  return state, report


def explain(report: dict, reasons: Sequence[str]) -> np.ndarray:
  """One word per uid saying what was wrong with its upload ('' if nothing)."""
  out = []
  for u, r in enumerate(reasons):
    if r:
      out.append(r)                      # missing, or a structural SubmissionError reason
    elif not report["fmt_idx_in_range"][u]:
      out.append("index_range")
    elif not (report["fmt_values_finite"][u] and report["fmt_qparams_finite"][u]
              and report["fmt_decoded_finite"][u]):
      out.append("nonfinite")
    elif report["too_early"][u]:
      out.append("too_early")
    elif report["too_late"][u]:
      out.append("too_late")
    elif report["slash_nonfinite"][u]:
      out.append("nonfinite_loss")     # its step made the validator's loss NaN/Inf
    elif report["copy_level"][u] > 0:
      out.append("copy")               # copy_partner names the upload it copied
    elif report["timeout"][u]:
      out.append("timeout")            # a copier's timeout: not evaluated, not gathered
    else:
      out.append("")
  return np.asarray(out, dtype=object)
