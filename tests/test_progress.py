"""Progress bars: redrawn in place on a terminal, whole lines (throttled) in a log."""

from __future__ import annotations

import fcntl
import io
import os
import struct
import termios
from pathlib import Path

import pytest
from tqdm import tqdm

from pipeline.cli import main
from tests.avfiles import write_video
from trainer.progress import NO_PROGRESS_ENV, LogLines, progress_bar


def run_bar(stream, every_s: float, steps: int = 5) -> None:
    bar = progress_bar(total=steps, unit="video", file=stream, every_s=every_s, mininterval=0)
    for _ in range(steps):
        bar.update(1)
    bar.close()


def test_in_a_log_the_first_and_last_status_are_whole_lines():
    log = io.StringIO()
    run_bar(log, every_s=3600)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and log.getvalue().endswith("\n")
    assert len(lines) == 2 and lines[0].startswith("0%") and lines[1].startswith("100%") and "5/5" in lines[1]


@pytest.mark.parametrize("waits, shown", [
    ([1, 31, 1, 31, 1], ["0%", "40%", "80%", "100%"]),     # the last step's line comes from the close
    ([31] * 5, ["0%", "20%", "40%", "60%", "80%", "100%"]),  # the close repeats no line
])
def test_in_a_log_a_line_every_interval(waits: list[int], shown: list[str]):
    clock = [0.0]
    log = io.StringIO()
    bar = tqdm(total=5, unit="video", file=LogLines(log, every_s=30, clock=lambda: clock[0]), mininterval=0)
    for wait in waits:
        clock[0] += wait
        bar.update(1)
    bar.close()
    assert [line.split("|")[0] for line in log.getvalue().splitlines()] == shown


def test_on_a_terminal_the_bar_redraws_in_place():
    parent, child = os.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # 24 rows, 100 columns
    with os.fdopen(child, "w") as terminal:
        run_bar(terminal, every_s=3600)
    os.set_blocking(parent, False)
    written = os.read(parent, 1 << 16).decode()
    os.close(parent)
    assert written.count("\r") >= 5 and "5/5" in written


@pytest.mark.parametrize("value, hidden", [("1", True), ("0", False), ("", False)])
def test_the_environment_switch_hides_every_bar(monkeypatch, value: str, hidden: bool):
    monkeypatch.setenv(NO_PROGRESS_ENV, value)
    log = io.StringIO()
    run_bar(log, every_s=3600)
    assert (log.getvalue() == "") == hidden


def test_no_progress_is_one_option_of_every_command_that_draws_bars(tmp_path: Path, capsys, monkeypatch):
    """ingest and export had --no-progress, caption --quiet, index nothing: one option now, which
    also reaches the bars inside (index's embedding bar) and is gone once the command returns."""
    monkeypatch.delenv(NO_PROGRESS_ENV, raising=False)
    lib = str(tmp_path / "lib")

    def ingest(name: str, n_frames: int) -> list[str]:
        write_video(tmp_path / name, n_frames=n_frames)
        return ["ingest", str(tmp_path / name), "--out", lib, "--set", "signals.text.enabled=false"]

    caption = ["caption", lib, "--backend", "signals", "--all"]
    assert main(ingest("a.mp4", 60)) == 0
    assert "100%|" in capsys.readouterr().err                     # a log line of the bar, stderr being no terminal
    for command in (ingest("b.mp4", 70), caption, ["index", lib]):
        assert main([*command, "--no-progress"]) == 0
        assert "%|" not in capsys.readouterr().err
        assert NO_PROGRESS_ENV not in os.environ
    assert main([*ingest("c.mp4", 80), "--no-progress"]) == 0
    assert main([*caption, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["index", lib]) == 0                              # without it: the embedding bar
    assert "embed caption" in capsys.readouterr().err
