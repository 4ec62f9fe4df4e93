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
    assert names == ["01_data.ipynb", "02_models.ipynb", "03_embeddings.ipynb", "04_retrieval.ipynb"], names


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


def test_runner_reports_the_failing_cell(tmp_path: Path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('boom in cell two')")]
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(RUNNER.NotebookError, match="boom in cell two"):
        RUNNER.execute_notebook(path, timeout=60)


def test_runner_kernel_is_this_interpreter(tmp_path: Path):
    import sys

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys; print(sys.executable)")]
    path = tmp_path / "which.ipynb"
    nbformat.write(nb, path)
    out = RUNNER.execute_notebook(path, timeout=60)
    printed = out.cells[0].outputs[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()
