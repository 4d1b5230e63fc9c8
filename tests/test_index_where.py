"""The filter language: parsing, validation with clear errors, injection attempts, and the three
renderings (Milvus, pyarrow, DuckDB) selecting exactly the same rows, nulls included."""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa
import pytest

from index.catalog import compile_for_schema
from index.where import WhereError, compile_where, fields_of, string_literal

TABLE = pa.table({
    "clip_id": [f"c{i}" for i in range(8)],
    "duration_s": [1.0, 2.5, 3.0, 4.0, None, 8.0, 12.0, 5.5],
    "n_frames": pa.array([25, 62, 75, 100, 0, 200, 300, 137], pa.int64()),
    "camera_motion": ["static", "pan_left", "pan_right", None, "zoom_in", "pan_left", "shaky", "static"],
    "passed": [True, True, False, None, True, False, True, True],
    "duplicate_of": [None, None, "c0", None, None, "c1", None, None],
    "phash": pa.array([[1]] * 8, pa.list_(pa.uint64())),   # not filterable
})
FIELDS = fields_of(TABLE.schema, {"camera_motion": ("static", "pan_left", "pan_right", "zoom_in", "shaky")},
                   {"duplicate": "duplicate_of"})

EXPRESSIONS = [
    'duration_s > 3 and camera_motion in ["pan_left", "pan_right"] and not duplicate',
    "duration_s >= 3",
    "not (duration_s > 3)",
    "duration_s != 4 or passed",
    "not passed",
    "passed == false",
    'camera_motion != "static"',
    'camera_motion not in ["static", "shaky"]',
    'not (camera_motion in ["static"])',
    "duration_s is null or camera_motion is null",
    "duplicate_of is not null and n_frames < 150",
    "duplicate or (passed and duration_s > 5.0)",
    "n_frames <= 1e2 and duration_s > -1",
    'clip_id in ["c1", "c7"] or clip_id == "c3"',
    # the largest literals every backend holds exactly, and decimals far past any column's range
    "n_frames < 9007199254740992 and duration_s > -9007199254740992",
    "n_frames < 1e26 or duration_s < -1e300",
    "duration_s > 1e-7 and n_frames in [25, 62.0]",
]


def ids(table: pa.Table) -> list[str]:
    return sorted(table.column("clip_id").to_pylist())


def test_example_from_the_issue():
    w = compile_where(EXPRESSIONS[0], FIELDS)
    # c5: 8 s, pan_left, but a duplicate of c1 -> excluded; c2: 3 s is not > 3
    assert ids(TABLE.filter(w.arrow())) == []
    assert w.milvus() == ('((duration_s > 3) and (camera_motion in ["pan_left", "pan_right"]) '
                          'and (not (duplicate_of is not null)))')
    assert w.columns() == {"duration_s", "camera_motion", "duplicate_of"}


@pytest.mark.parametrize("text, message", [
    ("durration_s > 3", "unknown field 'durration_s'"),
    ("aesthetic_score > 5", "unknown field"),
    ("duration_s = 3", "unknown operator '='"),
    ("duration_s => 3", "unknown operator '=' (use '==')"),
    ('camera_motion > "pan_left"', "operator '>' needs a number field"),
    ('camera_motion == "pan_sideways"', "'pan_sideways' is not a value of 'camera_motion'"),
    ('duration_s == "3"', "'duration_s' is a number field, '3' is a string"),
    ("duration_s", "'duration_s' is a number field; compare it"),
    ("duration_s > 3 and", "expected a field name, got end of expression"),
    ("(duration_s > 3", "expected ')'"),
    ("duration_s > 3)", "expected 'and', 'or' or the end"),
    ("phash == 3", "unknown field 'phash'"),
    ("duration_s in []", "expected a number, a quoted string"),
    ("", "empty expression"),
    ("not not", "expected a field name"),
    ("duplicate is null", "'duplicate' is never null"),
])
def test_bad_expressions_name_the_problem(text, message):
    with pytest.raises(WhereError, match=re.escape(message)):
        compile_where(text, FIELDS)


@pytest.mark.parametrize("attack", [
    'camera_motion == "static" or 1 == 1',
    'camera_motion == "static" || clip_id != ""',
    'camera_motion == "x\\" or clip_id != \\""',
    "duration_s > 3; drop table clips",
    "duration_s > 3 -- comment",
    "duration_s > 3 /* */",
    'camera_motion == "static\'); DROP TABLE clips; --"',
    "__import__('os').system('true')",
    "duration_s > (select 1)",
    "json_contains(camera_motion, 1)",
    "duration_s > 3 and duplicate_of like \"%\"",
    "duration_s > 3\x00",
])
def test_injection_attempts_fail_validation(attack):
    with pytest.raises(WhereError):
        compile_where(attack, FIELDS)


@pytest.mark.parametrize("text, bad", [
    ("n_frames < 99999999999999999999999999", "99999999999999999999999999"),
    ("n_frames > -9007199254740993", "-9007199254740993"),
    ("duration_s > 1e999", "1e999"),
    ("duration_s < -1e999", "-1e999"),
    ("n_frames in [1, 2e400]", "2e400"),
])
def test_literals_out_of_range_are_refused_where_they_stand(text, bad):
    """Not an OverflowError in Arrow (export, caption), nor `inf` sent to Milvus as a field name: one
    error, pointing at the number, for every command that takes --where."""
    with pytest.raises(WhereError, match="out of range") as e:
        compile_where(text, FIELDS)
    assert str(e.value).splitlines()[-1].index("^") - 2 == text.index(bad)
    with pytest.raises(WhereError, match="out of range"):
        compile_for_schema(text, TABLE.schema)


