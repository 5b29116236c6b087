import pytest

from contracts.tts_models import canonical_model
from tts_services.persian import normalize_persian
from tts_services.text import MAX_SENTENCE_CHARS, detect_lang, normalize, numbers_to_words, split_sentences

ZWNJ = "\u200c"


def test_detects_persian_by_script():
    assert detect_lang("سلام دنیا") == "fa"
    assert detect_lang("Hello 123") == "en"


# Expected outputs are what hazm 0.10's Normalizer(persian_numbers=False) returns for the input.
@pytest.mark.parametrize("raw, expected", [
    ("اين يك متن عربي است", "این یک متن عربی است"),          # Arabic yeh/kaf -> Persian
    ("مي خواهم بروم", f"می{ZWNJ}خواهم بروم"),               # verb prefix joined by ZWNJ
    ("نمي دانم", f"نمی{ZWNJ}دانم"),
    ("کتاب ها را آوردم", f"کتاب{ZWNJ}ها را آوردم"),          # plural suffix
    ("بزرگ ترین شهر", f"بزرگ{ZWNJ}ترین شهر"),
    ("خانه ي ما", f"خانه{ZWNJ}ی ما"),                       # ezafe after heh
    ("کِتابْ", "کتاب"),                                       # diacritics removed
    ("ﻻ إله", "لا إله"),                                     # presentation forms
    ("سلام !", "سلام!"),
    ("ﷲ", "الله"),
])
def test_persian_normalisation_matches_hazm(raw, expected):
    assert normalize_persian(raw) == expected


def test_numbers_read_in_the_texts_language():
    assert numbers_to_words("I have 42 apples", "en") == "I have forty-two apples"
    assert numbers_to_words("1,250 people", "en") == "one thousand, two hundred and fifty people"
    assert numbers_to_words("3.5 km", "en") == "three point five km"
    assert numbers_to_words("۱۲۳ کتاب", "fa") == "صد و بیست و سه کتاب"       # Persian digits
    assert numbers_to_words("٤٥ سال", "fa") == "چهل و پنج سال"               # Arabic-Indic digits
    assert numbers_to_words("1234", "fa") == "هزار و دویست و سی و چهار"
    assert numbers_to_words("42", "zh") == "42"                            # no reader: left to the voice


def test_normalize_applies_persian_rules_then_numbers():
    assert normalize("مي خواهم ۲ كتاب", "fa") == f"می{ZWNJ}خواهم دو کتاب"


def test_sentences_split_on_latin_and_persian_punctuation():
    assert split_sentences("Hi there. How are you?  Fine!") == ["Hi there.", "How are you?", "Fine!"]
    assert split_sentences("سلام. خوبی؟ بله") == ["سلام.", "خوبی؟", "بله"]
    assert split_sentences("line one\nline two") == ["line one", "line two"]
    assert split_sentences("   ") == []


def test_long_sentences_are_cut_at_clauses_then_words():
    clauses = ", ".join(["a clause of several words"] * 20) + "."
    pieces = split_sentences(clauses)
    assert len(pieces) > 1 and all(len(p) <= MAX_SENTENCE_CHARS for p in pieces)
    assert " ".join(pieces) == clauses
    words = " ".join(["word"] * 100)
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in split_sentences(words))
    assert " ".join(split_sentences(words)) == words


@pytest.mark.parametrize("alias, model", [
    ("TacoTron2", "tacotron"), ("Tacotron", "tacotron"), ("EdgeTTS", "edgetts"), ("edge", "edgetts"),
    ("CosyVoice2", "cosyvoice"), ("GPT-SoVITS", "sovits"), ("espeak-ng", "espeak"), ("espeak", "espeak"),
])
def test_model_names_are_normalised_like_the_existing_system(alias, model):
    assert canonical_model(alias) == model


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="known: espeak, edgetts, sovits, cosyvoice, tacotron"):
        canonical_model("festival")


def test_streamed_text_yields_only_complete_sentences():
    from tts_services.text import pop_sentences
    assert pop_sentences("Hello there. How ar") == (["Hello there."], "How ar")
    assert pop_sentences("No end yet") == ([], "No end yet")
    assert pop_sentences("One! Two? ") == (["One!", "Two?"], "")
    assert pop_sentences("سلام. خوبی") == (["سلام."], "خوبی")
