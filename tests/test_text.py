"""The tokenizer (pipeline.text): clitics split like the embedding corpora, its options, typography, every
script (marks inside their words, scripts without spaces cut by ICU), and the choice carried to predict and serve."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline import corpus, params
from pipeline.errors import PipelineError
from pipeline.text import TextConfig, prepared_text_config, tokenize
from tests.helpers import corpus_params, prepare_params


def test_tokenizer_splits_clitics_like_the_embedding_corpora():
    cfg = TextConfig()
    assert tokenize("Don't miss the film's <b>well-made</b> finale!", cfg) == [
        "do", "n't", "miss", "the", "film", "'s", "well-made", "finale", "!"]


def test_tokenizer_options():
    text = "See https://example.com for 3.5 STARS in the 1960s..."
    assert tokenize(text, TextConfig()) == ["see", "for", "3.5", "stars", "in", "the", "1960s", "..."]
    assert tokenize(text, TextConfig(numbers="token", lowercase=False))[2:4] == ["<num>", "STARS"]
    assert "3.5" not in tokenize(text, TextConfig(numbers="drop"))
    assert tokenize(text, TextConfig(strip_urls=False))[1] == "https"


def test_typographic_quotes_and_dashes_give_the_plain_tokens():
    curly = "The film\u2019s best scene isn\u2019t enough \u2014 \u201cdull\u201d\u2026 \uff21\u00a0\ufb01ne"
    straight = "The film's best scene isn't enough -- \"dull\"... A fine"
    assert tokenize(curly, TextConfig()) == tokenize(straight, TextConfig()) == [
        "the", "film", "'s", "best", "scene", "is", "n't", "enough", "--", '"', "dull", '"', "...", "a", "fine"]
    assert tokenize("don&rsquo;t", TextConfig()) == ["do", "n't"]


def test_marks_stay_inside_their_words_in_every_script():
    # Vowel signs and viramas (Unicode Mn, Mc) are not \w to re: they used to cut every Indic word apart.
    cfg = TextConfig()
    assert tokenize("यह फिल्म बहुत अच्छी थी।", cfg) == ["यह", "फिल्म", "बहुत", "अच्छी", "थी", "।"]  # Hindi
    assert tokenize("இந்த படம் மிகவும் நன்றாக இருந்தது", cfg) == [
        "இந்த", "படம்", "மிகவும்", "நன்றாக", "இருந்தது"]                                    # Tamil
    assert tokenize("এই সিনেমাটা খুব ভালো ছিল", cfg) == ["এই", "সিনেমাটা", "খুব", "ভালো", "ছিল"]  # Bengali
    assert tokenize("ఈ సినిమా చాలా బాగుంది", cfg) == ["ఈ", "సినిమా", "చాలా", "బాగుంది"]          # Telugu
    assert tokenize("หนัง สนุก มาก", cfg) == ["หนัง", "สนุก", "มาก"]                          # Thai vowels
    assert tokenize("ड्रामा-फिल्म's", cfg) == ["ड्रामा-फिल्म", "'s"]   # hyphens and clitics as in English
    assert tokenize("\u0301 lone mark", cfg) == ["\u0301", "lone", "mark"]  # a mark with no letter: a symbol


# Sentences in the scripts written without spaces, and the words a reader sees in them.
CHINESE = "这部电影非常好看，我很喜欢。"
JAPANESE = "この映画はとても面白かったです。"
THAI = "หนังเรื่องนี้สนุกมาก"


def test_scripts_without_spaces_are_cut_into_words_by_icu():
    for tokenizer in ("auto", "icu"):
        cfg = TextConfig(tokenizer=tokenizer)
        zh, ja = tokenize(CHINESE, cfg), tokenize(JAPANESE, cfg)
        assert zh[:5] == ["这", "部", "电影", "非常", "好看"] and "电影" in zh and "。" in zh
        assert len(ja) >= 6 and {"映画", "とても", "です"} <= set(ja)
        for clause in ("这部电影非常好看", "我很喜欢", JAPANESE[:-1]):
            assert clause not in zh + ja
        assert tokenize(THAI, cfg) == ["หนัง", "เรื่อง", "นี้", "สนุก", "มาก"]
        assert tokenize("ຮູບເງົາເລື່ອງນີ້ມ່ວນຫຼາຍ", cfg) == ["ຮູບເງົາ", "ເລື່ອງ", "ນີ້", "ມ່ວນ", "ຫຼາຍ"]  # Lao
        assert tokenize("ខ្សែភាពយន្តនេះល្អណាស់", cfg) == ["ខ្សែភាពយន្ត", "នេះ", "ល្អ", "ណាស់"]  # Khmer
        # Latin letters next to Han are a word of their own; numbers and clitics as in English
        assert tokenize("iPhone很好, don't 2010年", cfg) == ["iphone", "很好", ",", "do", "n't", "2010", "年"]
    # words: each run whole (what the loud signal of prepare catches on a corpus of them)
    assert tokenize(CHINESE, TextConfig(tokenizer="words")) == ["这部电影非常好看", ",", "我很喜欢", "。"]


def test_the_character_classes_are_unicodes():
    from pipeline.text import _mark_patterns, _unspaced_find
    import regex
    import unicodedata
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    marks = [c for c in points if unicodedata.category(c)[0] == "M"]  # Python's Unicode (the regex module's is newer)
    assert all(_mark_patterns().find.fullmatch(c) for c in marks)
    han = [c for c in points if regex.fullmatch(r"\p{Han}", c) and c.isalpha()]
    assert len(han) > 90_000 and all(_unspaced_find().fullmatch(c) for c in han)
    assert _unspaced_find().fullmatch("ー") and _unspaced_find().fullmatch("ก") and not _unspaced_find().search("ʼa1,ि")


def test_every_tokenizer_gives_english_the_same_tokens():
    text = "Don't miss the film's <b>well-made</b> finale -- 3.5 stars, naïve café in the 1960s!"
    tokens = [tokenize(text, TextConfig(tokenizer=t)) for t in ("words", "icu", "auto")]
    assert tokens[0] == tokens[1] == tokens[2]


def test_an_unknown_tokenizer_is_refused():
    raw = {**prepare_params().__dict__, "tokenizer": "spaces"}
    with pytest.raises(PipelineError, match=r"params.yaml: 'prepare.tokenizer' must be one of 'auto', 'words', "
                                            r"'icu', got 'spaces'"):
        params.parse_section("prepare", raw)
    with pytest.raises(PipelineError, match="tokenizer 'spaces' is not one of auto, words, icu"):
        TextConfig(tokenizer="spaces")  # a checkpoint's or a sidecar's settings


MULTILINGUAL = [(CHINESE, "pos"), ("这部电影太无聊了，我不喜欢。", "neg"), (JAPANESE, "pos"),
                ("この映画はつまらなかったです。", "neg"), (THAI, "pos"), ("หนังเรื่องนี้น่าเบื่อมาก", "neg"),
                ("यह फिल्म बहुत अच्छी थी", "pos"), ("यह फिल्म बहुत खराब थी", "neg")]


def _multilingual_corpus(path: Path, rows) -> Path:
    # Each sentence a few times with a distinct number, so every class reaches every split.
    pd.DataFrame([(f"{text} {i}", label) for i in range(12) for text, label in rows],
                 columns=["text", "label"]).to_csv(path, index=False)
    return path


def _prepared_tokens(out: Path) -> list[list[str]]:
    return [t for name in ("train", "val", "test") for t in pd.read_parquet(out / f"{name}.parquet")["tokens"]]


def test_prepare_resolves_auto_by_the_corpus_and_records_it(tmp_path):
    source = _multilingual_corpus(tmp_path / "c.csv", MULTILINGUAL)
    report = corpus.prepare(source, corpus_params(), prepare_params(), tmp_path / "out", 1)
    assert report["tokenizer"] == "icu" and report["rows_segmented"] == 6 * 12 and report["icu_version"]
    tokens = {tuple(t[:-1]) for t in _prepared_tokens(tmp_path / "out")}  # the row number dropped
    assert ("यह", "फिल्म", "बहुत", "अच्छी", "थी") in tokens
    assert ("หนัง", "เรื่อง", "นี้", "สนุก", "มาก") in tokens
    assert tuple(tokenize(CHINESE, TextConfig(tokenizer="icu"))) in tokens
    fallback = TextConfig(tokenizer="auto")
    for name in ("train", "val", "test"):
        assert prepared_text_config(tmp_path / "out" / f"{name}.parquet", fallback) == TextConfig(tokenizer="icu")
    # English alone: words, and the same tokens
    english = _multilingual_corpus(tmp_path / "e.csv", [("a fine film", "pos"), ("a dull film", "neg")])
    report = corpus.prepare(english, corpus_params(), prepare_params(), tmp_path / "en", 1)
    assert report["tokenizer"] == "words" and report["rows_segmented"] == 0 and "icu_version" not in report
    assert prepared_text_config(tmp_path / "en" / "train.parquet", fallback) == TextConfig(tokenizer="words")
    # in worker processes, chunk by chunk: the same splits, the same resolution
    report = corpus.prepare(source, corpus_params(), prepare_params(workers=2), tmp_path / "w2", 2, chunk_rows=17)
    assert report["tokenizer"] == "icu" and report["rows_segmented"] == 6 * 12
    for name in ("train", "val", "test"):
        assert pd.read_parquet(tmp_path / "w2" / f"{name}.parquet").equals(pd.read_parquet(tmp_path / "out" / f"{name}.parquet"))
    # set by hand, it is kept
    corpus.prepare(english, corpus_params(), prepare_params(tokenizer="icu"), tmp_path / "i", 1)
    assert prepared_text_config(tmp_path / "i" / "train.parquet", fallback).tokenizer == "icu"


def test_prepare_reports_tokens_per_script_and_stops_when_most_are_no_words(tmp_path):
    source = _multilingual_corpus(tmp_path / "c.csv", MULTILINGUAL)
    report = corpus.prepare(source, corpus_params(), prepare_params(), tmp_path / "out", 1)
    scripts = report["scripts"]
    assert {"HAN", "HIRAGANA", "THAI", "DEVANAGARI"} <= set(scripts)
    assert all(s["single_mark"] == 0 and s["too_long"] == 0 for s in scripts.values())
    assert report["train_letters_not_in_words"] == 0
    # words leaves the Chinese, Japanese and Thai clauses whole: most of the text is in no word
    only_unspaced = [row for row in MULTILINGUAL if not row[0].startswith("यह")]
    source = _multilingual_corpus(tmp_path / "u.csv", only_unspaced)
    with pytest.raises(PipelineError, match=r"u.csv: \d+% of the training text's letters are in tokens that are no "
                                            r"words \(\d+ of its \d+ Han tokens longer than a word\); set "
                                            r"prepare.tokenizer: auto"):
        corpus.prepare(source, corpus_params(), prepare_params(tokenizer="words"), tmp_path / "w", 1)
    # text no tokenizer cuts into words (a column of hashes, say): the error says what to check
    hashes = _multilingual_corpus(tmp_path / "h.csv", [("f" * 64, "pos"), ("e" * 64, "neg")])
    with pytest.raises(PipelineError, match=r"100% .* \(24 of its 24 Latin tokens longer than a word\); "
                                            r"prepare.tokenizer \(words\) cannot cut it into words: check "
                                            r"corpus.text_column"):
        corpus.prepare(hashes, corpus_params(), prepare_params(), tmp_path / "x", 1)


def test_predict_explain_and_serve_tokenize_as_the_checkpoint_says(tmp_path):
    """A model trained on segmented text: predict, the explanations and the server cut the text as prepare
    did (the checkpoint's tokenizer), so its words are found in the vocabulary."""
    torch = pytest.importorskip("torch")
    from pipeline.checkpoint import load_checkpoint, save_checkpoint
    from pipeline.explain import explain_texts
    from pipeline.inference import encode_texts
    from pipeline.model import ModelConfig, TextClassifier
    from pipeline.serve import create_app
    from tests.test_serve import LIMITS, LiveServer

    config = TextConfig(tokenizer="icu")
    words = sorted({w for text, _ in MULTILINGUAL for w in tokenize(text, config)})
    itos = ["<pad>", "<unk>"] + words
    torch.manual_seed(0)
    model = TextClassifier(ModelConfig(vocab_size=len(itos), embedding_dim=8, num_classes=2, hidden_size=8))
    save_checkpoint(tmp_path / "model.pt", model, model.state_dict(), itos, ["neg", "pos"], config, 1, {})
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt.text_config == config
    expected = tokenize(CHINESE, config)
    assert 1 not in encode_texts(ckpt, [tokenize(CHINESE, ckpt.text_config)])[0]  # no <unk>
    assert explain_texts(ckpt, [CHINESE])[0].tokens == expected
    live = LiveServer(create_app(tmp_path / "model.pt", LIMITS))
    try:
        status, data = live.post({"text": CHINESE, "explain": True})
    finally:
        live.stop()
    assert status == 200 and data["predictions"][0]["explanation"]["tokens"] == expected


def test_lowercasing_is_unicodes_for_every_language_with_the_turkish_capital_dotted_i_made_i():
    cfg = TextConfig()
    assert tokenize("İSTANBUL İstanbul", cfg) == ["istanbul", "istanbul"]  # not "i̇stanbul" (i + U+0307)
    assert tokenize("ΟΔΟΣ ΚΑΛΟΣ", cfg) == ["οδος", "καλος"]                  # final sigma
    assert tokenize("Straße ẞ", cfg) == ["straße", "ß"]                       # ß kept, as in the vectors
    assert tokenize("KIRMIZI ılık", cfg) == ["kirmizi", "ılık"]                # the documented limit
    assert tokenize("İstanbul", TextConfig(lowercase=False)) == ["İstanbul"]
