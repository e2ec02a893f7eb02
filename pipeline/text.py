"""Text normalisation, cleaning and tokenization, shared by the prepare stage and by predict.

Text is first normalised the way real-world text needs: Unicode NFKC (full-width letters, ligatures,
non-breaking spaces and the one-character ellipsis become their plain forms), then typographic quotes,
apostrophes and dashes are mapped to the ASCII forms the embedding corpora use, so "isn’t" and "isn't"
give the same tokens. Invisible characters (zero-width spaces, soft hyphens, byte-order marks) go.

The tokenizer follows the conventions of the corpora GloVe and word2vec were trained on: words,
numbers and single punctuation marks are tokens, and English clitics are split off the way the
Penn Treebank does ("don't" -> "do", "n't"; "film's" -> "film", "'s"), because those are the forms
that have vectors. Hyphenated words stay whole ("well-made" has a GloVe vector). A word is a run of
letters and digits with the combining marks among them (Unicode categories Mn, Mc, Me: the vowel signs
and viramas of Devanagari, Bengali, Tamil, Thai and the other Brahmic scripts), so "अच्छी" is one word,
not four pieces.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import regex  # Unicode properties, which the standard library's re lacks

NUM_TOKEN = "<num>"

# After NFKC: typographic marks to the forms of the embedding corpora (PTB-style "--" for dashes).
_TYPOGRAPHY = str.maketrans({
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u00b4\u0060\u02bc", "'"),  # ‘ ’ ‚ ‛ ′ ´ ` ʼ
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),      # “ ” „ ‟ ″ « »
    **dict.fromkeys("\u2010\u2011\u2212", "-"),                              # hyphens, minus sign
    **dict.fromkeys("\u2012\u2013\u2014\u2015", "--"),                       # figure, en, em, bar dashes
    **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad", ""),             # invisible characters
})
# C0 and C1 control characters but tab, line feed and carriage return (which are blanks already).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_HTML_TAG = re.compile(r"<[^>]{0,200}>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)


def _char_class(prop: str) -> str:
    """The code points a Unicode property (`regex` syntax, e.g. \\p{M}) matches, as the body of a
    character class for `re`, whose matching is faster: `re` has no Unicode properties of its own."""
    every = np.concatenate([np.arange(0xD800, dtype="<u4"), np.arange(0xE000, 0x110000, dtype="<u4")])
    runs = regex.finditer(f"{prop}+", every.tobytes().decode("utf-32-le"))
    return "".join(re.escape(m[0][0]) + (f"-{re.escape(m[0][-1])}" if len(m[0]) > 1 else "") for m in runs)


# Combining marks. A mark is never \w to re: a word is letters with marks among them. The marks come
# after a letter, and the look-ahead (one range) keeps the class's long list of ranges off the ASCII
# text that is most of what English corpora hold: the tokenizer is as fast as without marks.
_MARK = "(?=[\u0300-\U0010ffff])[%s]" % _char_class(r"\p{M}")
_WORD = r"[^\W_]+(?:%s+[^\W_]*)*" % _MARK
_TOKEN = re.compile(
    r"""
      [^\W_]+(?=n't\b)                 # "do" of "don't"
    | n't\b                            # the "n't" itself
    | '(?:s|re|ve|ll|d|m)\b            # clitics: 's 're 've 'll 'd 'm
    | \d+(?:[.,:/]\d+)*(?![^\W_]|MARK) # numbers: 42, 3.5, 1,000, 9/10 (not 20th, 1960s)
    | WORD(?:-WORD|'(?!(?:s|re|ve|ll|d|m|t)\b)WORD)*   # words, well-made, o'clock
    | \.\.\.|--+                        # ellipsis and dashes, as GloVe has them
    | [^\w\s]                          # any other single symbol
    """.replace("WORD", _WORD).replace("MARK", _MARK),
    re.VERBOSE | re.IGNORECASE,
)
_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")


@dataclass(frozen=True)
class TextConfig:
    lowercase: bool = True
    strip_html: bool = True
    strip_urls: bool = True
    numbers: str = "keep"  # keep | token | drop

    @classmethod
    def from_params(cls, p) -> "TextConfig":
        return cls(p.lowercase, p.strip_html, p.strip_urls, p.numbers)


def normalize(text: str) -> str:
    """NFKC, then typographic quotes, apostrophes and dashes to their ASCII forms; control characters
    (a NUL byte, say) become blanks, so they are never tokens."""
    return _CONTROL.sub(" ", unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHY))


def clean(text: str, cfg: TextConfig) -> str:
    if cfg.strip_html:
        text = html.unescape(_HTML_TAG.sub(" ", text))
    text = normalize(text)  # after unescaping: &rsquo; becomes ’ and then '
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
    return tokens
