"""Tiny random-weight caption models, built offline from configs, for tests, benchmarks and demos.

Each family gets the real model class, the real processor class and a chat template of the
family's layout, saved with `save_pretrained` so it loads through the same code path as a hub
checkpoint (`AutoProcessor` + `AutoModelForImageTextToText`). The tokenizer is a byte-level BPE
trained on a few sentences (no download), wrapped in the family's tokenizer class. The weights
are random: the text they generate is noise, which is what the output checks are for.

    python -m tests.support.tiny_vlm qwen2_5_vl /tmp/tiny-qwen     # then: recap caption LIB --model /tmp/tiny-qwen
"""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.processors import image_only

FAMILIES = ("qwen2_5_vl", "qwen3_vl", "llava_onevision")

_CORPUS = [
    "A woman in a red coat walks a small dog along a wet street at dusk; the camera pans left.",
    "Close-up of hands kneading dough on a wooden table, warm light, shallow depth of field.",
    "Aerial shot of a coastline with waves breaking on rocks, the camera slowly moves forward.",
    "system user assistant You are a helpful assistant. Describe this video in detail.",
]

# Qwen2.5-VL's chat layout: images and videos become <|vision_start|><|image_pad|><|vision_end|>
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# LLaVA-OneVision (Qwen2 text model): <image> / <video> placeholders before the text
LLAVA_OV_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] if c['type'] == 'image' %}<image>{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'video' %}<video>{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}\n{{ c['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bpe_tokenizer(special: list[str], vocab_size: int = 400):
    """A byte-level BPE trained on a few sentences: encodes any text, decodes back exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return tok


QWEN_VL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                   "<|image_pad|>", "<|video_pad|>"]


def _qwen_tokenizer(special: list[str] = QWEN_VL_SPECIAL, chat_template: str = QWEN_TEMPLATE):
    """A tiny byte-level BPE Qwen2 tokenizer with these special tokens, and their ids."""
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(tokenizer_object=_bpe_tokenizer(special), eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", chat_template=chat_template)
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in special}


def build_qwen2_5_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """A ~1M-parameter Qwen2.5-VL with its processor, saved to `out_dir`."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer, ids = _qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, out_hidden_size=32,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = image_only(Qwen2_5_VLProcessor)(image_processor=image_processor, tokenizer=tokenizer,
                                                chat_template=QWEN_TEMPLATE)
    return _save(out_dir, model, processor)


def build_qwen3_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """A ~1M-parameter Qwen3-VL (16 px patches, DeepStack) with its processor, saved to `out_dir`."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer, ids = _qwen_tokenizer()
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True},
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                           num_position_embeddings=64, deepstack_visual_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, min_pixels=64 * 64, max_pixels=128 * 128)
    processor = image_only(Qwen3VLProcessor)(image_processor=image_processor, tokenizer=tokenizer,
                                             chat_template=QWEN_TEMPLATE)
    return _save(out_dir, model, processor)


def build_llava_onevision(out_dir: str | Path, seed: int = 0) -> Path:
    """A ~1M-parameter LLaVA-OneVision (SigLIP vision, Qwen2 text) with its processor."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    tokenizer, ids = _qwen_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                                     LLAVA_OV_TEMPLATE)
    image_size, patch = 32, 8
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, image_size=image_size, patch_size=patch),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        image_token_index=ids["<image>"], video_token_index=ids["<video>"],
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]], vision_aspect_ratio="anyres_max_1",
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]])
    processor = image_only(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=LLAVA_OV_TEMPLATE,
        num_image_tokens=(image_size // patch) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_1")
    return _save(out_dir, model, processor)


def _save(out_dir: str | Path, model, processor) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


BUILDERS = {"qwen2_5_vl": build_qwen2_5_vl, "qwen3_vl": build_qwen3_vl, "llava_onevision": build_llava_onevision}


def build_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save the tiny model of `family` (one of FAMILIES); return its folder."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return BUILDERS[family](out_dir, seed)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=FAMILIES)
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build_tiny_model(a.family, a.out_dir, a.seed))
