"""`jaxnet report RUN_DIR [--round R] [--no-plots]`: what each peer earned, and why.

Prints the validator's per-uid report of one round as a table (every score term and
every slash with its reason) and draws the run's figures (loss, weight per behaviour
class, BMA and ordinal per uid) into RUN_DIR. A network with a ledger also gets the
chain's tables of its last epoch up to that round (per validator: stake, validator trust,
dividends per unit stake, bond share, agreement with the consensus; per miner: consensus
weight, the weight clipped by the kappa-median, emission) and their figures over epochs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jaxnet import plotstyle as ps


class ReportError(ValueError):
  """A report that cannot be made as asked (e.g. a round the run does not have); one line."""


# (report key, header, width, number format)
COLUMNS = [("uid", "uid", 4, "d"), ("status", "status", 12, ""), ("evaluated", "eval", 4, ""),
           ("r_own", "r_own", 10, ".2e"), ("r_rand", "r_rand", 10, ".2e"),
           ("indicator", "ind", 4, ".0f"), ("bma", "bma", 7, ".3f"),
           ("evidence", "evid", 6, ""), ("sync", "sync", 6, ".3f"),
           ("ordinal", "ordinal", 8, ".3f"), ("final", "F", 8, ".3f"),
           ("weight", "weight", 7, ".4f"), ("slashes", "slashes", 0, "")]
SLASHES = {"slash_gather_skipped": "gather-skip", "slash_desync": "desync",
           "slash_eval_missing": "missing/late", "slash_malformed": "malformed",
           "slash_inactive_reset": "inactive-reset", "slash_nonfinite": "nonfinite-loss"}


def load_metrics(run_dir: Path) -> list[dict]:
  path = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
  if not path.exists():
    raise FileNotFoundError(f"{path}: no metrics.jsonl (is this a jaxnet run directory?)")
  from jaxnet.rundir import read_metrics
  return read_metrics(path)   # a torn last line (a kill mid-write) is dropped


def table(report: dict, behaviours: list[str] | None = None) -> str:
  """The per-uid table of one validator report (dict of lists, as in metrics.jsonl)."""
  lines = [" ".join(f"{h:>{w}}" if f else f"{h:<{w}}" for _, h, w, f in COLUMNS)]
  if behaviours:
    lines[0] += "  behaviour (simulation label, unseen by the validator)"
  for u in range(len(report["uid"])):
    reason = report["reason"][u] if report.get("reason") else ""
    slashes = [v for k, v in SLASHES.items() if k in report and report[k][u]]
    if report.get("copy_level") and report["copy_level"][u]:
      partner = report.get("copy_partner", [-1] * (u + 1))[u]
      slashes.append(f"copy-level-{report['copy_level'][u]}"
                     + (f"-of-{partner}" if partner >= 0 else ""))
    elif report.get("copy_unresolved") and report["copy_unresolved"][u]:
      slashes.append("copy-pair-unresolved")
    # own-page evidence: +1 indicators / indicators kept, * once the test says "paid"
    evid = (f"{report['evidence_wins'][u]}/{report['evidence_n'][u]}"
            + ("*" if report["evidence"][u] else "")) if "evidence" in report else "-"
    row = {**{k: report[k][u] for k, _, _, f in COLUMNS if f}, "status": reason or "ok",
           "evaluated": "yes" if report["scored"][u] else "no", "evidence": evid,
           "slashes": ",".join(slashes) or "-"}
    line = " ".join(format(row[k], f"{'>' if f else '<'}{w}{f}") for k, _, w, f in COLUMNS)
    lines.append(line + (f"  {behaviours[u]}" if behaviours else ""))
  return "\n".join(lines)


def validator_table(log: dict, kinds: list[str] | None = None) -> str:
  """Per validator, one ledger epoch (the `ledger` entry of a round's record)."""
  lines = [f"{'val':>4} {'behaviour':<14} {'stake':>12} {'vtrust':>7} {'div/stake':>10} "
           f"{'bonds':>6} {'agree':>6} {'active':>6} {'revealed':>8}"]
  for v, stake in enumerate(log["stake_units"]):
    per = log["validator_units"][v] / stake if stake else 0.0
    vt = log.get("vtrust", [float("nan")] * (v + 1))[v]
    bs = log.get("bond_share", [float("nan")] * (v + 1))[v]
    lines.append(f"{v:>4} {(kinds[v] if kinds else '-'):<14} {stake:>12d} {vt:>7.3f} "
                 f"{per:>10.5f} {bs:>6.3f} {log['agreement'][v]:>6.3f} "
                 f"{'yes' if log['active'][v] else 'no':>6} {log['revealed_epoch'][v]:>8d}")
  return "\n".join(lines)


def miner_table(log: dict, behaviours: list[str] | None = None) -> str:
  """Per miner, one ledger epoch: consensus weight, clipped weight, incentive, emission."""
  lines = [f"{'uid':>4} {'consensus':>9} {'clipped':>8} {'incentive':>9} {'emission':>9}"
           + ("  behaviour" if behaviours else "")]
  for u, units in enumerate(log["miner_units"]):
    clipped = log.get("clipped", [float("nan")] * (u + 1))[u]
    lines.append(f"{u:>4} {log['consensus'][u]:>9.4f} {clipped:>8.4f} "
                 f"{log['incentive'][u]:>9.4f} {units:>9d}"
                 + (f"  {behaviours[u]}" if behaviours else ""))
  return "\n".join(lines)


def chain_figure(recs: list[dict], behaviours: list[str] | None, kinds: list[str] | None):
  """Dividends per unit stake per validator, and miner emission per class, over epochs
  (None without ledger epochs)."""
  logs = [r["ledger"] for r in recs if r.get("ledger") and "stake_units" in r["ledger"]]
  if not logs:
    return None
  ep = [g["epoch"] for g in logs]
  fig, axes = ps.pyplot().subplots(1, 2, figsize=(12, 4))
  per = np.array([[u / s if s else 0.0 for u, s in zip(g["validator_units"], g["stake_units"])]
                  for g in logs])
  vcol = ps.palette(per.shape[1])
  for v in range(per.shape[1]):
    axes[0].plot(ep, per[:, v], marker=".", color=vcol[v],
                 label=f"{v} {kinds[v] if kinds else ''}".strip())
  ps.label(axes[0], "epoch", "dividends per unit stake (units / unit)", "validators", "validator")
  units = np.array([g["miner_units"] for g in logs], np.float64)
  share = units / np.maximum(units.sum(1, keepdims=True), 1)
  labels = behaviours or [str(u) for u in range(units.shape[1])]
  ccol = ps.class_colours(labels) if behaviours else ps.colour_map(sorted(set(labels)))
  for c in sorted(set(labels)):
    sel = np.array([x == c for x in labels])
    axes[1].plot(ep, share[:, sel].sum(1), marker=".", color=ccol[c], label=c)
  ps.label(axes[1], "epoch", "share of miner emission (fraction)", "miners by behaviour",
           "behaviour")
  fig.subplots_adjust(wspace=0.7)
  ps.title(fig, "The chain: what each validator and each class of miner earned per epoch")
  return fig


def plot_chain(run_dir: Path, recs: list[dict], behaviours: list[str] | None,
               kinds: list[str] | None) -> list[Path]:
  fig = chain_figure(recs, behaviours, kinds)
  return [] if fig is None else [ps.save(fig, run_dir / "chain.png")]


def run_figures(recs: list[dict], behaviours: list[str] | None) -> dict:
  """{file name: figure} of a run: loss; weight share per class and BMA / ordinal per uid
  when the records hold validator reports."""
  plt = ps.pyplot()
  figs = {}
  rounds = [r.get("round", r.get("step")) for r in recs]
  unit = "round" if "round" in recs[0] else "step"
  fig, ax = plt.subplots(figsize=(6, 4))
  key = "val_loss" if "val_loss" in recs[0] else "loss"
  ax.plot(rounds, [r[key] for r in recs], color=ps.palette(1)[0])
  ps.label(ax, unit, ("held-out " if key == "val_loss" else "training ") + ps.LOSS_LABEL)
  ps.title(fig, "Loss of the shared model" if key == "val_loss" else "Training loss")
  figs["loss.png"] = fig
  if "report" not in recs[0]:
    return figs
  if "weight_by_class" in recs[0]:
    classes = sorted(recs[0]["weight_by_class"])
    col = ps.class_colours(classes)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.stackplot(rounds, *[[r["weight_by_class"][c] for r in recs] for c in classes],
                 labels=classes, colors=[col[c] for c in classes])
    ps.label(ax, unit, "share of the round's weights (fraction)", legend="behaviour")
    ps.title(fig, "Who the validator paid: weight per behaviour class")
    figs["weights.png"] = fig
  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  n = len(recs[0]["report"]["bma"])
  col = ps.palette(n)
  for name, ax, what in zip(("bma", "ordinal"), axes,
                            ("BMA (moving average of the binary indicator, -1..1)",
                             "OpenSkill ordinal (mu - z sigma, rating points)")):
    arr = np.array([r["report"][name] for r in recs])
    for u in range(arr.shape[1]):
      label = f"{u} {behaviours[u]}" if behaviours else str(u)
      ax.plot(rounds, arr[:, u], label=label, lw=1, color=col[u])
    ps.label(ax, unit, what)
  ps.legend_outside(axes[1], title="uid", ncol=1 if n <= 16 else 2)
  fig.subplots_adjust(wspace=0.3)
  ps.title(fig, "Per-uid scores over the run (the validator never sees the behaviour labels)")
  figs["scores.png"] = fig
  return figs


def plot_run(run_dir: Path, recs: list[dict], behaviours: list[str] | None) -> list[Path]:
  return [ps.save(fig, run_dir / name) for name, fig in run_figures(recs, behaviours).items()]


def _round_number(text: str) -> int:
  """--round takes the round number as the run logged it: an integer >= 0."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 0:
    raise argparse.ArgumentTypeError(f"{value}: rounds count from 0 (negative indices are "
                                     "not supported; omit --round for the last round)")
  return value


def pick_round(recs: list[dict], number: int | None) -> dict:
  """The record of round `number` (by its logged round number); None = the last one."""
  if number is None:
    return recs[-1]
  for rec in recs:
    if rec["round"] == number:
      return rec
  have = [rec["round"] for rec in recs]
  raise ReportError(f"--round {number}: out of range; this run has rounds "
                    f"{min(have)}..{max(have)}")


def main(argv: list[str]) -> int:
  from jaxnet.cli import OneLineArgumentParser
  ap = OneLineArgumentParser(prog="jaxnet report", description=__doc__)
  ap.add_argument("run_dir")
  ap.add_argument("--round", type=_round_number, default=None,
                  help="round number to tabulate, >= 0 (default: the last round)")
  ap.add_argument("--no-plots", action="store_true")
  args = ap.parse_args(argv)
  run_dir = Path(args.run_dir)
  recs = load_metrics(run_dir)
  if not recs:
    raise FileNotFoundError(f"{run_dir}: metrics.jsonl is empty")
  from jaxnet.rundir import manifest_lines
  for line in manifest_lines(run_dir if run_dir.is_dir() else run_dir.parent):
    print(line)
  beh_path = (run_dir if run_dir.is_dir() else run_dir.parent) / "behaviours.json"
  behaviours = json.loads(beh_path.read_text()) if beh_path.exists() else None
  if "W" in recs[0]:   # a market run (jaxnet.market)
    from jaxnet.market import report as market_report
    if args.round is not None:
      raise ReportError(f"--round {args.round}: {run_dir} is a market run; it has blocks, "
                        "not validator rounds")
    print(f"{len(recs)} blocks: loss with neighbours {recs[0]['loss']:.4f} -> "
          f"{recs[-1]['loss']:.4f}" + (f", alone {recs[-1]['loss_alone']:.4f}"
                                        if recs[-1]["loss_alone"] is not None else ""))
    print(market_report.table(recs, behaviours))
    print(market_report.audit(run_dir if run_dir.is_dir() else run_dir.parent, recs))
  elif "report" in recs[0]:
    rec = pick_round(recs, args.round)
    print(f"round {rec['round']}: validation loss {rec['val_loss']:.4f}, "
          f"{rec['evaluated']} peers scored, {rec['gathered']} gathered")
    print(table(rec["report"], behaviours))
    epochs = [r for r in recs if r.get("ledger") and "stake_units" in r["ledger"]
              and r["round"] <= rec["round"]]
    kinds_path = (run_dir if run_dir.is_dir() else run_dir.parent) / "validators.json"
    kinds = json.loads(kinds_path.read_text()) if kinds_path.exists() else None
    if epochs:
      g = epochs[-1]["ledger"]
      print(f"ledger epoch {g['epoch']} (round {epochs[-1]['round']}): minted {g['minted']}, "
            f"owner {g['owner']}; gather list of validator {rec.get('lead_validator', 0)}")
      print(validator_table(g, kinds))
      print(miner_table(g, behaviours))
  else:
    if args.round is not None:
      raise ReportError(f"--round {args.round}: {run_dir} is a training run; it has steps, "
                        "not validator rounds")
    print(f"{len(recs)} steps: loss {recs[0]['loss']:.4f} -> {recs[-1]['loss']:.4f}")
  if not args.no_plots:
    out_dir = run_dir if run_dir.is_dir() else run_dir.parent
    kinds_path = out_dir / "validators.json"
    kinds = json.loads(kinds_path.read_text()) if kinds_path.exists() else None
    if "W" in recs[0]:
      from jaxnet.market import report as market_report
      paths = market_report.plot(out_dir, recs, behaviours)
    else:
      paths = plot_run(out_dir, recs, behaviours) + plot_chain(out_dir, recs, behaviours, kinds)
    for p in paths:
      print(f"wrote {p}")
  return 0
