"""Read pre-trained vectors for a given vocabulary only, in one streaming pass.

Memory grows with the vocabulary, not with the vectors file: a line's values are parsed only when
its word is in the vocabulary, every other line costs one dictionary lookup. Supported layouts:

- glove: text, `word v1 ... vd` per line (.txt, .txt.gz, or the one .txt member of a .zip); the dimension d
  is the most common number of values among the first DIM_SAMPLE_LINES lines, so one odd line (the
  first included) is the line named, or skipped, not the good lines after it;
- word2vec: the same with a `count dim` header line, which gives the dimension (fastText .vec files are
  this layout);
- word2vec_binary: the GoogleNews .bin layout (header line, then `word ` and dim little-endian float32);
- fasttext_bin: a fastText .bin model (gensim's Facebook loader): words it never saw still get
  vectors from their character n-grams. Loaded whole, since that format cannot be streamed;
- npy: a float matrix in .npy plus its word list (.parquet with one string column, or .txt with
  one word per line), read through a memory map so only the needed rows are touched.

Policies, each counted in the alignment report: a byte-order mark and CRLF endings are ignored;
words with spaces inside (GloVe 840B has them) are recognised by the dimension; the first vector of a
duplicated word wins; `nan`, `null` and the like are ordinary words; a line with the wrong number of
values, or non-finite values for a vocabulary word, is an error naming the file and line, or skipped
and counted (`bad_lines: skip`); words that are not valid UTF-8 can never match and are counted.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.files import READ_ERRORS, check_data_path, open_binary

BOM = b"\xef\xbb\xbf"
FASTTEXT_MAGIC = (793712314).to_bytes(4, "little")
WORD_LIST_SUFFIXES = (".parquet", ".txt", ".vocab")
DIM_SAMPLE_LINES = 1000  # lines a GloVe file's dimension is decided from (the most common count of values)
MAX_LINE_BYTES = 10 << 20  # the longest line of a text vectors file, or word of a binary one
MAX_DIM = 100_000  # a header announcing more is a lie or a different file: the matrix would take dim x vocabulary


@dataclass
class Alignment:
    """Vectors for the vocabulary words that were found, and what the pass saw."""

    matrix: np.ndarray  # (len(words), dim) float32; rows of words not found are zero
    found: np.ndarray  # (len(words),) bool
    by_lowercase: np.ndarray  # (len(words),) bool: found only through the lowercase fallback
    stats: Counter = field(default_factory=Counter)

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]


class _Matcher:
    """Decides, word by word from the vectors file, which vocabulary rows a vector fills."""

    def __init__(self, words: list[str], case_fallback: bool):
        self.exact = {w.encode("utf-8"): i for i, w in enumerate(words)}
        self.lower: dict[bytes, list[int]] = {}
        if case_fallback:
            for i, w in enumerate(words):
                lw = w.lower()
                if lw != w:
                    self.lower.setdefault(lw.encode("utf-8"), []).append(i)
        self.n = len(words)
        self.found = np.zeros(self.n, dtype=bool)
        self.by_lowercase = np.zeros(self.n, dtype=bool)
        self.matrix: np.ndarray | None = None
        self.stats: Counter = Counter()

    def rows_for(self, word: bytes) -> tuple[int | None, list[int] | None]:
        return self.exact.get(word), self.lower.get(word)

    def start(self, dim: int) -> None:
        self.matrix = np.zeros((self.n, dim), dtype=np.float32)
        self.stats["dim"] = dim

    def fill(self, row: int | None, lower_rows: list[int] | None, vector: np.ndarray) -> None:
        if row is not None:
            if self.found[row] and not self.by_lowercase[row]:
                self.stats["duplicate_vocab_words"] += 1  # first vector wins
            else:
                self.matrix[row] = vector
                self.found[row] = True
                self.by_lowercase[row] = False
        for r in lower_rows or ():
            if not self.found[r]:
                self.matrix[r] = vector
                self.found[r] = True
                self.by_lowercase[r] = True

    def result(self) -> Alignment:
        if self.matrix is None:
            raise PipelineError("the embeddings file holds no vectors")
        self.stats["found_exact"] = int((self.found & ~self.by_lowercase).sum())
        self.stats["found_lowercase"] = int(self.by_lowercase.sum())
        return Alignment(self.matrix, self.found, self.by_lowercase, self.stats)


def _unreadable(path: Path, err: Exception) -> PipelineError:
    return PipelineError(f"{path}: cannot read to the end ({err or type(err).__name__}): a truncated or corrupt file?")


def _is_number(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _header(first: bytes) -> tuple[int, int] | None:
    """(count, dim) when the first line is a word2vec/fastText header."""
    parts = first.split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[0]), int(parts[1])
    return None


def _check_header(path: Path, header: tuple[int, int]) -> None:
    """A header's dimension, from which the vocabulary's matrix is allocated, must be a plausible one."""
    if not 0 < header[1] <= MAX_DIM:
        raise PipelineError(f"{path}: line 1: the header announces vectors of {header[1]:,} values (at most "
                            f"{MAX_DIM:,} are read): not a word2vec header, or a damaged one")


def align_text(path: Path, words: list[str], case_fallback: bool = True, bad_lines: str = "error",
               has_header: bool | None = None) -> Alignment:
    """Stream a GloVe or word2vec text file and return the vectors of `words`."""
    m = _Matcher(words, case_fallback)
    stats = m.stats

    def bad(lineno: int, why: str) -> None:
        if bad_lines == "error":
            raise PipelineError(f"{path}: line {lineno}: {why} (set embeddings.bad_lines: skip to skip such lines)")
        stats["bad_lines_skipped"] += 1

    from pipeline.readers import LineTooLong, bounded_lines

    try:
        # Lines are bounded (a 100,000-value line is about 1.2 MB): a file without line breaks would
        # otherwise be read whole into memory, four times over, before its first line is judged.
        with bounded_lines(path, MAX_LINE_BYTES, prefer=(".txt", ".vec")) as f:
            dim = _stream_text(f, path, m, bad, has_header)
    except LineTooLong as err:
        raise PipelineError(f"{path}: line {err.line}: more than {MAX_LINE_BYTES >> 20} MiB without a line break: "
                            "not a vectors text file?") from None
    except READ_ERRORS as err:
        raise _unreadable(path, err) from None
    if dim is None:
        raise PipelineError(f"{path}: no vectors in the file")
    declared = stats.get("header_count")
    if declared is not None and stats["lines"] + stats["bad_lines_skipped"] < declared:
        raise PipelineError(f"{path}: the header announces {declared:,} vectors but the file holds "
                            f"{stats['lines']:,}: it was cut short")
    return m.result()


def _n_values(line: bytes) -> int:
    """How many values follow the word on a line (its ends already stripped)."""
    _, _, rest = line.partition(b" ")
    return rest.count(b" ") + 1 if rest else 0


def _common_dim(sample: list[tuple[int, bytes]], path: Path) -> int | None:
    """The dimension of a file without a header: the most common number of values on the sampled lines
    (the earliest such count on a tie); None when they are all blank."""
    counts = Counter(_n_values(raw.rstrip()) for _, raw in sample if raw.strip())
    if not counts:
        return None
    dim = counts.most_common(1)[0][0]
    if dim == 0:
        lineno = next(n for n, raw in sample if raw.strip() and _n_values(raw.rstrip()) == 0)
        raise PipelineError(f"{path}: line {lineno}: no vector values after the word")
    return dim


def _stream_text(f, path: Path, m: "_Matcher", bad, has_header: bool | None) -> int | None:
    """The line loop of align_text; returns the dimension (None for a file without vectors)."""
    stats = m.stats
    dim = None
    lines = enumerate(f, 1)
    first = next(lines, None)
    if first is None:
        return None
    raw = first[1]
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
        stats["byte_order_mark"] = 1
    header = _header(raw) if has_header is not False else None
    if has_header and header is None:
        raise PipelineError(f"{path}: line 1: expected a word2vec header 'count dim', got {raw[:80]!r}")
    if header:
        _check_header(path, header)
        dim = header[1]
        stats["header_count"] = header[0]
        m.start(dim)
        sample = []
    else:  # the dimension from the first lines, not from line 1 alone
        sample = [(1, raw), *itertools.islice(lines, DIM_SAMPLE_LINES - 1)]
        dim = _common_dim(sample, path)
        if dim is None:
            stats["blank_lines"] += len(sample)
            return None
        m.start(dim)
    for lineno, raw in itertools.chain(sample, lines):
        line = raw.rstrip()  # drops \n, \r\n and trailing blanks
        if not line:
            stats["blank_lines"] += 1
            continue
        stats["lines"] += 1
        word, _, rest = line.partition(b" ")
        n_values = rest.count(b" ") + 1 if rest else 0
        if n_values != dim:
            if n_values < dim:
                bad(lineno, f"{n_values} values, expected {dim}")
                continue
            # More fields than the dimension: either a word with spaces inside, or a bad line.
            head, *values = line.rsplit(b" ", dim)
            last_word_part = head.rsplit(b" ", 1)[-1]
            if _is_number(last_word_part) or any(not v for v in values):
                bad(lineno, f"{n_values} values, expected {dim}")
                continue
            word, rest = head, line[len(head) + 1:]
            stats["words_with_spaces"] += 1
        row, lower_rows = m.rows_for(word)
        if row is None and lower_rows is None:
            if not word.isascii():
                try:
                    word.decode("utf-8")
                except UnicodeDecodeError:
                    stats["undecodable_words"] += 1
            continue
        try:
            vector = np.array(rest.split(), dtype=np.float32)
        except ValueError:
            bad(lineno, f"non-numeric value in the vector of {word.decode('utf-8', 'replace')!r}")
            continue
        if not np.isfinite(vector).all():
            bad(lineno, f"non-finite value in the vector of {word.decode('utf-8', 'replace')!r}")
            continue
        m.fill(row, lower_rows, vector)
    return dim


def align_word2vec_binary(path: Path, words: list[str], case_fallback: bool = True) -> Alignment:
    """Stream a word2vec binary file (the GoogleNews .bin layout): header, then `word<space>` + dim float32."""
    m = _Matcher(words, case_fallback)
    chunk = 1 << 22
    with open_binary(path, prefer=(".txt", ".vec")) as f:
        header = _header(f.readline().removeprefix(BOM))
        if header is None:
            raise PipelineError(f"{path}: line 1: expected a word2vec binary header 'count dim'")
        _check_header(path, header)
        count, dim = header
        m.start(dim)
        m.stats["header_count"] = count
        width = dim * 4
        buf, pos = b"", 0
        for index in range(count):
            space = buf.find(b" ", pos)
            while space < 0 or space + 1 + width > len(buf):
                if space < 0 and len(buf) - pos > MAX_LINE_BYTES:  # buf would grow (and be copied) to the file's size
                    raise PipelineError(f"{path}: vector {index + 1} of {count}: no word within "
                                        f"{MAX_LINE_BYTES >> 20} MiB: not a word2vec binary file?")
                more = f.read(chunk)
                if not more:
                    raise PipelineError(f"{path}: truncated at vector {index + 1} of {count}")
                buf, pos = buf[pos:] + more, 0
                space = buf.find(b" ", pos)
            word = buf[pos:space].lstrip(b"\n")
            m.stats["lines"] += 1
            row, lower_rows = m.rows_for(word)
            if row is not None or lower_rows is not None:
                vector = np.frombuffer(buf, dtype="<f4", count=dim, offset=space + 1).copy()
                if not np.isfinite(vector).all():
                    raise PipelineError(f"{path}: vector {index + 1} ({word!r}) has non-finite values")
                m.fill(row, lower_rows, vector)
            pos = space + 1 + width
        if (buf[pos:] + f.read(chunk)).strip(b"\r\n"):  # the vectors past the header's count were never read
            raise PipelineError(f"{path}: holds more than the {count:,} vectors its header announces: the "
                                "header is wrong (fix its count), or another file was appended")
    return m.result()


def align_fasttext_bin(path: Path, words: list[str]) -> Alignment:
    """A fastText .bin model through gensim's Facebook loader: words it never saw get real vectors
    built from their character n-grams. (The whole model is loaded: .bin files are not streamable.)"""
    from gensim.models.fasttext import load_facebook_vectors

    try:
        kv = load_facebook_vectors(str(path))
    except Exception as err:  # gensim raises assorted errors on foreign files
        raise PipelineError(f"{path}: cannot read as a fastText .bin model: {err}") from None
    m = _Matcher(words, case_fallback=False)
    m.start(kv.vector_size)
    m.stats["lines"] = len(kv.key_to_index)
    for i, word in enumerate(words):
        known = word in kv.key_to_index
        vector = kv[word]  # unknown: the sum of the word's n-gram vectors; zero if it has none
        if not np.isfinite(vector).all():  # as for every other format: never a NaN row in the model's matrix
            raise PipelineError(f"{path}: the vector of {word!r} has non-finite values"
                                f"{'' if known else ' (built from its character n-grams)'}")
        if known:
            m.fill(i, None, vector)
        elif np.any(vector):
            m.fill(i, None, vector)
            m.stats["from_subwords"] += 1
    return m.result()


def read_word_list(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = [c for c in table.column_names if str(table.schema.field(c).type) in ("string", "large_string")]
        if len(columns) != 1:
            raise PipelineError(f"{path}: expected one string column of words, found {columns}")
        return table.column(columns[0]).to_pylist()
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is no part of the first word
        return [line.rstrip("\r\n") for line in f]


def align_npy(matrix_path: Path, words_path: Path, words: list[str], case_fallback: bool = True) -> Alignment:
    """Gather the rows of `words` from a memory-mapped .npy matrix and its word list."""
    try:
        vectors = np.load(matrix_path, mmap_mode="r")
    except ValueError as err:
        raise PipelineError(f"{matrix_path}: not a .npy array: {err}") from None
    if vectors.dtype.kind not in "fiu":  # text, complex, records: a traceback, or silently real parts
        raise PipelineError(f"{matrix_path}: holds {vectors.dtype} values, not numbers (a float matrix, one row "
                            "per word, is expected)")
    file_words = read_word_list(words_path)
    if vectors.ndim != 2 or vectors.shape[0] != len(file_words):
        raise PipelineError(
            f"{matrix_path}: shape {vectors.shape} does not match the {len(file_words)} words of {words_path.name}"
        )
    m = _Matcher(words, case_fallback)
    m.start(vectors.shape[1])
    m.stats["lines"] = len(file_words)
    for i, word in enumerate(file_words):
        if word is None:
            continue
        row, lower_rows = m.rows_for(word.encode("utf-8"))
        if row is not None or lower_rows is not None:
            vector = np.asarray(vectors[i], dtype=np.float32)
            if not np.isfinite(vector).all():
                raise PipelineError(f"{matrix_path}: row {i} ({word!r}) has non-finite values")
            m.fill(row, lower_rows, vector)
    return m.result()


@dataclass(frozen=True)
class VectorsSource:
    format: str  # glove | word2vec | word2vec_binary | fasttext_bin | npy
    path: Path
    words_path: Path | None = None


def detect(directory: Path, fmt: str = "auto") -> VectorsSource:
    """The vectors file(s) at `directory` (a file, or a folder holding them) and their format
    (`fmt` overrides detection)."""
    check_data_path(directory, "embeddings.source")
    if directory.is_file():
        files = [directory]
    elif directory.is_dir():
        files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        raise PipelineError(f"{directory}: no such file or folder (params embeddings.source)")
    if not files:
        raise PipelineError(f"{directory}: no embeddings file (embeddings.download is null? then point "
                            "embeddings.source at your vectors file)")
    npys = [p for p in files if p.suffix.lower() == ".npy"]
    if fmt == "npy" or (fmt == "auto" and npys):
        word_lists = [p for p in files if p.suffix.lower() in WORD_LIST_SUFFIXES]
        if len(npys) != 1 or len(word_lists) != 1:
            raise PipelineError(
                f"{directory}: the npy format needs one .npy matrix and one word list "
                f"({', '.join(WORD_LIST_SUFFIXES)}); found {_names(files)}"
            )
        return VectorsSource("npy", npys[0], word_lists[0])
    if len(files) != 1:
        raise PipelineError(f"{directory}: expected one vectors file, found {_names(files)}")
    path = files[0]
    if fmt != "auto":
        return VectorsSource(fmt, path)
    try:
        with open_binary(path, prefer=(".txt", ".vec")) as f:
            head = f.read(1 << 16)
    except READ_ERRORS as err:
        raise _unreadable(path, err) from None
    if head[:4] == FASTTEXT_MAGIC:
        return VectorsSource("fasttext_bin", path)
    first, _, rest = head.removeprefix(BOM).partition(b"\n")
    if _header(first):
        # word2vec binary if what follows the header is not text.
        sample = rest[:4096]
        binary = b"\0" in sample or not _is_utf8(sample)
        return VectorsSource("word2vec_binary" if binary else "word2vec", path)
    return VectorsSource("glove", path)


def _names(files: list[Path], most: int = 10) -> str:
    """The first `most` file names, and how many there are in all: a folder of 100,000 files is no error line."""
    shown = ", ".join(p.name for p in files[:most])
    return f"{shown}, ... ({len(files):,} files)" if len(files) > most else shown


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start > len(data) - 4  # only a character cut at the end of the sample
    return True


def align(source: VectorsSource, words: list[str], case_fallback: bool = True, bad_lines: str = "error") -> Alignment:
    if source.format == "fasttext_bin":
        return align_fasttext_bin(source.path, words)
    if source.format == "word2vec_binary":
        return align_word2vec_binary(source.path, words, case_fallback)
    if source.format == "npy":
        return align_npy(source.path, source.words_path, words, case_fallback)
    return align_text(source.path, words, case_fallback, bad_lines, has_header=source.format == "word2vec")
