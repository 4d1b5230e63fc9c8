"""Typed config: defaults, YAML layering, --set overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.ingest.config import IngestConfig, load_ingest_config
from trainer.typedconfig import ConfigError, parse_override


def test_defaults_come_from_configs_yaml() -> None:
    cfg = load_ingest_config()
    assert isinstance(cfg, IngestConfig)
    assert cfg.clips.mode == "remux"
    assert cfg.clips.min_seconds == 1.0


def test_file_then_overrides(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("clips:\n  max_seconds: 6\n  mode: encode\n")
    cfg = load_ingest_config(f, ["clips.max_seconds=4.5", "clips.encode_width=320"])
    assert cfg.clips.mode == "encode"
    assert cfg.clips.max_seconds == 4.5
    assert cfg.clips.encode_width == 320


@pytest.mark.parametrize("override, words", [
    ("clips.max_secs=3", "clips.max_secs"),
    ("clipz.max_seconds=3", "clipz"),
    ("clips.max_seconds=abc", "clips.max_seconds"),
    ("clips.mode=copy", "clips.mode"),
    ("clips.margin_frames=1.5", "clips.margin_frames"),
    ("clips.min_seconds=20", "min_seconds"),
])
def test_bad_keys_and_values_name_the_key(override: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_ingest_config(None, [override])


def test_a_key_given_one_level_too_high_is_suggested_in_full() -> None:
    """A filter's reject reason reads `motion.min`, the key is `filters.motion.min`; `text` is under
    `signals`. A key found nowhere below gets no suggestion."""
    from pipeline.filters.config import load_filter_config

    with pytest.raises(ConfigError, match=r"did you mean 'filters\.motion'\?"):
        load_filter_config(None, ["motion.min=1"])
    with pytest.raises(ConfigError, match=r"did you mean 'signals\.text'\?"):
        load_ingest_config(None, ["text.enabled=false"])
    with pytest.raises(ConfigError) as err:
        load_ingest_config(None, ["nowhere.at_all=1"])
    assert "did you mean" not in str(err.value)


def test_override_syntax() -> None:
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=hello world") == ("a", "hello world")
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_ingest_config(tmp_path / "nope.yaml")


def test_exponent_without_dot_is_a_number_where_a_number_is_wanted(tmp_path) -> None:
    # YAML 1.1 reads 3e-3 (no dot) as the string "3e-3"; a float field means a number, a string
    # field keeps the text (a hex id such as 12e4 must not become 120000.0)
    from dataclasses import dataclass

    from trainer.typedconfig import load_config

    @dataclass
    class Job:
        lr: float = 0.1
        version: str = ""

    assert parse_override("optim.lr=3e-3") == ("optim.lr", "3e-3")   # what YAML gives
    assert load_config(Job, overrides=["lr=3e-3", "version=12e4"]) == Job(lr=0.003, version="12e4")
    (tmp_path / "job.yaml").write_text("lr: 5e-4\n")
    assert load_config(Job, tmp_path / "job.yaml").lr == 0.0005
    for bad in ("fast", "nan", "inf"):
        with pytest.raises(ConfigError, match="lr: expected a number"):
            load_config(Job, overrides=[f"lr={bad}"])


@pytest.mark.parametrize("override, message", [
    # a typo in a filter name used to fail with "FilterRule.__init__() missing 1 required positional argument"
    ("filters.moton.min=1.0", r"filters\.moton: no such entry \(known: .*motion.*\); a new entry needs column"),
    ("filters.motion.min=abc", r"filters\.motion\.min: expected a number, got 'abc'"),
    ("filters.motion.min=.nan", r"filters\.motion\.min: expected a finite number, got nan"),
    ("filters.motion.max=.inf", r"filters\.motion\.max: expected a finite number, got inf"),
])
def test_messages_say_what_was_given(override: str, message: str) -> None:
    from pipeline.filters.config import load_filter_config

    with pytest.raises(ConfigError, match=message):
        load_filter_config(None, [override])


def test_a_number_where_text_is_wanted_says_how_to_quote_it(capsys) -> None:
    """`--shard-size 0` said "shard_size: expected a string, got 0": YAML had read the 0."""
    from pipeline.cli import main
    from pipeline.export.config import load_export_config

    with pytest.raises(ConfigError, match="""shard_size: expected a string, got 5 \\(YAML reads 5 as a number: """
                                          """quote it, e.g. --set 'shard_size="5"'\\)"""):
        load_export_config(None, ["shard_size=5"])
    assert load_export_config(None, ['shard_size="64MB"']).shard_size == "64MB"
    assert main(["export", "no-such-lib", "--out", "x", "--shard-size", "0"]) == 2
    assert "shard size must look like 512MB, 2GB or 800KB, got '0'" in capsys.readouterr().err


def test_a_new_entry_with_its_required_keys_is_accepted() -> None:
    from pipeline.filters.config import load_filter_config

    cfg = load_filter_config(None, ["filters.bright.column=brightness", "filters.bright.max=200"])
    assert cfg.filters["bright"].column == "brightness" and cfg.filters["bright"].max == 200


@pytest.mark.parametrize("loader, override, message", [
    ("caption", "model.device=gpu", r"model\.device: 'gpu' is not"),
    ("caption", "openai.concurrency=0", r"openai: .*concurrency >= 1"),
    ("caption", "checks.max_retries=-1", r"checks: .*max_retries >= 0"),
    ("caption", "execution.actors=0", r"execution: actors >= 1"),
    ("filters", "filters.motion.min=100", r"filters\.motion: filter on motion_score: min 100 is above max"),
    ("export", "crf=99", r"crf <= 51"),
])
def test_values_are_checked_at_load_and_name_their_section(loader: str, override: str, message: str) -> None:
    from pipeline.caption.config import load_caption_config
    from pipeline.export.config import load_export_config
    from pipeline.filters.config import load_filter_config

    load = {"caption": load_caption_config, "filters": load_filter_config, "export": load_export_config}[loader]
    with pytest.raises(ConfigError, match=message):
        load(None, [override])


def test_a_missing_configs_file_names_recaps_own_copy(tmp_path, monkeypatch) -> None:
    """The README's `--config configs/dit.yaml`, run outside the repository, says where that file is."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not found: configs/ingest.yaml") as e:
        load_ingest_config("configs/ingest.yaml")
    shipped = str(e.value).split(" at ")[1].split(":")[0]
    assert load_ingest_config(shipped).clips.mode == "remux"
    with pytest.raises(ConfigError) as e:
        load_ingest_config(Path("configs") / "mine.yaml")
    assert "installs" not in str(e.value)
