"""Text encoders: captions -> token embeddings for STDiT-2's cross-attention.

Every encoder returns ``{"y": [B, 1, N, C] float, "mask": [B, N] long}`` where
``N = model_max_length``, ``C = output_dim`` and ``mask`` is 1 on real tokens. Values
at padding positions are unspecified; consumers keep only masked-in tokens (as
Open-Sora 1.1 does before cross-attention).

* :class:`T5TextEncoder`: Open-Sora 1.1's frozen T5 v1.1 XXL encoder (200 tokens,
  hidden 4096) from a local folder, run in fp32 on prompts cleaned by
  :func:`~opensora_core.models.caption_cleaning.clean_caption` as Open-Sora does.
* :class:`WordEmbeddingTextEncoder`: the weight-free embedded default, a hashed
  word tokenizer plus a trainable embedding table learnt jointly with a tiny model.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from opensora_core.models.autoencoder import state_dict_digest
from opensora_core.models.caption_cleaning import clean_caption
from opensora_core.utils.dtypes import resolve_dtype

__all__ = [
    "TEXT_ENCODER_KINDS",
    "T5TextEncoder",
    "TextEncoder",
    "WordEmbeddingTextEncoder",
    "build_text_encoder",
]

TEXT_ENCODER_KINDS: tuple[str, ...] = ("word-embedding", "t5")


@runtime_checkable
class TextEncoder(Protocol):
    """What the rest of the code base relies on."""

    output_dim: int
    model_max_length: int

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]: ...

    def identity(self) -> str: ...


# ---------------------------------------------------------------------------- T5


class _SentencePieceT5Tokenizer:
    """T5's original tokenization straight from ``spiece.model``: pieces + ``</s>``.

    Used when ``AutoTokenizer`` cannot build a tokenizer from a folder that only
    holds ``spiece.model`` (the ``t5-v1_1-xxl`` layout): recent transformers convert
    it with sentencepiece's generated protobuf module, which fails to import when
    the installed protobuf runtime is older than that module's gencode (dagster
    pins protobuf < 7). The ids are those of the reference implementation.
    """

    def __init__(self, model_file: Path) -> None:
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.eos_id = self.sp.eos_id()
        self.pad_id = max(self.sp.pad_id(), 0)  # T5 uses id 0 for padding

    def __call__(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(prompts), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), max_length), dtype=torch.long)
        for row, pieces in enumerate(self.sp.encode(list(prompts))):
            # Truncate like T5: keep room for the end-of-sequence token.
            seq = pieces[: max_length - 1] + [self.eos_id]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask


class T5TextEncoder:
    """Frozen ``T5EncoderModel`` + tokenizer from a local ``t5-v1_1-xxl``-layout folder.

    Prompts are cleaned (:func:`clean_caption`), padded to ``max_length`` and truncated
    (the ``</s>`` token is kept). T5 runs in fp32 by default, as Open-Sora's does.
    ``y`` is returned in the model's dtype on its device.

    Not an ``nn.Module`` on purpose: it must never end up as a submodule of a
    trained model, where its billions of frozen weights would land in checkpoints.
    """

    _WEIGHT_PATTERNS = ("*.safetensors", "*.bin")

    def __init__(
        self,
        path: str | Path,
        max_length: int = 200,
        dtype: torch.dtype | str = "fp32",
        device: torch.device | str = "cpu",
        tokenizer_path: str | Path | None = None,
    ) -> None:
        import transformers
        from transformers import AutoTokenizer, T5EncoderModel

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(
                f"T5 folder {str(root)!r} does not exist; expected a local t5-v1_1-xxl layout "
                "(config.json, model weights *.safetensors or *.bin, spiece.model)"
            )
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"{str(root / 'config.json')!r} not found (T5 config)")
        if not any(any(root.glob(p)) for p in self._WEIGHT_PATTERNS):
            raise FileNotFoundError(
                f"no T5 weights in {str(root)!r}; expected *.safetensors or *.bin files"
            )
        tok_root = Path(tokenizer_path) if tokenizer_path is not None else root
        if not tok_root.is_dir():
            raise FileNotFoundError(f"T5 tokenizer folder {str(tok_root)!r} does not exist")

        self.path = root
        self.model_max_length = int(max_length)
        self.dtype = resolve_dtype(dtype)
        self.device = torch.device(device)

        # The dtype keyword's name depends on the transformers release, and a release
        # ignores the name it does not know, loading fp32 silently.
        major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
        dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        model = T5EncoderModel.from_pretrained(
            str(root), local_files_only=True, **{dtype_kw: self.dtype}
        )
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.output_dim = int(self.model.config.d_model)

        self._hf_tokenizer: Any = None
        self._spm_tokenizer: _SentencePieceT5Tokenizer | None = None
        try:
            self._hf_tokenizer = AutoTokenizer.from_pretrained(str(tok_root), local_files_only=True)
        except (ValueError, ImportError, OSError, TypeError) as err:
            spiece = tok_root / "spiece.model"
            if not spiece.is_file():
                raise FileNotFoundError(
                    f"cannot load a tokenizer from {str(tok_root)!r} ({err}); "
                    "expected spiece.model or tokenizer.json"
                ) from err
            self._spm_tokenizer = _SentencePieceT5Tokenizer(spiece)
        self._tokenizer_root = tok_root
        self._digest: str | None = None

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask of the cleaned prompts, both ``[B, N]`` long on CPU."""
        prompts = [clean_caption(p) for p in prompts]
        if self._spm_tokenizer is not None:
            return self._spm_tokenizer(prompts, self.model_max_length)
        out = self._hf_tokenizer(
            prompts,
            max_length=self.model_max_length,
            padding="max_length",
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out["input_ids"].long(), out["attention_mask"].long()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return {"y": hidden[:, None], "mask": mask}

    def _tokenizer_digest(self) -> str:
        # The vocabulary file fixes the ids; config files may change cosmetically.
        for name in ("spiece.model", "tokenizer.json"):
            f = self._tokenizer_root / name
            if f.is_file():
                return hashlib.blake2b(f.read_bytes(), digest_size=8).hexdigest()
        vocab = sorted(self._hf_tokenizer.get_vocab().items())
        return hashlib.blake2b(repr(vocab).encode(), digest_size=8).hexdigest()

    def identity(self) -> str:
        if self._digest is None:
            # Hashing every weight is slow and they are frozen: once is enough.
            self._digest = state_dict_digest(self.model)
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"t5(max_length={self.model_max_length},dim={self.output_dim},dtype={dtype},clean=pixart,"
            f"weights={self._digest},tokenizer={self._tokenizer_digest()})"
        )

    def to(self, device: torch.device | str) -> T5TextEncoder:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self


