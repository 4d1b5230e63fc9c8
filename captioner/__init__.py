"""recap captioner: dense captions of clips from a vision-language model, no Ray inside.

    config.py          CaptionConfig (configs/captioner.yaml), prompts in configs/prompts/
    frames.py          which frames (uniform or by rate), read with decord, fitted to a pixel budget
    prompts.py         prompt templates and the measured-signal hints
    model.py           in-process transformers backend (any image-text-to-text model with a chat template)
    processors.py      processor loading, with the images-only fallback where torchvision is missing
    openai_backend.py  OpenAI-compatible chat-completions client (vLLM); server.py: a minimal server
    checks.py          boilerplate stripping; empty / too short / truncated / repetition verdicts
    captioner.py       prepare_clip + Captioner (batching, checks, retries) + signal_rows
    signal_caption.py  the deterministic caption from measured signals
    versions.py        LIB/captions/: caption versions, the default version, read_captions for export
    tiny.py            tiny random-weight models for tests, benchmarks and the offline demo
"""
