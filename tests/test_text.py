"""The tokenizer (pipeline.text): clitics split like the embedding corpora, its options, typography."""

from __future__ import annotations

from pipeline.text import TextConfig, tokenize


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