# ---------------------------------------------------------------- word embedding


_WORD = re.compile(r"[^\W_]+")  # runs of Unicode letters/digits: splits on everything else


class WordEmbeddingTextEncoder(nn.Module):
    """Hashed word tokenizer + trainable embedding table (the embedded default).

    Tokenizer: lowercase, split on non-alphanumerics, each word hashed with CRC-32
    (stable across processes, unlike Python's salted ``hash``) into ids
    ``2 .. vocab_size-1``. Id 0 is padding, id 1 an end token appended to every
    prompt (so an empty prompt still has one real token and cross-attention never
    sees an all-masked row). Longer prompts keep their first ``N-1`` words.

    :meth:`tokenize` and :meth:`embed` are separate so caches can store token ids:
    the embedding trains with the diffusion model, the ids do not change.

    The table starts at unit scale (``init_std=1``, ``nn.Embedding``'s own default),
    not at the 0.02 of a transformer's input embeddings: nothing normalises these
    vectors before STDiT-2's caption MLP ``y_proj``, whose weights start at std 0.02
    too, so a 0.02 table gives caption tokens that are nearly identical after the
    projection (and ~6x smaller than the model's null caption). Cross-attention then
    cannot tell one prompt from another and the model learns to ignore the caption.
    """

    PAD_ID = 0
    END_ID = 1
    _FIRST_WORD_ID = 2

    def __init__(
        self,
        output_dim: int,
        vocab_size: int = 4096,
        model_max_length: int = 32,
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if vocab_size <= self._FIRST_WORD_ID:
            raise ValueError(f"vocab_size must be > {self._FIRST_WORD_ID}, got {vocab_size}")
        if model_max_length < 1:
            raise ValueError(f"model_max_length must be >= 1, got {model_max_length}")
        self.output_dim = int(output_dim)
        self.vocab_size = int(vocab_size)
        self.model_max_length = int(model_max_length)
        self.embedding = nn.Embedding(self.vocab_size, self.output_dim, padding_idx=self.PAD_ID)
        nn.init.normal_(self.embedding.weight, std=init_std)
        with torch.no_grad():
            self.embedding.weight[self.PAD_ID].zero_()

    def word_id(self, word: str) -> int:
        buckets = self.vocab_size - self._FIRST_WORD_ID
        return self._FIRST_WORD_ID + zlib.crc32(word.encode("utf-8")) % buckets

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask, both ``[B, N]`` long on CPU."""
        n = self.model_max_length
        ids = torch.full((len(prompts), n), self.PAD_ID, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = _WORD.findall(prompt.lower())[: n - 1]
            seq = [self.word_id(w) for w in words] + [self.END_ID]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ids, (ids != self.PAD_ID).long()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` ids -> ``[B, 1, N, C]`` embeddings (padding rows are zero)."""
        return self.embedding(ids.to(self.embedding.weight.device))[:, None]

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenize(list(prompts))
        return {"y": self.embed(ids), "mask": mask.to(self.embedding.weight.device)}

    def forward(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.encode(prompts)

    def identity(self) -> str:
        # No weight hash: the table trains with the model and caches hold ids, so
        # the identity names exactly what fixes the ids (plus the output size).
        return (
            f"word-embedding-v1(hash=crc32,lower,split=nonalnum,vocab={self.vocab_size},"
            f"max_length={self.model_max_length},dim={self.output_dim},end_token)"
        )


# ----------------------------------------------------------------------- factory


def build_text_encoder(
    kind: str = "word-embedding", path: str | Path | None = None, **kwargs: Any
) -> WordEmbeddingTextEncoder | T5TextEncoder:
    """Build a text encoder by kind.

    ``"word-embedding"``: kwargs go to :class:`WordEmbeddingTextEncoder`
    (``output_dim`` required). ``"t5"``: ``path`` is the local T5 folder; kwargs go
    to :class:`T5TextEncoder`.
    """
    if kind == "word-embedding":
        if path is not None:
            raise ValueError("the 'word-embedding' text encoder has no weights; do not pass a path")
        return WordEmbeddingTextEncoder(**kwargs)
    if kind == "t5":
        if path is None:
            raise ValueError("the 't5' text encoder needs path= to a local t5-v1_1-xxl folder")
        return T5TextEncoder(path, **kwargs)
    raise ValueError(
        f"unknown text encoder kind {kind!r}; valid kinds: {', '.join(TEXT_ENCODER_KINDS)}"
    )


def build_text_encoder_for_model(
    kind: str,
    path: str | Path | None,
    caption_channels: int,
    model_max_length: int,
    weights: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> WordEmbeddingTextEncoder | T5TextEncoder:
    """The text encoder a model with these caption dimensions reads. A jointly trained
    word-embedding encoder takes its trained `weights` (vocabulary size from them)."""
    if kind == "word-embedding":
        vocab = {} if weights is None else {"vocab_size": weights["embedding.weight"].shape[0]}
        encoder = WordEmbeddingTextEncoder(output_dim=caption_channels, model_max_length=model_max_length, **vocab)
        if weights is not None:
            encoder.load_state_dict(weights)
        return encoder.to(device)
    encoder = build_text_encoder(kind, path, max_length=model_max_length, device=device)
    if encoder.output_dim != caption_channels:
        raise ValueError(f"text encoder at {path} gives {encoder.output_dim} channels, the model expects {caption_channels}")
    return encoder
