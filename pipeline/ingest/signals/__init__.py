"""Clip quality signals, measured during the single decode pass.

Every signal is a `FrameAnalyzer` (see `pipeline/ingest/analysis.py`) that keeps a few numbers per frame,
or the small results of a few sampled frames, and answers `clip_signals(start, end)` once the
clip ranges are known. Two kinds of input:

- every analysis frame (~160 px): motion and camera motion, exposure (brightness, contrast,
  colourfulness, black / blank / frozen shares), perceptual hashes;
- a larger *detail* frame (`detail_width`, 480 px) once every `detail_every_s` seconds, attached
  by the decoder as `AnalysisFrame.detail`: sharpness and black bars on each; text (OCR) and the
  aesthetic score on one every 2 s (`text.every_s`, `aesthetic.every_s`), as they cost more.
  `DetailSchedule` says on which frames: the first at or after each multiple of the interval, so
  every clip at least that long gets one.

On a source with fewer pixels than `full_rate_pixels` (1080p) the sampled work (regular OCR
readings, flow pairs (at most 2x), colourfulness) is spaced out in proportion, up to `max_stretch`
(4x): its decode costs that much less, while the signals' frames are the same size whatever the
source.

`SIGNAL_COLUMNS` (pipeline.library.schema) lists the clip columns produced; `analyzers.make_analyzers`
builds the analyzers for one video and `analyzers.clip_signals` merges their answers for one clip (every column present, null where a
signal could not be measured).
"""

# nothing imported here: the configs import `signals.config`, and a job's driver must not load the
# analyzers' OpenCV and OCR to read its config
