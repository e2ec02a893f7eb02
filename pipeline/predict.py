"""Classify text with the trained model.

    python -m pipeline.predict "a gripping, beautifully acted film"
    python -m pipeline.predict --file reviews.txt        # one text per line
    cat reviews.txt | python -m pipeline.predict         # one text per line on stdin
    python -m pipeline.predict --json "..."              # one JSON object per text

Prints, per text, the predicted label and the probability of each class.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.common import PipelineError, run_main
from pipeline.inference import MODEL_PATH, classify_texts, load_checkpoint


def read_texts(args: argparse.Namespace) -> list[str]:
    if args.texts and args.texts != ["-"]:
        blank = [i + 1 for i, t in enumerate(args.texts) if not t.strip()]
        if blank:
            raise PipelineError(f"text argument {blank[0]} is empty: nothing to classify")
        return args.texts
    if args.file:
        try:
            lines = Path(args.file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise PipelineError(f"{args.file}: cannot read: {err}") from None
    else:
        if sys.stdin.isatty():
            raise PipelineError("no text given: pass texts as arguments, --file PATH, or lines on stdin")
        lines = sys.stdin.read().splitlines()
    return [line for line in lines if line.strip()]


def format_result(text: str, labels: list[str], probs, as_json: bool) -> str:
    best = int(probs.argmax())
    if as_json:
        return json.dumps({"text": text, "label": labels[best],
                           "probabilities": {lab: round(float(p), 4) for lab, p in zip(labels, probs)}})
    shown = "  ".join(f"{lab}={p:.3f}" for lab, p in zip(labels, probs))
    return f"{labels[best]}\t{shown}\t{text}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Classify text with the trained model (models/model.pt).")
    parser.add_argument("texts", nargs="*", help="texts to classify ('-' or none: read stdin)")
    parser.add_argument("--file", "-f", help="read one text per line from this file")
    parser.add_argument("--model", default=str(MODEL_PATH), help="checkpoint path (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    args = parser.parse_args(argv)
    texts = read_texts(args)
    if not texts:
        raise PipelineError("no text to classify (the input was empty)")
    ckpt = load_checkpoint(Path(args.model))
    probs = classify_texts(ckpt, texts)
    for text, p in zip(texts, probs):
        print(format_result(text, ckpt.labels, p, args.json))


if __name__ == "__main__":
    run_main(main)
