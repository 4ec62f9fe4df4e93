"""Every notebook in notebooks/ executes top to bottom on the embedded dataset.

Notebooks rot silently when nothing runs them; here each one runs in a fresh kernel of
the interpreter running pytest (the project venv), so a fresh clone needs no registered
Jupyter kernel. A failing cell fails the test with that cell's source and traceback.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: committed notebooks stay reviewable: outputs cleared, or small when stored by `make notebooks`
MAX_NOTEBOOK_BYTES = 3_000_000

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools" / "run_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RUNNER = _runner()


def test_the_four_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_data.ipynb", "02_models.ipynb", "03_embeddings.ipynb", "04_retrieval.ipynb",
                     "05_lifelong.ipynb"], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_small_and_valid(path: Path):
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is {path.stat().st_size} bytes; run tools/run_notebooks.py --clear"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert any(c.cell_type == "markdown" for c in nb.cells), "a notebook explains itself in markdown cells"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_top_to_bottom(path: Path):
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    try:
        nb = RUNNER.execute_notebook(path, timeout=300)
    except RUNNER.NotebookError as e:
        pytest.fail(str(e), pytrace=False)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "every code cell ran"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    # outputs go to temp dirs created inside the notebook, never next to it
    assert sorted(p.name for p in NOTEBOOK_DIR.iterdir()) == before, "the notebook wrote files into notebooks/"


def _run_cells(tmp_path: Path, *sources: str, timeout: int = 60):
    """Write a notebook of these code cells and execute it with the runner."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    path = tmp_path / "cells.ipynb"
    nbformat.write(nb, path)
    return RUNNER.execute_notebook(path, timeout=timeout)


def _printed(nb) -> str:
    return nb.cells[0].outputs[0]["text"].strip()


def test_runner_reports_the_failing_cell(tmp_path: Path):
    with pytest.raises(RUNNER.NotebookError, match="boom in cell two"):
        _run_cells(tmp_path, "x = 1", "raise ValueError('boom in cell two')")


def test_runner_kernel_is_this_interpreter(tmp_path: Path):
    import sys

    out = _run_cells(tmp_path, "import sys; print(sys.executable)")
    assert Path(_printed(out)).resolve() == Path(sys.executable).resolve()


def test_runner_removes_the_scratch_folders_a_notebook_makes(tmp_path: Path):
    scratch = Path(_printed(_run_cells(tmp_path, "import tempfile; print(tempfile.mkdtemp(prefix='recsys-nb-'))")))
    assert scratch.name.startswith("recsys-nb-") and scratch.parent.name.startswith("recsys-kernel-")
    assert not scratch.exists(), "the notebooks' WORK folders would pile up in /tmp on every test run"
