"""The Colab quickstart runs top to bottom on CPU (nbclient + ipykernel)."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NB = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXNET_NOTEBOOK_ROUNDS", "8")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(NB, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(NB.parent)}})
  client.execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "rounds; held-out loss" in outputs
  assert "behaviour" in outputs
