"""A random-initialised Whisper model in faster-whisper's format, so tests and CPU benchmarks run
the whisper recogniser through its real loading path without the real weights (which cannot be
fetched here).

It keeps every shape and id the loaders rely on and shrinks only the widths: multilingual
Whisper's vocabulary layout (50257 text tokens, the last of them empty, then <|endoftext|>,
<|startoftranscript|>, 99 language tokens, the task and marker tokens, 1501 timestamps: 51865 in
all), 80 mel bins and a 30 s window (1500 encoder positions).
It is made the way real models are: a transformers checkpoint converted by CTranslate2's
TransformersConverter, with tokenizer.json and preprocessor_config.json copied beside it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from ctranslate2.converters import TransformersConverter
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (GenerationConfig, PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor,
                          WhisperForConditionalGeneration)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

TEXT_TOKENS = 50257                      # GPT-2's byte-level BPE vocabulary, as Whisper's
LANGUAGE_CODES = list(LANGUAGES)[:99]    # multilingual Whisper before large-v3 (which added yue)
TIMESTAMPS = 1501                        # <|0.00|> .. <|30.00|>
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGE_CODES),
            "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
            "<|notimestamps|>", *(f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMPS))]
VOCAB_SIZE = TEXT_TOKENS + len(SPECIALS)  # 51865


def tokenizer() -> Tokenizer:
    """A byte-level tokenizer with Whisper's ids: the 256 byte symbols (so any text encodes, as
    faster-whisper's token suppression needs), made-up words up to 50257, then the specials."""
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols)}
    vocab.update({f"w{i}": i for i in range(len(vocab), TEXT_TOKENS - 1)})
    vocab[""] = TEXT_TOKENS - 1   # multilingual Whisper's has it: CTranslate2 4.8 tells such models by it
    made = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    made.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    made.decoder = decoders.ByteLevel()
    made.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIALS])
    return made


def _checkpoint(folder: Path, seed: int) -> None:
    """The transformers checkpoint, tokenizer and feature extractor that the converter reads."""
    ids = {token: TEXT_TOKENS + i for i, token in enumerate(SPECIALS)}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=VOCAB_SIZE, num_mel_bins=80, d_model=64, encoder_layers=1, encoder_attention_heads=2,
        encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, decoder_start_token_id=sot)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    # A generation config of its own: one derived from the model's config is derived again on
    # loading, which drops lang_to_id (the converter takes the language ids from there).
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, suppress_tokens=[],
        begin_suppress_tokens=[220, eot],  # no space or end as the first token, as Whisper's
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGE_CODES},
        alignment_heads=[[0, 0], [0, 1]])
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer(), eos_token="<|endoftext|>",
                            bos_token="<|endoftext|>", unk_token="<|endoftext|>").save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)


def save_random(output: Path, seed: int = 0) -> Path:
    """A random tiny multilingual Whisper in faster-whisper's format (model.bin, config.json,
    vocabulary.json, tokenizer.json, preprocessor_config.json) in `output`, which must not exist."""
    with tempfile.TemporaryDirectory() as checkpoint:
        _checkpoint(Path(checkpoint), seed)
        TransformersConverter(checkpoint, copy_files=["tokenizer.json", "preprocessor_config.json"]
                              ).convert(str(output))
    return output