def test_errors_point_at_the_token():
    with pytest.raises(WhereError) as e:
        compile_where("duration_s > 3 and motion_scor < 2", FIELDS)
    lines = str(e.value).splitlines()
    assert lines[-1].index("^") - 2 == "duration_s > 3 and motion_scor < 2".index("motion_scor")


def test_known_but_absent_column_says_so():
    schema = pa.schema([("clip_id", pa.string()), ("duration_s", pa.float64())])
    with pytest.raises(WhereError, match="'aesthetic_score' is not in this library yet"):
        compile_for_schema("aesthetic_score > 5", schema)
    with pytest.raises(WhereError, match="unknown field 'aesthetic'"):
        compile_for_schema("aesthetic > 5", schema)


def test_deep_nesting_is_refused():
    with pytest.raises(WhereError, match="nested deeper"):
        compile_where("(" * 100 + "passed" + ")" * 100, FIELDS)


def test_arrow_and_duckdb_agree(tmp_path):
    con = duckdb.connect()
    con.register("t", TABLE.drop_columns(["phash"]))
    for text in EXPRESSIONS:
        w = compile_where(text, FIELDS)
        via_sql = sorted(r[0] for r in con.execute(f"select clip_id from t where {w.sql()}").fetchall())
        assert ids(TABLE.filter(w.arrow())) == via_sql, text


def test_milvus_agrees_with_arrow(tmp_path):
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(str(tmp_path / "m.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("clip_id", DataType.VARCHAR, is_primary=True, max_length=16)
    schema.add_field("duration_s", DataType.DOUBLE, nullable=True)
    schema.add_field("n_frames", DataType.INT64, nullable=True)
    schema.add_field("camera_motion", DataType.VARCHAR, max_length=16, nullable=True)
    schema.add_field("passed", DataType.BOOL, nullable=True)
    schema.add_field("duplicate_of", DataType.VARCHAR, max_length=16, nullable=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index(field_name="v", index_type="FLAT", metric_type="COSINE")
    client.create_collection("t", schema=schema, index_params=index)
    rows = TABLE.drop_columns(["phash"]).to_pylist()
    client.insert("t", [dict(r, v=[1.0, 0.5]) for r in rows])
    client.flush("t")
    try:
        for text in EXPRESSIONS:
            w = compile_where(text, FIELDS)
            got = sorted(r["clip_id"] for r in client.query("t", filter=w.milvus(), output_fields=["clip_id"]))
            assert got == ids(TABLE.filter(w.arrow())), (text, w.milvus())
    finally:
        client.close()


# Text users filter on holds quotes, backslashes and any script (OCR text, paths, captions).
HOSTILE_TEXT = ["it's", 'say "hi"', "back\\slash", "C:\\clips\\", "/data/vidéos/été.mp4", "日本語の字幕", "🙂 emoji",
                "'); DROP TABLE t; --", '" or clip_id != "', "%_like_%", ""]
TEXT_TABLE = pa.table({"clip_id": [f"c{i}" for i in range(len(HOSTILE_TEXT) + 1)],
                       "ocr_text": [*HOSTILE_TEXT, None]})
TEXT_FIELDS = fields_of(TEXT_TABLE.schema)


def _text_expressions() -> list[tuple[str, set[str]]]:
    """(expression, the clip ids it must select) over TEXT_TABLE."""
    out = []
    for i, value in enumerate(HOSTILE_TEXT):
        out.append((f"ocr_text == {string_literal(value)}", {f"c{i}"}))
        single = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out.append((f"ocr_text == {single}", {f"c{i}"}))
        out.append((f"ocr_text != {string_literal(value)}", {f"c{j}" for j in range(len(HOSTILE_TEXT)) if j != i}))
    out.append((f"ocr_text in [{string_literal(HOSTILE_TEXT[0])}, {string_literal(HOSTILE_TEXT[4])}]", {"c0", "c4"}))
    return out


def test_strings_with_quotes_backslashes_and_any_script_select_exactly_their_rows():
    con = duckdb.connect()
    con.register("t", TEXT_TABLE)
    for text, expected in _text_expressions():
        w = compile_where(text, TEXT_FIELDS)
        assert set(TEXT_TABLE.filter(w.arrow()).column("clip_id").to_pylist()) == expected, text
        assert {r[0] for r in con.execute(f"select clip_id from t where {w.sql()}").fetchall()} == expected, w.sql()


def test_strings_reach_milvus_as_the_same_values(tmp_path):
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(str(tmp_path / "m.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("clip_id", DataType.VARCHAR, is_primary=True, max_length=16)
    schema.add_field("ocr_text", DataType.VARCHAR, max_length=256, nullable=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index(field_name="v", index_type="FLAT", metric_type="COSINE")
    client.create_collection("t", schema=schema, index_params=index)
    client.insert("t", [dict(r, v=[1.0, 0.5]) for r in TEXT_TABLE.to_pylist()])
    client.flush("t")
    try:
        for text, expected in _text_expressions():
            w = compile_where(text, TEXT_FIELDS)
            got = {r["clip_id"] for r in client.query("t", filter=w.milvus(), output_fields=["clip_id"])}
            assert got == expected, (text, w.milvus())
    finally:
        client.close()


@pytest.mark.parametrize("text, message, at", [
    ('ocr_text == "a\\nb"', "a backslash in a string must come before", 14),
    ('ocr_text == "tab\there"', "control character '\\t' in a string", 16),
    ('ocr_text == "open', "unterminated string", 12),
    ("ocr_text == 'it\\'", "unterminated string", 12),
])
def test_bad_strings_are_refused_where_they_go_wrong(text, message, at):
    with pytest.raises(WhereError, match=re.escape(message)) as e:
        compile_where(text, TEXT_FIELDS)
    assert str(e.value).splitlines()[-1].index("^") - 2 == at
