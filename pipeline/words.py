"""What the tokens of a corpus look like, per script: the checks prepare reports and stops on, and
`prepare.tokenizer: auto` resolved (docs/text.md).

A token's script is the first word of the Unicode name of its first character (text.token_script). A
token is no word when it is a single combining mark (a vowel sign cut off its letter) or longer than a
word of its script can be (text.WORD_LENGTH): a clause of Chinese or Thai left whole, a hash. Counted in
prepare's worker processes, a chunk at a time, from the Arrow array of the chunk's tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.text import DEFAULT_WORD_LENGTH, WORD_LENGTH, TextConfig, icu_version, token_script

# Prepare stops when more than this share of the training text's letters is in tokens that are no word.
MAX_NOT_WORDS = 0.5


@dataclass
class WordFacts:
    """Of a chunk, or of the corpus (join): the rows the segmenter cut, the per-script counts (tokens,
    single_mark, too_long), and per row the characters in tokens of letters and in those that are no word."""
    segmented: int
    scripts: dict
    word_chars: np.ndarray  # int32
    odd_chars: np.ndarray   # int32

    @classmethod
    def of_chunk(cls, tokens: pa.ListArray, segmented: int) -> "WordFacts":
        return cls(segmented, *token_checks(tokens))

    @classmethod
    def join(cls, parts: list["WordFacts"]) -> "WordFacts":
        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0, np.int32)
        return cls(sum(p.segmented for p in parts), merge_counts([p.scripts for p in parts]),
                   joined("word_chars"), joined("odd_chars"))


def resolve_and_check(facts: WordFacts, train: np.ndarray, cfg: TextConfig, source: str) -> tuple[TextConfig, dict]:
    """`auto` resolved, the check of the training rows (`train`: a mask), and what prepare reports."""
    cfg = resolve_tokenizer(cfg, facts.segmented)
    share = check_words(facts.scripts, facts.word_chars[train], facts.odd_chars[train], cfg, source)
    report = {"tokenizer": cfg.tokenizer, **({"icu_version": icu_version()} if cfg.tokenizer == "icu" else {}),
              "rows_segmented": facts.segmented, "scripts": facts.scripts,
              "train_letters_not_in_words": round(share, 4)}
    return cfg, report


@functools.lru_cache(maxsize=1 << 16)
def _char_facts(c: str) -> tuple[str | None, int, bool]:
    """A token's script, the most characters a word of it has, and whether it is a combining mark, by
    its first character."""
    script = token_script(c)
    return script, WORD_LENGTH.get(script, DEFAULT_WORD_LENGTH), unicodedata.category(c)[0] == "M"


def token_checks(tokens: pa.ListArray) -> tuple[dict, np.ndarray, np.ndarray]:
    """What the tokens of a chunk look like, per script (text.token_script): how many, how many are a
    single combining mark, how many longer than a word of the script can be (text.WORD_LENGTH); and per
    row, the characters in tokens of letters and in those that are no word. ASCII tokens are counted
    at once from Arrow's buffers (Latin, or no script); only the others one at a time."""
    flat = tokens.flatten()
    n = len(tokens)
    if len(flat) == 0:
        return {}, np.zeros(n, np.int32), np.zeros(n, np.int32)
    # Straight from Arrow's buffers (a token is never empty): each token's bytes, whether they are all
    # ASCII, and whether the first is a letter.
    offsets = np.frombuffer(flat.buffers()[1], np.int32)[flat.offset:flat.offset + len(flat) + 1]
    data = np.frombuffer(flat.buffers()[2], np.uint8)
    length = np.diff(offsets).astype(np.int64)  # bytes: the characters of an ASCII token
    high = data[offsets[0]:offsets[-1]] >= 0x80
    where = np.flatnonzero(high)
    if len(where) * 16 < len(high):  # a few bytes past ASCII (English): find their tokens
        ascii_ = np.ones(len(flat), bool)
        ascii_[np.searchsorted(offsets, where + offsets[0], side="right") - 1] = False
    else:  # many: count them per token
        seen = np.concatenate([[0], np.cumsum(high, dtype=np.int32)])
        ascii_ = seen[offsets[1:] - offsets[0]] == seen[offsets[:-1] - offsets[0]]
    first = data[offsets[:-1]] | 0x20
    word = ascii_ & (first >= ord("a")) & (first <= ord("z"))
    odd = word & (length > DEFAULT_WORD_LENGTH)
    scripts = collections.defaultdict(lambda: {"tokens": 0, "single_mark": 0, "too_long": 0})
    if word.any():
        scripts["LATIN"].update(tokens=int(word.sum()), too_long=int(odd.sum()))
    others = np.flatnonzero(~ascii_)
    for i, token in zip(others.tolist(), flat.take(pa.array(others)).to_pylist()):
        length[i] = chars = len(token)
        script, limit, mark = _char_facts(token[0])
        if script is None:
            continue
        counts = scripts[script]
        counts["tokens"] += 1
        word[i] = True
        if chars == 1 and mark:
            counts["single_mark"] += 1
            odd[i] = True
        elif chars > limit:
            counts["too_long"] += 1
            odd[i] = True
    # per row: sums over each row's run of tokens
    bounds = tokens.offsets.to_numpy() - tokens.offsets[0].as_py()

    def per_row(chars: np.ndarray) -> np.ndarray:
        total = np.concatenate([[0], np.cumsum(chars)])
        return (total[bounds[1:]] - total[bounds[:-1]]).astype(np.int32)

    word_chars = per_row(length * word)
    odd_chars = per_row(length * odd) if odd.any() else np.zeros(n, np.int32)
    return dict(scripts), word_chars, odd_chars


