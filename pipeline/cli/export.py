"""textclf-export: the trained model as ONNX or TorchScript, with a JSON sidecar (pipeline.export).

    textclf-export --format onnx --output models/model.onnx          # or: python -m pipeline.cli.export ...
    textclf-export --format torchscript --output models/model.torchscript.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.checkpoint import MODEL_PATH, load_checkpoint, require_model_file
from pipeline.errors import command_name, run_main
from pipeline.export import FORMATS, export_model

SCRIPT = "textclf-export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=command_name("pipeline.cli.export", SCRIPT),
        description="Export the trained model to ONNX or TorchScript: (ids, lengths) -> class probabilities, "
                    "with a JSON sidecar (vocabulary, labels, tokenizer settings) beside it.")
    parser.add_argument("--model", default=str(MODEL_PATH),
                        help="checkpoint path (default: %(default)s, relative to the current directory)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="default: %(default)s")
    parser.add_argument("--output", help="file to write (default: the checkpoint's path with .onnx, or "
                                         ".torchscript.pt); the sidecar is <output>.json")
    return parser


def default_output(model: Path, fmt: str) -> Path:
    return model.with_suffix(".onnx" if fmt == "onnx" else ".torchscript.pt")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model = require_model_file(Path(args.model))
    output = Path(args.output) if args.output else default_output(model, args.format)
    meta = export_model(load_checkpoint(model), args.format, output, model)
    print(f"wrote {output} ({args.format}) and {meta}")


def cli() -> None:
    """The console script textclf-export."""
    run_main(main)


if __name__ == "__main__":
    cli()
