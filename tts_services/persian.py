"""Persian text normalisation before synthesis, following the rules of hazm's Normalizer.

hazm itself is not a dependency: its only release installable here (0.10.0) pins
numpy==1.24.3, which conflicts with the numpy 2 the rest of the stack needs, and pulls in gensim,
fasttext and scikit-learn (~0.8 s import, >150 MB) for a handful of character rules. The rules
a voice needs are these; tests check them against hazm's own output.
"""
from __future__ import annotations

import re
import unicodedata

PERSIAN_DIGITS = "۰۱۲۳۴۵۶۷۸۹"
ZWNJ = "\u200c"

# Arabic letters that look like Persian ones but are different code points: a TTS front end
# that meets Arabic kaf or yeh mispronounces or skips the word.
_LETTERS = str.maketrans({
    "\u0643": "\u06a9",  # Arabic kaf -> Persian keheh
    "\u064a": "\u06cc",  # Arabic yeh -> Farsi yeh
    "\u0649": "\u06cc",  # alef maksura -> Farsi yeh
    "\u0629": "\u0647",  # teh marbuta -> heh
    "\u06d5": "\u0647",  # Arabic ae -> heh
    "\u06c1": "\u0647",  # heh goal -> heh
    **{chr(0x0660 + i): PERSIAN_DIGITS[i] for i in range(10)},  # Arabic-Indic digits
})
_PRESENTATION_FORMS = re.compile(r"[\uFB50-\uFDFF\uFE70-\uFEFF]+")
_DIACRITICS = re.compile(r"[\u064B-\u065F\u0670\u0640]")  # harakat, superscript alef, tatweel
_PERSIAN_LETTER = r"[\u0621-\u063A\u0641-\u064A\u067E\u0686\u0698\u06A9\u06AF\u06CC\u0647]"
# The verb prefixes mi-/nemi- are joined to the verb with a zero-width non-joiner.
_MI_PREFIX = re.compile(rf"(?<![\w{ZWNJ}])(ن?می) +(?={_PERSIAN_LETTER})")
# Plural and superlative suffixes are joined to their word the same way.
_SUFFIX = re.compile(rf"(?<={_PERSIAN_LETTER}) +(ها|های|هایی|هایم|هایت|هایش|ترین)(?![\w{ZWNJ}])")
# The ezafe written as a separate yeh after a final heh ("خانه ی ما") joins it.
_EZAFE = re.compile(rf"(?<=\u0647) +(\u06cc)(?![\w{ZWNJ}])")
_SPACE_BEFORE_PUNCT = re.compile(r" +(?=[.,!?:;،؛؟»)])")


def normalize_persian(text: str) -> str:
    # Presentation forms (isolated/final/ligature glyphs, U+FDFC rial sign) to plain letters.
    text = _PRESENTATION_FORMS.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
    text = _DIACRITICS.sub("", text.translate(_LETTERS))
    text = _MI_PREFIX.sub(rf"\1{ZWNJ}", text)
    text = _SUFFIX.sub(rf"{ZWNJ}\1", text)
    text = _EZAFE.sub(rf"{ZWNJ}\1", text)
    text = re.sub(f"{ZWNJ}+", ZWNJ, text)
    text = re.sub(rf" *{ZWNJ} *", ZWNJ, text)
    text = re.sub(rf"^{ZWNJ}|{ZWNJ}$", "", text)
    text = re.sub(r"[ \t]+", " ", text)
    return _SPACE_BEFORE_PUNCT.sub("", text).strip()
