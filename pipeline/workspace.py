"""What every stage does first, in the repository root (start_stage): refuse an output that would
overwrite what the pipeline reads, and remove an abandoned training's resume state. `python -m
pipeline.params` runs the same checks over every stage (check_workspace), with no DVC."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import check_data_path


# Files no stage may write: the pipeline's own definition and state.
PIPELINE_FILES = ("params.yaml", "dvc.yaml", "dvc.lock", ".dvc", ".git")
# An interrupted training's resume state (pipeline.resume; the train stage writes it) and the marker of a
# finished training, written last (metrics/train/best.json): DVC removes the marker before train runs,
# and train removes it before its first epoch, so while it is there no training is under way, and a
# resume state beside it was abandoned (DVC restored train's outputs from its run cache instead).
RESUME_STATE = Path("models/.train-resume.pt")
FINISHED_TRAINING = Path("metrics/train/best.json")


def start_stage(stage: str) -> None:
    """Run first by every stage (`stage` as dvc.yaml names it), in the repository root: refuse an output
    that is one of its own inputs, another stage's output or an input of a stage before it (check_stage_paths),
    and remove an abandoned training's resume state (remove_abandoned_resume_state)."""
    check_stage_paths(stage)
    remove_abandoned_resume_state()


def check_workspace(dvc_file: str | os.PathLike = "dvc.yaml", params_file: str | os.PathLike = "params.yaml") -> None:
    """What `python -m pipeline.params` checks beyond the keys, with no DVC: every stage's paths
    (check_stage_paths), and every input that exists is regular files and folders (check_data_path):
    DVC hashes each dependency before it runs anything, and waits forever on a FIFO or a device. Also
    removes an abandoned resume state."""
    for stage in stage_paths(dvc_file, params_file):
        check_stage_paths(stage, dvc_file, params_file)
    check_dependencies(dvc_file, params_file)
    remove_abandoned_resume_state()


def check_dependencies(dvc_file: str | os.PathLike = "dvc.yaml", params_file: str | os.PathLike = "params.yaml") -> None:
    """Every stage's existing dependencies are regular files and folders (check_data_path): what to
    check before a `dvc` command that hashes them (status, repro), which waits forever on a FIFO."""
    for stage in stage_paths(dvc_file, params_file).values():
        for dep, key in stage["deps"]:
            check_data_path(dep, key or dep)


def remove_abandoned_resume_state(resume: Path = RESUME_STATE, finished: Path = FINISHED_TRAINING) -> None:
    if resume.exists() and finished.exists():
        resume.unlink(missing_ok=True)
        print(f"removed {resume}: the resume state of a training that was replaced by a finished one "
              f"({finished})", file=sys.stderr)


