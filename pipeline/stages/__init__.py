"""The DVC stages' entry points, one thin module each: read params, call the library, write outputs.

`python -m pipeline.stages.<name>`. No stage imports another (tests/test_imports.py checks it, and that
dvc.yaml lists every module a stage reaches)."""
