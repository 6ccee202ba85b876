"""`jaxnet report` of a market run: a per-peer table and three figures (market.md §6).

Audit: the run's ledger epochs (kept in metrics.jsonl, which stays consistent through a
kill and resume) are written as the ledger's JSONL epoch log, `ledger.jsonl`, and
re-audited (`jaxnet.ledger.audit_epoch_log`: minted == owner + paid on every line, and
the per-peer totals must equal what each peer earned).

Table: per peer its behaviour, stake share, share of everything minted, cumulative true
marginal value (the exact leave-one-out loss increase its embeddings spare the peers that
query it, summed over blocks), and its loss with and without neighbours. Figures: W of the
last block as a heatmap, stake share per behaviour class over blocks, and each peer's
earned share against its true marginal value.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxnet import plotstyle as ps


def earned(recs: list[dict]) -> np.ndarray:
  """Per peer: units minted to it over the run."""
  return np.sum([r["ledger"]["paid"] for r in recs if r.get("ledger")], axis=0)


def table(recs: list[dict], behaviours: list[str] | None) -> str:
  last = recs[-1]
  stake = np.asarray(last["stake"], np.float64)
  paid = earned(recs).astype(np.float64)
  value = np.sum([r["value"] for r in recs], axis=0)
  lines = [f"{'peer':>4} {'behaviour':<10} {'stake':>7} {'earned':>7} {'value':>9} "
           f"{'loss':>7} {'alone':>7}"]
  for i in range(len(stake)):
    lines.append(f"{i:>4} {(behaviours[i] if behaviours else '-'):<10} "
                 f"{stake[i] / stake.sum():>7.4f} {paid[i] / max(paid.sum(), 1):>7.4f} "
                 f"{value[i]:>9.4f} {last['peer_loss'][i]:>7.4f} "
                 f"{last['peer_loss_alone'][i]:>7.4f}")
  return "\n".join(lines)


def figure(recs: list[dict], behaviours: list[str] | None):
  """W of the last block, stake share per class over blocks, pay against true value."""
  labels = behaviours or [str(i) for i in range(len(recs[0]["stake"]))]
  classes = sorted(set(labels))
  col = ps.class_colours(classes, "market") if behaviours else ps.colour_map(classes)
  fig, axes = ps.pyplot().subplots(1, 3, figsize=(17, 4.4))
  W = np.asarray(recs[-1]["W"], np.float64)
  W[np.eye(len(W), dtype=bool)] = np.nan   # the self-loop would swamp the colour scale
  im = axes[0].imshow(W, cmap="viridis")
  axes[0].set_title(f"W at block {recs[-1]['block']} (row i: how i values j; "
                    "self-loop masked)", fontsize=9)
  axes[0].set_xlabel("peer j (valued)")
  axes[0].set_ylabel("peer i (valuing)")
  bar = fig.colorbar(im, ax=axes[0], fraction=0.046)
  bar.set_label("weight W_ij (row share)")
  blocks = [r["block"] for r in recs]
  stake = np.asarray([r["stake"] for r in recs], np.float64)
  share = stake / stake.sum(1, keepdims=True)
  for c in classes:
    sel = np.array([x == c for x in labels])
    axes[1].plot(blocks, share[:, sel].sum(1), color=col[c], label=f"{c} ({sel.sum()})")
  ps.label(axes[1], "block", "share of all stake (fraction)", "stake per class", "class (peers)")
  paid = earned(recs).astype(np.float64)
  value = np.sum([r["value"] for r in recs], axis=0)
  for c in classes:
    sel = np.array([x == c for x in labels])
    axes[2].scatter(value[sel], paid[sel] / max(paid.sum(), 1), color=col[c], label=c, s=18)
  ps.label(axes[2], "true marginal value (leave-one-out loss drop, nats, summed over blocks)",
           "share of emission earned (fraction)", "pay against value, one point per peer", "class")
  fig.subplots_adjust(wspace=0.55)
  ps.title(fig, "The 2020 market: how peers value each other, and who the ledger pays")
  return fig


def plot(run_dir: Path, recs: list[dict], behaviours: list[str] | None) -> list[Path]:
  return [ps.save(figure(recs, behaviours), run_dir / "market.png")]


def audit(run_dir: Path, recs: list[dict]) -> str:
  """Writes `ledger.jsonl` from the run's epochs, audits it, returns a one-line summary."""
  from jaxnet.ledger import LedgerAuditError, audit_epoch_log
  path = run_dir / "ledger.jsonl"
  with path.open("w") as f:
    for r in recs:
      g = r.get("ledger")
      if not g:
        continue
      paid = [[i, int(u)] for i, u in enumerate(g["paid"]) if u]
      owner = g["minted"] - sum(u for _, u in paid)   # Yuma's owner cut; 0 in the 2020 mode
      f.write(json.dumps({"epoch": g["epoch"], "minted": g["minted"], "owner": owner,
                          "miners": paid, "validators": []}, separators=(",", ":")) + "\n")
  totals = audit_epoch_log(path)
  got = np.zeros(len(recs[0]["stake"]), np.int64)
  for uid, units in totals["miners"].items():
    got[uid] = units
  if not np.array_equal(got, earned(recs)):
    raise LedgerAuditError(f"{path}: per-peer totals differ from the run's payouts")
  return (f"ledger audit ({path.name}): {totals['epochs']} epochs, minted {totals['minted']} = "
          f"owner {totals['owner']} + paid {int(got.sum())}, per peer as recorded")
