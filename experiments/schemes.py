"""Schemes: AdamW, DeMo, DiLoCo and SparseLoCo on the same tokens per round (schemes.md §3
headline claim; issue 11).

  python experiments/schemes.py [--config configs/small.yaml] [--rounds 20] [--peers 4]
                                [--seeds 0 1 2] [--inner-steps 15] [overrides]
  python experiments/schemes.py --plot-only   # re-draw the PNG from the JSON

Every mode sees the same tokens per round: P peers x (pages_per_window x page_size)
sequences (page_size is set so that H inner steps divide a peer's pages: 2 x 15 = 30
sequences, 2 per inner step at H = 15). AdamW takes one step per round on all P peers'
sequences; DeMo one compressed sign step of the P gradients; DiLoCo (H inner AdamW steps,
dense fp32 pseudo-gradients, Nesterov outer) and SparseLoCo (H inner steps, top-k of 4096
per 64x64 chunk at 64 = 1.56 % and 32 = 0.78 %, 2-bit values, 12-bit indices) one outer
step of the P pseudo-gradients. All peers are honest and all are aggregated (P <= gauntlet.gather_size). Every mode
reports `val_loss` on the same held-out sequences (`data.val_sequences`) after every
round; each is run for every seed (model init and page assignment), and the JSON holds the
mean and spread. Bytes are one peer's upload per round (`Layout.upload_bytes`; AdamW: a
dense fp32 gradient, what a data-parallel all-reduce sends).

SparseLoCo's claim (arXiv 2508.15706): 1-3 % density with 2-bit values matches or beats
dense DiLoCo at equal H. Writes results/schemes.{json,png}.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np

from _common import ROOT, fresh_run_dir, out_paths, plot_only, save_figure, write_json

# mode -> (scheme, overrides); AdamW is the centralised baseline
MODES = {
    "adamw": (None, []),
    "demo": ("demo", []),
    "diloco": ("diloco", []),
    "sparseloco-1.56%": ("sparseloco", ["--sparseloco.topk", "64"]),
    "sparseloco-0.78%": ("sparseloco", ["--sparseloco.topk", "32"]),
}


def mode_config(base_args: list[str], mode: str, seed: int, args):
  from jaxnet.config import load_config
  scheme, extra = MODES[mode]
  common = ["--train.seed", str(seed), "--data.seed", str(seed), "--train.steps", str(args.rounds),
            "--train.eval_every", "1", "--train.compare_baseline", "false",
            "--train.warmup_steps", str(min(args.adamw_warmup, args.rounds - 1)),
            "--checkpoint.resume", "never", "--checkpoint.every", "0",
            "--train.out_dir", fresh_run_dir(f"schemes-{mode}-{seed}")]
  if scheme is None:
    cfg = load_config(args.config, base_args + common)
    seqs = args.peers * cfg.data.pages_per_window * cfg.data.page_size
    train = dataclasses.replace(cfg.train, optimizer="adamw", batch_size=seqs,
                                microbatch=cfg.data.pages_per_window * cfg.data.page_size)
    return dataclasses.replace(cfg, train=train)
  return load_config(args.config, base_args + common + extra + [
      "--train.optimizer", "decentral", "--scheme", scheme, "--train.peers", str(args.peers)])


def upload_bytes(cfg, mode: str) -> int:
  import jax
  from jaxnet import model as jmodel
  from jaxnet import schemes
  abstract = jmodel.abstract_params(cfg.model)
  if MODES[mode][0] is None:
    return sum(4 * math.prod(p.shape) for p in jax.tree.leaves(abstract))
  layout = schemes.get(cfg).make_layout(abstract, n_pages=cfg.data.pages_per_window)
  return layout.upload_bytes()


def run_mode(cfg, mode: str) -> list[float]:
  import jax
  from jaxnet import decentral
  from jaxnet import train as jtrain
  if MODES[mode][0] is None:
    out = jtrain.train(cfg, progress=False, devices=jax.devices()[:1])
  else:
    out = decentral.train(cfg, progress=False)
  return [r["val_loss"] for r in out["history"]]


def main(argv=None):
  if plot_only(argv, "schemes", plot):
    return
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", default=str(ROOT / "configs" / "small.yaml"))
  ap.add_argument("--rounds", type=int, default=20)
  ap.add_argument("--peers", type=int, default=4)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--inner-steps", type=int, default=15)
  ap.add_argument("--pages", type=int, default=2, help="data.pages_per_window")
  ap.add_argument("--page-size", type=int, default=None,
                  help="data.page_size (default H: a peer's pages split into H inner batches)")
  ap.add_argument("--adamw-warmup", type=int, default=2, help="AdamW warm-up steps")
  ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
  args, overrides = ap.parse_known_args(argv)
  h = args.inner_steps
  page_size = args.page_size or h
  base_args = ["--inner.steps", str(h), "--data.pages_per_window", str(args.pages),
               "--data.page_size", str(page_size), "--demo.warmup", "2", *overrides]
  curves, byte_rows, seconds = {}, {}, {}
  for mode in args.modes:
    runs = []
    for seed in args.seeds:
      cfg = mode_config(base_args, mode, seed, args)
      t0 = time.perf_counter()
      runs.append(run_mode(cfg, mode))
      seconds.setdefault(mode, []).append(time.perf_counter() - t0)
      print(f"{mode} seed {seed}: held-out loss {runs[-1][0]:.3f} -> {runs[-1][-1]:.3f} "
            f"({seconds[mode][-1]:.0f} s)", flush=True)
    curves[mode] = np.asarray(runs)                              # [seeds, rounds]
    byte_rows[mode] = upload_bytes(cfg, mode)
  tokens = args.peers * args.pages * page_size * cfg.data.seq_len
  summary = {m: {"final_mean": float(c[:, -1].mean()), "final_std": float(c[:, -1].std(ddof=1))
                 if len(args.seeds) > 1 else 0.0, "bytes_per_round": byte_rows[m],
                 "seconds_mean": float(np.mean(seconds[m]))} for m, c in curves.items()}
  claim = None
  if "diloco" in curves and "sparseloco-1.56%" in curves:
    d, s = curves["diloco"][:, -1], curves["sparseloco-1.56%"][:, -1]
    claim = {"sparseloco_minus_diloco_final_mean": float((s - d).mean()),
             "per_seed": (s - d).tolist(),
             "holds": bool((s - d).mean() <= 0.0)}
  data = {"config": args.config, "rounds": args.rounds, "peers": args.peers,
          "seeds": args.seeds, "inner_steps": h, "tokens_per_round": tokens,
          "sequences_per_peer_round": args.pages * page_size, "overrides": overrides,
          "val_loss": {m: c.tolist() for m, c in curves.items()}, "summary": summary,
          "claim_sparseloco_matches_diloco": claim}
  js, png = out_paths("schemes")
  write_json(js, data)
  plot(data, png)
  for m, row in summary.items():
    print(f"{m:>18}: final held-out loss {row['final_mean']:.3f} ± {row['final_std']:.3f}, "
          f"{row['bytes_per_round'] / 1e6:.3f} MB uploaded per peer-round")
  if claim:
    print(f"SparseLoCo 1.56% - DiLoCo (final, mean over seeds): "
          f"{claim['sparseloco_minus_diloco_final_mean']:+.3f}: claim "
          f"{'holds' if claim['holds'] else 'does not hold'} here")


def plot(out: dict, png):
  """Held-out loss per round and per uploaded byte, every mode, from the JSON."""
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
  curves = {m: np.asarray(c) for m, c in out["val_loss"].items()}   # [seeds, rounds]
  colours = ps.colour_map(curves)
  for m, c in curves.items():
    r = np.arange(1, c.shape[1] + 1)
    mean, lo, hi = c.mean(0), c.min(0), c.max(0)
    a.plot(r, mean, color=colours[m], label=m)
    a.fill_between(r, lo, hi, color=colours[m], alpha=0.15)
    b.plot(r * out["summary"][m]["bytes_per_round"], mean, color=colours[m], label=m)
  ps.label(a, "round (outer step)", "held-out " + ps.LOSS_LABEL,
           title=f"per round; band: min-max over {len(out['seeds'])} seeds")
  b.set_xscale("log")
  ps.label(b, "bytes uploaded per peer, cumulative (log scale)", "held-out " + ps.LOSS_LABEL,
           title="per uploaded byte (AdamW: a dense fp32 gradient)", legend="mode")
  ps.title(fig, f"Schemes at H = {out['inner_steps']} inner steps on the same tokens per round "
                f"({out['peers']} peers, {out['tokens_per_round']} tokens per round; mean over "
                f"seeds {out['seeds']})")
  fig.tight_layout()
  return save_figure(fig, png)


if __name__ == "__main__":
  main()
