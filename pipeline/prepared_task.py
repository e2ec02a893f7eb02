"""The task a prepared corpus was made for, as its splits record it.

single_label splits hold one string per row in `label` (as always: their bytes are unchanged, and they
carry no task in their metadata). multi_label splits hold a list of strings per row (sorted, unique;
empty when a text has none of the labels) and name their task in the Parquet metadata, which is what
train reads: the task is the data's, resolved once by prepare (corpus.task: auto looks at the labels).
"""

from __future__ import annotations

TASK_KEY = b"pipeline.task"

def task_metadata(task: str) -> dict:
    """The Parquet metadata that names a prepared split's task (none for single_label)."""
    return {} if task == "single_label" else {TASK_KEY: task.encode()}


def prepared_task(split) -> str:
    """The task a prepared split was made for: its Parquet metadata's, single_label when it names none."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(split).metadata or {}
    return meta.get(TASK_KEY, b"single_label").decode()
