"""textclf-search: a hyperparameter search on your data, each trial a DVC experiment.

    textclf-search --trials 20 [--seed 0] [--space search.yaml] [--name NAME]
    textclf-search --minutes 60 --name NAME
    textclf-search --resume --name NAME [--trials 30]

Run it at the repository root, after `make repro` and a commit: every trial is `dvc exp run --temp` from
the current commit (uncommitted changes to tracked files included), named search-NAME-tNNN, so it shows in
`dvc exp show` and `dvc exp apply search-NAME-tNNN` takes it; the workspace is left as it was. Optuna's TPE
proposes the params of search.yaml (or --space FILE), MedianPruner stops the trials below the median of the
earlier ones after an epoch, and the objective is a validation figure (never the test split): that of the
model the ship stage chooses, what `dvc repro` ships (--objective shipped, the default), or the LSTM's
(--objective lstm). The
study, each trial's log and the summary (the best trial, the command to apply it, what mattered) are in
.search/NAME/. A budget: --trials (in all, resumes included) and/or --minutes (this run: no trial starts
after them). The same --seed proposes the same trials. docs/experiments.md, "Searching hyperparameters".
"""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

from pipeline import params
from pipeline.errors import PipelineError, command_name, run_main
from pipeline.files import read_json, write_json
from pipeline.search import (DEFAULT_SPACE, OBJECTIVE_CHOICES, PRUNER, SEARCH_DIR, Search, experiment_refs, git,
                             load_space, noise_note, objective_of, write_summary)

SCRIPT = "textclf-search"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=command_name("pipeline.cli.search", SCRIPT),
                                     description="A hyperparameter search, each trial a DVC experiment.")
    parser.add_argument("--trials", help="stop when the search holds this many finished trials (resumes included)")
    parser.add_argument("--minutes", help="start no trial after this many minutes of this run")
    parser.add_argument("--seed", help="the sampler's seed: the same seed proposes the same trials (default 0)")
    parser.add_argument("--space", help=f"the search space, a YAML file (default: {DEFAULT_SPACE})")
    parser.add_argument("--name", default="default", help="the search's name: .search/NAME, experiments search-NAME-tNNN")
    parser.add_argument("--resume", action="store_true", help="go on with the search NAME after an interruption")
    parser.add_argument("--no-prune", action="store_true", help="train every trial to its end")
    parser.add_argument("--objective", choices=OBJECTIVE_CHOICES,
                        help="the validation figure to maximize: that of the model the ship stage chooses (the "
                        "LSTM, the TF-IDF model or their fusion; the default) or the LSTM's")
    return parser


