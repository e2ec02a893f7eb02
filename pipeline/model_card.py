"""A model card: what the trained model is, what it was trained on, how well it does, and its limits.

    python -m pipeline.stages.card                  # the DVC stage: writes models/MODEL_CARD.md
    textclf-card --model other/model.pt --output other/MODEL_CARD.md
    textclf-card --model /path/to/checkout/models/model.pt     # from anywhere: reads that checkout's files

Built from the checkpoint (labels, vocabulary, model config, input length, tokenizer, training params),
params.yaml's `corpus` and `embeddings` sections (where the data came from), and whichever metrics files
exist (METRICS_FILES: eval, baseline, their reports, train/best, vocab, prepare). Metrics are shown
generically: every scalar value of each file, nested keys joined with dots, so renamed or added keys need
no change here; the results table looks for accuracy and macro-F1 under the usual names (accuracy,
test_accuracy, lstm_test_acc, macro_f1, baseline_test_f1, ...). A missing file or section is said to be
missing, not an error; a file that exists but cannot be read (a folder, no permission, not UTF-8, not
JSON) is an error naming it. No timestamps, so the same inputs give the same card, byte for byte.

A multi-label model (the checkpoint's task multi_label: several labels per text) is described as such: how
it decides (a label is given when its own sigmoid probability reaches that label's threshold, chosen on the
validation split; a text may get none), its thresholds, and, from metrics/eval/report.json (the evaluate
stage's multi-label figures), subset accuracy, Hamming loss, micro-, macro- and samples-F1 and each label's
precision, recall, F1, support and threshold.

Where params.yaml and metrics/ are looked for, unless --params and --metrics say: in the model's
checkout, the folder above `models/` when the model is at <checkout>/models/<file> (so the card of
/abs/checkout/models/model.pt is the same from any directory); otherwise in the current directory. When
neither params.yaml nor any metrics file is found there, a warning on stderr says where it looked.
The card names the metrics files by these relative paths, wherever they were read.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from pipeline.checkpoint import Checkpoint, load_checkpoint, require_model_file
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, check_output_file
from pipeline.model import ENCODERS, RecurrentEncoder

CARD_NAME = "MODEL_CARD.md"
# The metrics `dvc exp show` compares, then the reports beside them; a missing one is said to be missing.
METRICS_FILES = ("metrics/eval.json", "metrics/eval/report.json", "metrics/ship.json", "metrics/baseline.json",
                 "metrics/baseline/report.json", "metrics/train/best.json", "metrics/vocab.json",
                 "metrics/prepare.json")
PARAMS_FILE = "params.yaml"
# The results table: for each model, the first of its files (by path ending) that has the figure, and the
# prefix its keys carry there (None: any); the shipped model's rows when it is not the LSTM alone first.
HEADLINE_FILES = {"LSTM (this model)": (("eval.json", "eval/report.json"), None),
                  "baseline": (("baseline.json", "baseline/report.json"), None)}
SHIPPED_HEADLINE_FILES = {"{shipped} (this model)": (("eval.json",), "shipped"),
                          "LSTM part alone": (("eval.json",), "lstm"),
                          "fusion (LSTM + TF-IDF)": (("ship.json",), "fusion"),
                          "baseline": HEADLINE_FILES["baseline"]}
SHIPPED_NAMES = {"fusion": "the LSTM fused with the TF-IDF model", "tfidf": "the TF-IDF model"}
ACCURACY_NAMES = ("accuracy", "acc")
MACRO_F1_NAMES = ("macro_f1", "f1_macro", "f1")
TRAIN_ROWS_KEYS = ("train_rows", "rows.train", "train.rows", "splits.train.rows", "rows_train")


def checkpoint_facts(ckpt: Checkpoint) -> dict:
    """What the card says about the model itself, as plain data."""
    return {
        "labels": list(ckpt.labels),
        "vocab_size": len(ckpt.itos),
        "unk_id": ckpt.unk_id,
        "max_tokens": ckpt.max_tokens,
        "truncation": ckpt.truncation,
        "text_config": asdict(ckpt.text_config),
        "model_config": ckpt.model.cfg.to_dict(),
        "parameters": sum(p.numel() for p in ckpt.model.parameters()),
        "info": ckpt.info,
        "temperature": ckpt.temperature,
        "task": ckpt.task.name,
        "thresholds": ckpt.thresholds,
        "shipped": ckpt.shipped,
        "fusion_weight": ckpt.fusion_weight,
        "fusion_temperature": ckpt.fusion_temperature,
        "shipped_thresholds": ckpt.shipped_thresholds,
    }


def flatten_scalars(data, prefix: str = "") -> dict:
    """{'a': {'b': 1}, 'c': [..]} -> {'a.b': 1}: every number, string and boolean, keyed by its path."""
    out = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_scalars(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    elif isinstance(data, (int, float, str, bool)) or data is None:
        out[prefix.rstrip(".")] = data
    return out


def first_value(flat: dict, keys: tuple[str, ...]):
    return next((flat[k] for k in keys if k in flat), None)


def headline_figure(flat: dict, names: tuple[str, ...], prefix: str | None = None):
    """A top-level (or `test.`) number named `name`, `test_name` or `<model>_test_name` (lstm_test_acc;
    only `<prefix>_test_name` with a prefix), for the first of `names` that has one; None if none has.
    Per-class and validation figures never match."""
    for name in names:
        for key, value in flat.items():
            leaf = key.removeprefix("test.")
            if "." in leaf or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if leaf == f"{prefix}_test_{name}" if prefix else \
                    leaf in (name, f"test_{name}") or leaf.endswith(f"_test_{name}"):
                return value
    return None


def _file_ending(flat_by_file: dict, endings: tuple[str, ...], names: tuple[str, ...], prefix: str | None = None):
    for ending in endings:
        for path, flat in flat_by_file.items():
            if Path(path).as_posix().endswith(ending) and (value := headline_figure(flat, names, prefix)) is not None:
                return value
    return None


def _cell(value) -> str:
    if isinstance(value, float):
        value = f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) >= 1e-4 or value == 0 else f"{value:.3g}"
    elif isinstance(value, bool) or value is None:
        value = json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple], header: tuple[str, str] = ("key", "value")) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    return lines


def _source(section: dict | None) -> str:
    if not section:
        return "unknown (no such section in params.yaml)"
    fetched = section.get("download")
    where = f"`{section.get('source')}`"
    return f"{where}, fetched from `{fetched}`" if fetched else f"{where} (a local file or folder)"


def _architecture(cfg: dict, facts: dict) -> str:
    encoder = cfg.get("encoder", "lstm")
    recurrent = issubclass(ENCODERS.get(encoder, RecurrentEncoder), RecurrentEncoder)  # only those have directions
    directions = "bidirectional " if cfg.get("bidirectional") and recurrent else ""
    layers = cfg.get("num_layers", 1)
    channels = " (two channels: tuned and frozen)" if cfg.get("embedding_channels", 1) == 2 else ""
    return (f"{directions}{encoder.upper()}, {layers} layer{'s' if layers != 1 else ''} of "
            f"{cfg.get('hidden_size')} units, {cfg.get('pooling')} pooling, over "
            f"{cfg.get('embedding_dim')}-dimensional word embeddings"
            f"{channels}; {facts['parameters']:,} parameters")


def build_card(facts: dict, params: dict, metrics: dict[str, dict | None], model_name: str = "models/model.pt") -> str:
    """The Markdown card. `params`: the raw sections of params.yaml (corpus, embeddings; missing ones
    are reported as unknown); `metrics`: file name -> parsed JSON, or None for a file that does not exist."""
    cfg, info = facts["model_config"], facts.get("info") or {}
    corpus, embeddings = params.get("corpus"), params.get("embeddings")
    labels = facts["labels"]
    flat = {name: flatten_scalars(data) for name, data in metrics.items() if data is not None}
    prep_flat = next((v for k, v in flat.items() if Path(k).name == "prepare.json"), {})
    cut = (f"at most {facts['max_tokens']} tokens ({facts['truncation']})" if facts["max_tokens"]
           else "every token (no limit)")

    multi_label, shipped = facts.get("task") == "multi_label", facts.get("shipped", "lstm")
    lines = [f"# Model card: `{model_name}`", ""]
    if multi_label:
        lines += _decisions(facts)
    else:
        lines += [f"A text classifier over {len(labels)} classes: {', '.join(f'`{lab}`' for lab in labels)}. "
                  "It returns one probability per class (softmax); the prediction is the most probable class.",
                  f"The {'LSTM part' + chr(39) + 's ' if shipped != 'lstm' else ''}probabilities are temperature-scaled "
                  f"(softmax of logits / {_cell(facts.get('temperature', 1.0))}, the temperature fitted on the "
                  "validation split), which never changes the prediction"
                  + ("; what ships combines them with the TF-IDF model's (What ships, below)." if shipped != "lstm"
                     else ".")]
    lines += ["", "## Model", "",
             f"- Architecture: {_architecture(cfg, facts)}.",
             f"- Vocabulary: {facts['vocab_size']:,} tokens from the training split (id {cfg.get('pad_id')} is "
             f"padding, id {facts['unk_id']} stands for every unknown word).",
             f"- Input: the tokens of a text, {cut}.",
             "- Tokenizer: `pipeline.text.tokenize` (Unicode NFKC, typographic quotes and dashes to ASCII, "
             "Penn Treebank-style English clitics, combining marks inside their words; docs/text.md), with " +
             ", ".join(f"{k}={json.dumps(v)}" for k, v in facts["text_config"].items()) + "."]
    if "best_epoch" in info:
        best_val = info.get("best_val_accuracy")
        lines.append(f"- Training: the weights of epoch {info['best_epoch']}, the best on validation"
                     + (f" ({'samples-F1 at 0.5: ' if multi_label else 'accuracy '}{_cell(best_val)})."
                        if best_val is not None else "."))
    if info.get("params"):
        lines += ["", "<details><summary>Training parameters (params.yaml <code>train</code>)</summary>", "",
                  *_table(sorted(info["params"].items())), "", "</details>"]

    lines += ["", "## Data", "",
              f"- Corpus: {_source(corpus)}" + (f"; text column `{corpus.get('text_column')}`, label column "
                                                 f"`{corpus.get('label_column')}`" if corpus else "") + ".",
              f"- Word vectors: {_source(embeddings)}" + (f"; format `{embeddings.get('format')}`"
                                                         if embeddings else "") + "."]
    vocab_report = next((data for name, data in metrics.items() if Path(name).name == "vocab.json" and data), {})
    if vocab_report.get("domain_dim"):
        lines.append(f"- Stacked beside them: {vocab_report['domain_dim']}-dimensional vectors trained on the training "
                     f"split itself (the domain_vectors stage), {vocab_report.get('domain_rows', 0):,} words.")
    if corpus and corpus.get("drop_labels"):
        lines.append(f"- Rows labelled {', '.join(f'`{x}`' for x in corpus['drop_labels'])} were left out.")

    if shipped != "lstm":
        lines += _shipped(facts, metrics)
    lines += ["", "## Results", ""]
    rows = HEADLINE_FILES if shipped == "lstm" else SHIPPED_HEADLINE_FILES
    headline = [(model.format(shipped=SHIPPED_NAMES.get(shipped, "")), _file_ending(flat, ends, ACCURACY_NAMES, prefix),
                 _file_ending(flat, ends, MACRO_F1_NAMES, prefix)) for model, (ends, prefix) in rows.items()]
    headline = [row for row in headline if row[1] is not None or row[2] is not None]
    if headline:
        lines += [f"| model | {'subset accuracy' if multi_label else 'test accuracy'} | macro-F1 |", "|---|---:|---:|"]
        lines += [f"| {name} | {_cell(acc) if acc is not None else '–'} | {_cell(f1) if f1 is not None else '–'} |"
                  for name, acc, f1 in headline]
    elif not multi_label:
        lines.append("No evaluation metrics were found (run the evaluate stage).")
    if multi_label:
        lines += ([""] if headline else []) + _multilabel_results(metrics, facts)
    lines += _calibration(metrics)
    for name, data in metrics.items():
        lines += ["", f"### `{name}`", ""]
        if data is None:
            lines.append("Not found.")
        elif not flat[name]:
            lines.append("No scalar values.")
        else:
            lines += _table(list(flat[name].items()))

    train_rows = first_value(prep_flat, TRAIN_ROWS_KEYS)
    trained_on = f"{train_rows:,} training rows of " if isinstance(train_rows, int) else ""
    lines += ["", "## Limits", "",
              f"- It was trained on {trained_on}one corpus ({_source(corpus)}) and knows only its "
              f"{len(labels)} labels: every text gets "
              f"{'a set of them (maybe none)' if multi_label else 'one of them'}, however unlike the training "
              "texts it is. "
              "Texts of another domain, register or length get probabilities that look as confident and "
              "mean less: the temperature was fitted on validation texts like the training ones.",
              "- The tokenizer splits English clitics the Penn Treebank way and keeps the words of other "
              "scripts whole (Chinese, Japanese, Thai, Lao, Khmer and Myanmar cut by ICU under tokenizer "
              "icu); the vocabulary holds the training split's words, so a text in another language than "
              "the training text's is mostly unknown words (read as one unknown-word id).",
              f"- It reads {cut}; the rest of a longer text has no effect on its prediction.",
              "- Reproducibility: the same data, params and seed give the same weights and the same model "
              "file on the same machine. Across machines, floating-point results differ (around the 8th "
              "significant digit on another CPU), so bytes are not promised to match there, and a "
              "prediction that is close to a tie can change.",
              "", "## Use", "",
              "```bash",
              f"textclf-predict --model {model_name} \"a gripping, beautifully acted film\"",
              f"textclf-predict --model {model_name} --input reviews.csv --text-column text "
              "--output predictions.parquet",
              (f"textclf-export --model {model_name} --format onnx --output model.onnx   # + model.onnx.json"
               if shipped == "lstm" else "textclf-export --model models/lstm.pt --format onnx --output model.onnx"
               "   # the LSTM part: a fused model does not export"),
              "```", ""]
    return "\n".join(lines)


def _shipped(facts: dict, metrics: dict[str, dict | None]) -> list[str]:
    """What ships when it is not the LSTM alone (pipeline.shipped): the model, the weight, the validation figures."""
    ship = next((data for name, data in metrics.items() if name.endswith("ship.json") and data), {})
    shipped, w, t = facts["shipped"], facts.get("fusion_weight", 1.0), facts.get("fusion_temperature", 1.0)
    how = (f"softmax((w log p_LSTM + (1 - w) log p_TF-IDF) / T) with w = {_cell(w)} and T = {_cell(t)}, both "
           "chosen on the validation split (the lowest NLL)" if shipped == "fusion" else
           f"its probabilities alone, temperature-scaled (T = {_cell(t)}, fitted on validation); the LSTM is not "
           "used to decide")
    if facts.get("task") == "multi_label" and shipped == "fusion":
        how = f"sigmoid(w logit p_LSTM + (1 - w) logit p_TF-IDF) per label with w = {_cell(w)}, chosen on validation"
    lines = ["", "## What ships", "", f"This checkpoint ships {SHIPPED_NAMES[shipped]} (params `ship.model`): {how}. "
             "The TF-IDF part is stored as plain arrays and a vocabulary in the checkpoint, never a pickle. "
             "Explanations (--explain, the server, the misclassified page) are of the LSTM part."]
    val = [(k.removeprefix("ship_val_"), v) for k, v in ship.items() if k.startswith("ship_val_")]
    if val:
        lines += ["", "Validation figures that chose it:", "", *_table(val, ("figure", "value"))]
    thresholds = facts.get("shipped_thresholds")
    if thresholds:
        lines += ["", "The shipped model's thresholds: " + ", ".join(
            f"`{lab}` {_cell(t)}" for lab, t in zip(facts["labels"], thresholds)) + "."]
    return lines


def _decisions(facts: dict) -> list[str]:
    """A multi-label model's opening: what it returns and how it decides."""
    labels, thresholds = facts["labels"], facts.get("thresholds")
    chosen = ("chosen on the validation split to give each label its best F1" if thresholds is not None
              else "0.5 each: none were chosen for this checkpoint")
    listed = ", ".join(f"`{lab}` {_cell(t)}" for lab, t in zip(labels, thresholds or [0.5] * len(labels)))
    return [f"A multi-label text classifier over {len(labels)} labels: {', '.join(f'`{lab}`' for lab in labels)}. "
            "A text may have several of them, or none. The model returns one probability per label, each its own "
            f"(a sigmoid of logits / {_cell(facts.get('temperature', 1.0))}; they do not sum to 1).",
            "", "How it decides: a text is given every label whose probability reaches (is at or above) that label's "
            f"threshold, {chosen}: {listed}. A text whose probabilities are all below their thresholds gets no "
            "label (an empty set, not an error)."]


