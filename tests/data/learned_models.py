"""Tiny random models saved as local folders, for the scorers and the captioner that
need weights: a CLIP, the aesthetic MLP head, an image-text-to-text model. Nothing is
downloaded; the tokenizers are built here from a few words."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

# Hidden sizes of the tiny towers (32-pixel images in 8-pixel patches).
LAYERS = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}
VISION = {**LAYERS, "image_size": 32, "patch_size": 8}
CLIP_PROJECTION = 16


def _image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random CLIP with a character-level BPE tokenizer, as `CLIPModel.save_pretrained`
    and `CLIPProcessor.save_pretrained` write it."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for token in [*string.ascii_lowercase, *(c + "</w>" for c in string.ascii_lowercase),
                  "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    special = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
               "pad_token_id": vocab["<|endoftext|>"]}
    config = CLIPConfig(text_config={**LAYERS, **special, "vocab_size": len(vocab), "max_position_embeddings": 40},
                        vision_config=VISION, projection_dim=CLIP_PROJECTION)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=_image_processor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_aesthetic_head(path: Path, seed: int = 0) -> Path:
    """Random weights of the aesthetic predictor's MLP over the tiny CLIP's embeddings,
    keyed as the published state dict (`layers.N.weight`)."""
    from opensora_core.curation.scoring.clip_models import aesthetic_head

    torch.manual_seed(seed)
    head = aesthetic_head(CLIP_PROJECTION)
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, path)
    return path


def save_tiny_captioner(folder: Path, seed: int = 0) -> Path:
    """A random LLaVA (tiny CLIP vision tower, tiny Llama) with a word-level tokenizer
    and a chat template: what the `image-text-to-text` pipeline loads. Its captions are
    random words of its vocabulary; special tokens are never generated, so none is empty."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]
    words = [*specials, "user", "assistant", ":", "describe", "this", "frame", "a", "red", "blue", "square",
             "circle", "moving", "left", "right"]
    vocab = {word: i for i, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>",
                                        extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}assistant : {% endif %}")
    processor = LlavaProcessor(image_processor=_image_processor(), tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=template)
    text = LlamaConfig(**LAYERS, vocab_size=len(vocab), num_key_value_heads=2, max_position_embeddings=128,
                       pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"])
    config = LlavaConfig(vision_config=CLIPVisionConfig(**VISION), text_config=text,
                         image_token_index=vocab["<image>"], vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(suppress_tokens=[vocab[t] for t in specials], do_sample=False,
                                               pad_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"])
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
