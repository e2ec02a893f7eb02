"""textclf-exp: share experiments through DVC without losing a model or a remote on either side.

    textclf-exp push NAME [--git-remote origin] [--dvc-remote STORE]
    textclf-exp apply NAME [--git-remote origin]
    textclf-exp show [dvc exp show options]

DVC does the work (`dvc exp push`, `dvc exp pull`, `dvc exp apply`, `dvc exp show`); this adds the checks
DVC leaves out:

- DVC reads an experiment's remotes from the experiment's own commit: one run before the remote was
  added reaches none, and `dvc exp push` then says "Pushed experiment" and uploads no model. Both commands
  below lend this clone's remotes to every commit for their duration (copied into .dvc/config.local,
  which is put back after).
- push: the outputs go to the DVC remote named by `--dvc-remote`, else the default one; with none, it
  refuses.
- apply: the experiment is pulled, then applied only if every output it records is in the local DVC
  cache; else it stops and changes nothing (`dvc exp apply` would first delete the workspace model, then
  fail). Your `.dvc/config` is kept: an experiment made before a remote was added would otherwise take it.
- show: `dvc exp show` cut to 120 columns: the experiment, the headline metrics, and only the params that
  differ between the experiments shown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

from pipeline.errors import PipelineError, command_name, run_main

SCRIPT = "textclf-exp"
HEADLINE = ("lstm_val_acc", "lstm_test_acc", "lstm_test_f1", "baseline_test_acc")  # baseline_test_f1: in dvc exp show


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"]
        raise PipelineError(f"dvc {' '.join(args)}: {message[-1]}")
    return proc


def default_remote() -> str | None:
    proc = dvc("remote", "default", check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


@contextlib.contextmanager
def remotes_for_every_commit():
    """This clone's remote settings (.dvc/config) copied into .dvc/config.local, which DVC reads at every
    commit, for the duration of the block; .dvc/config.local is then put back as it was."""
    settings = [line.split("=", 1) for line in dvc("config", "--list", "--project").stdout.splitlines()
                if line.startswith(("remote.", "core.remote="))]
    local = Path(".dvc/config.local")
    before = local.read_bytes() if local.is_file() else None
    try:
        for key, value in settings:
            dvc("config", "--local", key, value)
        yield
    finally:
        if before is None:
            local.unlink(missing_ok=True)
        else:
            local.write_bytes(before)


def experiment_rev(name: str) -> str:
    """The commit of the local experiment `name` (DVC keeps it under refs/exps/.../NAME)."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    found = [line.split()[0] for line in refs if line.endswith(f"/{name}")]
    if len(found) != 1:
        raise PipelineError(f"experiment {name!r}: {'no such experiment here' if not found else 'several with that name'}"
                            " (`dvc exp list --all-commits` lists them)")
    return found[0]


def missing_outputs(rev: str) -> list[str]:
    """The outputs recorded in `rev`'s dvc.lock whose data is not in the local DVC cache."""
    import yaml

    lock = yaml.safe_load(subprocess.run(["git", "show", f"{rev}:dvc.lock"], capture_output=True, text=True,
                                         check=True).stdout) or {}
    in_git = set(subprocess.run(["git", "ls-tree", "-r", "--name-only", rev], capture_output=True, text=True,
                                check=True).stdout.splitlines())
    cache = Path(dvc("cache", "dir").stdout.strip()) / "files" / "md5"
    missing = []
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs", []):
            digest = out.get("md5")
            if digest is None or out["path"] in in_git:  # kept in git (cache: false)
                continue
            blob = cache / digest[:2] / digest[2:]
            if not blob.is_file():
                missing.append(out["path"])
            elif digest.endswith(".dir"):
                entries = json.loads(blob.read_text())
                if any(not (cache / e["md5"][:2] / e["md5"][2:]).is_file() for e in entries):
                    missing.append(out["path"])
    return missing


def push(name: str, git_remote: str, dvc_remote: str | None) -> None:
    remote = dvc_remote or default_remote()
    if remote is None:
        raise PipelineError(f"experiment {name!r}: no DVC remote to take its model and data: add one first "
                            "(`dvc remote add --local -d NAME URL`), or pass --dvc-remote NAME")
    with remotes_for_every_commit():
        dvc("exp", "push", "--run-cache", "-r", remote, git_remote, name)
    print(f"pushed experiment {name!r}: its git ref to {git_remote!r}, its outputs to the DVC remote {remote!r}")


def apply(name: str, git_remote: str | None) -> None:
    if git_remote:
        with remotes_for_every_commit():
            dvc("exp", "pull", git_remote, name)
    missing = missing_outputs(experiment_rev(name))
    if missing:
        raise PipelineError(f"experiment {name!r}: its outputs are in no DVC cache or remote this clone reaches "
                            f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); nothing was changed. "
                            f"Ask its author to run `{SCRIPT} push {name}`")
    config = Path(".dvc/config")
    kept = config.read_bytes() if config.is_file() else None
    dvc("exp", "apply", name)
    if kept is not None and config.read_bytes() != kept:
        config.write_bytes(kept)  # the remotes are the clone's, not the experiment's
        print("kept your .dvc/config (the experiment's names other remotes)")
    print(f"applied experiment {name!r}")


def show(extra: list[str]) -> None:
    """`dvc exp show` with the headline metrics and the params that differ between the experiments."""
    rows = json.loads(dvc("exp", "show", "--json", *extra).stdout)
    values: dict[str, set] = {}
    for baseline in rows:
        for rev in [baseline, *(e for exp in baseline.get("experiments") or [] for e in exp.get("revs", []))]:
            for section in (rev.get("data") or {}).get("params", {}).values():
                for key, value in _flatten(section.get("data", {})).items():
                    values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    changed = sorted(key for key, seen in values.items() if len(seen) > 1)
    keep = "|".join(["Experiment", *HEADLINE, *(key.replace(".", r"\.") for key in changed)])
    proc = subprocess.run(["dvc", "exp", "show", "--drop", ".*", "--keep", f"^({keep})$", *extra])
    sys.exit(proc.returncode)


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=command_name("pipeline.cli.experiments", SCRIPT),
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    push_parser = commands.add_parser("push", help="an experiment's git ref and outputs to the remotes")
    push_parser.add_argument("name")
    push_parser.add_argument("--git-remote", default="origin")
    push_parser.add_argument("--dvc-remote", help="default: the default DVC remote")
    apply_parser = commands.add_parser("apply", help="pull an experiment and apply it, only if its outputs came")
    apply_parser.add_argument("name")
    apply_parser.add_argument("--git-remote", default="origin", help="'' for an experiment already here")
    commands.add_parser("show", help="dvc exp show in 120 columns: headline metrics, the params that differ")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "show":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "push":
        push(args.name, args.git_remote, args.dvc_remote)
    elif args.command == "apply":
        apply(args.name, args.git_remote or None)
    else:
        show(extra)


def cli() -> None:
    """The console script textclf-exp."""
    run_main(main)


if __name__ == "__main__":
    cli()
