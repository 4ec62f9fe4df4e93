"""The library's layers import only downwards (issue 17): data -> models -> embeddings -> index -> serving.

A module may import from its own layer and the layers below it, never above: a model that
imports the serving layer, or a data module that imports a model, is the kind of cycle that
made the old pipeline modules import each other. The check reads every module's imports
with :mod:`ast` (module-level and function-level alike), so it costs nothing to run and
fails naming the offending import.

A new top-level module of ``recsys/`` must be placed in :data:`LAYERS` below; an unplaced
module fails the test so the decision is made once, on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: layer number of each package / top-level module of recsys (lower = more basic)
LAYERS: dict[str, int] = {
    # 0: shared utilities every layer may use (no model or data knowledge)
    "errors": 0, "io": 0, "device": 0, "lock": 0, "callbacks": 0, "progress": 0, "workflow": 0, "plots": 0,
    "metrics": 0, "ranking": 0, "evaluation": 0, "tracking": 0,
    "autotune": 0,  # search spaces and Optuna studies over any objective (imports only errors)
    "spark": 0,  # a checked SparkSession (like device: an execution resource), used by the layers' Spark engines
    "spark": 0,  # the SparkSession of the Spark engine, refused fast on a bad set-up (imports only errors)
    # 1-5: the data flow
    "data": 1,
    "models": 2,
    "embeddings": 3, "cold_start": 3,
    "index": 4,
    "serving": 5,
    # 6: orchestration of the layers (protocols, config schema, promotion), used by pipelines/
    "training": 6, "training_two_tower": 6, "training_item2vec": 6, "tuning": 6, "tuning_cache": 6, "config": 6, "promotion": 6,
    "fusion": 6, "lifelong": 6, "recsys": 6,
}


def _layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "recsys"


def _imports() -> list[tuple[str, int, str]]:
    """(module, line, imported recsys module) for every import in recsys/."""
    out = []
    for path in sorted((ROOT / "recsys").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "recsys":
                names = [f"recsys.{a.name}" for a in node.names]  # `from recsys import autotune`
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level:
                pytest.fail(f"{rel}:{node.lineno}: relative import; write the absolute recsys.* path")
            else:
                continue
            out += [(module, node.lineno, n) for n in names if n == "recsys" or n.startswith("recsys.")]
    return out


def test_every_recsys_module_is_placed_in_a_layer():
    modules = {_layer_of(m) for m, _, _ in _imports()}
    modules |= {_layer_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in (ROOT / "recsys").glob("*.py")}
    modules |= {p.name for p in (ROOT / "recsys").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    unplaced = sorted(m for m in modules if m not in LAYERS and m != "__init__")
    assert not unplaced, f"place these recsys modules in LAYERS of tests/test_architecture.py: {unplaced}"


def test_no_module_imports_from_a_layer_above_its_own():
    bad = []
    for module, line, target in _imports():
        src, dst = _layer_of(module), _layer_of(target)
        if src == "recsys":  # the package's lazy re-exports (recsys/__init__.py) may name any layer
            continue
        if dst in LAYERS and src in LAYERS and LAYERS[dst] > LAYERS[src]:
            bad.append(f"{module}:{line} imports {target} (layer {dst}={LAYERS[dst]} above {src}={LAYERS[src]})")
    assert not bad, "imports from a layer above:\n" + "\n".join(bad)


def test_the_library_never_imports_the_job_layer():
    bad = []
    for path in sorted((ROOT / "recsys").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "pipelines"]
    assert not bad, "recsys/ must not import pipelines/ (config files and jobs stay at the edge):\n" + "\n".join(bad)
