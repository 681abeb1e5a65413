"""The layering the code promises: every module imports on its own (no import circle), library code never
imports the CLI, and a method is one module under methods/ found by the registry."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "genbackbones"


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_alone():
    """Each module imported first, in a clean `genbackbones` namespace: a circle fails as a partial import."""
    script = textwrap.dedent("""
        import importlib, sys
        failed = []
        for name in sys.argv[1:]:
            for loaded in [m for m in sys.modules if m == "genbackbones" or m.startswith("genbackbones.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as err:
                failed.append(f"{name}: {type(err).__name__}: {err}")
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script, *modules()], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def imported_names(path: Path) -> set[str]:
    """Absolute names of the genbackbones modules a file imports (function-level imports included)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("genbackbones")}


def test_library_code_never_imports_the_cli():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in ("cli", "__main__.py"):
            continue
        cli = sorted(n for n in imported_names(path) if n == "genbackbones.cli" or n.startswith("genbackbones.cli."))
        if cli:
            offenders[str(path.relative_to(PACKAGE))] = cli
    assert not offenders, offenders


def test_every_method_module_is_registered():
    from genbackbones.methods import Method, get_method, method_names

    names = method_names()
    assert {"layermatch", "ghfeat", "stylegan2"} <= set(names)
    for name in names:
        method = get_method(name)
        assert isinstance(method, Method) and method.name == name
        assert method.section is None or method.config is not None
