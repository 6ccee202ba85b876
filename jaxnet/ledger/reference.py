"""Slow, straightforward references for tests and benchmarks (not used by the ledger).

* `epoch_numpy`: the same Yuma epoch (spec §2.1) written plainly in NumPy, in any dtype;
  the benchmark times it against the jitted JAX epoch, and tests check they agree.
* `weighted_median_chain`: a line-by-line Python port of the chain's mid-pivot
  `weighted_median` / `weighted_median_col` (subtensor `epoch/math.rs`), an independent
  oracle for the sort-based kappa-median's tie rules.
"""
from __future__ import annotations

import math

import numpy as np

from jaxnet.ledger.config import YumaConfig

U16 = 65535.0


def _normalize(x, axis=-1):
  s = x.sum(axis=axis, keepdims=True)
  return np.divide(x, s, out=np.zeros_like(x), where=s != 0)


def _max_upscale(x, axis):
  m = x.max(axis=axis, keepdims=True)
  out = np.divide(x, m, out=np.zeros_like(x), where=m > 0)
  return np.where((x == m) & (m > 0), 1.0, out).astype(x.dtype)


def weighted_quantile_numpy(w, a, kappa):
  """Sort-based kappa-median per column (spec §5.2), vectorised NumPy."""
  pos = a > 0
  a = _normalize(np.where(pos, a, 0))
  w = np.where(pos[:, None], w, 0)
  order = np.argsort(-w, axis=0, kind="stable")
  ws = np.take_along_axis(w, order, axis=0)
  cum = np.cumsum(a[order], axis=0)
  target = np.minimum(kappa, cum[-1])
  first = np.argmax(cum >= target[None, :], axis=0)
  return ws[first, np.arange(w.shape[1])]


def epoch_numpy(W, S, B_prev=None, params: YumaConfig = YumaConfig(), masks=None,
                emission=1.0, dtype=np.float64) -> dict:
  """The Yuma epoch of spec §2.1 (steps 2-12) in plain NumPy; float mode (no u16)."""
  p = params
  if p.u16:
    raise NotImplementedError("the NumPy reference covers float mode only")
  w = np.array(W, dtype=dtype)
  V, M = w.shape
  S = np.asarray(S, dtype)
  b_prev = np.zeros((V, M), dtype) if B_prev is None else np.asarray(B_prev, dtype)
  if masks is None:   # as `yuma.epoch`: everyone active, the permits a first epoch stores
    active, permit = np.ones(V, bool), None
    outdated, recent = np.zeros((V, M), bool), np.zeros(M, bool)
  else:
    active, permit, outdated, recent = (np.asarray(m, bool) for m in masks)
  owner = np.arange(V) == p.owner
  s = _normalize(np.where((S >= p.stake_threshold) | owner, S, 0))
  order = np.argsort(s, kind="stable")
  rank_pos = np.empty(V, int)
  rank_pos[order] = np.arange(V)
  new_permit = (s != 0) & (rank_pos >= V - min(p.max_validators, V)) | owner
  permit = new_permit if permit is None else permit
  a = _normalize(np.where(active & permit, s, 0))
  w[~permit] = 0
  if p.layout == "combined":
    diag = np.eye(V, M, dtype=bool) & ~owner[:, None]
    w[diag] = 0
  w[outdated] = 0
  w = _normalize(w, axis=1)
  c = weighted_quantile_numpy(w, a, dtype(p.kappa))
  wc = np.minimum(w, c[None, :])
  tv = wc.sum(1)
  prerank, rank = a @ w, a @ wc
  trust = np.divide(rank, prerank, out=np.zeros_like(rank), where=prerank != 0)
  incentive = _normalize(rank)
  beta = p.bonds_penalty
  wb = (1 - beta) * w + beta * wc
  if p.yuma3:
    b0 = np.where(recent[None, :], 0, np.clip(b_prev, 0, 1))
    alpha = p.bonds_alpha
    if p.liquid_alpha and np.any(c != 0):
      d = np.where(wb >= b0, np.clip(wb - c[None, :], 0, 1), np.clip(b0 - wb, 0, 1))
      sig = 1 / (1 + np.exp(-(p.alpha_steepness / 100) * (d - 0.5)))
      alpha = np.clip(p.alpha_low + (p.alpha_high - p.alpha_low) * sig, p.alpha_low, p.alpha_high)
    bonds = np.clip((1 - alpha) * b0 + alpha * wb, 0, 1)
    dividends = _normalize(a * (_normalize(bonds, axis=0) @ incentive))
  else:
    b0 = _normalize(np.where(recent[None, :], 0, b_prev), axis=0)
    delta = _normalize(a[:, None] * wb, axis=0)
    bonds = _normalize(p.bonds_alpha * delta + (1 - p.bonds_alpha) * b0, axis=0)
    dividends = _normalize(bonds @ incentive)
  split = p.miner_split
  if incentive.sum() + dividends.sum() == 0:
    backup = a if a.sum() > 0 else s
    backup = backup if backup.sum() > 0 else np.full(V, 1.0 / V, dtype)
    server, validator = np.zeros(M, dtype), emission * _normalize(backup)
  else:
    server = split * emission * _normalize(incentive)
    validator = (1 - split) * emission * _normalize(dividends)
  return dict(stake=s, active_stake=a, weights=w, consensus=c, clipped_weights=wc,
              validator_trust=tv, prerank=prerank, rank=rank, server_trust=trust,
              incentive=incentive, bonds=bonds, dividends=dividends, server_emission=server,
              validator_emission=validator, new_permit=new_permit)


