"""Which of this package's modules a module reaches through its imports (its import closure).

dvc.yaml's code dependencies are checked against it (tests/test_imports.py), and the training resume
key hashes the files it names, so neither is a hand-kept list. Imports are read from the source (any
`import pipeline...` or `from pipeline... import ...`, at module level or inside a function), without
running anything; package `__init__.py` files hold docstrings only and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "pipeline"
ROOT = Path(__file__).resolve().parent.parent  # the folder holding the package


def module_file(module: str) -> Path | None:
    """The source file of `pipeline.x.y` (relative to ROOT), or None if it is a package or not ours."""
    path = Path(*module.split(".")).with_suffix(".py")
    return path if (ROOT / path).is_file() else None


def _type_checking(node: ast.AST) -> bool:
    """Whether `node` is `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): imports for annotations only."""
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _script_only(node: ast.AST) -> bool:
    """Whether `node` is `if __name__ == "__main__":`: what runs only when the file is run as a script."""
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__" \
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)


def _nodes(tree: ast.AST, imported_only: bool):
    """Every node of `tree`; with `imported_only`, none inside an `if TYPE_CHECKING:` block or an
    `if __name__ == "__main__":` block (their `else` runs, and is kept)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if imported_only and (_type_checking(node) or _script_only(node)):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, imported_only: bool = False) -> set[str]:
    """The `pipeline...` modules one source file imports (a `from pipeline import x` names pipeline.x);
    with `imported_only`, only those that importing it runs: not under `if TYPE_CHECKING:` (annotations)
    nor `if __name__ == "__main__":` (the file run as a script, as DVC runs a stage: closure counts those)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in _nodes(tree, imported_only):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == PACKAGE:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if module_file(name) is not None}


def closure(module: str) -> list[str]:
    """`module`'s file and those of every package module it reaches, as sorted POSIX paths."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name)))
    return sorted(module_file(name).as_posix() for name in seen)


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:]:
        print(f"{name}:", *closure(name), sep="\n  ")
