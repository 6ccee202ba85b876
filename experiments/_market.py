"""Shared by the market experiments: one market run, and what it paid and was worth."""
from __future__ import annotations

import time

import numpy as np

from _common import ROOT, fresh_run_dir
from jaxnet.config import load_config
from jaxnet.market import run as mrun
from jaxnet.market.report import earned

CONFIG = ROOT / "configs" / "market-small.yaml"
COMPUTE = {"honest": 1.0, "copier": 0.0, "noise": 0.0, "lazy": 0.0, "cabal": 0.0}


def run_market(name: str, seed: int, overrides=()) -> dict:
  """One market-small run (no checkpoints kept) -> its records and per-peer totals."""
  cfg = load_config(CONFIG, ["--market.seed", str(seed), "--data.seed", str(seed),
                             "--checkpoint.resume", "never", "--checkpoint.every", "0",
                             "--train.out_dir", fresh_run_dir(f"{name}-{seed}"), *overrides])
  t0 = time.perf_counter()
  res = mrun.run(cfg, progress=False)
  hist = res["history"]
  secs = time.perf_counter() - t0
  print(f"{name} seed {seed}: {len(hist)} blocks in {secs:.0f} s")
  tail = hist[-max(1, len(hist) // 10):]   # the last tenth of the run
  return {"hist": hist, "behaviours": res["market"].behaviours, "seconds": secs,
          "paid": earned(hist).astype(np.float64),
          "value": np.sum([r["value"] for r in hist], axis=0),
          "loss": np.mean([r["peer_loss"] for r in tail], axis=0),
          "loss_alone": np.mean([r["peer_loss_alone"] for r in tail], axis=0),
          "W": np.asarray([r["W"] for r in hist], np.float32)}


def spearman(x, y) -> float:
  """Spearman rank correlation (average ranks for ties)."""
  def ranks(v):
    v = np.asarray(v, np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    for u in np.unique(v):   # ties share their mean rank
      r[v == u] = r[v == u].mean()
    return r
  a, b = ranks(x), ranks(y)
  a, b = a - a.mean(), b - b.mean()
  den = np.sqrt((a * a).sum() * (b * b).sum())
  return float((a * b).sum() / den) if den > 0 else 0.0
