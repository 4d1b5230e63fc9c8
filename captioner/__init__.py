"""recap captioner: dense captions of clips from a vision-language model, no Ray inside.

    config.py          CaptionConfig (the job loads it from configs/captioner.yaml), prompts in configs/prompts/
    frames.py          which frames (uniform or by rate), read with decord, fitted to a pixel budget
    prompts.py         prompt templates and the measured-signal hints
    model.py           in-process transformers backend (any image-text-to-text model with a chat template)
    processors.py      processor loading, with the images-only fallback where torchvision is missing
    openai_backend.py  OpenAI-compatible chat-completions client (vLLM)
    checks.py          boilerplate stripping; empty / too short / truncated / repetition verdicts
    captioner.py       prepare_clip + Captioner (batching, checks, retries) + signal_rows + version ids
    signal_caption.py  the deterministic caption from measured signals

Nothing here imports `pipeline/` or `index/`: the caption stage in `pipeline/caption/` feeds it clip
rows and stores what it returns in the library (`pipeline/library/captions.py`).
"""
