"""Tests for latentdiff.tokenizer: exact CLIP ids, trained CLIP-format vocabularies, any Unicode prompt."""

from __future__ import annotations

import functools
import gzip
import html
import json
import random
import re
import unicodedata
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import CLIPTokenizer

from latentdiff import tokenizer as T

BOS, EOS = 49406, 49407

PROMPTS = [
    "a red circle above a blue square",
    "A RED Circle Above a bLuE SQUARE",
    "a   red\t\tcircle\n\n above  a blue square  ",
    "Hello, world!!! What's up?",
    "it's the dog's bone, isn't it? we'll see; I'd've said they're here and you've gone, I'm off",
    "1234 cats and 3.14 dogs; 100% sure, $99.99 each",
    "x² + y³ = z½ ① Ⅻ",
    "café, naïve résumé, Ünïcödé, straße",
    "東京タワー at night",
    "안녕하세요 세계, Привет мир, مرحبا بالعالم, नमस्ते दुनिया",
    "🐱 cat",
    "👍🏽 👩‍👩‍👧 family 🇯🇵 flag",
    "#hashtag @user email@example.com https://example.com/a?b=c&d=e",
    "C++ and C# and F# (not Java)",
    "—em dash— and … ellipsis, «quotes» ¿qué? ¡sí!",
    "<html><body>tags</body></html>",
    "a photo of <|endoftext|> and <|startoftext|>",
    "a_b-c/d\\e|f~g`h^i",
    "ALLCAPSWORDWITHOUTSPACESANDNUMBERS123456",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "''' \"\" ''s 's 'S 'T",
    "astronaut riding a horse on mars, highly detailed, 8k, trending on artstation",
    "a small green triangle to the left of two yellow stars",
    "İstanbul and ÇAĞ",
    "ｆｕｌｌ-width is kept as is",
    "tab\tseparated\tvalues\r\nand crlf",
    "nul\x00char and bell\x07",
    "x" * 300,
    "",
    "   ",
]


# --- Reference: OpenAI's SimpleTokenizer algorithm -----------------------------------------------------------
# Condensed from clip/simple_tokenizer.py, https://github.com/openai/CLIP (MIT, Copyright (c) 2021 OpenAI).
# Differences: ftfy.fix_text is replaced by NFC (what fix_text applies to the prompts above; it would also
# straighten curly quotes, ligatures and full-width letters, which transformers' CLIPTokenizer does not do).
class SimpleTokenizer:
    def __init__(self, merges_path: Path):
        import regex

        bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        cs = bs[:] + [256 + n for n in range(256 - len(bs))]
        bs += [b for b in range(256) if b not in bs]
        self.byte_encoder = dict(zip(bs, map(chr, cs)))
        merges = gzip.open(merges_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(unicodedata.normalize("NFC", text))).strip()  # basic_clean
        text = " ".join(text.split()).lower()  # whitespace_clean, lower
        ids = []
        for token in self.pat.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return [BOS] + ids + [EOS]


@functools.lru_cache(maxsize=1)
def reference() -> SimpleTokenizer:
    pytest.importorskip("regex")
    return SimpleTokenizer(T.CLIP_MERGES_FILE)


# --- Small training corpus --------------------------------------------------------------------------------------
COLORS = "red green blue yellow purple orange black white gray pink cyan magenta brown".split()
SHAPES = "circle square triangle star hexagon pentagon diamond ellipse rectangle cross heart".split()
RELATIONS = ["above", "below", "to the left of", "to the right of", "next to", "inside", "behind"]
SIZES = "small large tiny big medium huge".split()
NUMBERS = "one two three four five six seven eight nine".split()


def synthetic_captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    # Random letter strings (with a few accents) give the trainer many equally frequent pairs to tie-break.
    letters = "abcdefghijklmnopqrstuvwxyzéüø"
    junk = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(800)]
    caps = []
    for i in range(n):
        caps.append(
            f"{rng.choice(['a', 'A', 'one'])} {rng.choice(SIZES)} {rng.choice(COLORS)} {rng.choice(SHAPES)} "
            f"{rng.choice(RELATIONS)} {rng.choice(NUMBERS)} {rng.choice(COLORS)} {rng.choice(SHAPES)}s"
            f"{rng.choice(['.', '', '!', ', on a white background.'])} {' '.join(rng.sample(junk, 2))}"
        )
    return caps


@functools.lru_cache(maxsize=1)
def trained_dir() -> Path:
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="latentdiff-bpe-")) / "tok"
    T.train_clip_bpe(synthetic_captions(3000, seed=0), 1000, out)
    return out


def trained() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(trained_dir())


