"""`recap serve` as a user meets it: the real command on a real library, and Debian's headless
Chromium (driven by Playwright, which never downloads a browser here) searching, playing a clip,
applying a filter, selecting two clips and saving them; then `recap export --selection` exports
exactly those two. The page is saved as a screenshot (its path is printed)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import RECAP_FROM_A_TERMINAL, ROOT, recap
from tests.index_fixtures import CLIPS, clip_id
from tests.test_serve_api import build_library, index_library

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
BUCKETS = """fps: 8
frames: [5, 9]
resolutions: {tiny: 9216}
aspect_ratios: ["4:3", "16:9"]
multiple: 16
"""


def until(page, expression: str, timeout: int = 30_000) -> None:
    """Wait until the JavaScript `expression` is true in `page`. Polled from here with `evaluate`
    (the debugger's evaluation): Playwright's own wait_for_function compiles the expression inside
    the page, which the UI's content policy (script-src 'self', no eval) rightly refuses."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout / 1000:.0f} s: {expression}")
        time.sleep(0.05)


@contextlib.contextmanager
def recap_serve(lib: Path, *args: str) -> Iterator[tuple[str, list[str]]]:
    """`recap serve LIB --port 0 ...` in a subprocess: (its URL, the lines it printed first); stopped
    with Ctrl-C on exit (started as a terminal starts it: a test run may hold SIGINT ignored)."""
    proc = subprocess.Popen([*RECAP_FROM_A_TERMINAL, "serve", str(lib), "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        m = re.search(r"at (http://\S+)", lines[0])
        assert m, f"recap serve did not start: {lines} {proc.stderr.read() if proc.poll() is not None else ''}"
        yield m.group(1), lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_serve_says_it_listens_on_loopback_only(tmp_path):
    root = build_library(tmp_path)
    with recap_serve(root) as (url, lines):
        assert url.startswith("http://127.0.0.1:") and "loopback" in lines[1] and "other machines cannot" in lines[1]
    bad = recap("serve", str(tmp_path / "nope"), "--port", "0", check=False)
    assert bad.returncode == 2 and "not a recap library" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                    "(`make setup` installs it as root; or apt-get install chromium)")
def test_search_play_filter_select_and_export_in_a_real_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")
    lib = index_library(build_library(tmp_path))
    shot = tmp_path / "serve_results.png"
    with recap_serve(lib) as (url, _), sync_api.sync_playwright() as pw, \
            tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                        args=FLAGS, viewport={"width": 1400, "height": 1000})
        try:
            page = browser.new_page()
            refused = []      # what the content policy blocked: every script, style, image and video must pass
            page.on("console", lambda m: "Content Security Policy" in m.text and refused.append(m.text))
            page.goto(url)
            page.wait_for_selector("body[data-ready]")
            assert page.locator(".card").count() == len(CLIPS)

            # search
            page.fill("#q", "puppy dashing over the shore as the sun goes down")
            page.click("#search")
            until(page, "document.querySelector('#summary').textContent.includes('hits')")
            first = page.locator(".card").first.get_attribute("data-id")
            assert first in (clip_id(0), clip_id(10))
            assert page.locator("#like-banner").is_hidden() and page.locator("#selection-banner").is_hidden()

            # hover previews, click plays: the video element plays and its time advances; seeking works
            card = page.locator(f'.card[data-id="{clip_id(0)}"] .thumb')
            card.hover()
            until(page, "(() => { const v = document.querySelector('video.preview');"
                                   " return v && v.currentTime > 0.1; })()")
            card.click()
            page.wait_for_selector("#player")
            until(page, "(() => { const v = document.querySelector('#player');"
                                   " return !v.paused && v.currentTime > 0.3; })()")
            t1 = page.evaluate("document.querySelector('#player').currentTime")
            until(page, f"document.querySelector('#player').currentTime > {t1} + 0.2")
            page.evaluate("document.querySelector('#player').currentTime = 3.0")
            until(page, "(() => { const v = document.querySelector('#player');"
                                   " return !v.seeking && v.currentTime >= 3.0; })()")
            page.click("#modal-close")

            # filter controls write the where expression, and it applies
            page.click("#clear-search")
            page.select_option("#f-status", "passed")
            page.select_option("#f-duplicates", "exclude")
            page.click("#apply-filters")
            until(page, "document.querySelector('#where').value === 'passed and not duplicate'")
            want = sum(1 for c in CLIPS if c[3] and c[4] is None)
            until(page, f"document.querySelectorAll('.card').length === {want}")

            # select two, name, save
            chosen = [page.locator(".card").nth(i).get_attribute("data-id") for i in (1, 3)]
            for cid in chosen:
                page.check(f'.card[data-id="{cid}"] input.pick')
            page.fill("#selection-name", "two")
            page.click("#save-selection")
            until(page, "document.querySelector('#saved').textContent.includes('saved 2 clips')")
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")

            # the report's plots on the Stats page (built by the server on first visit)
            page.goto(f"{url}/stats")
            until(page, "document.querySelector('#report-state').textContent.startsWith('report built')",
                                   timeout=300_000)
            frame = page.frame_locator("#report")
            frame.locator("h2", has_text="Pass rate per filter").wait_for(timeout=60_000)     # the frame loaded
            assert frame.locator('img[src="pass_rate.png"]').count() == 1
            assert refused == []
        finally:
            browser.close()

    buckets = tmp_path / "buckets.yaml"
    buckets.write_text(BUCKETS)
    out = tmp_path / "shards"
    recap("export", str(lib), "--selection", "two", "--out", str(out), "--buckets", str(buckets),
          "--set", "execution.executor=local", "--no-progress")
    assert sorted(pq.read_table(out / "manifest.parquet").column("key").to_pylist()) == sorted(chosen)