def stage_paths(dvc_file: str | os.PathLike = "dvc.yaml", params_file: str | os.PathLike = "params.yaml"
                ) -> dict[str, dict[str, list[tuple[str, str | None]]]]:
    """Each stage's `deps` and `outs` (metrics and plots outputs too) from dvc.yaml, `${key}` filled in
    from params.yaml: {stage: {"deps": [(path, key)], "outs": [(path, key)]}}, `key` being the params key a
    path is exactly (`predict.output`), else None. Empty without dvc.yaml."""
    from ruamel.yaml import YAML

    from pipeline.params import load_yaml

    try:
        pipeline = YAML(typ="safe").load(Path(dvc_file).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return {}
    values = load_yaml(params_file, strict=False)

    def lookup(key: str):
        value = values
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def entry(item) -> tuple[str, str | None] | None:
        path = next(iter(item)) if isinstance(item, dict) else item
        if not isinstance(path, str):
            return None
        whole = re.fullmatch(r"\$\{\s*([\w.]+)\s*\}", path)
        filled = re.sub(r"\$\{\s*([\w.]+)\s*\}", lambda m: str(lookup(m.group(1))), path)
        if whole and not isinstance(lookup(whole.group(1)), str):
            return None  # a missing or non-text value: the stage's own params check names it
        return filled, whole.group(1) if whole else None

    stages = {}
    for name, stage in (pipeline.get("stages") or {}).items():
        if not isinstance(stage, dict):
            continue
        outs = [stage.get(kind) or [] for kind in ("outs", "metrics", "plots")]
        stages[name] = {"deps": [e for e in map(entry, stage.get("deps") or []) if e],
                        "outs": [e for kind in outs for e in map(entry, kind) if e]}
    return stages


def _overlap(out: str, other: str) -> str | None:
    """How path `out` meets path `other`: 'is', 'is inside', 'holds', 'is a hard link of'; else None.
    Compared as real paths (symbolic links and `..` resolved), and by inode for hard links."""
    a, b = os.path.realpath(out), os.path.realpath(other)
    if a == b:
        return "is"
    if b.startswith(a.rstrip(os.sep) + os.sep):
        return "holds"
    if a.startswith(b.rstrip(os.sep) + os.sep):
        return "is inside"
    for one, two in ((a, b), (b, a)):
        try:
            st = os.stat(one)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and os.path.exists(two):
            walk = [two] if not os.path.isdir(two) else (os.path.join(root, name) for root, _, names in os.walk(two)
                                                          for name in names)
            for path in walk:
                with contextlib.suppress(OSError):
                    if os.path.samefile(one, path):
                        return "is a hard link of" if one == a else "holds a hard link of"
    return None


# The params keys that name the user's data, read in place: they may be a download stage's output (the
# default), or outside the pipeline's outputs, never inside an output that another stage replaces.
DATA_SOURCES = ("corpus.source", "embeddings.source", "domain_vectors.unlabelled")


def check_stage_paths(stage: str, dvc_file: str | os.PathLike = "dvc.yaml",
                      params_file: str | os.PathLike = "params.yaml") -> None:
    """Refuse, naming the params key, an output of `stage` that would overwrite what the pipeline reads:
    an output that is (or holds, or lies inside, or is a hard link of) one of the stage's own inputs, the
    pipeline's files (params.yaml, dvc.yaml, dvc.lock, .dvc, .git), or another stage's output; a
    configurable output (`predict.output`) that is any stage's input; and a data source (DATA_SOURCES)
    inside the output of a stage that is not a download. DVC refuses most of these params under `dvc
    repro`, but a stage run by hand asks no one. Checked before anything is read or written."""
    stages = stage_paths(dvc_file, params_file)
    if stage not in stages:
        return
    deps, outs = stages[stage]["deps"], stages[stage]["outs"]
    # A stage that reads no data (no key, no other stage's output: a download) makes data sources.
    root = not any(key for _, key in deps) and not any(
        _overlap(out, dep) for other, paths in stages.items() if other != stage for out, _ in paths["outs"]
        for dep, _ in deps)

    def refuse(out, out_key, how, other, other_key, what):
        if out_key:
            raise PipelineError(f"{params_file}: '{out_key}' ({out}), an output of stage {stage}, {how} {other}"
                                f"{f' ({other_key})' if other_key else ''}, {what}: running {stage} would "
                                "overwrite it; name another path")
        if other_key:
            raise PipelineError(f"{params_file}: '{other_key}' ({other}), {what}, {_reverse[how]} {out}, an output "
                                f"of stage {stage}: running {stage} would overwrite it; point the key elsewhere")
        raise PipelineError(f"{out}, an output of stage {stage}, {how} {other}, {what}: running {stage} "
                            "would overwrite it")

    for out, out_key in outs:
        for protected in PIPELINE_FILES:
            if (how := _overlap(out, protected)):
                refuse(out, out_key, how, protected, None, "the pipeline's own file")
        for dep, dep_key in deps:
            if (how := _overlap(out, dep)):
                refuse(out, out_key, how, dep, dep_key, f"an input of stage {stage}")
        for other, paths in stages.items():
            if other == stage:
                continue
            for path, key in paths["outs"]:
                if (out_key or key) and (how := _overlap(out, path)) and "hard link" not in how:
                    refuse(out, out_key, how, path, key, f"the output of stage {other}")
            for dep, key in paths["deps"]:
                if (out_key or key in DATA_SOURCES and not root) and (how := _overlap(out, dep)):
                    refuse(out, out_key, how, dep, key, f"read by stage {other}")


_reverse = {"is": "is", "holds": "is inside", "is inside": "holds", "is a hard link of": "is a hard link of",
            "holds a hard link of": "is a hard link inside"}
