"""Classify text with the trained model.

    python -m pipeline.cli.predict "a gripping, beautifully acted film"   # or: textclf-predict "..."
    python -m pipeline.cli.predict --file reviews.txt        # one text per line
    cat reviews.txt | python -m pipeline.cli.predict         # one text per line on stdin
    python -m pipeline.cli.predict --json "..."              # one JSON object per text
    python -m pipeline.cli.predict --explain "..."           # and the words that drove each prediction
    python -m pipeline.cli.predict --input reviews.csv --text-column text --output predictions.parquet

Prints, per text, one line of three tab-separated fields: the predicted label, the probability of each
class (`label=0.123`, two blanks apart), and the text. In labels and texts a backslash, tab, line feed,
carriage return and any other line break are written as escapes (`\\`, `\t`, `\n`, `\r`, `\x0b`,
`\u2028`, ...), so each text is one line of exactly three fields whatever it holds. A text with no
tokens after the pipeline's cleaning (only markup, links or invisible characters) gets no label: an
empty first field, then `no label: <reason>`; with --json, "label" and "probabilities" are null and
"reason" says why (pipeline.inference). With --min-confidence P, a text whose top (calibrated)
probability is below P gets no label either, its reason "uncertain: ..." and, after it, its
probabilities (with --json, "probabilities" kept); with --input, the same in the output table.
Texts given as arguments
come first, then the lines of --file, then the lines of stdin when '-' is among the arguments (or when
neither texts nor --file are given). With --input, every row of a CSV, TSV, JSON-lines or Parquet file
is classified and written to --output with one probability column per class (pipeline.batch_predict).
--encoding is the encoding of --file and of --input's text formats (stdin is read as Python decodes it);
--text-column and --chunk-rows only mean something with --input, and are refused without it.

--explain adds, per text, the words that pushed hardest toward and against the predicted label
(integrated gradients) and, when the model pools by attention, its attention weights; with --json, an
"explanation" object (pipeline.explain).

A multi-label model (several labels per text, each with its own sigmoid probability and threshold:
pipeline.tasks.MultiLabel) prints its labels joined by `|` in the first field (`film|pos`), or `(no label)`
when no label reaches its threshold; `label=0.123` is then each label's own probability (they do not sum
to 1). With --json: "labels" (a list, maybe empty) instead of "label". --min-confidence P leaves a text
uncertain when any one of its label decisions is less sure than P (p for a label given, 1 - p for one
left out). --explain explains each label given (with --json, "explanations": one object per label).

--model defaults to models/model.pt relative to the current directory: the trained model, when run
from a checkout's root. From anywhere else, pass --model.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from pipeline.batch_predict import describe, predict_file
from pipeline.checkpoint import MODEL_PATH, load_checkpoint, require_model_file
from pipeline.errors import PipelineError, command_name, run_main
from pipeline.explain import explain_label_sets, explain_texts, format_explanation, part_note
from pipeline.files import check_encoding
from pipeline.inference import predict_texts
from pipeline.text import tokenize

SCRIPT = "textclf-predict"


def _read_lines(source, name: str, encoding: str = "utf-8") -> list[str]:
    try:
        text = source() if callable(source) else Path(source).read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise PipelineError(f"{name}: not valid {encoding} text ({err.reason} at byte {err.start}); "
                            "pass the file's encoding with --encoding") from None
    except OSError as err:
        raise PipelineError(f"{name}: cannot read: {err}") from None
    lines = text.removeprefix("\ufeff").splitlines()  # a byte-order mark is no part of the first text
    kept = [line for line in lines if line.strip()]
    if len(kept) < len(lines):  # the rule, said: a blank line is no text (the printed lines carry their text)
        print(f"{name}: {len(lines) - len(kept)} blank line(s) skipped", file=sys.stderr)
    return kept


def read_texts(args: argparse.Namespace) -> list[str]:
    """Argument texts, then --file's lines, then stdin's lines ('-' asks for them; so does giving nothing)."""
    given = [t for t in args.texts if t != "-"]
    blank = [i + 1 for i, t in enumerate(args.texts) if t != "-" and not t.strip()]
    if blank:
        raise PipelineError(f"text argument {blank[0]} is empty: nothing to classify")
    texts = list(given)
    if args.file:
        texts += _read_lines(args.file, args.file, args.encoding)
    if "-" in args.texts or not (given or args.file):
        if sys.stdin.isatty():
            if "-" in args.texts:
                raise PipelineError("'-' reads lines from stdin, but stdin is a terminal: pipe the lines in "
                                    "(cat texts.txt | ...), or drop the '-'")
            raise PipelineError("no text given: pass texts as arguments, --file PATH, or lines on stdin")
        texts += _read_lines(sys.stdin.read, "stdin")
    return texts


# What would split a line of the plain output: tabs, and whatever Python's str.splitlines() breaks at.
_UNSAFE = re.compile(r"[\\\t\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def tsv_field(value: str) -> str:
    """A label or a text as one field of the plain output: backslash, tab and line breaks escaped."""
    return _UNSAFE.sub(lambda m: _ESCAPES.get(m.group(), m.group().encode("unicode_escape").decode("ascii")), value)


NO_LABEL = "(no label)"  # a multi-label model's answer when no label reaches its threshold
LABELS_SEPARATOR = "|"


def format_result(text: str, labels: list[str], probs, as_json: bool, explanation=None,
                  reason: str | None = None, given: list[str] | None = None) -> str:
    """One text's line (or JSON object). `given`: a multi-label model's labels for the text (None for a
    single-label model); `explanation` then a list, one per label given."""
    if given is not None and reason is None:
        return _format_label_set(text, labels, probs, as_json, given, explanation)
    if reason is not None:  # no label (pipeline.inference): say why, in the same shape
        scored = probs is not None and not np.isnan(probs).any()  # uncertain: the probabilities are kept
        if as_json:
            return json.dumps({"text": text, "labels" if given is not None else "label": None, "reason": reason,
                               "probabilities":
                               {lab: round(float(p), 4) for lab, p in zip(labels, probs)} if scored else None})
        shown = "".join(f"  {tsv_field(lab)}={p:.3f}" for lab, p in zip(labels, probs)) if scored else ""
        return f"\tno label: {reason}{shown}\t{tsv_field(text)}"
    best = int(probs.argmax())
    if as_json:
        row = {"text": text, "label": labels[best],
               "probabilities": {lab: round(float(p), 4) for lab, p in zip(labels, probs)}}
        if explanation is not None:
            row["explanation"] = explanation.to_dict(labels)
        return json.dumps(row)
    shown = "  ".join(f"{tsv_field(lab)}={p:.3f}" for lab, p in zip(labels, probs))
    line = f"{tsv_field(labels[best])}\t{shown}\t{tsv_field(text)}"
    return line if explanation is None else f"{line}\n{format_explanation(explanation, labels)}"


def _format_label_set(text: str, labels: list[str], probs, as_json: bool, given: list[str], explanations) -> str:
    """A multi-label model's answer: its labels (maybe none) and each label's own probability."""
    if as_json:
        row = {"text": text, "labels": list(given),
               "probabilities": {lab: round(float(p), 4) for lab, p in zip(labels, probs)}}
        if explanations is not None:
            row["explanations"] = [e.to_dict(labels) for e in explanations]
        return json.dumps(row)
    shown = "  ".join(f"{tsv_field(lab)}={p:.3f}" for lab, p in zip(labels, probs))
    # A '|' inside a label is written '\|' (tsv_field has already doubled every backslash), so the joined
    # field splits back into the labels: on a '|' that no backslash escapes.
    first = LABELS_SEPARATOR.join(tsv_field(lab).replace(LABELS_SEPARATOR, "\\" + LABELS_SEPARATOR)
                                  for lab in given) if given else NO_LABEL
    line = f"{first}\t{shown}\t{tsv_field(text)}"
    if explanations:
        line += "".join(f"\n{format_explanation(e, labels)}" for e in explanations)
    return line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=command_name("pipeline.cli.predict", SCRIPT),
        description="Classify texts with a trained model: texts as arguments, --file, stdin, or a whole "
                    "table with --input/--output.")
    parser.add_argument("texts", nargs="*", help="texts to classify ('-': also read lines from stdin)")
    parser.add_argument("--file", "-f", help="also classify each line of this file (after the argument texts)")
    parser.add_argument("--model", default=str(MODEL_PATH),
                        help="checkpoint path (default: %(default)s, relative to the current directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    parser.add_argument("--explain", action="store_true",
                        help="also show the words that drove each prediction (integrated gradients; attention "
                             "weights when the model pools by attention)")
    parser.add_argument("--min-confidence", type=float, metavar="P",
                        help="below this top-class probability (0 to 1; calibrated) give no label but 'uncertain' "
                             "(a multi-label model: when any label's decision is less sure than P); the model "
                             "card states the coverage and accuracy of each threshold")
    batch = parser.add_argument_group("batch prediction over a table file")
    batch.add_argument("--input", "-i", help="a .csv, .tsv, .jsonl or .parquet file (text formats may be compressed)")
    batch.add_argument("--output", "-o", help="where to write: .parquet, .csv, .tsv or .jsonl")
    batch.add_argument("--text-column", help="the input's text column (default: text)")
    batch.add_argument("--encoding", default="utf-8",
                       help="text encoding of --file and of CSV, TSV and JSON-lines input (default: %(default)s)")
    batch.add_argument("--batch-size", type=int, default=256,
                       help="texts per forward pass, with or without --input (default: %(default)s)")
    batch.add_argument("--chunk-rows", type=int,
                       help="rows read, classified and written at a time (default: 10000)")
    return parser


def run_batch(args: argparse.Namespace) -> None:
    if args.texts or args.file or args.json:
        raise PipelineError("--input classifies the rows of a table file: give no texts, --file or --json with it")
    if args.explain:
        raise PipelineError("--explain is for texts (arguments, --file, stdin), not for an --input table")
    if not args.output:
        raise PipelineError("--input needs --output (a .parquet, .csv, .tsv or .jsonl file to write)")
    chunk_rows = 10_000 if args.chunk_rows is None else args.chunk_rows
    if chunk_rows < 1:
        raise PipelineError("--chunk-rows must be at least 1")
    ckpt = load_checkpoint(require_model_file(Path(args.model)))
    summary = predict_file(ckpt, Path(args.input), Path(args.output), args.text_column or "text", args.batch_size,
                           chunk_rows, args.encoding, args.min_confidence)
    print(describe(summary, Path(args.output)), file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_encoding(args.encoding, "--encoding")
    if args.batch_size < 1:
        raise PipelineError("--batch-size must be at least 1")
    if args.min_confidence is not None and not (math.isfinite(args.min_confidence) and 0 <= args.min_confidence <= 1):
        raise PipelineError(f"--min-confidence {args.min_confidence}: give a probability from 0 to 1")
    if args.input:
        return run_batch(args)
    batch_only = [option for option, value in (("--output", args.output), ("--text-column", args.text_column),
                                               ("--chunk-rows", args.chunk_rows)) if value is not None]
    if batch_only:
        raise PipelineError(f"{batch_only[0]} is for batch prediction over a table file: pass --input FILE too")
    model_path = require_model_file(Path(args.model))  # before reading stdin: fail fast on a wrong path
    texts = read_texts(args)
    if not texts:
        raise PipelineError("no text to classify (the input was empty)")
    ckpt = load_checkpoint(model_path)
    predictions = predict_texts(ckpt, texts, args.batch_size, args.min_confidence)
    labelled = [i for i, reason in enumerate(predictions.reasons) if reason is None]
    explanations = [None] * len(texts)
    if args.explain and labelled and predictions.multi_label:  # each label given, explained
        index = {label: j for j, label in enumerate(ckpt.labels)}
        sets = [[index[label] for label in predictions.label(i, ckpt.labels)] for i in labelled]
        tokens = [tokenize(texts[i], ckpt.text_config) for i in labelled]
        for i, explained in zip(labelled, explain_label_sets(ckpt, tokens, sets)):
            explanations[i] = explained
    elif args.explain and labelled:  # toward the shipped model's label
        targets = [int(predictions.probs[i].argmax()) for i in labelled]
        for i, explanation in zip(labelled, explain_texts(ckpt, [texts[i] for i in labelled], targets)):
            explanations[i] = explanation
    if args.explain and part_note(ckpt):
        print(part_note(ckpt), file=sys.stderr)
    for i, text in enumerate(texts):
        given = (predictions.label(i, ckpt.labels) or []) if predictions.multi_label else None
        print(format_result(text, ckpt.labels, predictions.probs[i], args.json, explanations[i],
                            predictions.reasons[i], given))


def cli() -> None:
    """The console script textclf-predict: errors as one line on stderr, exit status 1."""
    run_main(main)


if __name__ == "__main__":
    cli()
