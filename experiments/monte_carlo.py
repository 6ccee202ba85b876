"""Monte Carlo: one validator round vmapped over hundreds of seeds.

  python experiments/monte_carlo.py [--config configs/sim-tiny.yaml] [--seeds 256] [--warmup-rounds 12]
  python experiments/monte_carlo.py --plot-only   # re-draw the PNG from the JSON

A network runs `--warmup-rounds` rounds; then the next round's uploads are scored by S
validators that differ only in their randomness: their own random pages (salt) and their
own key (evaluation sampling and gather filler). The round is `jax.vmap`-ed over the S
seeds in one call. Two settings: jaxnet's (every peer evaluated, so only the random batch
differs) and the reference's (4 peers per round sampled by bin and waiting counter). The
spread of scores and weights is what validators with unseeded randomness would disagree
by (gauntlet.md §16 "validator disagreement", §18 row 9). Writes results/monte_carlo.{json,png}.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _common import ROOT, fresh_run_dir, out_paths, plot_only, run_sim, save_figure, write_json


def spread(cfg, net, st, w, seeds: int) -> dict:
  import jax
  import jax.numpy as jnp
  from jaxnet.gauntlet import collect
  from jaxnet.gauntlet.validator import score_round
  from jaxnet.schemes import demo
  lr_t = demo.demo_lr(w, cfg.demo)
  inputs, _ = net.validator_inputs(w, salt=0)
  rands = [collect.round_batches(net.corpus, net.n, w, cfg.gauntlet.sample_rate, cfg.sim.seed, s)[1]
           for s in range(seeds)]
  rand_S = {k: np.stack([r[k] for r in rands]) for k in rands[0]}
  keys_S = jnp.stack([net.round_key(w, s) for s in range(seeds)])

  def one(key, rand):
    lead = jax.tree.map(lambda x: x[0], st.validator)   # validator 0 of the stacked states
    return score_round(lead, inputs._replace(rand=rand), st.params, w, lr_t, key,
                       cfg=cfg.gauntlet, layout=net.layout, model_cfg=cfg.model, mesh=None)

  fn = jax.jit(jax.vmap(one))
  t0 = time.perf_counter()
  _, rep = fn(keys_S, rand_S)
  rep = jax.tree.map(np.asarray, rep)
  secs = time.perf_counter() - t0
  W = rep["weight"]                                      # [S, N]
  top = W.argmax(1)
  modal_top = np.bincount(top, minlength=W.shape[1]).argmax()
  G = cfg.gauntlet.gather_size
  top_sets = [set(np.argsort(-w, kind="stable")[:G].tolist()) for w in W]
  ref = top_sets[0]
  jacc = [len(s & ref) / len(s | ref) for s in top_sets]
  return {"seconds_vmapped": secs, "seeds": seeds, "window": w,
          "weight_mean": W.mean(0).tolist(), "weight_std": W.std(0).tolist(),
          "weight_min": W.min(0).tolist(), "weight_max": W.max(0).tolist(),
          "r_rand_std": rep["r_rand"].std(0).tolist(), "final_std": rep["final"].std(0).tolist(),
          "evaluated_fraction": rep["scored"].mean(0).tolist(),
          "top_uid_agreement": float((top == modal_top).mean()),
          "top_G_jaccard_vs_seed0_mean": float(np.mean(jacc)),
          "max_abs_weight_disagreement": float((W.max(0) - W.min(0)).max()),
          "weights": W.tolist()}


def main(argv=None):
  if plot_only(argv, "monte_carlo", plot):
    return
  # JAX and the network only when something runs (--plot-only and the tests import this)
  from jaxnet.config import load_config
  from jaxnet.schemes import demo
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", default=str(ROOT / "configs" / "sim-tiny.yaml"))
  ap.add_argument("--seeds", type=int, default=256)
  ap.add_argument("--warmup-rounds", type=int, default=12)
  args, overrides = ap.parse_known_args(argv)
  extra = ["--checkpoint.resume", "never", "--sim.rounds", str(args.warmup_rounds)]
  out = {}
  for tag, upw in (("every_peer", 0), ("reference_4_per_round", 4)):
    cfg = load_config(args.config, extra + ["--train.out_dir", fresh_run_dir(f"monte-carlo-{tag}"),
                                            "--gauntlet.uids_per_window", str(upw)] + overrides)
    res = run_sim(cfg, f"warm-up ({tag})")
    net, st = res["network"], res["state"]
    w = int(st.window)
    net.upload(st, w, demo.demo_lr(w, cfg.demo))
    out[tag] = spread(cfg, net, st, w, args.seeds)
    out[tag]["behaviours"] = net.behaviours
    print(f"{tag}: {args.seeds} validator rounds vmapped in {out[tag]['seconds_vmapped']:.1f} s; "
          f"top-uid agreement {out[tag]['top_uid_agreement']:.3f}, "
          f"max weight disagreement {out[tag]['max_abs_weight_disagreement']:.4f}, "
          f"top-G Jaccard {out[tag]['top_G_jaccard_vs_seed0_mean']:.3f}")
  json_path, png_path = out_paths("monte_carlo")
  write_json(json_path, out)
  plot(out, png_path)
  return out


SETTINGS = {"every_peer": "every peer evaluated (jaxnet)",
            "reference_4_per_round": "4 peers sampled per round (the reference)"}


def plot(out: dict, path):
  """Each uid's weight across the validator seeds, both settings, from the JSON."""
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
  classes = sorted({b for r in out.values() for b in r["behaviours"]},
                   key=lambda c: (c != "honest", c))
  colours = ps.class_colours(classes)
  for ax, (tag, r) in zip(axes, out.items()):
    W = np.array(r["weights"])
    beh = r["behaviours"]
    box = ax.boxplot([W[:, u] for u in range(W.shape[1])], showfliers=False, patch_artist=True,
                     medianprops={"color": "k"})
    for patch, b in zip(box["boxes"], beh):   # each box in its behaviour's colour
      patch.set_facecolor(colours[b])
      patch.set_alpha(0.8)
    ax.set_xticks(range(1, W.shape[1] + 1), [f"{u} {b}" for u, b in enumerate(beh)],
                  rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ps.label(ax, "uid and behaviour", "weight after the round (fraction)",
             title=f"{SETTINGS.get(tag, tag)}: {r['seeds']} seeds")
    ax.tick_params(labelleft=True)
  from matplotlib.patches import Patch   # legend entries for the boxes' colours
  axes[-1].legend(handles=[Patch(color=colours[c], alpha=0.8, label=c) for c in classes],
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=7,
                  title="behaviour", title_fontsize=7, frameon=False)
  ps.title(fig, "One validator round scored by validators that differ only in their "
                "randomness: each uid's weight across seeds\n(box: quartiles, whiskers: 1.5 IQR, "
                "line: median)")
  fig.tight_layout()
  return save_figure(fig, path)


if __name__ == "__main__":
  main()
