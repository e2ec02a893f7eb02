"""A hyperparameter search whose every trial is a DVC experiment (textclf-search; docs/experiments.md).

Optuna proposes (TPE), DVC runs: each trial is `dvc exp run --temp -n search-NAME-tNNN -S key=value ...`
from the current commit (and its uncommitted changes to tracked files), so it shows in `dvc exp show` and
`dvc exp apply` takes it, and the workspace is left as it was. The objective is a validation figure, never
the test split: by default (`shipped`) that of the model the ship stage chose from the trial
(metrics/ship.json: the LSTM's, the TF-IDF model's or the fusion's, as `shipped_val_acc` or
`shipped_val_micro_f1`); with `lstm`, the LSTM's saved epoch's (metrics/train/best.json: lstm_val_acc, or
lstm_val_micro_f1 for a multi-label corpus). A search saved before the objective was a setting maximized
the LSTM's. The study lives in .search/NAME/study.db (SQLite), so `--resume` goes on
after an interruption.

Repeatable: the sampler of trial k is seeded from (seed, k), k counting the finished trials, so it depends
on nothing but the seed and the trials before it. Training is deterministic for given params, so the
same seed proposes the same trials, whether the search ran at once or was interrupted and resumed.

Pruning: the train stage reports each epoch's validation figure to the trial (pipeline.search_trial), and
Optuna's MedianPruner stops a trial below the median of the earlier ones at that epoch. A trial DVC's run
cache restores never trained: its epochs are reported here from its DVCLive series instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np

from pipeline import params
from pipeline.errors import PipelineError, short
from pipeline.files import atomic_path, write_json
from pipeline.search_trial import ENV, make_pruner

SEARCH_DIR = Path(".search")
DEFAULT_SPACE = Path("search.yaml")
BEST = "metrics/train/best.json"
SHIP = "metrics/ship.json"
VAL_SPLIT = Path("data/prepared/val.parquet")  # the workspace's: its size says how noisy a validation figure is
VAL_SERIES = "metrics/train/plots/metrics/val/accuracy.tsv"
OBJECTIVES = ("lstm_val_acc", "lstm_val_micro_f1")  # single-label, multi-label: validation figures only
OBJECTIVE_CHOICES = ("lstm", "shipped")
SHIPPED_NAMES = {0: "lstm", 1: "fusion", 2: "tfidf"}  # ship_model in metrics/ship.json (pipeline.shipped.CODES)
STARTUP_TRIALS = 5   # TPE's random trials before it models the results
# No pruning before 3 trials have finished, nor before epoch 5 (freeze_then_finetune's embeddings thaw after epoch 3).
PRUNER = {"startup_trials": 3, "warmup_epochs": 4}


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched key: a range (low, high; log scale or not; int for an integer param) or choices."""
    key: str                       # section.key of params.yaml
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    def suggest(self, trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


def _param_type(section: str, key: str):
    hints = typing.get_type_hints(params.SECTIONS[section])
    return hints[key]


def _is_int_param(tp) -> bool:
    args = typing.get_args(tp)
    return tp is int or (int in args and float not in args)


def load_space(path: Path, base: dict) -> list[Dimension]:
    """The search space in `path`: each key a params.yaml key (section.key), each value {low, high[, log]}
    or {choices: [...]}; every value a proposal could take checked by params.py against `base` (the
    params.yaml sections)."""
    from ruamel.yaml import YAML, YAMLError

    try:
        data = YAML().load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: search space file not found") from None
    except (YAMLError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: not a YAML search space ({str(err).splitlines()[0][:160]})") from None
    if not isinstance(data, dict) or not data:
        raise PipelineError(f"{path}: expected a mapping of params.yaml keys (train.lr: {{low: ..., high: ...}})")
    dims = []
    for name, spec in data.items():
        line = data.lc.key(name)[0] + 1 if hasattr(data, "lc") else "?"
        where = f"{path}, line {line}, '{name}'"
        section, _, key = str(name).partition(".")
        if section not in params.SECTIONS or key not in {f.name for f in dataclasses.fields(params.SECTIONS[section])}:
            raise PipelineError(f"{where}: not a params.yaml key (section.key, e.g. train.lr)")
        if section not in base:
            raise PipelineError(f"{where}: params.yaml has no section '{section}'")
        dims.append(_dimension(str(name), spec, where, base))
    return dims


def _dimension(name: str, spec, where: str, base: dict) -> Dimension:
    section, _, key = name.partition(".")
    if not isinstance(spec, dict) or not (set(spec) <= {"low", "high", "log", "choices"}):
        raise PipelineError(f"{where}: expected {{low: A, high: B}}, {{low: A, high: B, log: true}} or {{choices: [...]}}, "
                            f"got {short(spec)}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices or len(set(map(repr, choices))) != len(choices):
            raise PipelineError(f"{where}: 'choices' must be a list of distinct values, alone")
        values = tuple(choices)
    else:
        if "low" not in spec or "high" not in spec:
            raise PipelineError(f"{where}: a range needs both 'low' and 'high'")
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not low < high:
            raise PipelineError(f"{where}: 'low' and 'high' must be numbers with low < high, got {short(low)} and {short(high)}")
        if not isinstance(log, bool) or (log and low <= 0):
            raise PipelineError(f"{where}: 'log' must be true or false, and a log scale needs low > 0")
        integer = _is_int_param(_param_type(section, key))
        if integer and not all(float(v).is_integer() for v in (low, high)):
            raise PipelineError(f"{where}: '{name}' is a whole number: 'low' and 'high' must be whole numbers")
        values = (low, high)
    for value in values:  # every end of a range and every choice must be a valid params.yaml value
        check_values(base, {name: value}, where)
    if "choices" in spec:
        return Dimension(name, choices=values)
    return Dimension(name, float(low), float(high), log, integer)


def check_values(base: dict, values: dict, where: str) -> None:
    """Raise a one-line error unless params.yaml with these values set is valid (params.py's checks)."""
    sections: dict[str, dict] = {}
    for name, value in values.items():
        section, _, key = name.partition(".")
        sections.setdefault(section, dict(base[section]))[key] = value
    for section, raw in sections.items():
        params.parse_section(section, raw, where)


def override(name: str, value) -> str:
    """`-S name=value` as DVC parses it (Hydra's override grammar): strings quoted (in a list too), numbers
    in full, other characters as they are (JSON's \\u escapes would reach params.yaml as written)."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str) and ("'" in item or '"' in item or "\\" in item):
            raise PipelineError(f"search value {item!r} of {name}: quotes and backslashes cannot pass through "
                                "`dvc exp run -S`")
    if isinstance(value, str):
        return f"{name}='{value}'"
    if value is None:
        return f"{name}=null"
    return f"{name}={json.dumps(value, ensure_ascii=False)}"


# --- running trials ---------------------------------------------------------------------------------


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"git {' '.join(args)}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc.stdout


def experiment_refs(baseline: str | None = None) -> list[str]:
    """The git refs of DVC's experiments (refs/exps/<baseline[:2]>/<baseline[2:]>/<name>), of one baseline
    commit or of all."""
    under = f"refs/exps/{baseline[:2]}/{baseline[2:]}" if baseline else "refs/exps"
    return git("for-each-ref", "--format=%(refname)", under).split()


def experiment_ref(name: str, baseline: str | None = None) -> str | None:
    """The git ref of DVC experiment `name` (run from `baseline`, if given), or None."""
    found = [ref for ref in experiment_refs(baseline) if ref.rsplit("/", 1)[-1] == name]
    return found[-1] if found else None


def read_at(ref: str, path: str) -> str:
    return git("show", f"{ref}:{path}")


def objective_of(read, objective: str, where: str) -> tuple[str, float, bool]:
    """A run's objective: (its name, its value, whether the trial was pruned); `read(path)` gives the text
    of a metrics file of the run (an experiment's commit, or the workspace)."""
    best = json.loads(read(BEST))
    key = next((k for k in OBJECTIVES if k in best), None)
    if key is None:
        raise PipelineError(f"{where}: {BEST} holds none of {', '.join(OBJECTIVES)}")
    if objective == "lstm":
        return key, float(best[key]), bool(best.get("pruned"))
    ship = json.loads(read(SHIP))
    metric = "acc" if key == "lstm_val_acc" else "micro_f1"
    name = SHIPPED_NAMES.get(ship.get("ship_model"))
    value = ship.get(f"ship_val_{metric}_{name}")
    if value is None:
        raise PipelineError(f"{where}: {SHIP} holds no ship_val_{metric}_<model> of its ship_model "
                            f"{ship.get('ship_model')!r}")
    return f"shipped_val_{metric}", float(value), bool(best.get("pruned"))


def val_series(ref: str) -> list[tuple[int, float]]:
    """The experiment's validation figure per epoch (its DVCLive series, from DVC's cache)."""
    import dvc.api

    rows = dvc.api.read(VAL_SERIES, rev=git("rev-parse", ref).strip()).splitlines()[1:]
    return [(int(step), float(value)) for step, value in (row.split("\t")[:2] for row in rows)]


def run_experiment(name: str, values: dict, env: dict, log: Path) -> tuple[int, str]:
    """`dvc exp run --temp -n name -S ...`; its output in `log`; (exit status, last line)."""
    cmd = ["dvc", "exp", "run", "--temp", "-n", name, *("-S" + override(k, v) for k, v in values.items())]
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, text=True)
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    # The stage's own one-line error ("error: ..."), else DVC's ("ERROR: ..."), else the last line.
    errors = [line for line in lines if line.startswith("error:")] or [line for line in lines if line.startswith("ERROR:")]
    return proc.returncode, (errors or lines or [""])[-1][:300]


class Search:
    """A named search: its settings (search.json), its Optuna study (study.db) and its trials' logs."""

    def __init__(self, name: str, settings: dict):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.name, self.settings = name, settings
        self.folder = SEARCH_DIR / name
        self.storage = f"sqlite:///{(self.folder / 'study.db').resolve()}"
        self.dims = [Dimension(d["key"], d.get("low"), d.get("high"), d.get("log", False), d.get("integer", False),
                               None if d.get("choices") is None else tuple(d["choices"])) for d in settings["space"]]
        self.study = optuna.create_study(study_name=name, storage=self.storage, direction="maximize",
                                         load_if_exists=True, pruner=make_pruner(settings["pruner"]))

    def finished(self) -> list:
        import optuna

        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return [t for t in self.study.get_trials(deepcopy=False) if t.state in done]

    def abandon_interrupted(self) -> int:
        """Trials left running by an interrupted search: failed (their proposals come again, as trial k)."""
        import optuna

        stale = [t for t in self.study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
        for t in stale:
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        return len(stale)

    def sampler(self, k: int):
        import optuna

        seed = int(np.random.SeedSequence([self.settings["seed"], k]).generate_state(1)[0])
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)

    def run_trial(self, base: dict, total: str) -> dict:
        """Propose, run and record one trial; its row for the summary."""
        import optuna

        k = len(self.finished())
        self.study.sampler = self.sampler(k)
        trial = self.study.ask()
        values = {d.key: d.suggest(trial) for d in self.dims}
        exp = f"search-{self.name}-t{trial.number:03d}"
        check_values(base, values, f"search {self.name}, trial {trial.number}")
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # this environment's dvc
        env = dict(os.environ, PATH=path, **{ENV: json.dumps({"storage": self.storage, "study": self.name,
                                                   "trial_id": trial._trial_id, "pruner": self.settings["pruner"]})})
        print(f"{exp} ({k}{total} trials finished so far): " + ", ".join(f"{key}={v:.4g}" if isinstance(v, float) else f"{key}={v}"
                                                            for key, v in values.items()), flush=True)
        start, baseline = time.monotonic(), git("rev-parse", "HEAD").strip()
        status, last = run_experiment(exp, values, env, self.folder / f"{exp}.log")
        seconds = round(time.monotonic() - start, 1)
        row = {"trial": trial.number, "experiment": exp, "params": values, "seconds": seconds}
        ref = experiment_ref(exp, baseline) if status == 0 else None
        if ref is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"  failed ({last}); its log: {self.folder / (exp + '.log')}", flush=True)
            return {**row, "state": "failed", "error": last}
        objective, value, pruned = objective_of(lambda path: read_at(ref, path),
                                                self.settings.get("objective", "lstm"), exp)
        reported = self.study.get_trials(deepcopy=False)[trial.number].intermediate_values
        if not reported and self.settings["pruner"]:  # restored by DVC's run cache: it never trained here
            for epoch, figure in val_series(ref):
                trial.report(figure, epoch)
        if pruned:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, value)
        state = "pruned" if pruned else "complete"
        print(f"  {objective} {value:.4f}{' (pruned)' if state == 'pruned' else ''}, {seconds:.0f}s", flush=True)
        return {**row, "state": state, "objective": objective, "value": value}


def validation_rows() -> int | None:
    """The row count of the workspace's validation split, if it is single-label (its objective an accuracy);
    None without one."""
    import pyarrow.parquet as pq

    from pipeline.prepared_task import prepared_task

    try:
        return pq.read_metadata(VAL_SPLIT).num_rows if prepared_task(VAL_SPLIT) == "single_label" else None
    except (OSError, ValueError):
        return None


def noise_note(s: dict) -> str | None:
    """How far apart two validation accuracies may be by chance: the standard error of the best trial's
    accuracy on a split of this size (binomial), against its lead over the workspace's run. None without
    the figures, or for a multi-label split (val_rows None: its micro-F1 is no binomial proportion)."""
    best, defaults, rows = s.get("best"), s.get("defaults"), s.get("val_rows")
    if not best or not rows:
        return None
    p = best["value"]
    error = math.sqrt(p * (1 - p) / rows)
    lead = f"; the best leads the workspace's run by {best['value'] - defaults['value']:+.4f}" if defaults else ""
    return (f"Validation holds {rows:,} texts: an accuracy near {p:.3f} has a standard error of {error:.4f}, so "
            f"trials less than about {2 * error:.4f} apart may differ by chance{lead}. Before taking the best, "
            f"check it with another seed: `dvc exp apply {best['experiment']}` then `dvc exp run -S train.seed=N` "
            "(N other than params.yaml's train.seed).")


def summary(search: Search, defaults: dict | None) -> dict:
    """The best trial, how to apply it, and what mattered (fANOVA importances over the complete trials)."""
    import optuna

    trials = search.study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            continue
        rows.append({"trial": t.number, "experiment": f"search-{search.name}-t{t.number:03d}",
                     "state": t.state.name.lower(), "value": t.value if t.value is not None else
                     (t.intermediate_values and max(t.intermediate_values.values())) or None, "params": t.params})
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    out = {"search": search.name, "seed": search.settings["seed"], "space": search.settings["space_file"],
           "objective": search.settings.get("objective", "lstm"), "val_rows": validation_rows(), "trials": rows,
           "defaults": defaults, "best": None, "importance": None}
    if complete:
        best = search.study.best_trial
        exp = f"search-{search.name}-t{best.number:03d}"
        out["best"] = {"trial": best.number, "experiment": exp, "value": best.value, "params": best.params,
                       "apply": f"dvc exp apply {exp}"}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=search.settings["seed"])
        out["importance"] = {k: round(v, 4) for k, v in
                             optuna.importance.get_param_importances(search.study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError) as err:  # fewer than two complete trials, or nothing varied
        out["importance_note"] = str(err).splitlines()[0][:200]
    return out


def summary_markdown(s: dict) -> str:
    lines = [f"# Search {s['search']}", "", f"Seed {s['seed']}, space {s['space']}, objective "
             f"{s.get('objective', 'lstm')}; {len(s['trials'])} trials "
             f"({sum(r['state'] == 'complete' for r in s['trials'])} complete, "
             f"{sum(r['state'] == 'pruned' for r in s['trials'])} pruned, "
             f"{sum(r['state'] == 'fail' for r in s['trials'])} failed).", ""]
    if s["defaults"]:
        lines += [f"The workspace's run (after `make repro` and a commit, the committed params): "
                  f"{s['defaults']['objective']} {s['defaults']['value']:.4f}.", ""]
    if s["best"]:
        b = s["best"]
        lines += [f"Best: **{b['experiment']}**, validation {b['value']:.4f}: "
                  + ", ".join(f"`{k}={v}`" for k, v in b["params"].items()), "", "```bash", b["apply"], "```", ""]
        if note := noise_note(s):
            lines += [note, ""]
    else:
        lines += ["No trial completed.", ""]
    if s["importance"]:
        complete = sum(r["state"] == "complete" for r in s["trials"])
        lines += [f"What mattered (fANOVA importance over the {complete} complete trials, summing to 1; "
                  "from few trials, a rough guide):", "",
                  "| param | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in s["importance"].items()] + [""]
    else:
        lines += [f"What mattered: not measurable yet ({s.get('importance_note', 'no trials')}).", ""]
    lines += ["| trial | experiment | state | validation | params |", "|---|---|---|---|---|"]
    for r in s["trials"]:
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        lines.append(f"| {r['trial']} | {r['experiment']} | {r['state']} | {value} | "
                     + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items()) + " |")
    return "\n".join(lines) + "\n"


def write_summary(search: Search, defaults: dict | None) -> dict:
    s = summary(search, defaults)
    write_json(search.folder / "summary.json", s)
    with atomic_path(search.folder / "summary.md") as tmp:
        tmp.write_text(summary_markdown(s), encoding="utf-8")
    return s
