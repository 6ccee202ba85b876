"""The Colab quickstart works where it says it does.

The end-to-end test plays a fresh Colab runtime: a new virtual environment without jaxnet
(only ipykernel, which every notebook runtime has), a kernel started from a directory outside
the checkout, and the notebook's own first cell installing jaxnet, its dependencies included,
without a restart. CI passing because jaxnet happens to be installed proves nothing, so the
test checks that the jaxnet the kernel ran is the one that cell installed.
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupyter_client = pytest.importorskip("jupyter_client")

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "notebooks" / "quickstart.ipynb"


def _code(nb, needle: str) -> str:
  cells = [c.source for c in nb.cells if c.cell_type == "code" and needle in c.source]
  assert len(cells) == 1, f"expected one code cell containing {needle!r}, found {len(cells)}"
  return cells[0]


def _assigned(source: str, name: str) -> ast.expr:
  for node in ast.parse(source).body:
    if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]:
      return node.value
  raise AssertionError(f"no assignment to {name} in the cell")


def test_inline_config_is_sim_tiny():
  """The notebook spells out configs/sim-tiny.yaml rather than reading it (a non-editable
  install has no configs/); this keeps the two from drifting apart."""
  from jaxnet.config import load_config, to_dict
  nb = nbformat.read(NB, as_version=4)
  expr = _assigned(_code(nb, "sim_tiny ="), "sim_tiny")
  yaml_cfg = load_config(ROOT / "configs" / "sim-tiny.yaml")
  inline = eval(compile(ast.Expression(expr), "sim_tiny", "eval"),
                {"rounds": yaml_cfg.sim.rounds, "run_dir": yaml_cfg.train.out_dir})
  assert to_dict(load_config(None, inline)) == to_dict(yaml_cfg)


def test_inline_market_config_is_market_tiny():
  from jaxnet.config import load_config, to_dict
  nb = nbformat.read(NB, as_version=4)
  expr = _assigned(_code(nb, "market_tiny ="), "market_tiny")
  yaml_cfg = load_config(ROOT / "configs" / "market-tiny.yaml")
  inline = eval(compile(ast.Expression(expr), "market_tiny", "eval"),
                {"blocks": yaml_cfg.market.blocks, "tempfile": _Fixed(yaml_cfg.train.out_dir)})
  assert to_dict(load_config(None, inline)) == to_dict(yaml_cfg)


class _Fixed:
  """Stands in for `tempfile` in the inline config: mkdtemp gives the YAML's out_dir."""
  def __init__(self, path):
    self.path = path

  def mkdtemp(self, **_):
    return self.path


def test_colab_badge_matches_default_repo():
  nb = nbformat.read(NB, as_version=4)
  repo = ast.literal_eval(_assigned(_code(nb, "JAXNET_REPO ="), "JAXNET_REPO"))
  owner_repo = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?", repo).group(1)
  badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
           f"(https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/quickstart.ipynb)")
  assert nb.cells[0].cell_type == "markdown" and badge in nb.cells[0].source


def _run(cmd, **kw):
  proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
  assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
  return proc.stdout


@pytest.fixture
def fresh_python(tmp_path):
  """A new venv's python, made from the base interpreter of the one running the tests."""
  base = getattr(sys, "_base_executable", None) or sys.executable
  venv = tmp_path / "venv"
  try:
    subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, text=True,
                   timeout=300)
  except (OSError, subprocess.SubprocessError) as e:
    why = (getattr(e, "stderr", None) or str(e)).strip().splitlines() or [repr(e)]
    pytest.skip(f"cannot create a virtual environment with {base} (needed for a fresh runtime): "
                f"{why[-1]}")
  python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
  _run([python, "-m", "pip", "install", "-q", "ipykernel"], timeout=600)
  return python


# CI runs the suite on two stacks; this test installs the whole stack into a new venv (about
# 3 minutes), so CI runs it once, on the newest stack (the Python 3.12 that Colab has).
@pytest.mark.skipif(os.environ.get("JAXNET_CI_STACK") == "oldest",
                    reason="CI runs the fresh-runtime notebook test once, on the newest stack")
def test_quickstart_runs_in_a_fresh_runtime(tmp_path, fresh_python, monkeypatch):
  # The source the install cell gets, as a clone would hold it. A copy rather than the checkout
  # itself: building a wheel in place leaves build/ in a working tree shared with others.
  source = tmp_path / "jaxnet-src"
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
      ".*", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "runs", "results", "data_cache"))
  work = tmp_path / "work"
  # A stray folder named jaxnet in the working directory, as the old clone-in-place cell left.
  (work / "jaxnet").mkdir(parents=True)

  kernels = tmp_path / "kernels"
  (kernels / "fresh").mkdir(parents=True)
  (kernels / "fresh" / "kernel.json").write_text(json.dumps({
      "argv": [str(fresh_python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "fresh venv", "language": "python"}))
  for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("JAXNET_SOURCE", str(source))
  monkeypatch.setenv("JAXNET_NOTEBOOK_ROUNDS", "8")
  monkeypatch.setenv("JAXNET_NOTEBOOK_BLOCKS", "20")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  km = jupyter_client.KernelManager(
      kernel_name="fresh",
      kernel_spec_manager=jupyter_client.kernelspec.KernelSpecManager(kernel_dirs=[str(kernels)]))

  nb = nbformat.read(NB, as_version=4)
  client = nbclient.NotebookClient(nb, km=km, timeout=900, resources={"metadata": {"path": str(work)}})
  client.execute()

  stdout = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("name") == "stdout")
  assert f"installing jaxnet from {source}" in stdout
  assert "rounds; held-out loss" in stdout
  assert "behaviour" in stdout
  assert "market: 20 blocks; loss with neighbours" in stdout and "earned" in stdout
  imported = Path(re.search(r"^jaxnet (\S+)$", stdout, re.M).group(1)).resolve()
  site_packages = Path(_run([fresh_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                       .strip()).resolve()
  assert imported.is_relative_to(site_packages), (imported, site_packages)
  assert not imported.is_relative_to(ROOT) and not imported.is_relative_to(source), imported
