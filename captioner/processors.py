"""Loading a model's processor, with an images-only fallback where torchvision is missing.

transformers 5 builds every video processor on torchvision. Without it (the CPU machines, whose
torch build has no matching torchvision wheel) a VLM processor such as Qwen2.5-VL's cannot be
constructed at all, even to process images, because its `video_processor` slot must hold one.
The fallback builds the same processor class with that slot removed, from the saved image
processor (PIL backend), tokenizer, chat template and processor options; sampled frames are then
passed as an ordered list of images.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any


def torchvision_available() -> bool:
    # lazy: transformers takes ~1 s to import; only this model path needs it
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


@functools.lru_cache(maxsize=None)
def image_only(processor_cls: type) -> type:
    """`processor_cls` without its video processor slot (same name, so it saves and loads as itself).

    ProcessorMixin reads the sub-processor slots from the `__init__` signature; this subclass's
    signature has none for video, and the parent's positional `video_processor=None` is dropped.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_cls.__init__(self, image_processor=image_processor, tokenizer=tokenizer,
                               chat_template=chat_template, **kwargs)

    # keep the parent's other options in the signature: saving and loading read them from there
    sig = inspect.signature(processor_cls.__init__)
    __init__.__signature__ = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "video_processor"])
    namespace = {"__init__": __init__, "__module__": processor_cls.__module__}
    return type(processor_cls.__name__, (processor_cls,), namespace)


def load_processor(model: str, revision: str | None = None, **hub_kwargs: Any):
    """The model's processor: `AutoProcessor` with torchvision, the images-only fallback without."""
    # lazy: transformers takes ~1 s to import; only this model path needs it
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.utils import cached_file

    if torchvision_available():
        return AutoProcessor.from_pretrained(model, revision=revision, **hub_kwargs)
    def read_json(name: str) -> dict[str, Any]:
        path = cached_file(model, name, revision=revision, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        return json.loads(Path(path).read_text()) if path else {}

    options = read_json("processor_config.json")
    name = options.pop("processor_class", None) or read_json("preprocessor_config.json").get("processor_class")
    if not name or not hasattr(transformers, name):
        return AutoProcessor.from_pretrained(model, revision=revision, **hub_kwargs)
    for key in [k for k in options if k.endswith(("_processor", "tokenizer", "feature_extractor"))]:
        options.pop(key)  # sub-processor configs are loaded below by their own Auto classes
    tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, **hub_kwargs)
    # the template: chat_template.jinja (transformers 5), chat_template.json (older checkpoints),
    # the processor config, or the tokenizer's
    template_path = cached_file(model, "chat_template.jinja", revision=revision,
                                _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    chat_template = (Path(template_path).read_text() if template_path
                     else read_json("chat_template.json").get("chat_template")
                     or options.get("chat_template") or getattr(tokenizer, "chat_template", None))
    options.pop("chat_template", None)
    image_processor = AutoImageProcessor.from_pretrained(model, revision=revision, **hub_kwargs)
    cls = image_only(getattr(transformers, name))
    known = inspect.signature(cls.__init__).parameters
    options = {k: v for k, v in options.items() if k in known}  # e.g. num_image_tokens for LLaVA-OneVision
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **options)