def _multilabel_results(metrics: dict[str, dict | None], facts: dict) -> list[str]:
    """A multi-label model's test figures, from the evaluate stage's report (module doc)."""
    report = next((data for name, data in metrics.items() if name.endswith("eval/report.json") and data), None)
    if not isinstance(report, dict) or "micro_f1" not in report:
        return ["No multi-label evaluation report was found (metrics/eval/report.json: run the evaluate stage)."]
    rows = [("subset accuracy (the whole label set right)", report.get("accuracy")),
            ("Hamming loss (share of (text, label) decisions wrong)", report.get("hamming_loss")),
            ("micro-F1 (over every (text, label) decision)", report.get("micro_f1")),
            ("macro-F1 (mean of the labels' F1)", report.get("macro_f1")),
            ("samples-F1 (mean of each text's F1)", report.get("samples_f1"))]
    cardinality = report.get("label_cardinality")
    if isinstance(cardinality, dict):
        rows.append(("labels per text, actual / predicted",
                     f"{_cell(cardinality.get('actual'))} / {_cell(cardinality.get('predicted'))}"))
    if report.get("test_rows") is not None:
        rows.append(("test texts", report["test_rows"]))
    lines = ["On the test split, at the thresholds above:", "", *_table(rows, ("figure", "value"))]
    per_class = report.get("per_class") if isinstance(report.get("per_class"), dict) else {}
    thresholds = report.get("thresholds") if isinstance(report.get("thresholds"), dict) else \
        dict(zip(facts["labels"], facts.get("thresholds") or []))
    if per_class:
        lines += ["", "| label | threshold | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|---:|"]
        for label, figures in per_class.items():
            figures = figures if isinstance(figures, dict) else {}
            lines.append(f"| {_cell(label)} | {_cell(thresholds.get(label, '–'))} | "
                         + " | ".join(_cell(figures.get(k, "–")) for k in ("precision", "recall", "f1", "support"))
                         + " |")
    return lines


