"""Stage card: models/MODEL_CARD.md, the model card beside the model (pipeline.model_card): what it is,
what it was trained on, every metric, its limits."""

from __future__ import annotations

from pipeline.checkpoint import MODEL_PATH
from pipeline.errors import run_main
from pipeline.model_card import write_card
from pipeline.workspace import start_stage


def main() -> None:
    start_stage("card")
    print(f"wrote {write_card(MODEL_PATH, model_name=str(MODEL_PATH))}")


if __name__ == "__main__":
    run_main(main)
