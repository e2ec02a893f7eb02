"""Text cleaning and tokenization, shared by the prepare stage and by predict.

The tokenizer follows the conventions of the corpora GloVe and word2vec were trained on: words,
numbers and single punctuation marks are tokens, and English clitics are split off the way the
Penn Treebank does ("don't" -> "do", "n't"; "film's" -> "film", "'s"), because those are the forms
that have vectors. Hyphenated words stay whole ("well-made" has a GloVe vector).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

NUM_TOKEN = "<num>"

_HTML_TAG = re.compile(r"<[^>]{0,200}>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_TOKEN = re.compile(
    r"""
      [^\W_]+(?=n't\b)                 # "do" of "don't"
    | n't\b                            # the "n't" itself
    | '(?:s|re|ve|ll|d|m)\b            # clitics: 's 're 've 'll 'd 'm
    | \d+(?:[.,:/]\d+)*(?![^\W_])       # numbers: 42, 3.5, 1,000, 9/10 (not 20th, 1960s)
    | [^\W_]+(?:-[^\W_]+|'(?!(?:s|re|ve|ll|d|m|t)\b)[^\W_]+)*   # words, well-made, o'clock
    | \.\.\.|--+                        # ellipsis and dashes, as GloVe has them
    | [^\w\s]                          # any other single symbol
    """,
    re.VERBOSE | re.IGNORECASE,
)
_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")


@dataclass(frozen=True)
class TextConfig:
    lowercase: bool = True
    strip_html: bool = True
    strip_urls: bool = True
    numbers: str = "keep"  # keep | token | drop
    max_tokens: int | None = None

    @classmethod
    def from_params(cls, p) -> "TextConfig":
        return cls(p.lowercase, p.strip_html, p.strip_urls, p.numbers, p.max_tokens)


def clean(text: str, cfg: TextConfig) -> str:
    if cfg.strip_html:
        text = html.unescape(_HTML_TAG.sub(" ", text))
    if cfg.strip_urls:
        text = _URL.sub(" ", text)
    if cfg.lowercase:
        text = text.lower()
    return text


def tokenize(text: str, cfg: TextConfig) -> list[str]:
    tokens = _TOKEN.findall(clean(text, cfg))
    if cfg.numbers != "keep":
        if cfg.numbers == "token":
            tokens = [NUM_TOKEN if _NUMBER.fullmatch(t) else t for t in tokens]
        else:
            tokens = [t for t in tokens if not _NUMBER.fullmatch(t)]
    if cfg.max_tokens is not None:
        tokens = tokens[: cfg.max_tokens]
    return tokens
