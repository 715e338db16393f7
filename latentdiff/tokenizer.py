"""CLIP-format byte-level BPE tokenizers that `transformers.CLIPTokenizer` loads.

Two tokenizers share one format:

- `clip_tokenizer()`: the exact OpenAI CLIP tokenizer (Radford et al. 2021, "Learning Transferable Visual
  Models From Natural Language Supervision", https://arxiv.org/abs/2103.00020), built offline from the
  merges file vendored at `latentdiff/vocab/bpe_simple_vocab_16e6.txt.gz` (copied from the open-clip-torch
  wheel, MIT, see `latentdiff/vocab/LICENSE-open_clip`). It gives the same ids as the `openai/clip-vit-large-patch14`
  / Stable Diffusion 1.x tokenizer: 49408 tokens, bos 49406, eos = pad = unk 49407, 77 positions.
- `train_clip_bpe()`: a small vocabulary in the same format, with merges learned by the Hugging Face
  `tokenizers` BPE trainer (byte-pair encoding: Sennrich et al. 2016, https://arxiv.org/abs/1508.07909;
  byte-level alphabet: Radford et al. 2019, GPT-2). `shapes_tokenizer()` loads the one trained on ShapesWorld
  captions and shipped in `latentdiff/vocab/shapes-bpe/`.

The vocabulary layout follows OpenAI's `clip/simple_tokenizer.py` (MIT,
https://github.com/openai/CLIP/blob/main/clip/simple_tokenizer.py): the 256 byte characters, the same 256 with
the end-of-word suffix `</w>`, one token per merge in merge order, then `<|startoftext|>` and `<|endoftext|>`.
Because all 512 base tokens are present, every Unicode string tokenizes without unknown tokens.

Text is normalised as transformers' `CLIPTokenizer` does it: NFC, whitespace runs to one space, lower case per
character. OpenAI's reference also runs `ftfy.fix_text` and `html.unescape`, lowercases a final sigma to "ς" and
drops U+001C..U+001F as whitespace; the fast `CLIPTokenizer` that diffusers pipelines use does none of these.

Train the shipped ShapesWorld vocabulary with (ShapesWorld's ~50 distinct words allow only ~640 tokens, so the
corpus adds common caption words taken from CLIP's frequency-ordered merges; see `clip_common_words`):
    python -m latentdiff.tokenizer train-shapes --vocab-size 2048 --n 20000 --seed 0
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

VOCAB_DIR = Path(__file__).parent / "vocab"
CLIP_MERGES_FILE = VOCAB_DIR / "bpe_simple_vocab_16e6.txt.gz"
SHAPES_BPE_DIR = VOCAB_DIR / "shapes-bpe"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"  # also CLIP's pad and unk token (SD 1.x layout)
END_OF_WORD = "</w>"
# OpenAI CLIP uses the first 49152 - 256 - 2 merges of the file (simple_tokenizer.py), so the vocabulary has
# 512 base tokens + 48894 merges + 2 special tokens = 49408 entries.
N_CLIP_MERGES = 49152 - 256 - 2
# Pre-tokenisation pattern of simple_tokenizer.py (also transformers' CLIPTokenizer): special tokens,
# English contractions, letter runs, single digits, runs of other non-space characters.
CLIP_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
MIN_VOCAB_SIZE, MAX_VOCAB_SIZE = 600, 16384  # vocab_size allowed by train_clip_bpe
MERGES_HEADER = "#version: 0.2"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP map from each byte to a printable character (simple_tokenizer.py `bytes_to_unicode`)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def base_vocab() -> list[str]:
    """The 512 base tokens in CLIP order: every byte character, then every byte character + '</w>'."""
    chars = list(bytes_to_unicode().values())
    return chars + [c + END_OF_WORD for c in chars]


def vocab_from_merges(merges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Token -> id: 512 base tokens, one token per merge (in merge order), then bos and eos.

    A merge whose result is already a token adds nothing (OpenAI's CLIP merges have no such repeats, so its
    ids are unchanged).
    """
    vocab: dict[str, int] = {}
    for token in base_vocab():
        vocab[token] = len(vocab)
    for a, b in merges:
        if a not in vocab or b not in vocab:
            raise ValueError(f"merge ({a!r}, {b!r}) uses a token that no earlier merge or base token made")
        vocab.setdefault(a + b, len(vocab))
    for token in (BOS_TOKEN, EOS_TOKEN):
        vocab[token] = len(vocab)
    return vocab


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    # Read once per process (~0.3 s); callers copy the dict before handing it on.
    with gzip.open(CLIP_MERGES_FILE, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : N_CLIP_MERGES + 1])  # line 0 is the header
    vocab = vocab_from_merges(merges)
    assert len(vocab) == 49408, len(vocab)
    return vocab, merges


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_model_max_length(model_max_length: int) -> None:
    if not _is_int(model_max_length) or model_max_length < 2:
        raise ValueError(
            f"model_max_length must be an int >= 2 (room for bos and eos), got {model_max_length!r}; CLIP uses 77"
        )


