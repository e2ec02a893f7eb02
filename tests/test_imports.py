"""The package's shape, checked rather than trusted (pipeline.imports): dvc.yaml's code dependencies are
each stage's import closure, stages stand apart from each other, the library imports neither stages nor
console scripts, and no module grows past MAX_LINES."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.imports import closure, imported_modules
from tests.helpers import ROOT

MAX_LINES = 450
STAGE_COMMAND = re.compile(r"^python -m (pipeline\.stages\.\w+)(\s|$)")


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _modules(folder: str = "pipeline") -> list[Path]:
    """The package's source files under `folder`, relative to the repository."""
    return sorted(p.relative_to(ROOT) for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    return ".".join(path.with_suffix("").parts)


@pytest.mark.parametrize("stage", list(_stages()))
def test_dvc_yaml_names_exactly_the_code_each_stage_reaches(stage):
    spec = _stages()[stage]
    command = STAGE_COMMAND.match(spec["cmd"])
    assert command, f"{stage}: cmd {spec['cmd']!r} is not `python -m pipeline.stages.<name>`"
    listed = sorted(d for d in spec.get("deps", []) if isinstance(d, str) and d.startswith("pipeline/"))
    reached = closure(command.group(1))
    assert f"pipeline/stages/{command.group(1).rsplit('.', 1)[1]}.py" in reached
    missing, extra = sorted(set(reached) - set(listed)), sorted(set(listed) - set(reached))
    assert not missing and not extra, (f"dvc.yaml, stage {stage}: add {missing} to its deps, remove {extra} "
                                       f"(python -m pipeline.imports {command.group(1)})")


def test_every_stage_module_is_a_dvc_stage():
    commands = {STAGE_COMMAND.match(spec["cmd"]).group(1) for spec in _stages().values()}
    modules = {_module_name(p) for p in _modules("pipeline/stages") if p.name != "__init__.py"}
    assert modules == commands


def test_no_stage_imports_another_stage():
    for path in _modules("pipeline/stages"):
        others = {m for m in imported_modules(path) if m.startswith("pipeline.stages.") and m != _module_name(path)}
        assert not others, f"{path} imports {sorted(others)}: move what they share into the library"


def test_the_library_imports_no_stage_and_no_console_script():
    library = [p for p in _modules() if p.parts[1] not in ("stages", "cli")]
    assert Path("pipeline/model.py") in library and Path("pipeline/stages/train.py") not in library
    for path in library:
        above = {m for m in imported_modules(path) if m.startswith(("pipeline.stages", "pipeline.cli"))}
        assert not above, f"{path} imports {sorted(above)}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports in `graph` (module: the modules it imports), as a path back to its start; or None."""
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph.get(module, ())):
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state and (found := walk(other)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := walk(module)):
            return found
    return None


def test_no_module_imports_in_a_circle():
    """What importing runs, not what annotates or what a script's `__main__` block runs: imports under
    `if TYPE_CHECKING:` and `if __name__ == "__main__":` are left out."""
    graph = {_module_name(p): imported_modules(p, imported_only=True) for p in _modules() if p.name != "__init__.py"}
    assert "pipeline.plan" in graph["pipeline.training"]
    cycle = _cycle(graph)
    assert cycle is None, f"{' -> '.join(cycle)}: move what they share into a module both import"


def test_the_circle_check_finds_circles_and_leaves_type_checking_and_script_imports_out(tmp_path):
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nimport typing\nfrom pipeline import errors\n"
                      "if TYPE_CHECKING:\n    from pipeline.training import Trainer\nelse:\n    import pipeline.files\n"
                      "if typing.TYPE_CHECKING:\n    import pipeline.model\n"
                      "def f():\n    from pipeline.params import load\n"
                      "if __name__ == '__main__':\n    from pipeline.workspace import check_workspace\n")
    runtime = {"pipeline.errors", "pipeline.files", "pipeline.params"}
    assert imported_modules(source, imported_only=True) == runtime
    assert imported_modules(source) == runtime | {"pipeline.training", "pipeline.model", "pipeline.workspace"}


def test_training_and_distributed_do_not_import_each_other():
    """The plan (pipeline.plan) resolves the run; distributed is the engine's plumbing and reaches no training."""
    assert not {"pipeline.training", "pipeline.plan"} & imported_modules(Path("pipeline/distributed.py"))
    assert "pipeline.training" not in imported_modules(Path("pipeline/plan.py"))


def test_fit_takes_the_plan_and_at_most_five_parameters():
    import inspect

    from pipeline.training import Trainer, fit

    assert len(inspect.signature(fit).parameters) <= 5
    assert list(inspect.signature(fit).parameters)[:2] == ["model", "plan"]
    assert "plan" in inspect.signature(Trainer).parameters


def test_imports_are_found_wherever_they_are_written():
    """A stage's imports at module level, `from pipeline import x`, and imports inside functions."""
    train = imported_modules(Path("pipeline/stages/train.py"))
    assert {"pipeline.params", "pipeline.resume", "pipeline.training", "pipeline.distributed", "pipeline.plan"} <= train
    assert "pipeline.params" in imported_modules(Path("pipeline/model_card.py"))  # inside a function


@pytest.mark.parametrize("path", _modules(), ids=str)
def test_no_module_is_over_the_line_limit(path):
    lines = len((ROOT / path).read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path}: {lines} lines (at most {MAX_LINES}): split it by concept"
