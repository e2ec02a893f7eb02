"""textclf-card: the model card (Markdown) of a checkpoint, beside it (pipeline.model_card).

    textclf-card                                            # models/MODEL_CARD.md, from a checkout's root
    textclf-card --model /path/to/checkout/models/model.pt  # from anywhere: reads that checkout's files
"""

from __future__ import annotations

import argparse

from pipeline.checkpoint import MODEL_PATH
from pipeline.errors import command_name, run_main
from pipeline.model_card import CARD_NAME, PARAMS_FILE, write_card

SCRIPT = "textclf-card"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=command_name("pipeline.cli.card", SCRIPT),
                                     description="Write a Markdown model card beside the model.")
    parser.add_argument("--model", default=str(MODEL_PATH),
                        help="checkpoint path (default: %(default)s, relative to the current directory)")
    parser.add_argument("--params", help=f"params.yaml to describe the data from (default: {PARAMS_FILE} of the "
                                          "model's checkout, the folder above models/; else of the current directory)")
    parser.add_argument("--metrics", nargs="*", help="metrics JSON files to show (default: the metrics/ files "
                                                     "of the model's checkout, or of the current directory)")
    parser.add_argument("--output", help=f"default: {CARD_NAME} in the model's folder")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    output = write_card(args.model, args.output, args.params, args.metrics, model_name=args.model)
    print(f"wrote {output}")


def cli() -> None:
    """The console script textclf-card."""
    run_main(main)


if __name__ == "__main__":
    cli()
