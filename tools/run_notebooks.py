#!/usr/bin/env python
"""Execute the project's notebooks top to bottom with the current interpreter's kernel.

Why a script rather than ``jupyter nbconvert --execute``: the notebooks must run with the
project's virtual environment even on a fresh clone where no Jupyter kernel was ever
registered, or where a user-level ``python3`` kernel points at another Python. This runner
writes a throw-away kernel spec whose ``argv`` is *this* interpreter (``sys.executable -m
ipykernel_launcher``), so ``.venv/bin/python tools/run_notebooks.py`` always executes in
``.venv``.

Usage::

    .venv/bin/python tools/run_notebooks.py                  # every notebooks/*.ipynb, into temp copies
    .venv/bin/python tools/run_notebooks.py --write          # store the outputs in place (make notebooks)
    .venv/bin/python tools/run_notebooks.py notebooks/01_data.ipynb --timeout 300
    .venv/bin/python tools/run_notebooks.py --clear          # strip outputs in place (before committing)

Exit status: 0 when every notebook ran, 1 when a cell raised (the cell's source and the
traceback are printed), 2 on bad arguments.

The tests (``tests/test_notebooks.py``) import :func:`execute_notebook` from this file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
KERNEL_NAME = "recsys-current-python"
#: per-cell limit; a notebook is meant to run in well under a minute
DEFAULT_CELL_TIMEOUT_S = 600


class NotebookError(RuntimeError):
    """A cell raised while executing a notebook; the message holds the cell and traceback."""


def _kernel_spec_dir(base: Path) -> Path:
    """Write a kernel spec that launches ipykernel with the current interpreter."""
    d = base / "kernels" / KERNEL_NAME
    d.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"recsys ({sys.executable})",
        "language": "python",
        # a headless kernel never needs a GUI backend; keeps figures inline
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
    }
    (d / "kernel.json").write_text(json.dumps(spec, indent=1))
    return d.parent


def clear_outputs(nb) -> None:  # noqa: ANN001 - nbformat.NotebookNode
    """Remove outputs, execution counts and per-cell execution metadata in place."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)


def execute_notebook(path: str | os.PathLike, timeout: int = DEFAULT_CELL_TIMEOUT_S, cwd: str | os.PathLike | None = None):
    """Execute one notebook and return the executed ``nbformat.NotebookNode``.

    Parameters
    ----------
    path : path-like
        The ``.ipynb`` file; it is read, never written.
    timeout : int
        Seconds allowed per cell.
    cwd : path-like, optional
        Working directory of the kernel; defaults to the notebook's own folder, the same
        as opening it in Jupyter.

    Raises
    ------
    NotebookError
        When a cell raises: the message names the notebook, shows the failing cell's
        source and the kernel's traceback.
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="recsys-kernel-") as tmp:
        ksm = KernelSpecManager(kernel_dirs=[str(_kernel_spec_dir(Path(tmp)))], ensure_native_kernel=False)
        km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
        client = NotebookClient(
            nb,
            km=km,
            kernel_name=KERNEL_NAME,
            timeout=timeout,
            resources={"metadata": {"path": str(Path(cwd) if cwd else path.parent.resolve())}},
            allow_errors=False,
            record_timing=True,
        )
        try:
            # the notebooks' scratch folders (tempfile.mkdtemp) land in tmp and go with it
            client.execute(env={**os.environ, "TMPDIR": tmp})
        except CellExecutionError as e:
            raise NotebookError(f"{path}: a cell raised\n{e}") from None
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
            km.cleanup_resources()
    # the notebook's own kernel name stays whatever it was, so the file opens anywhere
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    return nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: notebooks/*.ipynb)")
    p.add_argument("--write", action="store_true", help="store the executed outputs in place")
    p.add_argument("--clear", action="store_true", help="only strip outputs in place (no execution)")
    p.add_argument("--out", type=Path, help="write executed copies into this folder instead of a temp dir")
    p.add_argument("--timeout", type=int, default=DEFAULT_CELL_TIMEOUT_S, help="seconds per cell (default %(default)s)")
    args = p.parse_args(argv)
    import nbformat

    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    missing = [str(x) for x in paths if not Path(x).is_file()]
    if missing or not paths:
        print(f"no such notebook(s): {missing or NOTEBOOK_DIR / '*.ipynb'}", file=sys.stderr)
        return 2
    if args.clear:
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            clear_outputs(nb)
            nbformat.write(nb, path)
            print(f"cleared {path}")
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="recsys-notebooks-"))
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in paths:
        t0 = time.perf_counter()
        try:
            nb = execute_notebook(path, timeout=args.timeout)
        except NotebookError as e:
            failed += 1
            print(f"FAIL {path} ({time.perf_counter() - t0:.1f}s)\n{e}", file=sys.stderr)
            continue
        target = Path(path) if args.write else out / Path(path).name
        tmp_target = target.with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp_target)
        os.replace(tmp_target, target)
        print(f"ok   {path} ({time.perf_counter() - t0:.1f}s) -> {target}")
    if not args.write and args.out is None and failed == len(paths):
        shutil.rmtree(out, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