# --- Exact CLIP tokenizer --------------------------------------------------------------------------------------
def test_clip_known_ids():
    tok = T.clip_tokenizer()
    assert tok("a red circle above a blue square").input_ids == [49406, 320, 736, 7117, 4348, 320, 1746, 3999, 49407]
    assert (len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49408, BOS, EOS, EOS)
    assert (tok.pad_token, tok.unk_token, tok.model_max_length) == ("<|endoftext|>", "<|endoftext|>", 77)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_clip_matches_openai_reference(prompt):
    assert tokenizers_under_test()[0](prompt).input_ids == reference().encode(prompt)


# Known, deliberate differences from OpenAI's reference, kept out of the random comparison: "&" (html.unescape),
# \x1c-\x1f (whitespace to Python, tokens to transformers), "Σ" (Python lowercases a final sigma to "ς",
# transformers per character to "σ"), code points unassigned in this Python's Unicode tables (`regex` ships a newer
# Unicode version than the tokenizers' regex engine), and the special-token strings.
ORACLE_CHARS = st.characters(codec="utf-8", exclude_characters="&\x1c\x1d\x1e\x1fΣ").filter(
    lambda c: unicodedata.category(c) != "Cn"
)


@settings(max_examples=60, deadline=None)
@given(st.text(ORACLE_CHARS, max_size=30) | st.lists(st.sampled_from(PROMPTS[:20] + list("'.,!? 1"))).map("".join))
def test_clip_matches_openai_reference_random(text):
    text = text.replace("&", "")
    assume("<|" not in text)
    assert tokenizers_under_test()[0](text).input_ids == reference().encode(text)


