"""Convergence: a Gauntlet-governed run with honest and adversarial peers against the AdamW
baseline given the same tokens per round (the paper's per-iteration claim, gauntlet.md
§17.2-§17.3 a).

  python experiments/convergence.py [--config configs/sim-small.yaml] [--rounds 40] [overrides]
  python experiments/convergence.py --plot-only   # re-draw the PNG from the JSON

The baseline is the centralised AdamW of `jaxnet train` with batch = (gather size x pages
per window x page size) sequences per step: the tokens that enter one round's aggregate
when every gather slot holds an honest peer. Both curves are the loss on the same held-out
batch. Writes results/convergence.{json,png}.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from _common import ROOT, fresh_run_dir, out_paths, plot_only, run_sim, save_figure, write_json


def main(argv=None):
  if plot_only(argv, "convergence", plot):
    return
  # JAX and the model only when something runs (--plot-only and the tests import this)
  import jax
  from jaxnet import model as jmodel
  from jaxnet import train as jtrain
  from jaxnet.config import load_config
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", default=str(ROOT / "configs" / "sim-small.yaml"))
  ap.add_argument("--rounds", type=int, default=None)
  ap.add_argument("--adamw-lr", type=float, default=1e-3)
  ap.add_argument("--from-run", default=None,
                  help="reuse a finished network run of the same config (e.g. runs/exp-incentives)")
  args, overrides = ap.parse_known_args(argv)
  extra = ["--train.out_dir", fresh_run_dir("convergence"), "--checkpoint.resume", "never"]
  if args.rounds:
    extra += ["--sim.rounds", str(args.rounds)]
  cfg = load_config(args.config, extra + overrides)
  if args.from_run:
    from jaxnet.report import load_metrics
    hist = load_metrics(Path(args.from_run))[: cfg.sim.rounds]
    res = {"seconds": None}
    print(f"network: {len(hist)} rounds read from {args.from_run}")
  else:
    res = run_sim(cfg, "gauntlet network")
    hist = res["history"]
  rounds = len(hist)
  net_val = [r["val_loss"] for r in hist]
  # AdamW: evaluate on the same held-out batch after every step
  n_seqs = cfg.gauntlet.gather_size * cfg.data.pages_per_window * cfg.data.page_size
  tcfg = dataclasses.replace(cfg.train, optimizer="adamw", steps=rounds, batch_size=n_seqs,
                             microbatch=cfg.data.pages_per_window * cfg.data.page_size,
                             warmup_steps=min(cfg.demo.warmup, rounds - 1), lr=args.adamw_lr,
                             eval_every=0, out_dir=fresh_run_dir("convergence-adamw"))
  base = dataclasses.replace(cfg, train=tcfg,
                             checkpoint=dataclasses.replace(cfg.checkpoint, resume="never", dir="", every=0))
  run = jtrain.Run(base, devices=jax.devices()[:1])
  val = run.corpus.held_out()
  loss = jax.jit(lambda p: jmodel.loss_fn(p, val, cfg.model))
  state = run.init_fn()
  adamw_val = []
  for step in range(rounds):
    state, _ = run.step_fn(state, run.batch(step))
    adamw_val.append(float(loss(state.params)))
  gathered = [r["gathered"] for r in hist]
  out = {"rounds": rounds, "seconds_network": res["seconds"], "tokens_per_round": n_seqs * cfg.data.seq_len,
         "network_val_loss": net_val, "adamw_val_loss": adamw_val, "gathered_per_round": gathered,
         "final": {"network": net_val[-1], "adamw": adamw_val[-1]},
         "rounds_network_below_adamw": int(sum(n <= a for n, a in zip(net_val, adamw_val))),
         "adamw_lr": args.adamw_lr, "demo_lr": cfg.demo.lr, "adamw_sequences_per_step": n_seqs}
  json_path, png_path = out_paths("convergence")
  write_json(json_path, out)
  plot(out, png_path)
  print(f"final held-out loss: network {net_val[-1]:.4f}, AdamW {adamw_val[-1]:.4f}")
  return out


def plot(out: dict, path):
  """Both held-out loss curves, from the JSON."""
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4))
  c = ps.palette(2)
  r = np.arange(1, out["rounds"] + 1)
  # older JSONs have tokens per round only
  batch = (f"{out['adamw_sequences_per_step']} sequences" if "adamw_sequences_per_step" in out
           else f"{out['tokens_per_round']} tokens")
  ax.plot(r, out["network_val_loss"], color=c[0], label="Gauntlet network\n(DeMo, honest + adversaries)")
  ax.plot(r, out["adamw_val_loss"], color=c[1],
          label=f"AdamW, lr {out['adamw_lr']:g}\n({batch} per step,\nthe tokens of one round)")
  ps.label(ax, "round (network) = optimizer step (AdamW)", "held-out " + ps.LOSS_LABEL, legend="")
  ps.title(fig, f"Held-out loss: a Gauntlet network against AdamW on the same tokens per round "
                f"({out['tokens_per_round']} tokens)")
  return save_figure(fig, path)


if __name__ == "__main__":
  main()