def _calibration(metrics: dict[str, dict | None]) -> list[str]:
    """The calibration section, from the evaluate stage's report (pipeline.calibration); none without it."""
    report = next((data for name, data in metrics.items() if name.endswith("eval/report.json") and data), {})
    cal = report.get("calibration") if isinstance(report, dict) else None
    if not isinstance(cal, dict):
        return []
    if cal.get("per") == "text and label":  # a multi-label model's (the evaluate stage's multi-label figures)
        return _multilabel_calibration(cal)
    lines = ["", "### Calibration and abstaining (test split)", "",
             ("The LSTM part's (its probabilities before they are fused): expected" if cal.get("of") == "the LSTM part"
              else "Expected") + f" calibration error ({cal.get('bins', 15)} equal-width bins; 0 is perfect) "
             f"{_cell(cal.get('ece_raw'))} before temperature scaling, {_cell(cal.get('ece'))} after "
             f"(temperature {_cell(cal.get('temperature'))}); Brier score {_cell(cal.get('brier_raw'))} before, "
             f"{_cell(cal.get('brier'))} after.", ""]
    rows = [row for row in cal.get("min_confidence") or [] if isinstance(row, dict)]
    if rows:
        lines += ["With `--min-confidence P` (textclf-predict, `predict.min_confidence`, textclf-serve), a text "
                  "whose top probability is below P gets no label (\"uncertain\"). On the test split:", "",
                  "| min confidence | texts labelled (coverage) | accuracy on them |", "|---:|---:|---:|"]
        lines += [f"| {_cell(r.get('min_confidence'))} | {_cell(r.get('coverage'))} | "
                  f"{_cell(r.get('accuracy')) if r.get('accuracy') is not None else '–'} |" for r in rows]
    return lines


