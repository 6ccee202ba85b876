"""LossScore of many peers: jaxnet in one call, jaxnet per peer, and the PyTorch reference loop.

For each config (tiny, small) and peer count P (64, 256), in one process (issue 5;
gauntlet.md §9; jax.md §6.3-§6.6):

  (a) jaxnet, all peers in one call: jit of `lossscore.score_peers`, submissions and own
      batches split over a 'peer' mesh of all devices (shard_map), `lax.map` per device;
  (b) jaxnet, one peer at a time from Python: a jitted per-peer function (the same three
      forward passes as (a); `score_one` would recompute the shared L(θ; R) per peer);
  (c) the reference validator's loop in PyTorch (benchmarks/torch_reference.py): per peer,
      decode, apply θ − step·sign(d) to the live weights in place, forward, copy back.

(b) and (c) are checked to give the scores of (a) (max |Δ r_own|, |Δ r_rand| <= 1e-4) after
their first run, before any further timing; a mismatch stops the run (MismatchError). The
methods and a float32 2048^3 jit matmul (the ceiling, as benchmarks/train_step.py) are timed
interleaved, `--reps` rounds, best of each kept, so a change in the shared host's load hits
them alike. Reported: ms per peer, the speed-ups (b)/(a) and (c)/(a), and each one's share of
the ceiling. Model FLOPs count forward passes only (`flops_per_token(training=False)` x
tokens): 3 per peer (own before, own after, random after) plus 1 shared (random before).
PyTorch runs eagerly with 1 thread or its default, whichever is faster on a 4-peer warm-up
(`--torch-threads` fixes it): on a busy 2-core host a 2-thread OpenMP team loses a time slice
at every barrier. Also `score_mode='first_order'` (a) against exact (a): its speed-up, the
Spearman rank correlation of r_rand across peers, and whether the OpenSkill ordering of one
rated match (fresh ratings, `rating.rate`) changes (positions moved, largest move).

Peers: `--real-peers` (16) real submissions from `peer.peers_round` on a briefly trained
model (`--warm-steps` AdamW steps); the others are derived deterministically: peer k mixes
real peers k mod R and (3k + 1) mod R chunk by chunk (a seeded share of chunks from the
second), has a seeded share (up to 30 %) of its value codes replaced by noise, and every
4th derived peer is negated (a harmful step), so the scores spread and no two submissions
are equal. Batches: peer k's own pages (first `--own-seqs` sequences) and the round's random
pages (first `--rand-seqs`), window 7. Step size: train.lr x gauntlet.eval_lr_factor (the
round's eta_t times e, §9.2 step 4, at the config's learning rate).

On CPU the script sets XLA_FLAGS=--xla_force_host_platform_device_count=2 before importing
jax unless XLA_FLAGS is already set (jax.md §6.5: 2 host devices + lax.map is fastest).
PyTorch is optional (the 'bench' extra); without it (c) is skipped. On a GPU/TPU the same
command runs unchanged (torch on CUDA when available) and prints the device.

  python benchmarks/peer_eval.py [--configs tiny small] [--peers 64 256] [--own-seqs 4]
      [--rand-seqs 8] [--eval-batch 1] [--reps 2] [--vmap] [--out results/bench/peer_eval.json]

By default small runs only at P = 64 (`--small-peers`; P = 256 of small takes minutes
under torch on 2 cores).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from jaxnet import data as jdata, peer, sharding as shd  # noqa: E402
from jaxnet.schemes import demo  # noqa: E402
from jaxnet import model as jmodel, train as jtrain  # noqa: E402
from jaxnet.config import load_config  # noqa: E402
from jaxnet.gauntlet import lossscore, rating  # noqa: E402
from jaxnet.submission import Submission  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

try:
  import torch
  import torch_reference as tr
  TORCH_THREADS = torch.get_num_threads()   # its default, before any calibration
except ImportError:   # the optional 'bench' extra
  torch = tr = None

WINDOW = 7
ATOL = 1e-4   # issue 5: the implementations must agree on r_own and r_rand to 1e-4


class MismatchError(RuntimeError):
  """Two implementations disagree on the scores: their timings would not be comparable."""


def best_of(fn, reps: int) -> tuple[float, object]:
  """(minimum seconds over `reps` calls, the first call's result)."""
  times, first = [], None
  for i in range(reps):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
    first = out if i == 0 else first
  return min(times), first


def check(name: str, got: dict, want: dict) -> float:
  err = max(float(np.max(np.abs(np.asarray(got[k]) - np.asarray(want[k])))) for k in ("r_own", "r_rand"))
  if not err <= ATOL:
    raise MismatchError(f"{name} differs from (a): max |diff| of r_own/r_rand = {err:.3g} > {ATOL}")
  return err


# --------------------------------------------------------------------------- inputs

def warm_params(cfg, corpus, steps: int):
  """θ after `steps` AdamW steps from the seeded init, so peers do not score a symmetric init."""
  tx = jtrain.make_optimizer(cfg.train)
  state = jtrain.init_state(cfg, jax.random.key(0), tx)
  step = jax.jit(lambda s, b: jtrain.train_step(s, b, cfg, tx))
  B = cfg.train.batch_size
  for i in range(steps):
    state, m = step(state, jtrain.split_micro(corpus.train_batches(i, B), cfg.train.microbatch or B))
  return state.params, (float(m["loss"]) if steps else float("nan"))


def prepare(name: str, args) -> dict:
  """Per config: θ, layout, R real submissions (host arrays), batches, step size."""
  cfg = load_config(ROOT / "configs" / f"{name}.yaml", args.override)
  corpus = jdata.load_corpus(cfg.data)
  rows = cfg.data.pages_per_window * cfg.data.page_size
  if not (0 < args.own_seqs <= rows and 0 < args.rand_seqs <= rows):
    raise ValueError(f"--own-seqs/--rand-seqs must be in [1, {rows}] (pages of {name})")
  t0 = time.perf_counter()
  params, loss = warm_params(cfg, corpus, args.warm_steps)
  layout = demo.make_layout(params, cfg.demo, n_pages=cfg.data.pages_per_window)
  R = args.real_peers
  run = jax.jit(lambda p, s, b: peer.peers_round(p, s, b, cfg.demo.lr, layout, cfg))
  subs, _, _ = run(params, peer.init_states(params, R, cfg), corpus.peer_batches(np.arange(R), WINDOW))
  rand = corpus.batch_from_pages(corpus.random_pages(WINDOW))
  print(f"[{name}] {jmodel.count_params(params):,} params, loss {loss:.3f} after "
        f"{args.warm_steps} steps, {R} real peers in {time.perf_counter() - t0:.1f} s", flush=True)
  return {"name": name, "cfg": cfg, "corpus": corpus, "params": params, "layout": layout,
          "real": jax.tree.map(np.asarray, subs), "rand": {k: v[:args.rand_seqs] for k, v in rand.items()},
          "step": cfg.train.lr * cfg.gauntlet.eval_lr_factor}


def synthesize(real: Submission, n: int, seed: int = 0) -> Submission:
  """n distinct submissions from R real ones (host arrays; see the module docstring)."""
  R = real.uid.shape[0]
  rng = np.random.default_rng(seed)
  out = {f: {name: [] for name in getattr(real, f)} for f in ("idx", "val", "qmean", "qscale", "qlut")}
  for k in range(n):
    a, b = k % R, (3 * k + 1) % R
    share, noise = (rng.uniform(0.1, 0.9), rng.uniform(0.0, 0.3)) if k >= R else (0.0, 0.0)
    negate = k >= R and k % 4 == 3
    for name, idx in real.idx.items():
      pick = rng.random(idx.shape[1:-1] + (1,)) < share           # whole chunks from peer b
      val = np.where(pick, real.val[name][b], real.val[name][a])
      hit = rng.random(val.shape) < noise
      if val.dtype == np.uint8:
        val = np.where(hit, rng.integers(0, 256, val.shape), val).astype(np.uint8)
      else:
        val = np.where(hit, rng.standard_normal(val.shape) * val.std(), val).astype(val.dtype)
      q = {f: getattr(real, f)[name][a] for f in ("qmean", "qscale", "qlut") if name in getattr(real, f)}
      if negate:   # dequantised values flip sign: lut'[255 - q] = -lut[q], mean' = -mean
        val = (255 - val) if val.dtype == np.uint8 else -val
        q = {f: (-x[..., ::-1] if f == "qlut" else -x if f == "qmean" else x) for f, x in q.items()}
      out["idx"][name].append(np.where(pick, idx[b], idx[a]))
      out["val"][name].append(val)
      for f, x in q.items():
        out[f][name].append(x)
  stack = {f: {name: np.stack(xs) for name, xs in d.items()} for f, d in out.items()}
  return Submission(**stack, uid=np.arange(n, dtype=np.int32), window=np.full(n, WINDOW, np.int32),
                    pages=real.pages[np.arange(n) % R])


# --------------------------------------------------------------------------- methods
# Each `make_*` compiles or warms its method and returns a callable that scores all P peers
# (blocking) and returns host arrays; `bench_case` times them interleaved.

def scores_of(x) -> dict:
  return {k: np.asarray(getattr(x, k)) for k in ("own_before", "own_after", "rand_after", "r_own", "r_rand")}


def make_all(case, subs, own, mesh, eval_batch: int, mode: str):
  """(a): one jitted `score_peers` call over all peers; returns (run, compile seconds)."""
  c = case
  fn = jax.jit(lambda p, s, o, r: lossscore.score_peers(
      p, s, o, r, c["step"], layout=c["layout"], model_cfg=c["cfg"].model, eval_batch=eval_batch,
      mode=mode, mesh=mesh))
  if mesh is not None:
    subs, own = shd.put_tree(subs, shd.along(mesh, "peer")), shd.put_tree(own, shd.along(mesh, "peer"))
    params, rand = shd.put_tree((c["params"], c["rand"]), shd.replicated(mesh))
  else:
    subs, own, params, rand = jax.device_put((subs, own, c["params"], c["rand"]))
  t0 = time.perf_counter()
  compiled = fn.lower(params, subs, own, rand).compile()
  compile_s = time.perf_counter() - t0
  return lambda: scores_of(jax.block_until_ready(compiled(params, subs, own, rand))), compile_s


def make_loop(case, subs, own):
  """(b): a Python loop over peers calling one jitted per-peer function (3 forwards each)."""
  c = case
  loss = lambda p, b: jmodel.loss_fn(p, b, c["cfg"].model)

  def one(params, subs_P, own_P, rand, k):
    sub, own_k = jax.tree.map(lambda x: x[k], (subs_P, own_P))
    after = lossscore.eval_params(params, sub, c["step"], c["layout"])
    return loss(params, own_k), loss(after, own_k), loss(after, rand)

  one, rand_loss = jax.jit(one), jax.jit(loss)
  subs, own, params, rand = jax.device_put((subs, own, c["params"], c["rand"]))
  n = own["inputs"].shape[0]
  jax.block_until_ready((one(params, subs, own, rand, np.int32(0)), rand_loss(params, rand)))

  def run():
    rb = rand_loss(params, rand)
    outs = jax.block_until_ready([one(params, subs, own, rand, np.int32(k)) for k in range(n)])
    ob, oa, ra = (np.array([float(o[i]) for o in outs], np.float32) for i in range(3))
    rb = np.float32(rb)
    return {"own_before": ob, "own_after": oa, "rand_after": ra,
            "r_own": (ob - oa) / np.maximum(ob, 1e-12), "r_rand": (rb - ra) / max(rb, 1e-12)}
  return run


def make_torch(case, subs, own, threads: int):
  """(c): the reference loop in PyTorch on the same weights, submissions and batches.

  threads 0: warm up on 4 peers with 1 thread and with torch's default and keep the faster
  (on a shared 2-core host an OpenMP team whose second thread is descheduled waits a whole
  time slice at every barrier: measured 75x slower small matmuls); returns (run, threads).
  """
  c = case
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  tp = tr.torch_params(c["params"], c["layout"], dev)
  subs_t, own_t, rand_t = tr.torch_submissions(subs, dev), tr.torch_batch(own, dev), tr.torch_batch(c["rand"], dev)
  dec = tr.TorchDecoder(c["layout"], dev)
  score = lambda s, o: tr.score_peers_sequential(tp, s, o, rand_t, c["step"], layout=c["layout"],
                                                 cfg=c["cfg"].model, decoder=dec)
  few = lambda: score({f: {n: a[:4] for n, a in d.items()} for f, d in subs_t.items()},
                      {k: v[:4] for k, v in own_t.items()})
  choices = [threads] if threads else sorted({1, TORCH_THREADS})
  best = {}
  for n in choices:
    torch.set_num_threads(n)
    best[n] = best_of(few, 2)[0]
  torch.set_num_threads(min(best, key=best.get))
  return (lambda: score(subs_t, own_t)), torch.get_num_threads()


def make_matmul(n: int = 2048, calls: int = 5):
  """The ceiling: float32 n^3 jit matmul (as benchmarks/train_step.py); run() -> best FLOP/s
  of `calls` calls. Timed between the methods, so it sees the same host load they do."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  return lambda: 2 * n ** 3 / best_of(lambda: jax.block_until_ready(f(a, b)), calls)[0]


# --------------------------------------------------------------------------- one case

def ordering(r_rand: np.ndarray) -> np.ndarray:
  """Uids best first by ordinal after one OpenSkill match from fresh ratings (§11)."""
  n = r_rand.shape[0]
  state, _ = rating.rate(rating.init_state(n), jnp.ones(n, bool), jnp.asarray(r_rand))
  return np.argsort(-np.asarray(rating.ordinal(state)), kind="stable")


def bench_case(case, P: int, args, mesh, matmul) -> dict:
  """All methods on P peers, and the matmul ceiling, timed interleaved `args.reps` times."""
  c, cfg = case, case["cfg"]
  subs = synthesize(c["real"], P, seed=P)
  own = {k: v[:, :args.own_seqs] for k, v in c["corpus"].peer_batches(np.arange(P), WINDOW).items()}
  L = cfg.data.seq_len
  fwd_tokens = L * (P * 2 * args.own_seqs + (P + 1) * args.rand_seqs)
  row = {"config": c["name"], "P": P, "own_seqs": args.own_seqs, "rand_seqs": args.rand_seqs,
         "seq_len": L, "step_size": c["step"],
         "model_flop": jmodel.flops_per_token(cfg.model, L, training=False) * fwd_tokens}
  methods = {}
  methods["a"], row["compile_s_a"] = make_all(c, subs, own, mesh, args.eval_batch, "exact")
  methods["b"] = make_loop(c, subs, own)
  if tr is not None:
    methods["c"], row["torch_threads"] = make_torch(c, subs, own, args.torch_threads)
  if args.vmap:
    methods["vmap"], _ = make_all(c, subs, own, None, P, "exact")
  methods["first_order"], row["compile_s_first_order"] = make_all(
      c, subs, own, mesh, args.eval_batch, "first_order")
  # Interleaved repetitions: a drift in the host's load hits every method alike.
  times, out, ceiling = {k: [] for k in methods}, {}, 0.0
  for rep in range(args.reps):
    ceiling = max(ceiling, matmul())
    for key, run in methods.items():
      t0 = time.perf_counter()
      res = run()
      times[key].append(time.perf_counter() - t0)
      out.setdefault(key, res)
    if rep == 0:  # check the scores before any further timing
      for key, label in (("b", "(b) per-peer jaxnet"), ("c", "(c) PyTorch reference"),
                         ("vmap", "(a) vmap")):
        if key in out:
          row[f"maxdiff_{key}"] = check(label, out[key], out["a"])
  ceiling = max(ceiling, matmul())
  row["ceiling_gflops"] = ceiling / 1e9
  for key, ts in times.items():
    row[f"s_{key}"] = min(ts)
    row[f"ms_per_peer_{key}"] = min(ts) / P * 1e3
    row[f"ceiling_share_{key}"] = row["model_flop"] / min(ts) / ceiling
  for key in ("b", "c", "vmap"):
    if key in times:
      row[f"speedup_a_vs_{key}"] = row[f"s_{key}"] / row["s_a"]
  ref, fo = out["a"], out["first_order"]
  row["r_rand_range"] = [float(ref["r_rand"].min()), float(ref["r_rand"].max())]
  row["first_order_speedup"] = row["s_a"] / row["s_first_order"]
  row["spearman_r_rand"] = float(spearmanr(ref["r_rand"], fo["r_rand"]).statistic)
  order_e, order_f = ordering(ref["r_rand"]), ordering(fo["r_rand"])
  moved = order_e != order_f
  row["ordering_changed"], row["ordering_positions_changed"] = bool(moved.any()), int(moved.sum())
  # the largest move of one peer's position (0 = same ordering)
  row["ordering_max_shift"] = int(np.max(np.abs(np.argsort(order_e) - np.argsort(order_f))))
  return row


# (header, row key, format) of the printed table; missing entries print as '-'.
COLUMNS = [("config", "config", "<7"), ("P", "P", ">5"),
           ("ms/peer a", "ms_per_peer_a", ">10.2f"), ("b", "ms_per_peer_b", ">8.2f"),
           ("c", "ms_per_peer_c", ">8.2f"), ("b/a", "speedup_a_vs_b", ">6.2f"),
           ("c/a", "speedup_a_vs_c", ">6.2f"), ("ceil GF/s", "ceiling_gflops", ">10.0f"),
           ("%ceil a", "ceiling_share_a", ">8.0%"), ("b", "ceiling_share_b", ">5.0%"),
           ("c", "ceiling_share_c", ">5.0%"), ("1st-ord x", "first_order_speedup", ">10.2f"),
           ("spearman", "spearman_r_rand", ">9.3f"), ("moved", "ordering_positions_changed", ">6"),
           ("max shift", "ordering_max_shift", ">10")]


def print_table(rows) -> None:
  def cell(v, spec):
    width = int("".join(ch for ch in spec.split(".")[0] if ch.isdigit()) or 0)
    return format(v, spec) if v is not None else "-".rjust(width)
  print("\n" + "".join(cell(h, spec.split(".")[0].rstrip("f%")) for h, _, spec in COLUMNS))
  for r in rows:
    print("".join(cell(r.get(k), spec) for _, k, spec in COLUMNS))
  if any("ms_per_peer_vmap" in r for r in rows):
    for r in rows:
      print(f"vmap (eval_batch=P, 1 device) {r['config']} P={r['P']}: {r['ms_per_peer_vmap']:.2f} "
            f"ms/peer, {r['ceiling_share_vmap']:.0%} of the ceiling")
  print("a: jaxnet, all peers in one call; b: jaxnet, one peer at a time; c: PyTorch reference loop;"
        " b/a, c/a: speed-up of a;\n1st-ord x: speed-up of first_order over exact (a); moved / max shift:"
        " OpenSkill positions that first_order changes / the largest change of one peer's rank")


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--configs", nargs="+", default=["tiny", "small"])
  ap.add_argument("--peers", nargs="+", type=int, default=[64, 256])
  ap.add_argument("--small-peers", nargs="+", type=int, default=[64],
                  help="peer counts for the small config (default 64 only: keeps the run short)")
  ap.add_argument("--own-seqs", type=int, default=4)
  ap.add_argument("--rand-seqs", type=int, default=8)
  ap.add_argument("--real-peers", type=int, default=16)
  ap.add_argument("--warm-steps", type=int, default=10)
  ap.add_argument("--eval-batch", type=int, default=1, help="lax.map batch of (a) per device")
  ap.add_argument("--reps", type=int, default=2, help="timed runs per method (best is kept)")
  ap.add_argument("--devices", type=int, default=-1, help="size of the 'peer' mesh of (a); -1 = all")
  ap.add_argument("--torch-threads", type=int, default=0,
                  help="threads of (c); 0 = the faster of 1 and torch's default on a 4-peer warm-up")
  ap.add_argument("--vmap", action="store_true", help="also time (a) as vmap: eval_batch=P, 1 device")
  ap.add_argument("--override", nargs="*", default=[], help="dotted config overrides")
  ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "peer_eval.json"))
  args = ap.parse_args(argv)

  dev = jax.devices()[0]
  mesh = shd.make_mesh("peer", args.devices)
  print(f"device: {dev.platform} {dev.device_kind} x{jax.device_count()} "
        f"({platform.processor() or platform.machine()}), jax {jax.__version__}, "
        f"torch {torch.__version__ if torch else 'not installed: (c) skipped'}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"layout (a): shard_map over {mesh.size} device(s) on axis 'peer', lax.map "
        f"eval_batch={args.eval_batch} per device", flush=True)
  matmul = make_matmul()
  rows = []
  for name in args.configs:
    case = prepare(name, args)
    for P in (args.small_peers if name == "small" else args.peers):
      t0 = time.perf_counter()
      if P % mesh.size:
        raise ValueError(f"P = {P} is not divisible by the {mesh.size} devices of the 'peer' mesh")
      rows.append(bench_case(case, P, args, mesh, matmul))
      r = rows[-1]
      print(f"[{name} P={P}] (a) {r['ms_per_peer_a']:.2f} ms/peer, max |diff| (b) {r['maxdiff_b']:.1e}"
            + (f", (c) {r['maxdiff_c']:.1e} (torch {r['torch_threads']} threads)" if "maxdiff_c" in r else "")
            + f"; r_rand in [{r['r_rand_range'][0]:.2e}, {r['r_rand_range'][1]:.2e}]"
            + f"; {time.perf_counter() - t0:.0f} s", flush=True)
  print_table(rows)
  out = {"device": str(dev), "platform": dev.platform, "n_devices": jax.device_count(),
         "jax": jax.__version__, "torch": torch.__version__ if torch else None,
         "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "mesh_devices": mesh.size,
         "eval_batch": args.eval_batch, "reps": args.reps, "rows": rows}
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(out, indent=2))
  return out


if __name__ == "__main__":
  try:
    main()
  except MismatchError as e:
    sys.exit(f"peer_eval: {e}")
