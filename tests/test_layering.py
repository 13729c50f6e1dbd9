"""The layering the README's Layout section states, checked on the source: which package may import which.

core (``memlora``) <- export (``memlora.export``) <- runtime (``memlora.runtime``: backends, parity, bench)
<- verbs (the modules `memlora.cli` registers, and the CLI itself). A library module imports only its own
layer and those below; function-local imports count. No two library modules import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

from memlora.cli import VERBS

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"memlora": "memlora", "export": "memlora.export", "runtime_py": "memlora.runtime"}
LAYERS = ("memlora", "memlora.export", "memlora.runtime")
VERB_MODULES = {*VERBS.values(), "memlora.eval_locomo", "memlora.cli", "memlora.__main__"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """Every memlora module `name` imports, at top level or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "memlora" or m.startswith("memlora.")}


def layer(module: str) -> int:
    return max(i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + "."))


def test_library_modules_import_only_their_layer_and_below():
    known = modules()
    wrong = []
    for name, path in known.items():
        if name in VERB_MODULES:
            continue
        for target in imports(name, path):
            if target in known and target in VERB_MODULES:
                wrong.append(f"{name} imports the verb module {target}")
            elif target in known and layer(target) > layer(name):
                wrong.append(f"{name} ({LAYERS[layer(name)]}) imports {target} ({LAYERS[layer(target)]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_two_library_modules_import_each_other():
    known = modules()
    graph = {n: {t for t in imports(n, p) if t in known and t != n and not known[t].name == "__init__.py"}
             for n, p in known.items() if n not in VERB_MODULES}
    circles = sorted(f"{a} <-> {b}" for a, deps in graph.items() for b in deps if a < b and a in graph.get(b, ()))
    assert not circles, "\n".join(circles)


def test_the_checker_sees_function_local_and_relative_imports():
    known = modules()
    assert "memlora.export.decoder" in imports("memlora.export.lora", known["memlora.export.lora"])
    assert "memlora.runtime.torch_backend" in imports("memlora.export.command", known["memlora.export.command"])
    assert layer("memlora.runtime.parity.run") == 2 and layer("memlora.export.bundle") == 1 and layer("memlora.store") == 0
