"""The packages import one way: ``asrkd`` (core) <- ``eval`` (measures) <- ``mobile_export`` (builds
and verifies artifacts). A module may import its own layer and the layers below it, never one
above. The entry points (``asrkd/cli.py``, ``asrkd/demo.py``) and the public facade
(``asrkd/__init__.py``, which may expose ``export`` lazily) sit above all three and are exempt.

Every import counts: module level, inside functions, under ``if TYPE_CHECKING``, relative ones.
Inside asrkd, the modules that import each other at module level must not form a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"asrkd": 0, "eval": 1, "mobile_export": 2}
ENTRY_POINTS = {"asrkd/__init__.py", "asrkd/cli.py", "asrkd/demo.py", "asrkd/demo/"}


def module_name(root: Path, path: Path) -> str:
    """``asrkd/models/conformer.py`` -> ``asrkd.models.conformer``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module level?) for every import in the file at ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(root, path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            # `from pkg import submodule` imports the submodule too
            found += [(node.lineno, f"{target}.{alias.name}", id(node) in top_level) for alias in node.names]
            found.append((node.lineno, target, id(node) in top_level))
    return found


def source_files(root: Path) -> list[Path]:
    return sorted(p for package in LAYERS for p in (root / package).rglob("*.py"))


def is_entry_point(root: Path, path: Path) -> bool:
    rel = path.relative_to(root).as_posix()
    return any(rel == e or (e.endswith("/") and rel.startswith(e)) for e in ENTRY_POINTS)


def back_edges(root: Path) -> list[str]:
    """``file:line: a imports b`` for every import that runs up the layers."""
    problems = []
    for path in source_files(root):
        if is_entry_point(root, path):
            continue
        own = LAYERS[path.relative_to(root).parts[0]]
        for line, target, _ in imports(root, path):
            layer = LAYERS.get(target.split(".")[0])
            if layer is not None and layer > own:
                problems.append(f"{path.relative_to(root)}:{line}: imports {target} "
                                f"({target.split('.')[0]} sits above {path.relative_to(root).parts[0]})")
    return sorted(set(problems))


def module_cycles(root: Path, package: str = "asrkd") -> list[list[str]]:
    """Cycles among ``package``'s modules through module-level imports (entry points excluded)."""
    modules = {module_name(root, p): p for p in (root / package).rglob("*.py") if not is_entry_point(root, p)}
    graph = {name: sorted({t for _, t, top in imports(root, path) if top and t in modules and t != name})
             for name, path in modules.items()}
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in graph[name]:
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_no_import_runs_up_the_layers():
    problems = back_edges(ROOT)
    assert not problems, "imports against the layering asrkd <- eval <- mobile_export:\n" + "\n".join(problems)


def test_asrkd_modules_import_no_cycle():
    cycles = module_cycles(ROOT)
    assert not cycles, "module-level import cycles in asrkd:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_find_back_edges_and_cycles(tmp_path):
    """The walker on a made-up tree: every kind of import it must see, and the exemptions."""
    files = {
        "asrkd/__init__.py": "def export():\n    from mobile_export import export\n",  # facade: exempt
        "asrkd/cli.py": "import mobile_export.export\n",  # entry point: exempt
        "asrkd/core.py": "import asrkd.util\n\ndef f():\n    from eval import wer\n",
        "asrkd/util.py": "from . import core\n",  # cycle with core
        "asrkd/models/__init__.py": "",
        "asrkd/models/net.py": "from ..util import x\nfrom mobile_export.graph import G\n",
        "eval/__init__.py": "",
        "eval/runners.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mobile_export.graph\n",
        "eval/ok.py": "import asrkd.core\nfrom eval import runners\n",
        "mobile_export/__init__.py": "",
        "mobile_export/export.py": "import eval.ok\nimport asrkd\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert back_edges(tmp_path) == [
        "asrkd/core.py:4: imports eval (eval sits above asrkd)",
        "asrkd/core.py:4: imports eval.wer (eval sits above asrkd)",
        "asrkd/models/net.py:2: imports mobile_export.graph (mobile_export sits above asrkd)",
        "asrkd/models/net.py:2: imports mobile_export.graph.G (mobile_export sits above asrkd)",
        "eval/runners.py:3: imports mobile_export.graph (mobile_export sits above eval)",
    ]
    assert module_cycles(tmp_path) == [["asrkd.core", "asrkd.util", "asrkd.core"]]
