"""Tiny offline tokenizers shaped like the ones the IF cascade ships.

The real cascade uses a T5 v1.1 SentencePiece tokenizer (stages I and II) and an OpenCLIP
byte-level BPE tokenizer (the x4 upscaler, stage III). Neither can be downloaded here, so
these functions train miniature versions from a fixed built-in corpus. The committed files
under ``assets/`` are exactly what :func:`regenerate_assets` writes, so anyone can rebuild
them and get the same bytes:

    python -m ifengine.demo.tokenizers
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from ..facts import TEXT_TOKENS

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"


@dataclass(frozen=True)
class TinyTokenizerSpec:
    """Knobs of the miniature tokenizers; the defaults produce the committed assets."""

    corpus_seed: int = 0
    corpus_sentences: int = 600
    t5_vocab_size: int = 256  # an upper bound: small corpora cannot fill a hard limit
    t5_extra_ids: int = 100  # sentinel tokens, as many as real T5 has
    t5_model_max_length: int = 512  # what T5 declares; IF always asks for 77 explicitly
    clip_num_merges: int = 200
    clip_model_max_length: int = TEXT_TOKENS


DEFAULT_SPEC = TinyTokenizerSpec()

_SUBJECTS = (
    "cat dog fox owl horse dragon robot astronaut knight wizard girl boy woman man child "
    "teddy bear panda corgi raccoon frog whale tiger lion rabbit castle lighthouse cabin "
    "village city bridge ship train car bicycle tree flower garden forest mountain river "
    "lake ocean beach desert island volcano waterfall moon planet galaxy cloud"
)
_ADJECTIVES = (
    "red blue green yellow purple orange golden silver black white tiny huge old young "
    "happy sad cute fluffy shiny rusty ancient futuristic colorful misty snowy sunny rainy "
    "glowing wooden glass marble neon cozy"
)
_PLACES = (
    "in the snow|on the moon|under the sea|at sunset|at night|in a forest|on a table|"
    "in space|on the beach|in a city street|by the lake|in the rain|on a mountain top"
)
_STYLES = (
    "oil painting|watercolor|pencil sketch|digital art|photo|studio photograph|3d render|"
    "pixel art|anime style|high quality|highly detailed|8k|cinematic lighting|trending on artstation"
)
_VERBS = "riding|holding|reading|playing with|sitting on|looking at|flying over|eating|wearing"
# Every printable ASCII character and a few common non-ASCII ones appear at least once so
# that ordinary prompts never fall back to <unk>.
_CHARSET_LINE = (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ é ü ñ ß"
)
# A few NFKC-style folds compiled into the T5 model's normalizer. Real T5 carries the whole
# nmt_nfkc table (~240 KB); a handful of rules exercises the same code path at 1 KB.
_T5_NORMALIZATION_RULES = {
    "\u00a0": " ",  # no-break space
    "\u3000": " ",  # ideographic space
    "\u2026": "...",  # ellipsis
    "\uff01": "!",  # fullwidth exclamation mark
    "\uff1f": "?",  # fullwidth question mark
    "\u2019": "'",  # right single quotation mark
}


def t5_tokenizer_dir() -> Path:
    """Directory of the committed tiny T5 tokenizer (spiece.model + configs)."""
    return ASSETS_DIR / "t5_tokenizer"


def clip_tokenizer_dir() -> Path:
    """Directory of the committed tiny CLIP tokenizer (vocab.json + merges.txt + configs)."""
    return ASSETS_DIR / "clip_tokenizer"


def build_corpus(spec: TinyTokenizerSpec = DEFAULT_SPEC) -> list[str]:
    """Prompt-like sentences from a seeded generator, so the corpus is fixed by the spec."""
    rng = random.Random(spec.corpus_seed)
    subjects, adjectives = _SUBJECTS.split(), _ADJECTIVES.split()
    places, styles, verbs = _PLACES.split("|"), _STYLES.split("|"), _VERBS.split("|")
    sentences = [_CHARSET_LINE]
    for _ in range(spec.corpus_sentences):
        first = f"a {rng.choice(adjectives)} {rng.choice(subjects)}"
        second = f"{rng.choice(verbs)} a {rng.choice(subjects)}"
        sentence = f"{first} {second} {rng.choice(places)}, {rng.choice(styles)}"
        if rng.random() < 0.3:
            sentence = sentence[0].upper() + sentence[1:] + "."
        sentences.append(sentence)
    return sentences


def _json_dump(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- T5 (unigram)


def _train_spiece(sentences: list[str], spec: TinyTokenizerSpec) -> bytes:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.tsv"
        rules.write_text("".join(f"{_hex(src)}\t{_hex(dst)}\n" for src, dst in _T5_NORMALIZATION_RULES.items()))
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buffer,
            model_type="unigram",
            vocab_size=spec.t5_vocab_size,
            hard_vocab_limit=False,
            character_coverage=1.0,
            # T5's id layout: <pad>=0, </s>=1, <unk>=2, no <s>.
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            normalization_rule_tsv=str(rules),
            num_threads=1,  # the EM step is only reproducible single-threaded
            minloglevel=2,
        )
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(buffer.getvalue())
    # The trainer records the temporary rules path; drop it so the bytes do not depend on it.
    model.normalizer_spec.ClearField("normalization_rule_tsv")
    return model.SerializeToString(deterministic=True)


def _hex(text: str) -> str:
    return " ".join(f"{ord(ch):04X}" for ch in text)


def write_t5_tokenizer(out_dir: Path, spec: TinyTokenizerSpec = DEFAULT_SPEC) -> Path:
    """Write spiece.model plus the slow-tokenizer configs the Hub's IF repos carry."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spiece.model").write_bytes(_train_spiece(build_corpus(spec), spec))
    extra = [f"<extra_id_{i}>" for i in range(spec.t5_extra_ids)]
    special = {"eos_token": T5_EOS, "unk_token": T5_UNK, "pad_token": T5_PAD}
    _json_dump(out_dir / "special_tokens_map.json", {**special, "additional_special_tokens": extra})
    config = {
        **special,
        "additional_special_tokens": extra,
        "extra_ids": spec.t5_extra_ids,
        "model_max_length": spec.t5_model_max_length,
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
    }
    _json_dump(out_dir / "tokenizer_config.json", config)
    return out_dir


