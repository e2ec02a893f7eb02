"""The LSTM beside the tools a user would pick instead: flair and fastText, on the pipeline's own splits.

    make peers                                  # builds benchmarks/.peers-venv, then runs this
    python -m benchmarks.peers                  # the measured run (the project's .venv)
    python -m benchmarks.peers --quick          # a smoke test: tiny budgets, one seed, nothing written to results

Every tool reads the prepared splits of the last pipeline run (data/prepared/{train,val,test}.parquet:
the same rows, the same tokens) and the same vectors (what params.yaml `embeddings` names, read by the
pipeline's own reader: GloVe 6B 50d by default). One run, one job at a time, each job its own process,
so that its peak memory (the process's maximum resident set, from wait4) is its own:

- LSTM: the pipeline's trained LSTM (models/lstm.pt, train's; its accuracy from metrics/eval.json's lstm_test_*, its training
  time from metrics/train/metrics.json), and the same training retrained here with seeds 42, 43, 44
  (pipeline.stages.train and .evaluate, run in a scratch folder under benchmarks/.cache/peers that links
  data/prepared and data/vocab: the checkout's workspace, dvc.lock and models/ are not touched). Prediction
  through the CLI batch path (`textclf-predict --input --output`, a whole process: start-up, reading,
  tokenizing, writing) and through the ONNX export under onnxruntime (in process, tokenizing included);
- TF-IDF: pipeline.tfidf.fit_baseline with the committed baseline params (its C grid on validation);
- fastText (fasttext-wheel, supervised): the vectors as its input layer (pretrainedVectors, their dim), lr, epoch
  and wordNgrams chosen on validation accuracy from a small grid (seed 1), then trained with seeds 1-3;
- flair: TextClassifier over DocumentRNNEmbeddings (BiLSTM 128 over WordEmbeddings of the same vectors,
  a gensim KeyedVectors file), ModelTrainer. Its documented recipe (SGD, lr 0.1) and Adam (lr 1e-3), one
  seed each within the same epoch budget, with flair's AnnealOnPlateau and the best validation epoch
  kept; the recipe with the better validation accuracy is then trained with seeds 1-3. With
  embeddings_storage_mode="none": flair's default ("cpu") scores every epoch on the validation split's
  first-epoch document embeddings (see job_flair).

flair and fastText run in their own virtual environment (benchmarks/.peers-venv from
benchmarks/peers-requirements.txt); this file is run by both interpreters (`job` sub-command), so its
top level imports only the standard library. Writes benchmarks/results/peers.{json,md}, and the summary of
every corpus, peers-summary.md, with what the pipeline ships there beside them (its test accuracy over the
seeds of `make corpora`, benchmarks/results/corpora.json: the same splits).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The checkout whose pipeline run is measured (its prepared splits, vectors, params.yaml and model): this one,
# or, for another corpus, a clone where `dvc repro` ran with that corpus's params (--workdir); and the name
# its results go under (--corpus). Set in the environment so that every job process reads the same.


def configure(workdir: Path, corpus: str) -> None:
    global WORK, CORPUS, PREPARED, CACHE
    WORK, CORPUS = workdir.resolve(), corpus
    os.environ.update(PEERS_WORKDIR=str(WORK), PEERS_CORPUS=CORPUS)
    PREPARED = WORK / "data/prepared"
    CACHE = ROOT / "benchmarks/.cache/peers" / ("" if CORPUS == "builtin" else CORPUS)


configure(Path(os.environ.get("PEERS_WORKDIR", ROOT)), os.environ.get("PEERS_CORPUS", "builtin"))
RESULTS = ROOT / "benchmarks/results"
PEERS_PYTHON = ROOT / "benchmarks/.peers-venv/bin/python"
PROJECT_PYTHON = ROOT / ".venv/bin/python"
PREDICT_CLI = ROOT / ".venv/bin/textclf-predict"
EXPORT_CLI = ROOT / ".venv/bin/textclf-export"

LSTM_SEEDS = [42, 43, 44]        # the pipeline's seed (params.yaml) and the next two
PEER_SEEDS = [1, 2, 3]
PREDICT_REPEAT = 10              # prediction throughput: the test texts, repeated this many times,
PREDICT_TEXTS = 20_000           # or fewer times where that passes this many texts (at least once)
PREDICT_BATCH = 256              # the batch size of every batched predictor (params.yaml predict.batch_size)
THREADS = len(os.sched_getaffinity(0))  # every tool gets all the cores this process may use

FASTTEXT_GRID = {"lr": [0.1, 0.25, 0.5, 1.0], "epoch": [5, 10, 25], "wordNgrams": [1, 2]}
FLAIR_RECIPES = {"sgd": {"optimizer": "SGD", "learning_rate": 0.1},      # flair's documented RNN recipe
                 "adam": {"optimizer": "Adam", "learning_rate": 1e-3}}
CORPUS_NAMES = {"builtin": "Built-in corpus (Rotten Tomatoes snippets)", "pang_lee_long": "pang_lee_long (full movie reviews)",
                "reuters_r8": "Reuters R8 (newswire topics)", "newsgroups_20": "20 Newsgroups (newsgroup posts)"}
FLAIR_EPOCHS = 15                # the budget: the pipeline's own train.epochs
FLAIR_HIDDEN = 128               # the pipeline's train.hidden_size


# ---------------------------------------------------------------------------------------------- jobs
# Each runs in its own process (`python -m benchmarks.peers job NAME ARGS_JSON OUT_JSON`).

def _splits(columns=("tokens", "label")):
    import pandas as pd
    return {s: pd.read_parquet(PREPARED / f"{s}.parquet", columns=list(columns)) for s in ("train", "val", "test")}


def _scores(actual, predicted) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    return {"accuracy": float(accuracy_score(actual, predicted)),
            "macro_f1": float(f1_score(actual, predicted, average="macro"))}


def job_vectors(args: dict) -> dict:
    """The vectors the pipeline read (params.yaml `embeddings`: any format it reads, any dimension), for
    the words of the splits, written for the peers: a .vec text file (fastText's pretrainedVectors) and a
    gensim KeyedVectors file (flair's WordEmbeddings); and the splits in fastText's format. Not timed: the
    pipeline's own alignment (the vocab stage) is not in its training time either. Runs in the project's
    environment, through the pipeline's own reader, so each tool gets the same vectors for the same words
    (the lowercase fallback included, as `vocab.case_fallback` says)."""
    sys.path.insert(0, str(ROOT))
    from gensim.models import KeyedVectors
    from pipeline import params, vectors

    embeddings = params.load("embeddings", WORK / "params.yaml")
    source_path = Path(embeddings.source)
    source = vectors.detect(source_path if source_path.is_absolute() else WORK / source_path, embeddings.format)
    splits = _splits()
    # A word with whitespace in it could not be one word of a .vec line or of fastText's input.
    words = sorted({w for df in splits.values() for toks in df["tokens"] for w in toks if w and w.split() == [w]})
    alignment = vectors.align(source, words, params.load("vocab", WORK / "params.yaml").case_fallback,
                              embeddings.bad_lines)
    kept = [w for w, found in zip(words, alignment.found) if found]
    matrix = alignment.matrix[alignment.found]
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "vectors.vec", "w", encoding="utf-8") as f:
        f.write(f"{len(kept)} {alignment.dim}\n")
        for w, v in zip(kept, matrix):
            f.write(w + " " + " ".join(f"{x:.6f}" for x in v) + "\n")
    kv = KeyedVectors(vector_size=alignment.dim)
    kv.add_vectors(kept, matrix)
    kv.save(str(CACHE / "vectors.kv"))
    # fastText reads a label up to the next space: each is written as its index, and read back through
    # labels.json, so that any label ('sci fi', 'négatif') round-trips.
    labels = sorted({str(label) for label in splits["train"]["label"]})
    (CACHE / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    index = {label: i for i, label in enumerate(labels)}
    for name, df in splits.items():
        with open(CACHE / f"{name}.fasttext.txt", "w", encoding="utf-8") as f:
            for toks, label in zip(df["tokens"], df["label"]):
                words_of_text = " ".join(" ".join(t.split()) for t in toks)
                f.write(f"__label__{index.get(str(label), -1)} {words_of_text}\n")
    return {"words_in_splits": len(words), "with_vector": len(kept), "dim": alignment.dim,
            "vectors": f"{source.path.name} ({source.format})",
            "train_tokens": int(splits["train"]["tokens"].map(len).sum())}


def _label_names() -> list[str]:
    """The labels, by the index fastText's files carry for each (job_vectors)."""
    return json.loads((CACHE / "labels.json").read_text(encoding="utf-8"))


def _fasttext_lines(name: str) -> tuple[list[str], list[str]]:
    """A split's labels (the original strings) and texts, from its fastText file."""
    names = _label_names()
    labels, texts = [], []
    for line in (CACHE / f"{name}.fasttext.txt").read_text(encoding="utf-8").split("\n")[:-1]:
        label, _, text = line.partition(" ")
        index = int(label[len("__label__"):])
        labels.append(names[index] if index >= 0 else "(not a training label)")
        texts.append(text)
    return labels, texts


def _fasttext_predict(model, texts: list[str]) -> list[str]:
    # fasttext-wheel's predict() wraps its result in np.array(copy=False), which numpy 2 refuses: the
    # lower-level binding returns plain lists.
    names = _label_names()
    labels, _ = model.f.multilinePredict(texts, 1, 0.0, "strict")
    return [names[int(lab[0][len("__label__"):])] for lab in labels]


def _fasttext_train(lr: float, epoch: int, ngrams: int, seed: int, dim: int):
    import fasttext
    return fasttext.train_supervised(input=str(CACHE / "train.fasttext.txt"), lr=lr, epoch=epoch,
                                     wordNgrams=ngrams, dim=dim, pretrainedVectors=str(CACHE / "vectors.vec"),
                                     minCount=1, thread=THREADS, seed=seed, verbose=0)


def job_fasttext_grid(args: dict) -> dict:
    val_labels, val_texts = _fasttext_lines("val")
    grid = args["grid"]
    trials, start = [], time.perf_counter()
    for lr in grid["lr"]:
        for epoch in grid["epoch"]:
            for ngrams in grid["wordNgrams"]:
                model = _fasttext_train(lr, epoch, ngrams, args["seed"], args["dim"])
                acc = _scores(val_labels, _fasttext_predict(model, val_texts))["accuracy"]
                trials.append({"lr": lr, "epoch": epoch, "wordNgrams": ngrams, "val_accuracy": acc})
    best = max(trials, key=lambda t: t["val_accuracy"])  # first of the best, in grid order
    return {"trials": trials, "best": best, "grid_seconds": time.perf_counter() - start}


def job_fasttext(args: dict) -> dict:
    train_tokens = args["train_tokens"]
    start = time.perf_counter()
    model = _fasttext_train(args["lr"], args["epoch"], args["wordNgrams"], args["seed"], args["dim"])
    seconds = time.perf_counter() - start
    out = {"train_seconds": seconds, "epochs": args["epoch"],
           "train_tokens_per_second": train_tokens * args["epoch"] / seconds}
    for split in ("val", "test"):
        labels, texts = _fasttext_lines(split)
        out[split] = _scores(labels, _fasttext_predict(model, texts))
    _, texts = _fasttext_lines("test")
    big = texts * args["repeat"]
    start = time.perf_counter()
    _fasttext_predict(model, big)
    out["predict_texts_per_second"] = len(big) / (time.perf_counter() - start)
    return out


def job_flair(args: dict) -> dict:
    import flair
    import torch
    from flair.data import Corpus, Sentence
    from flair.datasets import SentenceDataset
    from flair.embeddings import DocumentRNNEmbeddings, WordEmbeddings
    from flair.models import TextClassifier
    from flair.trainers import ModelTrainer

    torch.set_num_threads(THREADS)
    flair.device = torch.device("cpu")
    flair.set_seed(args["seed"])
    splits = _splits()

    def sentences(df):
        out = []
        for toks, label in zip(df["tokens"], df["label"]):
            s = Sentence(list(toks))          # the pipeline's tokens, as they are
            s.add_label("class", label)
            out.append(s)
        return out

    corpus = Corpus(train=SentenceDataset(sentences(splits["train"])), dev=SentenceDataset(sentences(splits["val"])),
                    test=None, sample_missing_splits=False)
    label_dict = corpus.make_label_dictionary(label_type="class", add_unk=False)
    document = DocumentRNNEmbeddings([WordEmbeddings(str(CACHE / "vectors.kv"))], hidden_size=FLAIR_HIDDEN,
                                     rnn_type="LSTM", bidirectional=True)
    model = TextClassifier(document, label_type="class", label_dictionary=label_dict)
    trainer = ModelTrainer(model, corpus)
    base = Path(args["base_path"])
    shutil.rmtree(base, ignore_errors=True)
    recipe = FLAIR_RECIPES[args["recipe"]]
    start = time.perf_counter()
    trainer.train(base, learning_rate=recipe["learning_rate"], optimizer=getattr(torch.optim, recipe["optimizer"]),
                  mini_batch_size=32, max_epochs=args["max_epochs"], save_final_model=False,
                  create_file_logs=False,
                  # Not flair's default "cpu": that keeps each validation sentence's document embedding from
                  # the first evaluation (computed under no_grad, so flair takes it for static) and scores
                  # every later epoch's classifier on those stale BiLSTM outputs: a flat validation curve,
                  # which would steer the annealing and the best-epoch choice. "none" recomputes them.
                  embeddings_storage_mode="none")
    seconds = time.perf_counter() - start
    # flair's loss.tsv: one line per epoch after its header
    epochs = max(len((base / "loss.tsv").read_text().splitlines()) - 1, 1) if (base / "loss.tsv").exists() \
        else args["max_epochs"]
    train_tokens = int(splits["train"]["tokens"].map(len).sum())
    out = {"train_seconds": seconds, "epochs": epochs, "train_tokens_per_second": train_tokens * epochs / seconds,
           "recipe": args["recipe"], **recipe}
    model = trainer.model  # the best validation epoch's weights (train() loads best-model.pt)
    model.eval()
    for split in ("val", "test"):
        sents = [Sentence(list(t)) for t in splits[split]["tokens"]]
        model.predict(sents, mini_batch_size=PREDICT_BATCH, label_name="predicted")
        out[split] = _scores(splits[split]["label"].tolist(), [s.get_label("predicted").value for s in sents])
    big = [list(t) for t in splits["test"]["tokens"]] * args["repeat"]
    start = time.perf_counter()
    sents = [Sentence(t) for t in big]
    model.predict(sents, mini_batch_size=PREDICT_BATCH, label_name="predicted")
    out["predict_texts_per_second"] = len(big) / (time.perf_counter() - start)
    shutil.rmtree(base, ignore_errors=True)
    return out


def job_tfidf(args: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    from pipeline import params
    from pipeline.tfidf import fit_baseline

    # Read and checked as the pipeline reads them (DVC's YAML rules: `1e-3` is a number, not PyYAML's string).
    bp = params.load("baseline", WORK / "params.yaml")
    splits = _splits()
    start = time.perf_counter()
    vectorizer, clf, c, val_acc = fit_baseline(splits["train"], splits["val"], bp.ngram_max, list(bp.C),
                                               min_df=bp.min_df)
    seconds = time.perf_counter() - start
    test = splits["test"]
    out = {"train_seconds": seconds, "C": c, "val": {"accuracy": float(val_acc)}, "epochs": 1,
           "train_tokens_per_second": int(splits["train"]["tokens"].map(len).sum()) / seconds,
           "test": _scores(test["label"].tolist(), clf.predict(vectorizer.transform(test["tokens"].map(list))).tolist())}
    big = [list(t) for t in test["tokens"]] * args["repeat"]
    start = time.perf_counter()
    for i in range(0, len(big), PREDICT_BATCH):
        clf.predict(vectorizer.transform(big[i:i + PREDICT_BATCH]))
    out["predict_texts_per_second"] = len(big) / (time.perf_counter() - start)
    return out


def job_onnx(args: dict) -> dict:
    """The exported model under onnxruntime: texts in, tokenized and encoded from the sidecar alone."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import onnxruntime as ort
    import pandas as pd
    from pipeline.batching import encode, pad
    from pipeline.export import read_sidecar
    from pipeline.text import TextConfig, tokenize

    meta = read_sidecar(Path(args["onnx"] + ".json"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(args["onnx"], options, providers=["CPUExecutionProvider"])
    config = TextConfig(**meta["tokenizer"]["settings"])
    stoi = {w: i for i, w in enumerate(meta["itos"])}
    test = pd.read_parquet(PREPARED / "test.parquet", columns=["text", "label"])
    texts = test["text"].tolist() * args["repeat"]
    tokenize_seconds = 0.0
    predicted = []
    start = time.perf_counter()
    for i in range(0, len(texts), PREDICT_BATCH):
        t0 = time.perf_counter()
        tokens = [tokenize(t, config) for t in texts[i:i + PREDICT_BATCH]]
        tokenize_seconds += time.perf_counter() - t0
        ids, lengths = pad(encode(tokens, stoi, meta["unk_id"], meta["max_tokens"], meta["truncation"]), meta["pad_id"])
        probs = session.run(["probabilities"], {"ids": ids, "lengths": lengths})[0]
        predicted += probs.argmax(axis=1).tolist()
    seconds = time.perf_counter() - start
    labels = [meta["labels"][k] for k in predicted[:len(test)]]
    return {"predict_texts_per_second": len(texts) / seconds, "tokenize_share": tokenize_seconds / seconds,
            "test": _scores(test["label"].tolist(), labels)}


JOBS = {"vectors": job_vectors, "fasttext_grid": job_fasttext_grid, "fasttext": job_fasttext, "flair": job_flair,
        "tfidf": job_tfidf, "onnx": job_onnx}


# -------------------------------------------------------------------------------------- the runner

def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class OverBudget(Exception):
    """A job stopped at its time limit (`seconds`); `logfile` holds what it printed until then."""

    def __init__(self, seconds: float, logfile: Path):
        super().__init__(f"stopped after {seconds:.0f} s: over its budget; see {logfile}")
        self.seconds, self.logfile = seconds, logfile


def run_process(cmd: list[str], cwd: Path = ROOT, env: dict | None = None, logfile: Path | None = None,
                timeout: float | None = None) -> dict:
    """Run one process alone; its wall time, its own peak resident memory (wait4), the load before it.
    Past `timeout` seconds it is killed and OverBudget raised."""
    load = os.getloadavg()[0]
    logfile = logfile or CACHE / "logs" / "job.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env={**os.environ, **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT)
        while True:  # wait4 with WNOHANG: the child's own rusage, and a deadline
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if timeout else 0)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise OverBudget(time.perf_counter() - start, logfile)
            time.sleep(0.5)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}; see {logfile}")
    return {"wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024,
            "load_before": load}


def run_job(python: Path, name: str, args: dict, label: str, timeout: float | None = None) -> dict:
    result_file = CACHE / "logs" / f"{label}.json"
    result_file.unlink(missing_ok=True)
    log(f"{label} ...")
    proc = run_process([python, "-m", "benchmarks.peers", "job", name, json.dumps(args), result_file],
                       logfile=CACHE / "logs" / f"{label}.log", timeout=timeout)
    result = {**json.loads(result_file.read_text()), **proc}
    log(f"{label}: {_brief(result)}")
    return result


def _brief(r: dict) -> str:
    parts = [f"{k}={r[k]['accuracy']:.4f}" for k in ("val", "test") if isinstance(r.get(k), dict)]
    parts += [f"{k}={r[k]:.1f}" for k in ("train_seconds", "predict_texts_per_second", "peak_mb") if k in r]
    return " ".join(parts)


def wait_for_quiet(max_load: float, max_wait: float) -> list[float]:
    """Wait (up to max_wait seconds) until the 1-minute load is below max_load; the load seen last."""
    start = time.time()
    while True:
        load = list(os.getloadavg())
        if load[0] <= max_load or time.time() - start >= max_wait:
            if load[0] > max_load:
                log(f"load {load[0]:.2f} still above {max_load} after {max_wait:.0f}s: measuring anyway (recorded)")
            return load
        log(f"load {load[0]:.2f} > {max_load}: waiting")
        time.sleep(30)


def lstm_retrain(seed: int, quick: bool) -> dict:
    """pipeline.stages.train then .evaluate, in a scratch folder: params.yaml with this seed, the
    prepared splits and the vocabulary linked from the checkout."""
    import yaml
    from pipeline import params as pipeline_params

    work = CACHE / f"lstm-s{seed}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    for name in ("prepared", "vocab"):
        (work / "data" / name).symlink_to(WORK / "data" / name)
    params = pipeline_params.load_yaml(WORK / "params.yaml")  # DVC's YAML rules, as the stages read it back
    params["train"]["seed"] = seed
    if quick:
        params["train"].update(epochs=1, min_steps=0, freeze_epochs=0)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"PYTHONPATH": str(ROOT), "CI": "true"}  # CI=true: no progress bars in the log
    label = f"lstm-train-s{seed}"
    log(f"{label} ...")
    proc = run_process([PROJECT_PYTHON, "-m", "pipeline.stages.train"], cwd=work, env=env,
                       logfile=CACHE / "logs" / f"{label}.log")
    # The LSTM alone is what ships here (ship.model: lstm writes models/lstm.pt's bytes as models/model.pt).
    shutil.copyfile(work / "models/lstm.pt", work / "models/model.pt")
    run_process([PROJECT_PYTHON, "-m", "pipeline.stages.evaluate"], cwd=work, env=env,
                logfile=CACHE / "logs" / f"{label}.log")
    result = {**proc, **lstm_figures(work)}
    log(f"{label}: {_brief(result)}")
    return result


def lstm_figures(folder: Path) -> dict:
    """Accuracy, F1 and training figures of a pipeline run's outputs (metrics/*.json)."""
    train = json.loads((folder / "metrics/train/metrics.json").read_text())
    evaluation = json.loads((folder / "metrics/eval.json").read_text())
    best = json.loads((folder / "metrics/train/best.json").read_text())
    epochs = len((folder / "metrics/train/plots/metrics/val/accuracy.tsv").read_text().splitlines()) - 1
    return {"train_seconds": train["train_seconds"], "epochs": epochs, "threads": train.get("threads"),
            "best_epoch": best["lstm_best_epoch"],
            "pipeline_tokens_per_second_last_epoch": train["train_tokens_per_second"],
            "val": {"accuracy": best["lstm_val_acc"]},
            "test": {"accuracy": evaluation["lstm_test_acc"], "macro_f1": evaluation["lstm_test_f1"]}}


def lstm_cli_throughput(repeat: int, model: Path) -> dict:
    """textclf-predict --input --output on the test texts repeated: the whole command (start-up, model
    load, reading, tokenizing, writing), and one row alone for the start-up."""
    import pandas as pd

    test = pd.read_parquet(PREPARED / "test.parquet", columns=["text"])
    big, one = CACHE / "predict-input.parquet", CACHE / "predict-one.parquet"
    pd.concat([test] * repeat, ignore_index=True).to_parquet(big)
    test.head(1).to_parquet(one)
    out = CACHE / "predict-output.parquet"
    runs = {}
    for name, path in (("one", one), ("all", big)):
        out.unlink(missing_ok=True)
        runs[name] = run_process([PREDICT_CLI, "--model", model, "--input", path,
                                  "--output", out], logfile=CACHE / "logs" / "lstm-cli.log")
    rows = len(test) * repeat
    result = {"rows": rows, "wall_seconds": runs["all"]["wall_seconds"], "startup_seconds": runs["one"]["wall_seconds"],
              "peak_mb": runs["all"]["peak_mb"], "load_before": runs["all"]["load_before"],
              "predict_texts_per_second": rows / runs["all"]["wall_seconds"],
              "predict_texts_per_second_after_startup": rows / max(runs["all"]["wall_seconds"]
                                                                   - runs["one"]["wall_seconds"], 1e-9)}
    log(f"lstm-cli: {_brief(result)}")
    return result


def summarize(runs: list[dict], key: str) -> dict | None:
    values = [r[key] if key in r else r.get("test", {}).get(key) for r in runs]
    values = [v for v in values if v is not None]
    if not values:
        return None
    # Rounded past float noise, so that 0.8276, 0.8317, 0.8202 average to 0.8265 (0.827 shown), as in
    # benchmarks.reship's table, not 0.82649999... (0.826).
    return {"mean": round(statistics.fmean(values), 9), "median": statistics.median(values), "min": min(values),
            "max": max(values), "n": len(values)}


def flair_pace(logfile: Path) -> str:
    """The last progress line flair printed (epoch, batch, seconds, samples/sec), for a stopped run."""
    lines = [line for line in logfile.read_text(errors="replace").splitlines() if " - iter " in line]
    # "2026-12-01 15:13:30,626 epoch 1 - iter 9/37 - loss ... - samples/sec: 0.94 - ...": after the time stamp
    return lines[-1].split(" ", 2)[-1].replace("|", "/") if lines else "no batch finished"


def measure(quick: bool, max_load: float, max_wait: float, flair_seeds: int = len(PEER_SEEDS),
            flair_recipe: str = "auto", flair_budget: float | None = None) -> dict:
    if not PEERS_PYTHON.exists():
        raise SystemExit(f"{PEERS_PYTHON} is missing: `make peers` builds it from benchmarks/peers-requirements.txt")
    # Another corpus's checkout may stop before training (dvc repro vocab baseline): the retrained seed-42
    # model, the pipeline's own seed, then stands for its model in the prediction rows.
    has_model = (WORK / "models/lstm.pt").exists()
    needed = [PREPARED / "train.parquet", WORK / "data/vocab/vocab.json"]
    for path in needed + ([] if has_model or CORPUS != "builtin" else [WORK / "models/lstm.pt"]):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run the pipeline first (make repro, or dvc repro in {WORK})")
    shutil.rmtree(CACHE / "logs", ignore_errors=True)
    (CACHE / "logs").mkdir(parents=True)
    test_rows = len(_splits(("label",))["test"])
    repeat = 1 if quick else max(1, min(PREDICT_REPEAT, PREDICT_TEXTS // test_rows))
    load_start = wait_for_quiet(max_load, 0 if quick else max_wait)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    log(f"load {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    vectors = run_job(PROJECT_PYTHON, "vectors", {}, "vectors")
    tokens = vectors["train_tokens"]

    lstm = {"committed": {**lstm_figures(WORK), "seed": 42} if has_model else None}
    lstm["retrained"] = [{**lstm_retrain(s, quick), "seed": s} for s in (LSTM_SEEDS[:1] if quick else LSTM_SEEDS)]
    for r in lstm["retrained"]:
        r["train_tokens_per_second"] = tokens * r["epochs"] / r["train_seconds"]
    model = WORK / "models/lstm.pt" if has_model else CACHE / f"lstm-s{LSTM_SEEDS[0]}" / "models/lstm.pt"
    lstm["cli"] = lstm_cli_throughput(repeat, model)
    onnx = CACHE / "model.onnx"
    run_process([EXPORT_CLI, "--model", model, "--format", "onnx", "--output", onnx],
                logfile=CACHE / "logs" / "export.log")
    lstm["onnx"] = run_job(PROJECT_PYTHON, "onnx", {"onnx": str(onnx), "repeat": repeat}, "lstm-onnx")
    c = lstm["committed"]
    if c:
        c["train_tokens_per_second"] = tokens * c["epochs"] / c["train_seconds"]

    tfidf = run_job(PROJECT_PYTHON, "tfidf", {"repeat": repeat}, "tfidf")

    seeds = PEER_SEEDS[:1] if quick else PEER_SEEDS
    grid = {"lr": [0.5], "epoch": [2], "wordNgrams": [1, 2]} if quick else FASTTEXT_GRID
    ft_grid = run_job(PEERS_PYTHON, "fasttext_grid", {"grid": grid, "seed": seeds[0], "dim": vectors["dim"]}, "fasttext-grid")
    best = {k: ft_grid["best"][k] for k in ("lr", "epoch", "wordNgrams")}
    fasttext = [{**run_job(PEERS_PYTHON, "fasttext", {**best, "seed": s, "train_tokens": tokens, "repeat": repeat, "dim": vectors["dim"]},
                           f"fasttext-s{s}"), "seed": s} for s in seeds]

    max_epochs = 1 if quick else FLAIR_EPOCHS
    flair_args = {"max_epochs": max_epochs, "repeat": repeat, "base_path": str(CACHE / "flair-run")}
    # --flair-recipe adam|sgd skips the probe of the other one (on a large corpus, where the built-in
    # corpus's choice is taken over to fit the budget); --flair-seeds fewer than three, likewise.
    # --flair-seeds 0 leaves flair out (20 Newsgroups: 40 minutes and more a seed on two cores).
    # --flair-budget: a run past it is stopped and flair left out, its pace kept (long documents: hours).
    recipes = [] if flair_seeds == 0 else list(FLAIR_RECIPES) if flair_recipe == "auto" else [flair_recipe]
    probes, chosen, flair_runs, flair_stopped = {}, None, [], None
    try:
        for recipe in recipes:
            probes[recipe] = {**run_job(PEERS_PYTHON, "flair", {**flair_args, "recipe": recipe, "seed": seeds[0]},
                                        f"flair-{recipe}-s{seeds[0]}", flair_budget), "seed": seeds[0]}
        chosen = max(probes, key=lambda r: (probes[r]["val"]["accuracy"], r == "sgd"), default=None)
        flair_runs = [] if chosen is None else [probes[chosen]]
        for s in seeds[1:flair_seeds] if chosen else []:
            flair_runs.append({**run_job(PEERS_PYTHON, "flair", {**flair_args, "recipe": chosen, "seed": s},
                                         f"flair-{chosen}-s{s}", flair_budget), "seed": s})
    except OverBudget as stop:
        flair_stopped = {"seconds": stop.seconds, "budget": flair_budget, "pace": flair_pace(stop.logfile)}
        log(f"flair {stop} (last progress: {flair_stopped['pace']})")
        if chosen is None:  # stopped while probing: no fair choice of recipe, so no flair rows
            probes, flair_runs = {}, []  # (stopped at a later seed: the finished ones stay)
    load_end = list(os.getloadavg())
    return {
        "setup": {"corpus": CORPUS, "workdir": str(WORK), "flair_recipe_option": flair_recipe, "quick": quick, "started": started, "load_at_start": load_start, "load_at_end": load_end,
                  "cpu_count": os.cpu_count(), "threads": THREADS, "predict_repeat": repeat, "predict_batch": PREDICT_BATCH, "train_tokens": tokens,
                  "vectors": vectors, "fasttext_grid": grid, "flair_epochs": max_epochs,
                  "flair_hidden": FLAIR_HIDDEN, "lstm_seeds": LSTM_SEEDS, "peer_seeds": seeds,
                  "versions": versions(), "git": git_state()},
        "lstm": lstm, "tfidf": tfidf, "fasttext_grid": ft_grid, "fasttext": fasttext,
        "flair_probes": probes, "flair_recipe": chosen, "flair": flair_runs, "flair_stopped": flair_stopped,
    }


def corpus_checkout(corpus: str) -> Path:
    """A clone of this repository's HEAD with benchmarks/corpora/CORPUS.yaml applied to params.yaml and
    the pipeline run (`dvc repro`): the corpus's own prepared splits, vectors and model, as `make corpora`
    gets them, in benchmarks/.cache/peers/CORPUS/repo (made once; remove it to start over)."""
    from ruamel.yaml import YAML

    settings = ROOT / "benchmarks/corpora" / f"{corpus}.yaml"
    if not settings.exists():
        raise SystemExit(f"{settings} is missing: --corpus names one of benchmarks/corpora/*.yaml, or builtin; "
                         "for your own corpus, run the pipeline on it here and add --workdir .")
    repo = CACHE / "repo"
    if not (repo / "models/model.pt").exists():
        shutil.rmtree(repo, ignore_errors=True)
        repo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        yaml = YAML()
        params = yaml.load((repo / "params.yaml").read_text())
        for key, value in YAML(typ="safe").load(settings.read_text()).items():
            section, name = key.split(".")
            params[section][name] = value
        with open(repo / "params.yaml", "w", encoding="utf-8") as f:
            yaml.dump(params, f)
        log(f"{corpus}: dvc repro in {repo} (the pipeline on this corpus, with the committed defaults)")
        env = {"PATH": f"{PROJECT_PYTHON.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        run_process(["dvc", "repro"], cwd=repo, env=env, logfile=CACHE / f"repro-{corpus}.log")
    return repo


def git_state() -> dict:
    """The commit measured, and whether pipeline/ had uncommitted changes (the code the LSTM rows ran)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "pipeline_changes": git("status", "--porcelain", "pipeline").splitlines()}


def versions() -> dict:
    out = {}
    for python, packages in ((PROJECT_PYTHON, ["torch", "onnxruntime", "scikit-learn"]),
                             (PEERS_PYTHON, ["torch", "flair", "fasttext-wheel", "gensim", "numpy"])):
        code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in %r}))" % packages)
        got = json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)
        out.update({f"{k} ({'peers' if python == PEERS_PYTHON else 'project'})": v for k, v in got.items()})
    return out


# -------------------------------------------------------------------------------------- the table

def _fmt(s: dict | None, digits: int = 3, middle: str = "mean") -> str:
    """Accuracy: the mean over seeds (min-max); timings: the median (min-max), one disturbed run aside."""
    if s is None:
        return "-"
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{s[middle]:,.{digits}f}"
    return f"{s[middle]:,.{digits}f} ({s['min']:,.{digits}f}–{s['max']:,.{digits}f})"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _time(runs: list[dict], key: str, digits: int = 0) -> str:
    return _fmt(summarize(runs, key), digits, "median")


def render(result: dict) -> str:
    setup, lstm = result["setup"], result["lstm"]
    rows = []

    def row(name, runs, predict, peak=None, seeds=""):
        rows.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            name, seeds, _fmt(summarize(runs, "accuracy")), _fmt(summarize(runs, "macro_f1")),
            _time(runs, "train_seconds", 1), _time(runs, "train_tokens_per_second"),
            _num(peak if peak is not None else summarize(runs, "peak_mb")["max"]), predict))

    cli, onnx = lstm["cli"], lstm["onnx"]
    predict = (f"CLI {_num(cli['predict_texts_per_second'])} ({_num(cli['predict_texts_per_second_after_startup'])} "
               f"after start-up); ONNX {_num(onnx['predict_texts_per_second'])}")
    c = lstm["committed"]
    if c:
        rows.append("| LSTM, the committed model (models/lstm.pt) | 42 | {:.3f} | {:.3f} | {:.1f} | {} | - | {} |".format(
            c["test"]["accuracy"], c["test"]["macro_f1"], c["train_seconds"], _num(c["train_tokens_per_second"]), predict))
    retrained = lstm["retrained"]
    row("LSTM, retrained in this run (pipeline.stages.train)", retrained,
        "as above (same model code)" if c else predict + " (seed 42's model)",
        seeds=", ".join(str(r["seed"]) for r in retrained))
    t = result["tfidf"]
    row(f"TF-IDF + logistic regression (C={t['C']} on validation)", [t], _num(t["predict_texts_per_second"]), seeds="-")
    ft = result["fasttext"]
    b = result["fasttext_grid"]["best"]
    row(f"fastText (lr {b['lr']}, {b['epoch']} epochs, wordNgrams {b['wordNgrams']})", ft,
        _time(ft, "predict_texts_per_second"), seeds=", ".join(str(r["seed"]) for r in ft))
    fl = result["flair"]
    chosen = result["flair_recipe"]
    stopped = result.get("flair_stopped")
    if chosen is None and not stopped:
        rows.append("| flair | not run (--flair-seeds 0) | - | - | - | - | - | - |")
    elif chosen is not None:
        recipe = FLAIR_RECIPES[chosen]
        row(f"flair BiLSTM {setup['flair_hidden']} ({recipe['optimizer']} lr {recipe['learning_rate']:g}, chosen)", fl,
            _time(fl, "predict_texts_per_second"), seeds=", ".join(str(r["seed"]) for r in fl))
    if stopped:  # the run the budget stopped (a probe: no flair rows above; a later seed: the finished ones)
        rows.append(f"| flair, a run stopped after {stopped['seconds']:,.0f} s (--flair-budget {stopped['budget']:,.0f}) | "
                    f"last progress: {stopped['pace']} | - | - | - | - | - | - |")
    for name, probe in result["flair_probes"].items():
        if name != chosen:
            r = FLAIR_RECIPES[name]
            row(f"flair BiLSTM {setup['flair_hidden']} ({r['optimizer']} lr {r['learning_rate']:g}, not chosen: "
                f"val {probe['val']['accuracy']:.3f} vs {result['flair_probes'][chosen]['val']['accuracy']:.3f})",
                [probe], _num(probe["predict_texts_per_second"]), seeds=str(probe["seed"]))
    header = ("| model | seeds | test accuracy | test macro-F1 | train s | train tokens/s | peak MB | predict texts/s |\n"
              "|---|---|---:|---:|---:|---:|---:|---|")
    load = setup["load_at_start"]
    return "\n".join([
        f"{CORPUS_NAMES.get(setup.get('corpus', 'builtin'), setup.get('corpus'))}, {setup['started']}, {setup['cpu_count']} cores, "
        f"load at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min), at end "
        f"{setup['load_at_end'][0]:.2f}{' (QUICK: smoke-test budgets, not results)' if setup['quick'] else ''}.",
        "", header, *rows, ""])


def shipped_accuracy(corpus: str) -> dict | None:
    """What `dvc repro` ships on this corpus (ship.model: best), over the seeds of `make corpora`: the ship
    stage's present rule applied to those runs' models (benchmarks/results/reship.json, benchmarks.reship)
    where it has them, else what those runs shipped when they ran (benchmarks/results/corpora.json)."""
    reship, corpora = RESULTS / "reship.json", RESULTS / "corpora.json"
    rows = [{"accuracy": r["now_accuracy"]} for r in json.loads(reship.read_text())["rows"]
            if r["corpus"] == corpus] if reship.exists() else []
    if not rows and corpora.exists():
        rows = [{"accuracy": r["shipped_accuracy"]} for r in json.loads(corpora.read_text())["runs"]
                if r["corpus"] == corpus and "shipped_accuracy" in r]
    return summarize(rows, "accuracy")


def summary() -> str:
    """One row per corpus measured (benchmarks/results/peers*.json): each tool's mean test accuracy, what the
    pipeline ships (shipped_accuracy), and the LSTM's training speed against flair's."""
    lines = ["| corpus | shipped (seeds) | LSTM | TF-IDF | fastText | flair | LSTM train s | flair train s | "
             "LSTM / flair tokens/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    files = sorted(RESULTS.glob("peers*.json"), key=lambda f: list(CORPUS_NAMES).index(_corpus_of(f))
                   if _corpus_of(f) in CORPUS_NAMES else 99)
    for path in files:
        result = json.loads(path.read_text())
        accuracy = {name: summarize(runs, "accuracy") for name, runs in (
            ("lstm", result["lstm"]["retrained"]), ("tfidf", [result["tfidf"]]), ("fasttext", result["fasttext"]),
            ("flair", result["flair"]))}
        accuracy["shipped"] = shipped_accuracy(_corpus_of(path))
        # Best at the precision shown, so a tie is bold twice: the pipeline's figures are rounded to 4
        # digits in its metrics files, the peers' are not (146/170 is 0.8588 against 0.858823...).
        best = max(round(a["mean"], 3) for a in accuracy.values() if a)
        cell = {k: "-" if a is None else (f"**{a['mean']:.3f}**" if round(a["mean"], 3) == best else f"{a['mean']:.3f}")
                for k, a in accuracy.items()}
        if accuracy["shipped"]:
            cell["shipped"] += f" ({accuracy['shipped']['n']})"
        lstm_s = summarize(result["lstm"]["retrained"], "train_seconds")
        flair_s = summarize(result["flair"], "train_seconds")
        ratio = "-"
        if result["flair"]:
            speed = (summarize(result["lstm"]["retrained"], "train_tokens_per_second")["median"]
                     / summarize(result["flair"], "train_tokens_per_second")["median"])
            ratio = f"{speed:.1f}x"
        lines.append(f"| {CORPUS_NAMES.get(_corpus_of(path), _corpus_of(path))} | {cell['shipped']} | {cell['lstm']} | "
                     f"{cell['tfidf']} | {cell['fasttext']} | {cell['flair']} | {lstm_s['median']:,.0f} | "
                     f"{'-' if flair_s is None else format(flair_s['median'], ',.0f')} | {ratio} |")
    return "\n".join(lines) + "\n"


def _corpus_of(path: Path) -> str:
    return "builtin" if path.stem == "peers" else path.stem.removeprefix("peers-")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "job":
        name, args, out = argv[1], json.loads(argv[2]), Path(argv[3])
        out.write_text(json.dumps(JOBS[name](args)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny budgets, one seed; writes "
                        "benchmarks/.cache/peers/quick.{json,md} instead of the results")
    parser.add_argument("--max-load", type=float, default=0.7, help="wait for the 1-minute load to fall below this")
    parser.add_argument("--max-wait", type=float, default=900, help="seconds to wait for it, at most")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    parser.add_argument("--corpus", default="builtin", help="builtin (this checkout's pipeline run) or one of "
                        "benchmarks/corpora/*.yaml (a clone with its params, dvc repro run there once); results go "
                        "to benchmarks/results/peers-NAME.{json,md} (builtin: peers.{json,md})")
    parser.add_argument("--workdir", type=Path, default=None, help="measure this checkout's pipeline run instead "
                        "(one where dvc repro ran with the corpus's params; `--workdir . --corpus NAME`: this checkout, "
                        "run on your own corpus)")
    parser.add_argument("--flair-seeds", type=int, default=len(PEER_SEEDS), choices=range(0, len(PEER_SEEDS) + 1),
                        help="flair's seeds (its runs are the longest by far; 0: leave flair out)")
    parser.add_argument("--flair-recipe", default="auto", choices=["auto", *FLAIR_RECIPES],
                        help="auto: probe both recipes and keep the better on validation")
    parser.add_argument("--flair-budget", type=float, default=3600, help="seconds one flair run may take; past "
                        "it flair is stopped and left out of the table, its pace recorded (0: no limit)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", args.corpus):
        parser.error(f"--corpus {args.corpus!r}: not a name (letters, digits, '_', '.', '-'; no '/'): it names "
                     "folders under benchmarks/.cache/peers/ that are deleted and rewritten")
    if args.flair_budget < 0:
        parser.error(f"--flair-budget must be 0 (no limit) or more seconds, got {args.flair_budget:g}")
    if args.workdir is not None and args.workdir.resolve() != ROOT and args.corpus == "builtin":
        parser.error("--workdir measures another corpus's checkout: name it with --corpus (or the built-in "
                     "corpus's results would be overwritten)")
    configure(args.workdir or ROOT, args.corpus)
    if args.corpus != "builtin" and args.workdir is None and not args.render:
        configure(corpus_checkout(args.corpus), args.corpus)
    stem = CACHE / "quick" if args.quick else RESULTS / ("peers" if CORPUS == "builtin" else f"peers-{CORPUS}")
    if args.render:
        result = json.loads(stem.with_suffix(".json").read_text())
    else:
        result = measure(args.quick, args.max_load, args.max_wait, args.flair_seeds, args.flair_recipe,
                         args.flair_budget or None)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render(result))
    print(render(result))
    if not args.quick:
        (RESULTS / "peers-summary.md").write_text(summary())


if __name__ == "__main__":
    main()
