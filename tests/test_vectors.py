"""Streaming alignment of vectors files to a vocabulary (pipeline.vectors)."""

from __future__ import annotations

import gzip
import io
import lzma
import zipfile

import numpy as np
import pytest
from gensim.models import KeyedVectors

from pipeline import vectors
from pipeline.errors import PipelineError


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_matches_gensim_on_real_glove(glove_small):
    kv = KeyedVectors.load_word2vec_format(glove_small, binary=False, no_header=True)
    words = ["the", "ö", "of", "absent-word", "n't"]
    result = vectors.align_text(glove_small, words)
    assert result.found.tolist() == [True, True, True, False, True]
    for i, w in enumerate(words):
        if result.found[i]:
            np.testing.assert_array_equal(result.matrix[i], kv[w])
    assert result.stats["lines"] == len(kv)
    assert result.dim == 50


def test_gzip_and_word2vec_header_and_bom_and_crlf(tmp_path):
    body = "\ufeff2 3\r\nnan 1 2 3\r\nnull 4 5 6\r\n"
    path = tmp_path / "vecs.txt.gz"
    path.write_bytes(gzip.compress(body.encode("utf-8")))
    source = vectors.detect(write_dir(tmp_path / "d", path))
    assert source.format == "word2vec"
    result = vectors.align(source, ["null", "nan", "none"])
    np.testing.assert_array_equal(result.matrix[:2], [[4, 5, 6], [1, 2, 3]])
    assert result.found.tolist() == [True, True, False]
    assert result.stats["byte_order_mark"] == 1 and result.stats["header_count"] == 2


def write_dir(directory, file):
    directory.mkdir()
    target = directory / file.name
    target.write_bytes(file.read_bytes())
    return directory


def test_wrong_dimension_is_an_error_naming_file_and_line(tmp_path):
    path = write(tmp_path / "v.txt", "a 1 2 3\nb 1 2\nc 1 2 3\n")
    with pytest.raises(PipelineError, match=r"v\.txt: line 2: 2 values, expected 3"):
        vectors.align_text(path, ["a", "b", "c"])


def test_skip_policy_counts_bad_lines(tmp_path):
    path = write(tmp_path / "v.txt", "a 1 2 3\nb 1 2\nc 1 x 3\nd 1 2 3 4\ne 7 8 9\n")
    result = vectors.align_text(path, ["a", "b", "c", "d", "e"], bad_lines="skip")
    assert result.found.tolist() == [True, False, False, False, True]
    assert result.stats["bad_lines_skipped"] == 3


def test_words_with_spaces_duplicates_and_undecodable_bytes(tmp_path):
    data = b"a 1 2\nnew york 3 4\na 9 9\n\xff\xfe 5 6\nb 7 8\n"
    path = write(tmp_path / "v.txt", data)
    result = vectors.align_text(path, ["a", "new york", "b"])
    np.testing.assert_array_equal(result.matrix, [[1, 2], [3, 4], [7, 8]])
    assert result.stats["words_with_spaces"] == 1
    assert result.stats["duplicate_vocab_words"] == 1  # the first 'a' wins
    assert result.stats["undecodable_words"] == 1


def test_lowercase_fallback_prefers_exact_match(tmp_path):
    path = write(tmp_path / "v.txt", "paris 1 1\nrome 2 2\nRome 3 3\n")
    result = vectors.align_text(path, ["Paris", "Rome", "rome"], case_fallback=True)
    np.testing.assert_array_equal(result.matrix, [[1, 1], [3, 3], [2, 2]])
    assert result.by_lowercase.tolist() == [True, False, False]
    without = vectors.align_text(path, ["Paris"], case_fallback=False)
    assert not without.found.any()


def test_npy_matrix_with_parquet_word_list(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "m.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    pq.write_table(pa.table({"index": ["x", "nan", "null", "y"]}), d / "words.parquet")
    source = vectors.detect(d)
    assert source.format == "npy"
    result = vectors.align(source, ["null", "y", "zzz", "nan"])
    np.testing.assert_array_equal(result.matrix[[0, 1, 3]], [[6, 7, 8], [9, 10, 11], [3, 4, 5]])
    assert result.found.tolist() == [True, True, False, True]


def test_npy_shape_mismatch_is_reported(tmp_path):
    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "m.npy", np.zeros((3, 2), dtype=np.float32))
    (d / "words.txt").write_text("a\nb\n")
    with pytest.raises(PipelineError, match=r"m\.npy: shape \(3, 2\) does not match the 2 words"):
        vectors.align(vectors.detect(d), ["a"])


