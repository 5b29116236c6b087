"""Text before synthesis: which language it is, numbers read as words, split into sentences."""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from num2words import num2words

from .persian import PERSIAN_DIGITS, normalize_persian

_ARABIC_SCRIPT = re.compile(r"[\u0600-\u06FF\uFB50-\uFDFF\uFE70-\uFEFF]")
# A number: digits, optional thousands separators (, or Arabic ٬), optional decimals (. or ٫).
_NUMBER = re.compile(r"\d{1,3}(?:[,٬]\d{3})+(?:[.٫]\d+)?|\d+(?:[.٫]\d+)?")
# Sentence ends: Latin, Persian/Arabic and CJK punctuation, or a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?؟。！？;؛…])\s+|\n+")
_CLAUSE_END = re.compile(r"(?<=[,،、，:])\s+")
# Long sentences are cut at clause boundaries so the first audio never waits for a paragraph.
MAX_SENTENCE_CHARS = 200

NUMBER_LANGS = {"en", "fa"}


def detect_lang(text: str) -> str:
    """Persian when the text is written in Arabic script, English otherwise."""
    return "fa" if _ARABIC_SCRIPT.search(text) else "en"


def _digits_to_ascii(text: str) -> str:
    return text.translate({ord(d): str(i) for i, d in enumerate(PERSIAN_DIGITS)}
                          | {ord(chr(0x0660 + i)): str(i) for i in range(10)})


def numbers_to_words(text: str, lang: str) -> str:
    """Read every number in the text's own language: 1234 -> 'one thousand, two hundred ...'."""
    if lang not in NUMBER_LANGS:
        return text

    def spell(match: re.Match) -> str:
        raw = match.group(0).replace(",", "").replace("٬", "").replace("٫", ".")
        try:
            return num2words(Decimal(raw), lang=lang)
        except (InvalidOperation, NotImplementedError, OverflowError):
            return match.group(0)

    return _NUMBER.sub(spell, _digits_to_ascii(text))


def normalize(text: str, lang: str) -> str:
    if lang == "fa":
        text = normalize_persian(text)
    return re.sub(r"[ \t]+", " ", numbers_to_words(text, lang)).strip()


def split_sentences(text: str) -> list[str]:
    """Sentences in order, each short enough to synthesise quickly."""
    pieces = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        while len(sentence) > MAX_SENTENCE_CHARS:
            cut = _last_break(sentence[:MAX_SENTENCE_CHARS])
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            pieces.append(sentence)
    return pieces


def pop_sentences(buffer: str) -> tuple[list[str], str]:
    """Split streamed text into the sentences already complete and the rest still arriving."""
    ends = [m.end() for m in _SENTENCE_END.finditer(buffer)]
    if not ends:
        return [], buffer
    return split_sentences(buffer[:ends[-1]]), buffer[ends[-1]:]


def _last_break(head: str) -> int:
    clauses = [m.end() for m in _CLAUSE_END.finditer(head)]
    if clauses:
        return clauses[-1]
    space = head.rfind(" ")
    return space if space > 0 else len(head)