def whole(value: str | None, flag: str, low: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise PipelineError(f"{flag} {value!r}: not a whole number") from None
    if number < low:
        raise PipelineError(f"{flag} {value}: must be at least {low}")
    return number


def minutes(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise PipelineError(f"--minutes {value!r}: not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise PipelineError(f"--minutes {value}: must be a positive number of minutes")
    return number


def settings_for(args, seed: int | None, folder: Path) -> dict:
    """A new search's settings (written to search.json), or a resumed one's (read, and checked against
    what the command line asks)."""
    saved = folder / "search.json"
    if args.resume:
        if not saved.is_file():
            raise PipelineError(f"--resume: no search {args.name!r} here ({saved} not found); start it without --resume")
        settings = read_json(saved)
        if seed is not None and seed != settings["seed"]:
            raise PipelineError(f"--resume: search {args.name!r} has seed {settings['seed']}, not {seed}; "
                                "leave --seed out (or start a new --name)")
        if args.space is not None and args.space != settings["space_file"]:
            raise PipelineError(f"--resume: search {args.name!r} searches {settings['space_file']}, not {args.space}")
        if args.objective is not None and args.objective != settings.get("objective", "lstm"):
            raise PipelineError(f"--resume: search {args.name!r} maximizes {settings.get('objective', 'lstm')}, "
                                f"not {args.objective}; leave --objective out (or start a new --name)")
        return settings
    if folder.exists():
        raise PipelineError(f"search {args.name!r} exists ({folder}): add --resume to go on with it, or give another --name")
    earlier = [ref.rsplit("/", 1)[-1] for ref in experiment_refs(git("rev-parse", "HEAD").strip())
               if ref.rsplit("/", 1)[-1].startswith(f"search-{args.name}-t")]
    if earlier:
        raise PipelineError(f"experiments of an earlier search {args.name!r} exist ({earlier[0]}, ...): give another "
                            f"--name, or remove them: dvc exp remove $(dvc exp ls --name-only | grep ^search-{args.name}-t)")
    space_file = Path(args.space) if args.space else DEFAULT_SPACE
    base = params.load_yaml()
    dims = load_space(space_file, base)
    settings = {"seed": 0 if seed is None else seed, "space_file": str(space_file),
                "space": [{k: v for k, v in d.__dict__.items() if v is not None} for d in dims],
                "pruner": None if args.no_prune else PRUNER, "objective": args.objective or "shipped"}
    folder.mkdir(parents=True)
    ignore = SEARCH_DIR / ".gitignore"  # the studies and logs stay out of git (and out of every experiment)
    if not ignore.exists():
        ignore.write_text("*\n", encoding="utf-8")
    write_json(saved, settings)
    return settings


def committed_defaults(objective: str) -> dict | None:
    """The workspace's validation figure (metrics/train/best.json, or metrics/ship.json), the one to beat."""
    try:
        key, value, _ = objective_of(lambda path: Path(path).read_text(encoding="utf-8"), objective, "the workspace")
    except (OSError, ValueError, PipelineError):
        return None
    return {"objective": key, "value": value}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    trials, budget = whole(args.trials, "--trials", 1), minutes(args.minutes)
    seed = whole(args.seed, "--seed", 0)
    if trials is None and budget is None:
        raise PipelineError("give a budget: --trials N (finished trials in all) and/or --minutes M")
    if not NAME.match(args.name):
        raise PipelineError(f"--name {args.name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    if not Path("dvc.yaml").is_file() or not Path("params.yaml").is_file():
        raise PipelineError("run textclf-search at the repository root (dvc.yaml and params.yaml not found here)")
    folder = SEARCH_DIR / args.name
    settings = settings_for(args, seed, folder)
    search = Search(args.name, settings)
    if (abandoned := search.abandon_interrupted()):
        print(f"{abandoned} trial(s) left unfinished by an interrupted run: proposed again", flush=True)
    base = params.load_yaml()
    defaults = committed_defaults(settings.get("objective", "lstm"))
    deadline = None if budget is None else time.monotonic() + budget * 60
    done = len(search.finished())
    if done:
        print(f"search {args.name}: {done} finished trial(s) so far", flush=True)
    total = f"/{trials}" if trials else ""
    try:
        while (trials is None or len(search.finished()) < trials) and (deadline is None or time.monotonic() < deadline):
            row = search.run_trial(base, total)
            if row["state"] == "failed" and len([t for t in search.study.trials if t.state.name == "FAIL"]) >= 3 \
                    and not search.finished():
                raise PipelineError(f"the first trials all failed ({row['error']}); see {folder}/*.log")
    finally:
        s = write_summary(search, defaults)
    print(f"summary: {folder / 'summary.md'}")
    if s["defaults"]:
        print(f"the workspace's run: {s['defaults']['objective']} {s['defaults']['value']:.4f}")
    if s["best"]:
        b = s["best"]
        print(f"best: {b['experiment']} (validation {b['value']:.4f}); to take it: {b['apply']}")
        if note := noise_note(s):
            print(note.replace("`", ""))
    if s["importance"]:
        print("what mattered: " + ", ".join(f"{k} {v:.2f}" for k, v in s["importance"].items()))


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