def _make_tokenizer(vocab: dict[str, int], merges: Sequence[tuple[str, str]], model_max_length: int) -> CLIPTokenizer:
    # transformers 5.x: CLIPTokenizer(vocab=dict, merges=[(a, b), ...]) builds the fast backend directly.
    # (Its vocab_file=/merges_file= arguments are ignored outside from_pretrained.) The special tokens default
    # to CLIP's: bos <|startoftext|>, eos = pad = unk <|endoftext|>.
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


def clip_tokenizer(model_max_length: int = 77, vocab_size: int | None = None) -> CLIPTokenizer:
    """A fresh OpenAI CLIP tokenizer (SD 1.x / `openai/clip-vit-large-patch14` ids), built offline.

    `vocab_size` < 49408 keeps only CLIP's first `vocab_size - 514` merges (512 base tokens + merges + bos + eos):
    ids below `vocab_size` for tiny test text encoders, e.g. 1000 like diffusers' tiny test CLIP.
    """
    _check_model_max_length(model_max_length)
    vocab, merges = _clip_vocab_and_merges()
    if vocab_size is not None:
        smallest, largest = len(base_vocab()) + 2, len(vocab)
        if not _is_int(vocab_size) or not smallest <= vocab_size <= largest:
            raise ValueError(f"vocab_size must be an int in {smallest}..{largest} (CLIP's), got {vocab_size!r}")
        merges = merges[: vocab_size - smallest]
        vocab = vocab_from_merges(merges)
    return _make_tokenizer(vocab, merges, model_max_length)


def _write_folder(
    vocab: dict[str, int], merges: Sequence[tuple[str, str]], out_dir: str | os.PathLike, model_max_length: int
) -> CLIPTokenizer:
    """Write a folder in both layouts (vocab.json + merges.txt, and tokenizer.json) and load it back."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text(
        "\n".join([MERGES_HEADER] + [f"{a} {b}" for a, b in merges]) + "\n", encoding="utf-8"
    )
    # save_pretrained writes tokenizer_config.json (model_max_length, special tokens) and tokenizer.json.
    _make_tokenizer(vocab, merges, model_max_length).save_pretrained(out)
    # Older loaders (transformers 4.x) also read special_tokens_map.json.
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(out)


def save_clip_tokenizer(out_dir: str | os.PathLike, model_max_length: int = 77) -> CLIPTokenizer:
    """Write the OpenAI CLIP tokenizer to `out_dir` (`CLIPTokenizer.from_pretrained` loads it); return it loaded."""
    _check_model_max_length(model_max_length)
    vocab, merges = _clip_vocab_and_merges()
    return _write_folder(vocab, merges, out_dir, model_max_length)


def _clip_backend() -> Tokenizer:
    """An untrained `tokenizers` BPE with the normaliser and pre-tokeniser of transformers' CLIPTokenizer."""
    backend = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return backend