def test_word2vec_binary_matches_gensim(tmp_path, glove_small):
    kv = KeyedVectors.load_word2vec_format(glove_small, binary=False, no_header=True)
    d = tmp_path / "w2v"
    d.mkdir()
    kv.save_word2vec_format(str(d / "vectors.bin"), binary=True)
    source = vectors.detect(d)
    assert source.format == "word2vec_binary"
    words = ["of", "missing", "the", "हि"]
    result = vectors.align(source, words)
    assert result.found.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(result.matrix[[0, 2, 3]], kv[["of", "the", "हि"]])
    # The same vectors saved as text are detected as word2vec text and give the same matrix.
    t = tmp_path / "w2vtext"
    t.mkdir()
    kv.save_word2vec_format(str(t / "vectors.txt"), binary=False)
    text_source = vectors.detect(t)
    assert text_source.format == "word2vec"
    np.testing.assert_allclose(vectors.align(text_source, words).matrix, result.matrix, rtol=1e-6)


def test_truncated_word2vec_binary_is_reported(tmp_path):
    d = tmp_path / "w2v"
    d.mkdir()
    (d / "v.bin").write_bytes(b"2 3\nab " + np.float32([1, 2, 3]).tobytes() + b"cd " + b"\x00\x00")
    with pytest.raises(PipelineError, match=r"v\.bin: truncated at vector 2 of 2"):
        vectors.align(vectors.detect(d, "word2vec_binary"), ["ab"])


def test_fasttext_bin_gives_subword_vectors_to_unseen_words(tmp_path):
    from gensim.models.fasttext import load_facebook_vectors

    from tests.conftest import GENSIM_DATA

    d = tmp_path / "ft"
    d.mkdir()
    (d / "model.bin").write_bytes((GENSIM_DATA / "lee_fasttext_new.bin").read_bytes())
    source = vectors.detect(d)
    assert source.format == "fasttext_bin"
    kv = load_facebook_vectors(str(d / "model.bin"))
    seen = next(iter(kv.key_to_index))
    unseen = "blorptastically"
    assert unseen not in kv.key_to_index
    result = vectors.align(source, [seen, unseen])
    assert result.found.all() and result.stats["from_subwords"] == 1
    np.testing.assert_allclose(result.matrix, kv[[seen, unseen]], rtol=1e-6)


def test_truncated_gzip_and_short_word2vec_file_name_the_file(tmp_path, glove_small):
    full = gzip.compress(glove_small.read_bytes())
    cut = tmp_path / "vectors.txt.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(PipelineError, match=r"vectors\.txt\.gz: cannot read to the end .*truncated"):
        vectors.align(vectors.detect(cut), ["the", "of"])
    lines = glove_small.read_text().splitlines()
    short = tmp_path / "short.vec"
    short.write_text(f"{len(lines) + 10} 50\n" + "\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match=r"short\.vec: the header announces 86 vectors but the file holds 76"):
        vectors.align(vectors.detect(short), ["the"])


@pytest.mark.parametrize("name, pack", [
    ("glove.txt", gzip.compress),                     # gzip, whatever the name says
    ("glove.txt.xz", lzma.compress),
    ("glove.zip", lambda data: _zip_of({"README": b"not vectors", "glove/glove.6B.50d.txt": data})),
])
def test_compressed_vectors_are_known_by_their_first_bytes(tmp_path, glove_small, name, pack):
    (tmp_path / name).write_bytes(pack(glove_small.read_bytes()))
    source = vectors.detect(tmp_path / name)
    assert source.format == "glove"
    words = ["the", "of", "absent-word"]
    packed, plain = vectors.align(source, words), vectors.align_text(glove_small, words)
    assert packed.found.tolist() == plain.found.tolist() == [True, True, False]
    np.testing.assert_array_equal(packed.matrix, plain.matrix)


def _zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, body", [
    ("word2vec", b"2 1000000000\nab 1 2 3\ncd 4 5 6\n"),
    ("word2vec", b"2 100000000000000\nab 1 2 3\n"),
    ("word2vec", b"2 0\nab 1 2 3\n"),
    ("word2vec_binary", b"2 1000000000\nab " + np.float32([1, 2, 3]).tobytes()),
])
def test_a_header_lying_about_the_dimension_is_named_before_any_allocation(tmp_path, fmt, body):
    """A `count dim` header claiming 10^9 values per vector: the matrix of the vocabulary (words x dim)
    was allocated from it first, a numpy MemoryError traceback (4 TiB for 1,178 words) or gigabytes."""
    path = write(tmp_path / "v.vec", body)
    words = [f"w{i}" for i in range(2000)] + ["ab"]
    with pytest.raises(PipelineError, match=r"v\.vec: line 1: the header announces vectors of [\d,]+ values"):
        vectors.align(vectors.VectorsSource(fmt, path), words)


