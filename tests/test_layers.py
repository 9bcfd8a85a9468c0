"""The architecture, enforced: the package's layers (pyproject.toml's import-linter contract)
and no import circle between any two of its modules, lazy imports included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

ROOT = Path(__file__).resolve().parents[1]


def test_each_layer_imports_only_from_the_layers_below():
    script = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(script), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("tzkgraph")
    imports = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if not module.startswith(imported + "."):  # a module may import its own package
                imports.add_edge(module, imported)
    cycles = list(nx.simple_cycles(imports))
    assert not cycles, " ; ".join(" -> ".join(c + c[:1]) for c in cycles[:5])