def _multilabel_calibration(cal: dict) -> list[str]:
    lines = ["", "### Calibration and abstaining (test split)", "",
             f"Over every (text, label) probability: expected calibration error ({cal.get('bins', 15)} equal-width "
             f"bins; 0 is perfect) {_cell(cal.get('ece'))}, Brier score {_cell(cal.get('brier'))}.", ""]
    rows = [row for row in cal.get("min_confidence") or [] if isinstance(row, dict)]
    if rows:
        lines += ["With `--min-confidence P` (textclf-predict, `predict.min_confidence`, textclf-serve), a text gets no "
                  "labels (\"uncertain\") when any one of its label decisions is less sure than P (p for a label given, "
                  "1 - p for one left out). On the test split, with the share of labelled texts whose whole set is "
                  "right:", "",
                  "| min confidence | texts labelled (coverage) | whole set right |", "|---:|---:|---:|"]
        lines += [f"| {_cell(r.get('min_confidence'))} | {_cell(r.get('coverage'))} | "
                  f"{_cell(r.get('accuracy')) if r.get('accuracy') is not None else '–'} |" for r in rows]
    return lines


def read_metrics(paths, root: Path | None = None) -> dict[str, dict | None]:
    """File name (as given) -> its JSON, or None where the file does not exist. Relative names are read
    under `root` when given. A file that exists but cannot be read or parsed is an error naming it."""
    out = {}
    for name in map(str, paths):
        path = Path(root, name) if root is not None else Path(name)
        try:
            out[name] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            out[name] = None
        except json.JSONDecodeError as err:
            raise PipelineError(f"{path}: line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}") from None
        except UnicodeDecodeError as err:
            raise PipelineError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}): not a metrics "
                                "JSON file") from None
        except OSError as err:  # a folder, no permission
            raise PipelineError(f"{path}: cannot read: {err.strerror or err}") from None
    return out


