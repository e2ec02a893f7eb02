"""textclf-exp: share experiments through DVC without losing a model or a remote on either side.

    textclf-exp push NAME [--git-remote origin] [--dvc-remote STORE]
    textclf-exp apply NAME [--git-remote origin] [--force]
    textclf-exp show [dvc exp show options]

DVC does the work (`dvc exp push`, `dvc exp pull`, `dvc exp apply`, `dvc exp show`); this adds the checks
DVC leaves out:

- DVC reads an experiment's remotes from the experiment's own commit: one run before the remote was
  added reaches none, and `dvc exp push` then says "Pushed experiment" and uploads no model. Both commands
  below lend this clone's remotes to every commit for their duration (copied into .dvc/config.local,
  which is put back after).
- push: the outputs go to the DVC remote named by `--dvc-remote`, else the default one; with none, it
  refuses. The outputs go first (DVC's push of the experiment's commit), the git ref only once all of
  them are there (`dvc exp push --no-cache`); a failed upload is one line naming the remote and the
  cause (no space left, a quota, a missing bucket, an HTTP error), and the ref stays here.
- apply: the experiment is pulled, then applied only if every output it records is in the local DVC
  cache; else it stops and changes nothing (`dvc exp apply` would first delete the workspace model, then
  fail). Your `.dvc/config` is kept: an experiment made before a remote was added would otherwise take it.
  Uncommitted changes it would overwrite (tracked files, changed DVC outputs; `dvc exp apply` keeps them
  only in a DVC-internal ref that its next apply clears) stop it, naming them; --force saves them in a
  git stash first (changed outputs through `dvc commit`).
- show: `dvc exp show` cut to 120 columns: the experiment, the headline metrics, and only the params that
  differ between the experiments shown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.errors import PipelineError, command_name, run_main

SCRIPT = "textclf-exp"
# shipped_test_acc: what `dvc repro` ships (ship.model: the LSTM, or the best of LSTM, TF-IDF and fusion). The
# F1 scores are left to `dvc exp show`, so that the params that differ still fit in 120 columns.
HEADLINE = ("lstm_val_acc", "lstm_test_acc", "shipped_test_acc", "baseline_test_acc")


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


def check_name(value: str, what: str) -> None:
    """A value that reaches `dvc`/`git` as a name (an experiment, a remote) must be one: never an option
    (`-A`, `--rev=...`, `-f`) that DVC's parser would act on, never blank or holding control characters."""
    if not value or value != value.strip() or value.startswith("-") or not value.isprintable():
        raise PipelineError(f"{what} {value!r}: not a name (it must not be empty, start with '-', or hold "
                            "blanks at its ends or control characters); nothing was run")


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
    rev = experiment_rev(name)
    with remotes_for_every_commit():
        # The data first, and the git ref only once every output is there: a colleague who sees the
        # experiment can always fetch its model (`dvc exp push` sends the ref even when uploads fail).
        upload_outputs(name, rev, remote)
        dvc("exp", "push", "--no-cache", "--", git_remote, name)
    print(f"pushed experiment {name!r}: its outputs to the DVC remote {remote!r}, then its git ref to {git_remote!r}")


def upload_outputs(name: str, rev: str, remote: str) -> None:
    """Every output `rev` records (and the run cache) to the DVC remote `remote`, through DVC's own push;
    else an error naming the remote and the first failure's cause (a full disk, a quota, a missing
    bucket, an HTTP status), where DVC says only how many files failed."""
    import logging

    from dvc.repo import Repo

    failures: list[BaseException] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.exc_info and record.exc_info[1] is not None:
                failures.append(record.exc_info[1])

    handler = Keep(logging.ERROR)
    loggers = [logging.getLogger(name) for name in ("dvc", "dvc_data", "dvc_objects")]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:  # DVC's log of each failed file (a line each, hundreds) kept for the cause only
        logger.handlers, logger.propagate = [handler], False
    try:
        with Repo(".") as repo:
            repo.push(revs=[rev], remote=remote, run_cache=True, workspace=False)
    except Exception as err:  # DVC's UploadError (a count), or what stopped it before any upload
        cause = failure_cause(failures[0] if failures else err)
        raise PipelineError(f"experiment {name!r}: its outputs did not all reach the DVC remote {remote!r} "
                            f"({cause}); its git ref was not pushed. Fix the remote, then run again") from None
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate


def failure_cause(err: BaseException) -> str:
    """The first line of the root cause of an upload's failure, as plain as it can be said."""
    import errno

    seen = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    for exc in reversed(seen):  # the root first
        code = getattr(exc, "errno", None)
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES):
            return os.strerror(code)
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and "Error" in response:  # botocore's ClientError: S3's own words
            error = response["Error"]
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return f"{error.get('Code')}: {error.get('Message')}{f' (HTTP {status})' if status else ''}"
    root = seen[-1] if seen else err
    text = (str(root).strip().splitlines() or [""])[0]
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def unsaved_changes(rev: str) -> list[str]:
    """What `dvc exp apply` of `rev` would destroy: tracked files changed in the workspace (staged or
    not), untracked files that `rev` also holds, and DVC outputs changed since dvc.lock (their bytes are
    in no cache). Changes that some experiment of this clone holds as they are (the workspace after `dvc
    exp run`) are not lost, so not counted."""
    changed = []
    entries = iter(git("status", "--porcelain", "-z", "--untracked-files=all").split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":  # a rename or copy: the old path comes next
            changed.append(next(entries, ""))
        if code != "??" or subprocess.run(["git", "cat-file", "-e", f"{rev}:{path}"],
                                          capture_output=True).returncode == 0:
            changed.append(path)
    changed = [path for path in changed if path]
    if changed:
        held = [line.split()[0] for line in git("for-each-ref", "--format=%(objectname)", "refs/exps").splitlines()]
        if any(all(_same_in(commit, path) for path in changed) for commit in held):
            changed = []
    return sorted(set(changed)) + modified_outputs()


def modified_outputs() -> list[str]:
    """DVC outputs whose workspace bytes are not the ones dvc.lock records (edited, or left by a run
    that was never recorded): no cache holds them."""
    from pipeline.workspace import check_dependencies

    check_dependencies()  # `dvc status` would wait forever on a FIFO among them
    modified = set()
    for stage in json.loads(dvc("status", "--json").stdout or "{}").values():
        for entry in stage if isinstance(stage, list) else []:
            if isinstance(entry, dict):
                modified.update(out for out, how in (entry.get("changed outs") or {}).items() if how == "modified")
    return sorted(modified)


def _same_in(commit: str, path: str) -> bool:
    """Whether the workspace's `path` is byte for byte `commit`'s (both absent counts as the same)."""
    there = subprocess.run(["git", "rev-parse", "-q", "--verify", f"{commit}:{path}"], capture_output=True, text=True)
    if not Path(path).is_file():
        return there.returncode != 0
    here = subprocess.run(["git", "hash-object", "--", path], capture_output=True, text=True)
    return there.returncode == 0 and there.stdout.strip() == here.stdout.strip()


def save_changes(name: str, changed: list[str]) -> str:
    """The workspace's changes into a git stash the user sees (`git stash list`): changed DVC outputs
    first into the DVC cache and dvc.lock (`dvc commit`), so the stash holds them too."""
    outputs = modified_outputs()
    if outputs:
        dvc("commit", "--force", *outputs)
    message = f"textclf-exp apply {name}: your uncommitted changes ({', '.join(changed[:4])}{', ...' * (len(changed) > 4)})"
    git("stash", "push", "--include-untracked", "-m", message)
    return message


def apply(name: str, git_remote: str | None, force: bool = False) -> None:
    if git_remote:
        with remotes_for_every_commit():
            dvc("exp", "pull", "--", git_remote, name)
    rev = experiment_rev(name)
    missing = missing_outputs(rev)
    if missing:
        raise PipelineError(f"experiment {name!r}: its outputs are in no DVC cache or remote this clone reaches "
                            f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); nothing was changed. "
                            f"Ask its author to run `{SCRIPT} push {name}`")
    changed = unsaved_changes(rev)
    if changed and not force:
        raise PipelineError(f"experiment {name!r}: applying it would overwrite your uncommitted changes to "
                            f"{', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}; nothing was changed. "
                            "Commit them, or run again with --force to save them in a git stash first")
    if changed:
        message = save_changes(name, changed)
        print(f"saved your changes as the git stash {message!r}: after `git checkout -- .`, "
              "`git stash pop && dvc checkout` brings them back")
    config = Path(".dvc/config")
    kept = config.read_bytes() if config.is_file() else None
    dvc("exp", "apply", "--", name)
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
    apply_parser.add_argument("--force", action="store_true",
                              help="apply over uncommitted changes, saved first in a git stash (`git stash list`)")
    commands.add_parser("show", help="dvc exp show in 120 columns: headline metrics, the params that differ")
    return parser


def main(argv: list[str] | None = None) -> None:
    from pipeline.workspace import remove_abandoned_resume_state

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "show":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("push", "apply"):
        check_name(args.name, "experiment")
        if args.git_remote or args.command == "push":
            check_name(args.git_remote, "--git-remote")
    if args.command == "push" and args.dvc_remote is not None:
        check_name(args.dvc_remote, "--dvc-remote")
    remove_abandoned_resume_state()
    if args.command == "push":
        push(args.name, args.git_remote, args.dvc_remote)
    elif args.command == "apply":
        apply(args.name, args.git_remote or None, args.force)
    else:
        show(extra)


def cli() -> None:
    """The console script textclf-exp."""
    run_main(main)


if __name__ == "__main__":
    cli()
