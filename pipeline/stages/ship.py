"""Stage ship: models/model.pt, the model predict, serve, export and the card use: train's LSTM alone, the
TF-IDF baseline, or their fusion, as `ship.model` says (pipeline.shipped); metrics/ship.json and
metrics/ship/report.json with the validation figures of the three and the fused model on the test split."""

from __future__ import annotations

from pipeline import params
from pipeline.errors import run_main
from pipeline.files import check_writable
from pipeline.shipped import MODEL_PATH, REPORT, ship
from pipeline.workspace import start_stage


def main() -> None:
    start_stage("ship")
    policy = params.load("ship").model
    check_writable(MODEL_PATH.parent, REPORT.parent)
    report = ship(policy)
    m = report["metrics"]
    scores = ", ".join(f"{name} {report[name][report['metric']]:.4f}" for name in ("lstm", "tfidf", "fusion"))
    print(f"validation {report['metric']}: {scores} (fusion weight {report['weight']:g} on the LSTM); "
          f"ship.model: {policy}: shipped {report['shipped']} as {MODEL_PATH}; the fused model on test: "
          f"accuracy {m['fusion_test_acc']:.4f}, macro-F1 {m['fusion_test_f1']:.4f}")


if __name__ == "__main__":
    run_main(main)
