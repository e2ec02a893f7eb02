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

Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Myanmar) are cut
into words by ICU's word-break iterator (dictionaries for each of them; the icu4py wheel bundles ICU),
under `tokenizer: icu`, or `auto` where the text holds such a script. `words` keeps each run of them
whole. Text without those scripts gives the same tokens under all three. docs/text.md says why ICU.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import html
import json
import re
import types
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

NUM_TOKEN = "<num>"

# After NFKC: typographic marks to the forms of the embedding corpora (PTB-style "--" for dashes).
_TYPOGRAPHY = str.maketrans({
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u00b4\u0060\u02bc", "'"),  # ‘ ’ ‚ ‛ ′ ´ ` ʼ
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),      # “ ” „ ‟ ″ « »
    **dict.fromkeys("\u2010\u2011\u2212", "-"),                              # hyphens, minus sign
    **dict.fromkeys("\u2012\u2013\u2014\u2015", "--"),                       # figure, en, em, bar dashes
    **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad", ""),             # invisible characters
})
_ASCII_TYPOGRAPHY = [(chr(k), v) for k, v in _TYPOGRAPHY.items() if k < 128]  # the backtick
# C0 and C1 control characters but tab, line feed and carriage return (which are blanks already).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_HTML_TAG = re.compile(r"<[^>]{0,200}>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_PATTERN = r"""
      [^\W_]+(?=n't\b)                 # "do" of "don't"
    | n't\b                            # the "n't" itself
    | '(?:s|re|ve|ll|d|m)\b            # clitics: 's 're 've 'll 'd 'm
    | \d+(?:[.,:/]\d+)*(?![^\W_]|MARK) # numbers: 42, 3.5, 1,000, 9/10 (not 20th, 1960s)
    | WORD(?:-WORD|'(?!(?:s|re|ve|ll|d|m|t)\b)WORD)*   # words, well-made, o'clock
    | \.\.\.|--+                        # ellipsis and dashes, as GloVe has them
    | [^\w\s]                          # any other single symbol
    """
# For text without combining marks (most text of most corpora; all of any text below U+0300): faster.
_TOKEN_NO_MARKS = re.compile(_PATTERN.replace("WORD", r"[^\W_]+").replace("|MARK", ""), re.VERBOSE | re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")
# Letters of the scripts written without spaces between words (by Script_Extensions, so the Japanese
# long-vowel mark and the iteration marks count): each run of them, with its marks, goes to ICU.
UNSPACED_SCRIPTS = ("Han", "Hiragana", "Katakana", "Thai", "Lao", "Khmer", "Myanmar")
UNSPACED_FROM = "\u0e00"  # their letters from here on (Thai's block) are the ones taken


@functools.cache
def _code_points():
    """Every code point but the surrogates, as numbers and as one string (for `regex` to scan)."""
    import numpy as np

    points = np.concatenate([np.arange(0xD800, dtype="<u4"), np.arange(0xE000, 0x110000, dtype="<u4")])
    return points, points.tobytes().decode("utf-32-le")


def _has(prop: str, below: int = 0x110000):
    """A boolean per code point: whether it has the Unicode property (`regex` syntax, e.g. \\p{M}; `re`
    has no Unicode properties of its own); looked up below `below` only."""
    import numpy as np
    import regex

    points, text = _code_points()
    has = np.zeros(0x110000, bool)
    for m in regex.finditer(f"{prop}+", text, endpos=below - 0x800 if below > 0xE000 else below):
        has[points[m.start():m.end()]] = True
    return has


def _char_class(has) -> tuple[str, str]:
    """The code points marked in `has`, as the bodies of two character classes for `re` (which then
    matches faster than `regex`): those below U+10000, then those above. re finds a character of the
    first kind in one table look-up."""
    import numpy as np

    edges = np.flatnonzero(np.diff(np.concatenate([[False], has, [False]]).astype(np.int8)))
    runs = [(a, b - 1) for a, b in zip(edges[::2].tolist(), edges[1::2].tolist())]
    runs = [part for a, b in runs for part in ([(a, b)] if a > 0xFFFF or b <= 0xFFFF else [(a, 0xFFFF), (0x10000, b)])]

    def body(parts):
        return "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "") for a, b in parts)
    return body(r for r in runs if r[0] <= 0xFFFF), body(r for r in runs if r[0] > 0xFFFF)


def _any_of(bmp: str, astral: str) -> str:
    """A pattern for one character of either class, the second's long list of ranges tried only above U+FFFF."""
    return f"(?:[{bmp}]|(?=[\U00010000-\U0010ffff])[{astral}])"


@functools.cache
def _mark_patterns() -> types.SimpleNamespace:
    """Combining marks (Mn, Mc, Me), never \\w to re: a word is letters with marks among them. Built on
    first need (text past U+02FF), in 40 ms: `mark` (one mark), `find`, `token` (the tokenizer)."""
    mark = _any_of(*_char_class(_has(r"\p{M}")))
    return types.SimpleNamespace(mark=mark, find=re.compile(mark), token=re.compile(
        _PATTERN.replace("WORD", r"[^\W_]+(?:MARK+[^\W_]*)*").replace("MARK", mark), re.VERBOSE | re.IGNORECASE))


@functools.cache
def _unspaced_letters() -> tuple[str, str]:
    """The letters of the scripts written without spaces (by Script_Extensions, so the Japanese
    long-vowel mark and the iteration marks count), from U+0E00 on: the modifier letters before it that
    they share with Latin (ʼ) are no part of them. As two class bodies (_char_class); in 30 ms."""
    import numpy as np

    below = 0x40000  # planes 0 to 3 hold every letter of them (the CJK ideographs end in plane 3)
    scripts = np.logical_or.reduce([_has(rf"\p{{scx={name}}}", below) for name in UNSPACED_SCRIPTS])
    letters = scripts & _has(r"[\p{L}\p{Nl}]", below)
    letters[:ord(UNSPACED_FROM)] = False
    return _char_class(letters)


@functools.cache
def _unspaced_find():
    """A letter of a script written without spaces."""
    return re.compile(_any_of(*_unspaced_letters()))


@functools.cache
def _unspaced_token():
    """The tokenizer with each run of the letters of _unspaced_letters (and its marks) a token of its
    own ("iphone很好" is "iphone" and "很好"), for ICU to cut; built on first need, in a tenth of a second."""
    letters, marks = "".join(_unspaced_letters()), _mark_patterns()
    return re.compile(f"(?P<unspaced>[{letters}]+(?:{marks.mark}+[{letters}]*)*)|"
                      + marks.token.pattern.replace(r"[^\W_]", f"[^\\W_{letters}]"), re.VERBOSE | re.IGNORECASE)


TOKENIZERS = ("auto", "words", "icu")

# What prepare checks the tokens against: a word's script, and the most characters (marks included) a
# word of it plausibly has. Chinese and Japanese words seldom pass 6 characters (a clause left whole
# does); Thai, Lao, Khmer and Myanmar words with their marks 20; the rest 40 (long German compounds).
WORD_LENGTH = {"HAN": 6, "HIRAGANA": 6, "KATAKANA": 6, "THAI": 20, "LAO": 20, "KHMER": 20, "MYANMAR": 20}
DEFAULT_WORD_LENGTH = 40


def token_script(token: str) -> str | None:
    """A token's script: the first word of the Unicode name of its first character (LATIN, DEVANAGARI,
    THAI, HAN for the CJK ideographs...); None for numbers and symbols."""
    c = token[0]
    if unicodedata.category(c)[0] not in "LM":
        return None
    script = unicodedata.name(c, "UNNAMED").split(" ", 1)[0]
    return "HAN" if script == "CJK" else script


@dataclass(frozen=True)
class TextConfig:
    lowercase: bool = True
    strip_html: bool = True
    strip_urls: bool = True
    numbers: str = "keep"  # keep | token | drop
    # words | icu | auto (icu where the text holds a script written without spaces; prepare resolves
    # it to the one its corpus needed, which the checkpoint keeps). Checkpoints from before: words.
    tokenizer: str = "words"

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise PipelineError(f"tokenizer {self.tokenizer!r} is not one of {', '.join(TOKENIZERS)}")

    @classmethod
    def from_params(cls, p) -> "TextConfig":
        return cls(p.lowercase, p.strip_html, p.strip_urls, p.numbers, p.tokenizer)


# The prepared splits' Parquet metadata holds the settings they were tokenized with (`auto` resolved):
# what train puts in the checkpoint, and how domain_vectors tokenizes the unlabelled text.
TEXT_CONFIG_KEY = b"pipeline.text_config"


def text_config_metadata(cfg: TextConfig) -> dict:
    return {TEXT_CONFIG_KEY: json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()}


def prepared_text_config(split: Path, fallback: TextConfig) -> TextConfig:
    """The tokenizer settings a prepared split was made with (its Parquet metadata); `fallback` (the
    prepare params) for a split written without them."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(split).metadata or {}
    if TEXT_CONFIG_KEY not in meta:
        return fallback
    try:
        return TextConfig(**json.loads(meta[TEXT_CONFIG_KEY]))
    except (ValueError, TypeError, PipelineError) as e:
        raise PipelineError(f"{split}: unreadable tokenizer settings in its metadata ({e}); run the prepare stage again") from None


def normalize(text: str) -> str:
    """NFKC, then typographic quotes, apostrophes and dashes to their ASCII forms; control characters
    (a NUL byte, say) become blanks, so they are never tokens."""
    if text.isascii():  # NFKC leaves ASCII as it is, and the table maps few ASCII characters: faster
        for char, replacement in _ASCII_TYPOGRAPHY:
            text = text.replace(char, replacement)
        return _CONTROL.sub(" ", text)
    return _CONTROL.sub(" ", unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHY))


def clean(text: str, cfg: TextConfig) -> str:
    # (the `in` tests only skip a substitution that could not match: faster on text without tags or URLs)
    if cfg.strip_html:
        text = html.unescape(_HTML_TAG.sub(" ", text) if "<" in text else text)
    text = normalize(text)  # after unescaping: &rsquo; becomes ’ and then '
    if cfg.strip_urls and ("://" in text or "w." in text or "W." in text):
        text = _URL.sub(" ", text)
    if cfg.lowercase:
        # Unicode's default lowercasing, for every language alike (docs/text.md, "Case"): final sigma
        # right (ΟΔΟΣ -> οδος), ß kept (as the vectors keep it). The one fix: the Turkish capital İ
        # becomes i, not i and a combining dot. Turkish I still becomes i, not ı (that needs the language).
        text = text.lower()
        if not text.isascii():
            text = text.replace("i\u0307", "i")
    return text


def _letter_from(text: str, first: str) -> bool:
    """Whether the text has a letter (L, Nl) from `first` on: a test of the distinct characters, which
    spares English text with a symbol or an emoji past U+0E00 the building of _unspaced_find."""
    return any(c >= first and unicodedata.category(c) in _LETTERS for c in set(text))


_LETTERS = {"Lu", "Ll", "Lt", "Lm", "Lo", "Nl"}


@functools.cache
def _word_breaker():
    try:
        from icu4py.breakers import WordBreaker
    except ImportError as e:
        raise PipelineError(f"tokenizer icu needs the icu4py package ({e}); install requirements.txt, or set "
                            "prepare.tokenizer: words") from None
    return WordBreaker


def icu_version() -> str:
    import icu4py
    return icu4py.icu_version


def _segmented(text: str) -> list[str]:
    """The tokens of a text with runs of unspaced scripts in it: those runs cut where ICU's word breaks
    fall inside them (one break iterator over the whole text: faster than one per run, the same cuts)."""
    cuts = [start for start, _ in _word_breaker()(text, "root").segments()]
    tokens = []
    for m in _unspaced_token().finditer(text):
        start, end = m.span("unspaced")
        if start < 0:
            tokens.append(m.group())
            continue
        i = bisect.bisect_right(cuts, start)
        while i < len(cuts) and cuts[i] < end:
            tokens.append(text[start:cuts[i]])
            start, i = cuts[i], i + 1
        tokens.append(text[start:end])
    return tokens


def tokenize_counted(text: str, cfg: TextConfig) -> tuple[list[str], bool]:
    """The tokens, and whether the segmenter cut any (what `auto` resolves by)."""
    text = clean(text, cfg)
    segmented = False
    top = "\0" if text.isascii() else max(text)
    if top < "\u0300":  # no marks, no script without spaces
        tokens = _TOKEN_NO_MARKS.findall(text)
    elif cfg.tokenizer != "words" and top >= UNSPACED_FROM and _letter_from(text, UNSPACED_FROM) \
            and _unspaced_find().search(text):
        tokens, segmented = _segmented(text), True
    elif _mark_patterns().find.search(text):
        tokens = _mark_patterns().token.findall(text)
    else:
        tokens = _TOKEN_NO_MARKS.findall(text)
    if cfg.numbers != "keep":
        if cfg.numbers == "token":
            tokens = [NUM_TOKEN if _NUMBER.fullmatch(t) else t for t in tokens]
        else:
            tokens = [t for t in tokens if not _NUMBER.fullmatch(t)]
    return tokens, segmented


def tokenize(text: str, cfg: TextConfig) -> list[str]:
    return tokenize_counted(text, cfg)[0]


def tokenize_all(texts, cfg: TextConfig) -> tuple[list[list[str]], int]:
    """Each text's tokens, and how many texts the segmenter cut."""
    tokens, segmented = [], 0
    for text in texts:
        words, cut = tokenize_counted(text, cfg)
        tokens.append(words)
        segmented += cut
    return tokens, segmented
