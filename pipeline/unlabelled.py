"""Unlabelled text for the domain vectors (domain_vectors.unlabelled): plain-text files of the corpus's
domain that nobody labelled, a document per line, tokenized as the prepare stage tokenizes. Only the
domain_vectors stage reads it, so this module is apart from pipeline.domain_vectors, which the vocab
stage imports too."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError
from pipeline.files import READ_ERRORS, check_data_path
from pipeline.formats import strip_compression
from pipeline.readers import decode_error, open_lines
from pipeline.text import TextConfig, tokenize


def text_files(path: Path) -> list[Path]:
    """The plain-text files under `path` (domain_vectors.unlabelled), in a fixed order: the file itself,
    or every .txt file in the folder and its subfolders, compressed or not (.txt.gz, .txt.bz2, .txt.xz,
    .txt.zst). A folder's README, DVC pointer files and hidden files are passed over; any other file is
    an error, not silently left out."""
    check_data_path(path, "domain_vectors.unlabelled")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PipelineError(f"{path}: no such file or folder (params domain_vectors.unlabelled)")
    files = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        name = file.name.lower()
        hidden = any(part.startswith(".") for part in file.relative_to(path).parts)
        if hidden or name.startswith("readme") or name.endswith(".dvc"):  # notes and DVC's pointer files
            continue
        if not strip_compression(name).endswith(".txt"):
            raise PipelineError(f"{file}: not a .txt file: the unlabelled text (domain_vectors.unlabelled) is plain "
                                "text, a document per line (.txt, or .txt.gz, .txt.bz2, .txt.xz, .txt.zst)")
        files.append(file)
    return files


class UnlabelledText:
    """Plain-text files, a document (or paragraph) per line, tokenized with the prepare stage's settings
    as gensim iterates them: a line at a time (lines bounded like the corpus readers'), so memory does
    not grow with the text. `tokens`: how many the last whole pass read (None before one)."""

    def __init__(self, files: list[Path], text_config: TextConfig, encoding: str = "utf-8"):
        self.files, self.text_config, self.encoding = files, text_config, encoding
        self.tokens: int | None = None

    def __iter__(self) -> Iterator[list[str]]:
        read = 0
        for path in self.files:
            lineno = 0
            try:
                with open_lines(path, self.encoding) as lines:
                    for lineno, line in enumerate(lines, 1):
                        tokens = tokenize(line, self.text_config)
                        if tokens:
                            read += len(tokens)
                            yield tokens
            except UnicodeDecodeError as err:
                raise decode_error(path, err, self.encoding) from None
            except READ_ERRORS as err:  # a truncated .gz ends in EOFError, a corrupt one in zlib.error
                where = f"cannot read past line {lineno}" if lineno else "cannot read it"
                raise PipelineError(f"{path}: {where} ({getattr(err, 'strerror', None) or err or type(err).__name__}): "
                                    "a truncated or corrupt file? (domain_vectors.unlabelled)") from None
        self.tokens = read