def test_clip_pads_and_truncates_like_stable_diffusion():
    tok = T.clip_tokenizer()
    ids = tok("a cat", padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert len(ids) == 77 and ids[:4] == [BOS, 320, 2368, EOS] and set(ids[4:]) == {EOS}
    long = tok("cat " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[0] == BOS and long[-1] == EOS
    assert T.clip_tokenizer(model_max_length=32).model_max_length == 32


def test_clip_tokenizer_is_fresh_and_cached():
    a, b = T.clip_tokenizer(), T.clip_tokenizer()
    assert a is not b
    a.add_tokens(["<my-concept>"])
    assert len(a) == 49409 and len(b) == 49408 and len(T.clip_tokenizer()) == 49408
    assert T._clip_vocab_and_merges.cache_info().currsize == 1


@pytest.mark.parametrize("bad", [0, 1, -5, 77.0, "77", True, None])
def test_bad_model_max_length(bad):
    with pytest.raises(ValueError, match="model_max_length"):
        T.clip_tokenizer(model_max_length=bad)


def test_save_clip_tokenizer_roundtrip(tmp_path):
    T.save_clip_tokenizer(tmp_path / "clip")
    files = {p.name for p in (tmp_path / "clip").iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"} <= files
    assert (tmp_path / "clip" / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    ref = T.clip_tokenizer()
    for folder in ("clip", "resaved"):
        loaded = CLIPTokenizer.from_pretrained(tmp_path / folder)
        assert (loaded.model_max_length, loaded.pad_token_id, len(loaded)) == (77, EOS, 49408)
        for p in PROMPTS:
            assert loaded(p).input_ids == ref(p).input_ids
        loaded.save_pretrained(tmp_path / "resaved")  # what pipe.save_pretrained writes for the tokenizer
    # The vocab.json + merges.txt layout alone (no tokenizer.json) loads too.
    (tmp_path / "clip" / "tokenizer.json").unlink()
    slim = CLIPTokenizer.from_pretrained(tmp_path / "clip")
    assert slim(PROMPTS[3]).input_ids == ref(PROMPTS[3]).input_ids and slim.model_max_length == 77


# --- Trained CLIP-format vocabulary ----------------------------------------------------------------------------
def read_folder(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    return vocab, [tuple(line.split(" ")) for line in lines[1:]]


def assert_clip_layout(folder: Path) -> None:
    vocab, merges = read_folder(folder)
    tokens = sorted(vocab, key=vocab.get)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert tokens[:512] == T.base_vocab() and tokens[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    made = set(tokens[:512])
    for a, b in merges:  # every merge uses tokens made earlier, and its result is a token
        assert a in made and b in made and a + b in vocab
        made.add(a + b)
    assert made | {"<|startoftext|>", "<|endoftext|>"} == set(vocab)


def test_train_clip_bpe_layout_and_loading(tmp_path):
    tok = trained()
    assert len(tok) == 1000 and (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (998, 999, 999)
    assert tok.model_max_length == 77
    assert_clip_layout(trained_dir())
    tok.save_pretrained(tmp_path)  # what pipe.save_pretrained writes for the tokenizer
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert (len(again), again.pad_token_id, again.model_max_length) == (1000, 999, 77)
    for p in PROMPTS:
        assert again(p).input_ids == tok(p).input_ids


def test_train_clip_bpe_tokenizes_its_corpus():
    tok = trained()
    for caption in synthetic_captions(200, seed=1):
        ids = tok(caption).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert all(0 <= i < len(tok) for i in ids) and tok.eos_token_id not in ids[1:-1]
    for word in COLORS + SHAPES + SIZES + NUMBERS + ["above", "below", "left", "right"]:
        assert tok.tokenize(word) == [word + "</w>"], word
    assert tok.tokenize("A Red  Circle.") == ["a</w>", "red</w>", "circle</w>", ".</w>"]


def test_train_clip_bpe_is_deterministic(tmp_path):
    T.train_clip_bpe(synthetic_captions(3000, seed=0), 1000, tmp_path / "again")
    assert read_folder(tmp_path / "again") == read_folder(trained_dir())


def test_train_clip_bpe_small_corpus_warns(tmp_path):
    with pytest.warns(UserWarning, match="supports only"):
        tok = T.train_clip_bpe(["a red circle", "a red circle", "a blue square", "a blue square"], 1000, tmp_path)
    assert 514 < len(tok) < 1000 and tok.tokenize("red circle") == ["red</w>", "circle</w>"]
    assert_clip_layout(tmp_path)


@pytest.mark.parametrize("bad", [599, 16385, 0, 2048.0, "2048", True])
def test_train_clip_bpe_bad_vocab_size(tmp_path, bad):
    with pytest.raises(ValueError, match="600..16384"):
        T.train_clip_bpe(["a red circle"], bad, tmp_path)


def test_train_clip_bpe_bad_texts(tmp_path):
    with pytest.raises(ValueError, match="iterable of strings"):
        T.train_clip_bpe("a red circle", 1000, tmp_path)
    with pytest.raises(ValueError, match="no merges"):
        T.train_clip_bpe([], 1000, tmp_path)
    with pytest.raises(ValueError, match="min_frequency"):
        T.train_clip_bpe(["a"], 1000, tmp_path, min_frequency=0)


def test_shapes_tokenizer():
    tok = T.shapes_tokenizer()
    # ShapesWorld's ~50 words plus common CLIP caption words fill the 2,048 tokens asked for.
    assert len(tok) == 2048 and tok.model_max_length == 77
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (len(tok) - 2, len(tok) - 1, len(tok) - 1)
    assert_clip_layout(T.SHAPES_BPE_DIR)
    from latentdiff.data import shapes

    for caption in shapes.iter_captions(50, 1):  # every caption word is one token
        assert len(tok.tokenize(caption)) == len(caption.split()), caption


@pytest.mark.slow
def test_shapes_tokenizer_is_reproducible(tmp_path):
    # Fails when the ShapesWorld captions change: then rerun `python -m latentdiff.tokenizer train-shapes`.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T.main(["train-shapes", "--vocab-size", "2048", "--n", "20000", "--seed", "0", "--out", str(tmp_path)])
    assert read_folder(tmp_path) == read_folder(T.SHAPES_BPE_DIR)


# --- Any Unicode prompt ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def tokenizers_under_test() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    return T.clip_tokenizer(), trained()


# Unicode White_Space: what the tokenizers' `\s` drops. Python's `\s` and str.split also drop \x1c-\x1f, which
# transformers keeps as tokens (but its decode() strips them at the ends with str.strip).
WHITE_SPACE = re.compile("[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def squash(text: str) -> str:
    # Compare modulo case and whitespace (transformers lowercases per character, so final sigma differs).
    return "".join(unicodedata.normalize("NFC", text).casefold().split())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40) | st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).map(lambda s: f"a {s} b"))
def test_any_unicode_prompt(text):
    assume("<|startoftext|>" not in text and "<|endoftext|>" not in text)  # these map to bos / eos, as in OpenAI's
    # Code points this Python's Unicode database does not know (category Cn) may have a case mapping in the newer
    # Unicode of the tokenizers' libraries (e.g. U+16EA0, Unicode 16): casefold() here cannot say what to expect.
    assume(all(unicodedata.category(c) != "Cn" for c in text))
    for tok in tokenizers_under_test():
        ids = tok(text).input_ids
        body = ids[1:-1]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert all(0 <= i < tok.eos_token_id for i in body)  # unk is <|endoftext|>: never inside the prompt
        assert bool(body) == bool(WHITE_SPACE.sub("", text))
        assert squash(tok.decode(ids, skip_special_tokens=True)) == squash(text)


def test_clip_common_words_are_frequent_whole_words():
    words = T.clip_common_words(200)
    assert len(words) == 200 and len(set(words)) == 200
    assert all(w.isascii() and w.isalpha() and len(w) >= 2 for w in words)
    assert {"the", "and", "of"} <= set(words[:50])
