# Two entry points (see README): `make demo` and `make test`. Both create or reuse .venv;
# setup is skipped when pyproject.toml has not changed since the last install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := .demo

.PHONY: setup demo test test-fast clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "recap needs Python >= 3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# scenedetect and rapidocr depend on opencv-python; another OpenCV build would shadow it
	@$(BIN)/python -m pip uninstall --quiet -y opencv-python-headless opencv-contrib-python opencv-contrib-python-headless 2>/dev/null || true
	@$(BIN)/python -c 'import cv2, av, decord, ray, torch, pyarrow; print("environment ok: torch", torch.__version__, "| opencv", cv2.__version__)'
	@# ffmpeg's CLI is the tests' independent oracle (the product itself decodes with PyAV)
	@command -v ffprobe >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null) ; } || \
		echo "note: ffmpeg/ffprobe not found; install them to run the oracle tests"
	@# Debian's Chromium runs the web UI's browser test (tests/test_serve_browser.py); Playwright drives it
	@# and never downloads a browser of its own
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null) ; } || \
		echo "note: /usr/bin/chromium not found; install it (apt-get install chromium) to run the browser test"
	@touch $(STAMP)

demo: $(STAMP)
	@test -f $(DEMO)/samples/truth.json || $(BIN)/recap samples $(DEMO)/samples --seed 0
	$(BIN)/recap ingest $(DEMO)/samples --out $(DEMO)/lib
	$(BIN)/recap caption $(DEMO)/lib --backend signals
	$(BIN)/recap index $(DEMO)/lib
	$(BIN)/recap search $(DEMO)/lib "a static shot" --top-k 3
	$(BIN)/recap export $(DEMO)/lib --out $(DEMO)/shards
	$(BIN)/recap info $(DEMO)/lib

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=5

# the inner loop: everything but the end-to-end and cluster tests marked `slow` (CI runs those too)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q --durations=5 -m "not slow"

clean-demo:
	rm -rf $(DEMO)