def train_clip_bpe(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike,
    model_max_length: int = 77,
    *,
    min_frequency: int = 2,
) -> CLIPTokenizer:
    """Learn a CLIP-format BPE vocabulary of at most `vocab_size` tokens from `texts`; write it to `out_dir`.

    `vocab_size` counts everything (512 base tokens + merges + bos + eos), as in `tokenizers`' BpeTrainer.
    A corpus with few distinct words runs out of pairs to merge sooner; the result is then smaller (with a
    warning) and `len(tokenizer)` is the real size. Merges need `min_frequency` occurrences. Returns the
    tokenizer loaded back from `out_dir` with `CLIPTokenizer.from_pretrained`.
    """
    if not _is_int(vocab_size) or not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be an int in {MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE} (512 base tokens + merges + 2 special "
            f"tokens; 1000..4096 suits small corpora), got {vocab_size!r}"
        )
    if not _is_int(min_frequency) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
    _check_model_max_length(model_max_length)
    if isinstance(texts, (str, bytes)):
        raise ValueError("texts must be an iterable of strings (for example a list of captions), not one string")

    base = base_vocab()
    backend = _clip_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(base),  # slack: we cut the merge list ourselves below
        min_frequency=min_frequency,
        show_progress=False,
        initial_alphabet=base[:256],
        # Registering the 256 'c</w>' tokens up front gives them fixed ids. Otherwise the trainer numbers them
        # in hash-map order and breaks ties between equally frequent pairs differently on each run
        # (huggingface/tokenizers#1794).
        special_tokens=base[256:],
        continuing_subword_prefix="",
        end_of_word_suffix=END_OF_WORD,
    )
    backend.train_from_iterator(texts, trainer)
    # tokenizers >= 0.20 serialises merges as [a, b] pairs (older versions as "a b" strings).
    trained = json.loads(backend.to_str())["model"]["merges"]
    learned = [tuple(m.split(" ") if isinstance(m, str) else m) for m in trained]
    if not learned:
        raise ValueError(f"no merges learned: texts is empty or no pair occurs min_frequency={min_frequency} times")

    # Keep merges in the trainer's order until the vocabulary is full; any prefix of a merge list is valid BPE.
    n_tokens = len(base) + 2
    merges: list[tuple[str, str]] = []
    seen = set(base)
    for a, b in learned:
        if a + b not in seen:
            if n_tokens == vocab_size:
                break
            seen.add(a + b)
            n_tokens += 1
        merges.append((a, b))
    vocab = vocab_from_merges(merges)
    if len(vocab) < vocab_size:
        warnings.warn(
            f"the corpus supports only {len(vocab)} tokens (asked for {vocab_size}): there are no more pairs that "
            f"occur {min_frequency}+ times; add more varied text or lower vocab_size",
            stacklevel=2,
        )
    return _write_folder(vocab, merges, out_dir, model_max_length)


def clip_common_words(k: int) -> list[str]:
    """The first `k` whole English words (ASCII letters, 2+ long) in the order CLIP's BPE learned them.

    OpenAI's merges are ordered by frequency in CLIP's caption-like training text, so this is a frequency-ranked
    word list of web captions, available offline. It supplements narrow corpora such as ShapesWorld's ~50 words,
    which on their own support only ~640 tokens.
    """
    words: list[str] = []
    for a, b in _clip_vocab_and_merges()[1]:
        token = a + b
        if token.endswith(END_OF_WORD):
            word = token[: -len(END_OF_WORD)]
            if len(word) >= 2 and word.isascii() and word.isalpha():
                words.append(word)
                if len(words) == k:
                    break
    return words


def shapes_tokenizer() -> CLIPTokenizer:
    """The small BPE vocabulary trained on ShapesWorld captions, shipped in `latentdiff/vocab/shapes-bpe/`."""
    if not (SHAPES_BPE_DIR / "vocab.json").is_file():
        raise FileNotFoundError(
            f"{SHAPES_BPE_DIR} holds no vocabulary; create it with "
            "`python -m latentdiff.tokenizer train-shapes --vocab-size 2048 --n 20000 --seed 0`"
        )
    return CLIPTokenizer.from_pretrained(SHAPES_BPE_DIR)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m latentdiff.tokenizer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shapes = commands.add_parser("train-shapes", help="train the shipped BPE vocabulary on ShapesWorld captions")
    shapes.add_argument("--vocab-size", type=int, default=2048, help="upper bound on the vocabulary size")
    shapes.add_argument("--n", type=int, default=20000, help="number of captions to train on")
    shapes.add_argument("--seed", type=int, default=0, help="seed of the caption generator")
    shapes.add_argument("--out", type=Path, default=SHAPES_BPE_DIR, help="output folder")
    shapes.add_argument("--common-words", type=int, default=3000,
                        help="how many frequent CLIP caption words to add to the corpus (default 3000)")
    args = parser.parse_args(argv)

    if args.command == "train-shapes":
        if args.n < 1:
            parser.error(f"--n must be >= 1, got {args.n}")
        from latentdiff.data.shapes import iter_captions

        # ShapesWorld captions of both splits (held-out combinations use the same words), then common caption
        # words from CLIP's frequency-ordered merges, each twice so that it reaches min_frequency=2. The
        # captions' words are far more frequent, so they are merged first and every one becomes a single token.
        corpus = [*iter_captions(args.n, args.seed, "train"), *iter_captions(args.n // 10, args.seed, "heldout")]
        common = clip_common_words(args.common_words)
        tok = train_clip_bpe(corpus + common + common, args.vocab_size, args.out)
        print(f"wrote {args.out}: {len(tok)} tokens from {len(corpus)} ShapesWorld captions (seed {args.seed}) "
              f"and {len(common)} common CLIP caption words")


if __name__ == "__main__":
    main()
