"""One plotting style for every figure jaxnet draws (`jaxnet report`, the trainers, the market).

Rules (issue 16 item 5): every series of a figure has its own colour (matplotlib's default
cycle has 10, so uid 0 and uid 10 shared one); legends sit outside the data; every axis has
a label with its unit; a title says what the figure shows; nothing is cut off at the edge
(saved with a tight bounding box). `problems(fig)` lists what breaks these rules; the
tests check every figure with it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

LOSS_LABEL = "cross-entropy (nats per token)"   # the model's loss is a natural-log mean
DPI = 110


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display needed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def palette(n: int) -> list[tuple[float, float, float]]:
  """n distinct RGB colours: tab10 up to 10, tab20 (pairs of a hue) up to 20, then evenly
  spaced hues of a perceptual cyclic map at two lightness levels. No two are equal."""
  from matplotlib import colormaps
  if n <= 10:
    return [tuple(c[:3]) for c in colormaps["tab10"].colors[:n]]
  if n <= 20:
    return [tuple(c[:3]) for c in colormaps["tab20"].colors[:n]]
  cmap = colormaps["twilight_shifted"] if n > 40 else colormaps["hsv"]
  out, seen = [], set()
  for i in range(n):
    rgb = np.asarray(cmap((i + 0.5) / n)[:3])
    if i % 2:   # alternate lightness so that neighbours in hue differ in value too
      rgb = 0.55 * rgb
    key = tuple(np.round(rgb, 4))
    while key in seen:   # never happens for evenly spaced hues; guards the invariant
      rgb = np.clip(rgb * 0.9 + 0.05, 0, 1)
      key = tuple(np.round(rgb, 4))
    seen.add(key)
    out.append(tuple(float(x) for x in rgb))
  return out


def colour_map(labels) -> dict:
  """Each distinct label (in first-seen order) -> its own colour."""
  uniq = list(dict.fromkeys(labels))
  return dict(zip(uniq, palette(len(uniq))))


def class_colours(classes, kind: str = "sim") -> dict:
  """Behaviour class -> colour, the same in every figure of its kind (`jaxnet report`, the
  experiments): the classes the config knows in their order (honest first), then any
  other; all distinct. `kind`: "sim" (sim.peers behaviours) or "market" (market.peers)."""
  if kind == "market":
    from jaxnet.market.config import BEHAVIOURS as known
  else:
    from jaxnet.sim.config import BEHAVIOURS as known
  return colour_map(list(known) + sorted(set(classes) - set(known)))


def legend_outside(ax, title: str | None = None, ncol: int = 1, fontsize: float = 7) -> None:
  """The legend to the right of the axes, outside the data."""
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncol=ncol,
            fontsize=fontsize, title=title, title_fontsize=fontsize, frameon=False)


def label(ax, x: str, y: str, title: str | None = None, legend: str | None = None,
          ncol: int = 1) -> None:
  """Both axis labels (with units), an optional panel title and a legend outside."""
  ax.set_xlabel(x)
  ax.set_ylabel(y)
  if title:
    ax.set_title(title, fontsize=9)
  if legend is not None:
    legend_outside(ax, title=legend or None, ncol=ncol)


def title(fig, text: str) -> None:
  fig.suptitle(text, fontsize=10)


def save(fig, path: Path) -> Path:
  """PNG with a tight bounding box (legends outside are kept), then the figure is closed."""
  fig.savefig(path, dpi=DPI, bbox_inches="tight")
  pyplot().close(fig)
  return Path(path)


def _series_colours(ax) -> list[tuple]:
  from matplotlib.colors import to_rgb
  cols = []
  for line in ax.get_lines():
    if line.get_label().startswith("_"):   # helper lines (thresholds, guides) are not series
      continue
    cols.append(tuple(np.round(to_rgb(line.get_color()), 4)))
  for coll in ax.collections:
    if coll.get_label().startswith("_"):
      continue
    fc = coll.get_facecolor()
    if len(fc) == 1:   # one series per collection (stackplot, fill_between); not heat maps
      cols.append(tuple(np.round(fc[0][:3], 4)))
  # errorbar and bar series keep their label on the container, not on the artists
  from matplotlib.container import BarContainer, ErrorbarContainer
  for cont in ax.containers:
    if cont.get_label() is None or cont.get_label().startswith("_"):
      continue
    if isinstance(cont, ErrorbarContainer) and cont.lines[0] is not None:
      cols.append(tuple(np.round(to_rgb(cont.lines[0].get_color()), 4)))
    elif isinstance(cont, BarContainer) and cont.patches:
      cols.append(tuple(np.round(cont.patches[0].get_facecolor()[:3], 4)))
  return cols


def problems(fig) -> list[str]:
  """What breaks the style rules: an axis without a label, two series of one axes in one
  colour, a figure without a title. Colour bars are axes too: they need a label."""
  out = []
  if not (fig._suptitle is not None and fig._suptitle.get_text()) and not any(
      ax.get_title() for ax in fig.axes):
    out.append("no title")
  for i, ax in enumerate(fig.axes):
    if not ax.get_visible() or not ax.has_data() and not ax.images and ax.get_label() != "<colorbar>":
      continue
    name = ax.get_title() or ax.get_label() or f"axes {i}"
    if ax.get_label() == "<colorbar>":
      if not (ax.get_ylabel() or ax.get_xlabel()):
        out.append(f"{name}: colour bar without a label")
      continue
    if not ax.get_xlabel():
      out.append(f"{name}: no x label")
    if not ax.get_ylabel():
      out.append(f"{name}: no y label")
    cols = _series_colours(ax)
    if len(cols) != len(set(cols)):
      out.append(f"{name}: {len(cols) - len(set(cols))} series share a colour")
  return out
