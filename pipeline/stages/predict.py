"""Stage predict: every row of `predict.input` classified and written to `predict.output`, with
predicted_label (a multi-label model: predicted_labels), one prob_<label> column per class and no_label_reason
(pipeline.batch_predict). By default the test split. With `predict.min_confidence` set, rows below it get no
label ("uncertain").
"""

from __future__ import annotations

from pathlib import Path

from pipeline import params
from pipeline.batch_predict import describe, predict_file
from pipeline.checkpoint import MODEL_PATH, load_checkpoint
from pipeline.errors import run_main
from pipeline.files import check_data_path
from pipeline.workspace import start_stage


def main() -> None:
    start_stage("predict")
    predict_params = params.load("predict")
    check_data_path(predict_params.input, "predict.input")
    summary = predict_file(load_checkpoint(MODEL_PATH), Path(predict_params.input), Path(predict_params.output),
                           predict_params.text_column, predict_params.batch_size, predict_params.chunk_rows,
                           predict_params.encoding, predict_params.min_confidence)
    print(describe(summary, Path(predict_params.output)))


if __name__ == "__main__":
    run_main(main)