def epoch_2020_numpy(W, S, rho=10.0, kappa=0.5):
  """The 2020 epoch (spec §1.2) in float64 NumPy; rows of W are normalised (row-stochastic)."""
  W, S = np.asarray(W, np.float64), np.asarray(S, np.float64)
  s = _normalize(S)
  rank = s @ _normalize(W, axis=1)
  trust = s @ (W > 0)
  cons = 1 / (1 + np.exp(-rho * (trust - kappa)))
  return dict(rank=rank, trust=trust, consensus=cons, incentive=_normalize(rank * cons))


def weighted_median_chain(stake, score, majority):
  """Column kappa-median as the chain computes it (math.rs `weighted_median_col`), in Python.

  Args:
    stake: [V] stakes; score: [V][M] weights; majority: kappa.
  Returns:
    list of M medians.
  """
  stake = [float(x) for x in stake]
  V = len(stake)
  M = len(score[0]) if V else 0
  out = [0.0] * M
  for col in range(M):
    use = [(stake[r], float(score[r][col])) for r in range(V) if stake[r] > 0]
    if not use:
      continue
    total = sum(s for s, _ in use)
    st = [s / total for s, _ in use]
    sc = [x for _, x in use]
    stake_sum = sum(st)
    out[col] = _weighted_median(st, sc, list(range(len(st))), stake_sum - majority, 0.0,
                                stake_sum)
  return out


def _weighted_median(stake, score, idx, minority, lo, hi):
  if not idx:
    return 0.0
  if len(idx) == 1:
    return score[idx[0]]
  pivot = score[idx[len(idx) // 2]]
  lo_stake = hi_stake = 0.0
  lower, upper = [], []
  for i in idx:
    if score[i] == pivot:
      continue
    if score[i] < pivot:
      lo_stake += stake[i]
      lower.append(i)
    else:
      hi_stake += stake[i]
      upper.append(i)
  if lo + lo_stake <= minority < hi - hi_stake:
    return pivot
  if minority < lo + lo_stake and lower:
    return _weighted_median(stake, score, lower, minority, lo, lo + lo_stake)
  if hi - hi_stake <= minority and upper:
    return _weighted_median(stake, score, upper, minority, hi - hi_stake, hi)
  return pivot


def cabal_toy_python(s_a=0.51, s_b=0.49, tau=0.1, rho=10.0, blocks=100):
  """The paper's recurrence (spec §1.3) in float64 Python: the cabal share per block."""
  out = []
  for _ in range(blocks):
    tot = s_a + s_b
    xa, xb = s_a / tot, s_b / tot
    ia = xa / (1 + math.exp(-rho * (xa - 0.5)))
    ib = xb / (1 + math.exp(-rho * (xb - 0.5)))
    s_a, s_b = s_a + tau * tot * ia / (ia + ib), s_b + tau * tot * ib / (ia + ib)
    out.append(s_b / (s_a + s_b))
  return out
