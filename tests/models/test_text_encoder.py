from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

from opensora_core.models.text_encoder import (
    T5TextEncoder,
    TextEncoder,
    WordEmbeddingTextEncoder,
    build_text_encoder,
)

# ---------------------------------------------------------------------------- T5

T5_MAX_LENGTH = 12
WORDS = [
    "a",
    "the",
    "cat",
    "dog",
    "runs",
    "jumps",
    "over",
    "red",
    "blue",
    "green",
    "sky",
    "sea",
    "city",
    "night",
    "car",
    "walks",
    "slowly",
    "quickly",
    "tree",
    "forest",
    "river",
    "mountain",
    "bird",
    "flies",
    "camera",
    "pans",
    "zoom",
    "sunset",
    "ocean",
    "waves",
    "people",
    "street",
    "market",
    "snow",
    "rain",
]


def _train_spiece(folder: Path) -> Path:
    """A tiny unigram sentencepiece model with T5's special ids (pad 0, eos 1, unk 2)."""
    import sentencepiece

    rng = random.Random(0)
    corpus = folder / "corpus.txt"
    corpus.write_text(
        "\n".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(300)
        )
    )
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "spiece"),
        vocab_size=64,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    corpus.unlink()
    (folder / "spiece.vocab").unlink()
    return folder / "spiece.model"


@pytest.fixture(scope="module")
def tiny_t5_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two folders with the same tiny T5 encoder: one in the t5-v1_1-xxl layout
    (``spiece.model`` only), one with a ``tokenizer.json`` made by transformers."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=192,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
    )
    spm_dir = tmp_path_factory.mktemp("t5-spiece")
    T5EncoderModel(cfg).save_pretrained(spm_dir)
    spiece = _train_spiece(spm_dir)

    json_dir = tmp_path_factory.mktemp("t5-tokenizer-json")
    for f in spm_dir.iterdir():
        if f.name != "spiece.model":
            shutil.copy(f, json_dir / f.name)
    # transformers 5 ignores T5Tokenizer(vocab_file=...); build it from the pieces.
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spiece))
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    T5Tokenizer(vocab=pieces, extra_ids=100).save_pretrained(json_dir)
    return {"spiece": spm_dir, "json": json_dir, "spiece_model": spiece}


@pytest.mark.parametrize("layout", ["spiece", "json"])
def test_t5_encoder_shapes_mask_and_frozen(tiny_t5_dirs: dict[str, Path], layout: str) -> None:
    import sentencepiece

    enc = T5TextEncoder(tiny_t5_dirs[layout], max_length=T5_MAX_LENGTH, dtype="fp32")
    assert isinstance(enc, TextEncoder)
    assert enc.output_dim == 16 and enc.model_max_length == T5_MAX_LENGTH
    assert all(not p.requires_grad for p in enc.model.parameters()) and not enc.model.training

    prompts = ["the cat runs", "a red car walks slowly over the river at night"]
    out = enc.encode(prompts)
    assert out["y"].shape == (2, 1, T5_MAX_LENGTH, 16) and out["y"].dtype == torch.float32
    assert out["mask"].shape == (2, T5_MAX_LENGTH) and out["mask"].dtype == torch.long

    # Real tokens = sentencepiece pieces + </s>, truncated to max_length.
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tiny_t5_dirs["spiece_model"]))
    expected = [min(len(sp.encode(p)) + 1, T5_MAX_LENGTH) for p in prompts]
    assert out["mask"].sum(1).tolist() == expected
    assert expected[0] != expected[1]
    # Mask is a prefix of ones.
    for row, n in zip(out["mask"], expected):
        assert row[:n].all() and not row[n:].any()

    again = enc.encode(prompts)
    torch.testing.assert_close(again["y"], out["y"])
    assert torch.isfinite(out["y"]).all()


def test_t5_layouts_agree_and_identity(tiny_t5_dirs: dict[str, Path]) -> None:
    a = T5TextEncoder(tiny_t5_dirs["spiece"], max_length=T5_MAX_LENGTH, dtype="fp32")
    b = T5TextEncoder(tiny_t5_dirs["json"], max_length=T5_MAX_LENGTH, dtype="fp32")
    prompts = ["Camera pans over the ocean waves at sunset", "", "the cat runs " * 10]
    ids_a, mask_a = a.tokenize(prompts)
    ids_b, mask_b = b.tokenize(prompts)
    assert torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)
    assert mask_a[1].sum() == 1  # an empty prompt still has </s>

    assert (
        a.identity()
        == T5TextEncoder(tiny_t5_dirs["spiece"], max_length=T5_MAX_LENGTH, dtype="fp32").identity()
    )
    assert (
        a.identity() != T5TextEncoder(tiny_t5_dirs["spiece"], max_length=8, dtype="fp32").identity()
    )
    bf16 = T5TextEncoder(tiny_t5_dirs["spiece"], max_length=T5_MAX_LENGTH, dtype="bf16")
    assert bf16.identity() != a.identity()
    assert bf16.encode(prompts)["y"].dtype == torch.bfloat16