def merge_counts(parts: list[dict]) -> dict:
    """The chunks' per-script counts added up, the most frequent script first."""
    scripts: dict = {}
    for part in parts:
        for script, counts in part.items():
            total = scripts.setdefault(script, dict.fromkeys(counts, 0))
            for k, v in counts.items():
                total[k] += v
    return dict(sorted(scripts.items(), key=lambda kv: -kv[1]["tokens"]))


def check_words(scripts: dict, word_chars: np.ndarray, odd_chars: np.ndarray, cfg: TextConfig, source: str) -> float:
    """The share of the training text's letters (`word_chars`, `odd_chars`: the training rows') in tokens
    that are no word (a lone combining mark, or longer than a word of its script); an error naming
    prepare.tokenizer when it is most of the text. `scripts`: the corpus's counts (token_checks)."""
    letters = int(word_chars.sum(dtype=np.int64))
    share = int(odd_chars.sum(dtype=np.int64)) / letters if letters else 0.0
    if share > MAX_NOT_WORDS:
        worst = max(scripts, key=lambda k: scripts[k]["single_mark"] + scripts[k]["too_long"])
        counts = scripts[worst]
        marks = f" and {counts['single_mark']:,} a lone mark" if counts["single_mark"] else ""
        what = f"{counts['too_long']:,} of its {counts['tokens']:,} {worst.title()} tokens longer than a word{marks}"
        if cfg.tokenizer == "words" and worst in WORD_LENGTH:  # a script written without spaces
            fix = "set prepare.tokenizer: auto (it cuts Chinese, Japanese, Thai, Lao, Khmer and Myanmar into words)"
        else:
            fix = (f"prepare.tokenizer ({cfg.tokenizer}) cannot cut it into words: check corpus.text_column "
                   "names the text, or put spaces between the words")
        raise PipelineError(f"{source}: {share:.0%} of the training text's letters are in tokens that are no words "
                            f"({what}); {fix}")
    return share


def resolve_tokenizer(cfg: TextConfig, segmented_rows: int) -> TextConfig:
    """`auto` as the corpus needed it: icu if the segmenter cut any row, else words (both give the tokens
    already made: they differ only on the scripts written without spaces)."""
    if cfg.tokenizer != "auto":
        return cfg
    return dataclasses.replace(cfg, tokenizer="icu" if segmented_rows else "words")