# --------------------------------------------------------------------------- CLIP (byte BPE)

# CLIP's pre-tokenizer, restated with the stdlib `re` (no \p classes): contractions,
# letter runs, single digits, runs of other symbols.
_CLIP_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shift)
            shift += 1
    # CLIP orders its base vocabulary printable-first, then the shifted bytes.
    order = printable + [b for b in range(256) if b not in printable]
    return {byte: table[byte] for byte in order}


def _word_symbols(word: str, table: dict[int, str]) -> tuple[str, ...]:
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += END_OF_WORD
    return tuple(symbols)


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def train_bpe(sentences: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Plain greedy BPE; ties break on the pair itself so the result is fully deterministic."""
    table = bytes_to_unicode()
    words = Counter(w for s in sentences for w in _CLIP_WORD.findall(s.lower()))
    seqs = Counter({_word_symbols(w, table): n for w, n in words.items()})
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for seq, count in seqs.items():
            for pair in pairwise(seq):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        new_seqs: Counter = Counter()
        for seq, count in seqs.items():
            new_seqs[_merge_pair(seq, best)] += count
        seqs = new_seqs
    return merges


def _clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    base = list(bytes_to_unicode().values())
    tokens = base + [b + END_OF_WORD for b in base] + ["".join(m) for m in merges]
    tokens += [CLIP_BOS, CLIP_EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))  # two merges may spell the same token
    return vocab


def write_clip_tokenizer(out_dir: Path, spec: TinyTokenizerSpec = DEFAULT_SPEC) -> Path:
    """Write vocab.json, merges.txt and the configs of a CLIPTokenizer directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merges = train_bpe(build_corpus(spec), spec.clip_num_merges)
    vocab = _clip_vocab(merges)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n")
    # Like Stable Diffusion's tokenizer: padding uses the end-of-text token.
    special = {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "pad_token": CLIP_EOS, "unk_token": CLIP_EOS}
    _json_dump(out_dir / "special_tokens_map.json", special)
    config = {
        **special,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": spec.clip_model_max_length,
        "tokenizer_class": "CLIPTokenizer",
    }
    _json_dump(out_dir / "tokenizer_config.json", config)
    return out_dir


def regenerate_assets(root: Path = ASSETS_DIR, spec: TinyTokenizerSpec = DEFAULT_SPEC) -> None:
    """Rebuild both committed tokenizers under ``root``."""
    t5_dir = write_t5_tokenizer(Path(root) / "t5_tokenizer", spec)
    clip_dir = write_clip_tokenizer(Path(root) / "clip_tokenizer", spec)
    logger.info("wrote tiny tokenizers to %s and %s", t5_dir, clip_dir)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    regenerate_assets()