def test_t5_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="t5-v1_1-xxl"):
        T5TextEncoder(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="weights"):
        T5TextEncoder(tmp_path)
    with pytest.raises(FileNotFoundError):
        build_text_encoder("t5", path=tmp_path / "nope")


# ---------------------------------------------------------------- word embedding


def test_word_ids_are_stable_and_case_insensitive() -> None:
    a = WordEmbeddingTextEncoder(output_dim=8)
    b = WordEmbeddingTextEncoder(output_dim=8)
    ids_a, _ = a.tokenize(["A Cat, jumping-over the DOG!"])
    ids_b, _ = b.tokenize(["a cat jumping over the dog"])
    assert torch.equal(ids_a, ids_b)
    # Fixed values: CRC-32 does not depend on the process (Python's hash() does).
    assert a.word_id("cat") == 492  # 2 + crc32(b"cat") % 4094
    assert ids_a[0, :7].tolist() == [
        a.word_id(w) for w in ["a", "cat", "jumping", "over", "the", "dog"]
    ] + [1]


def test_word_padding_and_truncation() -> None:
    enc = WordEmbeddingTextEncoder(output_dim=8, model_max_length=6)
    ids, mask = enc.tokenize(["one two", "w " * 20, ""])
    assert ids.shape == mask.shape == (3, 6) and ids.dtype == mask.dtype == torch.long
    assert mask.sum(1).tolist() == [3, 6, 1]  # words + end token, capped at N
    assert ids[0, 3:].eq(0).all() and mask[0, 3:].eq(0).all()
    assert ids[1, -1] == enc.END_ID  # truncation keeps the end token
    assert ids[2, 0] == enc.END_ID


def test_word_encode_matches_interface_and_trains() -> None:
    enc = build_text_encoder("word-embedding", output_dim=8)
    assert isinstance(enc, WordEmbeddingTextEncoder) and isinstance(enc, TextEncoder)
    assert enc.vocab_size == 4096 and enc.model_max_length == 32
    out = enc.encode(["a dog", "a cat on a mat"])
    assert out["y"].shape == (2, 1, 32, 8) and out["mask"].shape == (2, 32)
    assert out["y"][0, 0, 3:].abs().sum() == 0  # padding rows of the table are zero
    assert 0.9 < float(enc.embedding.weight[2:].detach().std()) < 1.1  # unit scale, see below

    ids, _ = enc.tokenize(["a dog"])
    torch.testing.assert_close(enc.embed(ids), out["y"][:1])

    (out["y"] * out["mask"][:, None, :, None]).sum().backward()
    grad = enc.embedding.weight.grad
    assert grad is not None
    assert grad[enc.word_id("dog")].abs().sum() > 0 and grad[enc.word_id("cat")].abs().sum() > 0
    assert grad[enc.word_id("zebra")].abs().sum() == 0


def test_fresh_word_embeddings_are_told_apart_by_the_model() -> None:
    """A freshly initialised table must give caption tokens that STDiT-2's caption
    MLP keeps apart at least as well as the rows of its own null caption. With the
    old 0.02 init (no normalisation before `y_proj`, whose weights also start at
    0.02) "red" and "blue" came out nearly identical, cross-attention could not tell
    prompts apart and trained tiny models ignored the prompt's colour."""
    from opensora_core.models import build_stdit2

    torch.manual_seed(0)
    model = build_stdit2("stdit2-tiny")
    enc = WordEmbeddingTextEncoder(output_dim=model.config.caption_channels)
    ids = torch.tensor([[enc.word_id(w) for w in ("red", "blue", "green", "square")]])
    words = enc.embed(ids)[0, 0]  # [4, C]
    null = model.null_caption(1)[0, 0, :4]  # [4, C]
    assert words.pow(2).mean().sqrt() >= null.pow(2).mean().sqrt()

    with torch.no_grad():
        projected_words = model.y_embedder.y_proj(words)
        projected_null = model.y_embedder.y_proj(null)
    word_spread = torch.pdist(projected_words).min()
    null_spread = torch.pdist(projected_null).mean()
    assert word_spread > null_spread


def test_word_identity() -> None:
    base = WordEmbeddingTextEncoder(output_dim=8).identity()
    assert base == WordEmbeddingTextEncoder(output_dim=8).identity()
    assert base != WordEmbeddingTextEncoder(output_dim=8, vocab_size=1024).identity()
    assert base != WordEmbeddingTextEncoder(output_dim=8, model_max_length=16).identity()


def test_build_text_encoder_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="word-embedding.*t5"):
        build_text_encoder("clip")
