"""Shared helpers of the experiment scripts: results paths, runs, compute accounting."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"

# Compute a behaviour spends per round, in honest-peer units (one gradient computation).
# Copiers, noise, zeros, free riders and malformed uploads skip the computation; the
# simulated replayer computes every round but uploads last round's result; a sybil
# operator computes once for its whole group.
COMPUTE = {"honest": 1.0, "wrong_data": 1.0, "desync": 1.0, "late": 1.0, "early": 1.0,
           "degraded": 1.0, "replay": 1.0, "copier": 0.0, "noise": 0.0, "zeros": 0.0,
           "free_rider": 0.0, "malformed": 0.0, "copier_first": 0.0, "partial_copier": 0.0,
           "stale_copier": 0.0, "scaled_copier": 0.0}


def out_paths(name: str) -> tuple[Path, Path]:
  RESULTS.mkdir(parents=True, exist_ok=True)
  return RESULTS / f"{name}.json", RESULTS / f"{name}.png"


def fresh_run_dir(name: str) -> str:
  """runs/exp-<name>, emptied first: an experiment's scratch directory is its own."""
  import shutil
  path = ROOT / "runs" / f"exp-{name}"
  shutil.rmtree(path, ignore_errors=True)
  return str(path)


def save_figure(fig, path: Path):
  """The shared style's PNG (tight bounding box: legends outside are kept), closed; returns
  the figure so that tests can check it with `plotstyle.problems`."""
  from jaxnet import plotstyle
  plotstyle.save(fig, path)
  print(f"wrote {path}")
  return fig


def plot_only(argv, name: str, plot) -> bool:
  """`--plot-only [NAME]`: re-draw results/NAME.png from results/NAME.json with `plot(data,
  png_path)` and run nothing (NAME defaults to the experiment's own). False without the flag."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--plot-only" not in argv:
    return False
  i = argv.index("--plot-only")
  if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
    name = Path(argv[i + 1]).stem   # NAME, results/NAME.json or results/NAME.png
  json_path, png_path = out_paths(name)
  try:
    plot(json.loads(json_path.read_text()), png_path)
  except ValueError as e:   # a JSON that lacks what the figure needs says so
    sys.exit(f"--plot-only {name}: {e}")
  return True


_NUM = r"(?:-?[0-9][0-9.eE+-]*|-?Infinity|NaN|null)"


def write_json(path: Path, data: dict) -> None:
  text = json.dumps(data, indent=2, default=lambda o: np.asarray(o).tolist())
  # a list of numbers on one line: a per-round curve is one line, not one line per value
  text = re.sub(rf"\[\s*({_NUM}(?:,\s*{_NUM})*)\s*\]",
                lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
  path.write_text(text)
  print(f"wrote {path}")


def run_sim(cfg, label: str = "sim"):
  from jaxnet.sim import network
  t0 = time.perf_counter()
  result = network.simulate(cfg, progress=True)
  result["seconds"] = time.perf_counter() - t0
  print(f"{label}: {len(result['history'])} rounds in {result['seconds']:.0f} s")
  return result


def compute_units(behaviours: list[str], sybil_group: int) -> np.ndarray:
  """Per-uid compute per round; a sybil operator's one computation is split over its uids."""
  units = np.array([COMPUTE.get(b, 1.0) for b in behaviours])
  sybil = np.flatnonzero(np.array(behaviours) == "sybil")
  units[sybil] = 1.0 / sybil_group
  return units


def spread(values) -> dict:
  """Mean, sample std, min and max of a per-seed figure (a README figure's spread)."""
  v = np.asarray(list(values), float)
  if v.size == 0:
    return {"mean": None, "std": None, "min": None, "max": None}
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
          "min": float(v.min()), "max": float(v.max())}


def first_round_all_zero(finals: np.ndarray, mask: np.ndarray) -> int | None:
  """First round r such that F <= 0 for every masked uid at r and at every later round."""
  ok = (finals[:, mask] <= 0).all(axis=1)
  bad = np.flatnonzero(~ok)
  r = 0 if bad.size == 0 else int(bad[-1]) + 1
  return r if r < len(ok) else None