def test_a_vectors_file_without_line_breaks_is_named_not_read_whole(tmp_path):
    """A text vectors file whose line 2 runs 11 MiB without a break (a wrong or damaged file): the line was
    read whole into memory, about four times over (400 MB of it took 1.65 GB), before it was judged; a
    word2vec binary file without a space after its header was read whole, its buffer copied once per 4 MiB."""
    text = write(tmp_path / "v.txt", b"ab 1 2 3\n" + b"cd" + b" 0.5" * (11 << 18) + b"\n")
    with pytest.raises(PipelineError, match=r"v\.txt: line 2: more than 10 MiB without a line break"):
        vectors.align(vectors.VectorsSource("glove", text), ["ab"], bad_lines="skip")
    binary = write(tmp_path / "v.bin", b"2 3\n" + b"x" * (11 << 20))
    with pytest.raises(PipelineError, match=r"v\.bin: vector 1 of 2: no word within 10 MiB"):
        vectors.align(vectors.VectorsSource("word2vec_binary", binary), ["ab"])


@pytest.mark.parametrize("part", ["vectors_vocab", "vectors_ngrams"])
def test_a_fasttext_bin_with_non_finite_vectors_is_named(tmp_path, part):
    """Every other format names a NaN or infinite vector of a vocabulary word; a fastText .bin model's
    went into the model's matrix without a word (a known word's, or one built from n-grams)."""
    from gensim.models import FastText
    from gensim.models.fasttext import save_facebook_model

    sentences = [["a", "fine", "film"], ["a", "dull", "film"]] * 5
    model = FastText(vector_size=8, min_count=1, bucket=100, epochs=1, seed=1, workers=1)
    model.build_vocab(sentences)
    model.train(sentences, total_examples=len(sentences), epochs=1)
    getattr(model.wv, part)[:] = np.nan
    save_facebook_model(model, str(tmp_path / "model.bin"))
    # n-grams: a known word's vector is built with its n-grams too, so the first word is named either way
    with pytest.raises(PipelineError, match=r"model\.bin: the vector of 'film' has non-finite values"):
        vectors.align(vectors.VectorsSource("fasttext_bin", tmp_path / "model.bin"), ["film", "filmic"])
    if part == "vectors_ngrams":
        with pytest.raises(PipelineError, match=r"the vector of 'filmic' has non-finite values \(built from its"):
            vectors.align(vectors.VectorsSource("fasttext_bin", tmp_path / "model.bin"), ["filmic"])


@pytest.mark.parametrize("matrix, kind", [(np.array([["a", "b"], ["c", "d"]]), "<U1"),
                                          (np.array([[1 + 2j, 3], [4, 5]]), "complex128")])
def test_an_npy_matrix_of_text_or_complex_numbers_is_named(tmp_path, matrix, kind):
    """Text values gave a ValueError traceback; complex ones were cast to their real parts with a warning."""
    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "m.npy", matrix)
    (d / "words.txt").write_text("a\nb\n")
    with pytest.raises(PipelineError, match=rf"m\.npy: holds {kind} values, not numbers"):
        vectors.align(vectors.detect(d), ["a"])


def test_a_byte_order_mark_before_an_npy_word_list_is_no_part_of_its_first_word(tmp_path):
    """The first word of a word list saved by Notepad was '\\ufeffthe': it silently never matched."""
    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "m.npy", np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))
    (d / "words.txt").write_bytes(b"\xef\xbb\xbfthe\r\nfilm\r\n")
    result = vectors.align(vectors.detect(d), ["the", "film"])
    assert result.found.all()
    np.testing.assert_array_equal(result.matrix, [[1, 2], [3, 4]])


def test_a_word2vec_binary_holding_more_vectors_than_its_header_says_is_named(tmp_path):
    """A header counting 1 vector before 2: the second (and any after) was silently never read."""
    one = np.float32([1, 2, 3]).tobytes()
    path = write(tmp_path / "v.bin", b"1 3\nab " + one + b"\ncd " + one + b"\n")
    with pytest.raises(PipelineError, match=r"v\.bin: holds more than the 1 vectors its header announces"):
        vectors.align(vectors.VectorsSource("word2vec_binary", path), ["ab", "cd"])
    exact = write(tmp_path / "w.bin", b"2 3\nab " + one + b"\ncd " + one + b"\n")  # a trailing line break is no vector
    assert vectors.align(vectors.VectorsSource("word2vec_binary", exact), ["ab", "cd"]).found.all()


def test_a_folder_of_many_files_as_the_vectors_is_one_short_line(tmp_path):
    """embeddings.source at a folder of 20,000 files: the error listed every name (an error line of 260 KB)."""
    d = tmp_path / "emb"
    d.mkdir()
    for i in range(20_000):
        (d / f"part-{i:05d}.txt").touch()
    with pytest.raises(PipelineError, match=r"expected one vectors file, found part-00000\.txt, .*, \.\.\. "
                                            r"\(20,000 files\)$") as err:
        vectors.detect(d)
    assert len(str(err.value)) < 400