def read_params_sections(path: Path, names=("corpus", "embeddings")) -> dict:
    """The named raw sections of params.yaml; none when the file is missing (a model used elsewhere)."""
    from pipeline.params import load_yaml

    if not Path(path).exists():
        return {}
    try:
        data = load_yaml(path, strict=False)  # a file that is not UTF-8: an error naming it, from load_yaml
    except OSError as err:  # a folder, no permission
        raise PipelineError(f"{path}: cannot read: {err.strerror or err}") from None
    return {name: data[name] for name in names if isinstance(data.get(name), dict)}


def checkout_root(model: Path) -> Path | None:
    """The checkout a model at <checkout>/models/<file> belongs to; None for a model anywhere else.
    Links are not followed: DVC may link models/model.pt into its cache."""
    folder = Path(os.path.abspath(model)).parent
    return folder.parent if folder.name == "models" else None


def write_card(model: Path, output: Path | None = None, params_path: Path | None = None,
               metrics_names: list[str] | None = None, model_name: str | None = None) -> Path:
    """Write the card of the checkpoint at `model` (default output: MODEL_CARD.md beside it). params.yaml
    and the metrics files are looked for in the model's checkout, else in the current directory, unless
    given; metrics_names are relative to that folder when not given, else as given."""
    model = require_model_file(Path(model))
    output = Path(output) if output else model.with_name(CARD_NAME)
    root = checkout_root(model) or Path(".")
    params_path = Path(params_path) if params_path is not None else root / PARAMS_FILE
    metrics_root = None if metrics_names is not None else root
    metrics_names = list(metrics_names) if metrics_names is not None else list(METRICS_FILES)
    metrics_paths = [Path(metrics_root or ".", name) for name in metrics_names]
    check_output_file(output, model, params_path, *metrics_paths)
    params = read_params_sections(params_path)
    metrics = read_metrics(metrics_names, metrics_root)
    if not params and all(data is None for data in metrics.values()):
        looked = ", ".join(os.path.abspath(p) for p in [params_path, *metrics_paths])
        print(f"warning: found neither params.yaml nor any metrics file (looked for {looked}): the card says "
              "'unknown' for the data and 'Not found.' for each metrics file; pass --params and --metrics",
              file=sys.stderr)
    card = build_card(checkpoint_facts(load_checkpoint(model)), params, metrics, model_name or str(model))
    with atomic_path(output) as tmp:
        tmp.write_text(card, encoding="utf-8")
    return output
