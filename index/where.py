"""The one filter language of recap: `--where 'duration_s > 3 and camera_motion in ["pan_left",
"pan_right"] and not duplicate'`.

A small hand-written tokenizer and recursive-descent parser (no eval) turn the text into a tree,
which is checked against the fields a library has (name, kind, allowed values) and rendered three
ways: a Milvus boolean expression, a pyarrow.compute Expression (Parquet, pandas, DuckDB relations)
and a DuckDB SQL predicate. Rendering only ever emits validated field names, fixed operators,
numbers it formatted itself and strings it quoted itself for that backend, so nothing the user
typed reaches a backend as syntax.

Grammar (keywords are lower case):

    expr      := and_expr ("or" and_expr)*
    and_expr  := not_expr ("and" not_expr)*
    not_expr  := "not" not_expr | "(" expr ")" | predicate
    predicate := FIELD                                  # a bool field, e.g. `passed`, `duplicate`
               | FIELD ("==" | "!=" | "<" | "<=" | ">" | ">=") literal
               | FIELD ["not"] "in" "[" literal ("," literal)* "]"
               | FIELD "is" ["not"] "null"
    literal   := NUMBER | "string" | 'string' | true | false
    string    := any text but control characters; inside it \" \' and \\ stand for " ' and \
                 (e.g. ocr_text == "it's" or ocr_text == 'say \'hi\'', source == "/data/vidéos/été.mp4")
    NUMBER    := an integer within +-2^53, or a finite decimal (1.5, 1e-3, -2e20): what Arrow, DuckDB
                 and Milvus all hold exactly; anything else is refused with a caret, never overflowed

Missing values follow SQL: a comparison with a missing value is unknown, `not unknown` is
unknown, and a row is kept only when the whole expression is true; `in` on a missing value is
false (so `not in` keeps it). All three renderings agree on this (a test checks it against Milvus).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal, Union

import pyarrow as pa
import pyarrow.compute as pc

Kind = Literal["number", "string", "bool"]

MAX_LENGTH = 4000
MAX_DEPTH = 32
MAX_LIST = 1000
ESCAPES = {'"': '"', "'": "'", "\\": "\\"}   # what a backslash may stand before in a string
COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
ORDERING = ("<", "<=", ">", ">=")
KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
# Integers every backend holds exactly (Arrow compares an int with a float column as a double, so
# 2^53 is the bound, not int64's); decimals must be finite (1e999 would become inf).
MAX_INT = 2**53


class WhereError(ValueError):
    """The expression does not parse or does not fit the library; the message names the token."""

    def __init__(self, message: str, text: str = "", pos: int | None = None):
        if text and pos is not None:
            message = f"{message}\n  {text}\n  {' ' * pos}^"
        super().__init__(message)
        self.pos = pos


@dataclass(frozen=True)
class Field:
    """A filterable field: its name, kind, and the values a string field may take (when known)."""
    name: str
    kind: Kind
    values: tuple[str, ...] | None = None
    # a derived bool (e.g. `duplicate`) is true where this other field is not null
    not_null_of: str | None = None


# ---- tokens -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    kind: str          # ident, keyword, number, string, op, punct, end
    text: str
    pos: int
    value: Any = None


_NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_LENGTH:
        raise WhereError(f"expression longer than {MAX_LENGTH} characters")
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "([]),":
            tokens.append(Token("punct", c, i))
            i += 1
        elif text.startswith(tuple(COMPARISONS), i):
            op = next(o for o in COMPARISONS if text.startswith(o, i))
            tokens.append(Token("op", op, i))
            i += len(op)
        elif c == "=":
            raise WhereError("unknown operator '=' (use '==')", text, i)
        elif c in "\"'":
            body, end = _string(text, i)
            tokens.append(Token("string", text[i:end], i, body))
            i = end
        elif (m := _NUMBER.match(text, i)) and (c != "-" or _minus_is_sign(tokens)):
            tokens.append(Token("number", m.group(), i, _number(m.group(), text, i)))
            i = m.end()
        elif m := _IDENT.match(text, i):
            word = m.group()
            tokens.append(Token("keyword" if word in KEYWORDS else "ident", word, i))
            i = m.end()
        else:
            raise WhereError(f"unexpected character {c!r}", text, i)
    tokens.append(Token("end", "", len(text)))
    return tokens


def _string(text: str, start: int) -> tuple[str, int]:
    """The value of the string literal opening at `start` and the index just past its closing quote."""
    quote, out, i = text[start], [], start + 1
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in ESCAPES:
                raise WhereError("a backslash in a string must come before \\, \" or ' "
                                 "(\\\\ for a backslash)", text, i)
            out.append(ESCAPES[text[i + 1]])
            i += 2
            continue
        if unicodedata.category(c) in ("Cc", "Cs"):
            raise WhereError(f"control character {c!r} in a string", text, i)
        out.append(c)
        i += 1
    raise WhereError("unterminated string", text, start)


def string_literal(value: str) -> str:
    """`value` as a string literal of this language (for code that writes expressions)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _minus_is_sign(tokens: list[Token]) -> bool:
    return not tokens or tokens[-1].kind in ("op", "punct")


def _number(s: str, text: str = "", pos: int | None = None) -> int | float:
    """The literal's value, refused when a backend could not hold it exactly (the same error for
    search, export and caption, instead of an overflow in one and a wrong answer in another)."""
    if re.fullmatch(r"-?\d+", s):
        value = int(s)
        if abs(value) > MAX_INT:
            raise WhereError(f"integer {s} is out of range (at most 2^53 = {MAX_INT} either way; "
                             "a decimal such as 1e20 compares with huge values)", text, pos)
        return value
    value = float(s)
    if value in (float("inf"), float("-inf")):
        raise WhereError(f"number {s} is out of range (larger than a double can hold)", text, pos)
    return value


# ---- tree -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Compare:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class In:
    field: str
    values: tuple[Any, ...]
    negated: bool = False


@dataclass(frozen=True)
class IsNull:
    field: str
    negated: bool = False


@dataclass(frozen=True)
class Flag:
    field: str         # a bool field used on its own


@dataclass(frozen=True)
class Not:
    arg: "Node"


@dataclass(frozen=True)
class BoolOp:
    op: Literal["and", "or"]
    args: tuple["Node", ...]


Node = Union[Compare, In, IsNull, Flag, Not, BoolOp]


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, message: str, tok: Token | None = None) -> WhereError:
        tok = tok or self.peek()
        shown = f"'{tok.text}'" if tok.kind != "end" else "end of expression"
        return WhereError(f"{message}, got {shown}", self.text, tok.pos)

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        tok = self.peek()
        if tok.kind == kind and (text is None or tok.text == text):
            return self.take()
        return None

    def expect(self, kind: str, text: str | None, what: str) -> Token:
        tok = self.accept(kind, text)
        if tok is None:
            raise self.fail(f"expected {what}")
        return tok

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise WhereError("empty expression")
        node = self.expr()
        if self.peek().kind != "end":
            raise self.fail("expected 'and', 'or' or the end of the expression")
        return node

    def expr(self) -> Node:
        args = [self.and_expr()]
        while self.accept("keyword", "or"):
            args.append(self.and_expr())
        return args[0] if len(args) == 1 else BoolOp("or", tuple(args))

    def and_expr(self) -> Node:
        args = [self.not_expr()]
        while self.accept("keyword", "and"):
            args.append(self.not_expr())
        return args[0] if len(args) == 1 else BoolOp("and", tuple(args))

    def not_expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"expression nested deeper than {MAX_DEPTH}")
        try:
            if self.accept("keyword", "not"):
                return Not(self.not_expr())
            if self.accept("punct", "("):
                node = self.expr()
                self.expect("punct", ")", "')'")
                return node
            return self.predicate()
        finally:
            self.depth -= 1

    def predicate(self) -> Node:
        tok = self.peek()
        if tok.kind != "ident":
            raise self.fail("expected a field name" if tok.kind != "keyword" else
                            "expected a field name (keywords cannot be field names)")
        name = self.take().text
        nxt = self.peek()
        if nxt.kind == "op":
            self.take()
            return Compare(name, nxt.text, self.literal())
        if nxt.kind == "keyword" and nxt.text in ("in", "not"):
            negated = bool(self.accept("keyword", "not"))
            self.expect("keyword", "in", "'in' after 'not'")
            return In(name, self.literal_list(), negated)
        if self.accept("keyword", "is"):
            negated = bool(self.accept("keyword", "not"))
            self.expect("keyword", "null", "'null'")
            return IsNull(name, negated)
        return Flag(name)

    def literal(self) -> Any:
        tok = self.take()
        if tok.kind in ("number", "string"):
            return tok.value
        if tok.kind == "keyword" and tok.text in ("true", "false"):
            return tok.text == "true"
        raise self.fail("expected a number, a quoted string, true or false", tok)

    def literal_list(self) -> tuple[Any, ...]:
        self.expect("punct", "[", "'[' to start a list")
        values = [self.literal()]
        while self.accept("punct", ","):
            values.append(self.literal())
            if len(values) > MAX_LIST:
                raise self.fail(f"list longer than {MAX_LIST} values")
        self.expect("punct", "]", "',' or ']'")
        return tuple(values)


def parse(text: str) -> Node:
    """The expression's tree (syntax only; `compile_where` also checks it against the fields)."""
    return _Parser(text).parse()


# ---- validation ---------------------------------------------------------------------------------
def _check(node: Node, fields: dict[str, Field], known: set[str], text: str) -> None:
    if isinstance(node, Not):
        return _check(node.arg, fields, known, text)
    if isinstance(node, BoolOp):
        for a in node.args:
            _check(a, fields, known, text)
        return
    name = node.field
    if name not in fields:
        pos = _find_word(text, name)
        if name in known:
            raise WhereError(f"field '{name}' is not in this library yet (no stage has written it)", text, pos)
        raise WhereError(f"unknown field '{name}'; fields: {', '.join(sorted(fields))}", text, pos)
    f = fields[name]
    if isinstance(node, Flag):
        if f.kind != "bool":
            raise WhereError(f"'{name}' is a {f.kind} field; compare it (e.g. {name} == ...)", text,
                             _find_word(text, name))
    elif isinstance(node, IsNull):
        if f.not_null_of:
            raise WhereError(f"'{name}' is never null", text, _find_word(text, name))
    elif isinstance(node, Compare):
        if f.kind != "number" and node.op in ORDERING:
            raise WhereError(f"operator '{node.op}' needs a number field; '{name}' is a {f.kind} field",
                             text, _find_word(text, name))
        _check_value(f, node.value, text)
    elif isinstance(node, In):
        for v in node.values:
            _check_value(f, v, text)


def _check_value(f: Field, value: Any, text: str) -> None:
    kind = "bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else "string"
    if kind != f.kind:
        raise WhereError(f"'{f.name}' is a {f.kind} field, {value!r} is a {kind}", text, _find_word(text, f.name))
    if f.values is not None and value not in f.values:
        raise WhereError(f"{value!r} is not a value of '{f.name}' ({', '.join(f.values)})", text,
                         _find_word(text, str(value)))


def _find_word(text: str, word: str) -> int | None:
    m = re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", text)
    return m.start() if m else None


def fields_used(node: Node) -> set[str]:
    if isinstance(node, Not):
        return fields_used(node.arg)
    if isinstance(node, BoolOp):
        return set().union(*(fields_used(a) for a in node.args))
    return {node.field}


@dataclass(frozen=True)
class Where:
    """A parsed, validated filter, ready to render for each backend."""
    text: str
    tree: Node
    fields: dict[str, Field]

    def milvus(self) -> str:
        return _milvus(self.tree, self.fields)

    def arrow(self):
        """A pyarrow.compute Expression (for `Table.filter`, `pq.read_table(filters=...)`, datasets)."""
        return _arrow(self.tree, self.fields)

    def sql(self) -> str:
        """A DuckDB SQL predicate over the same column names."""
        return _sql(self.tree, self.fields)

    def columns(self) -> set[str]:
        """The stored columns the filter reads (derived fields resolved)."""
        return {self.fields[n].not_null_of or n for n in fields_used(self.tree)}


def compile_where(text: str, fields: dict[str, Field], known: set[str] | None = None) -> Where:
    """Parse and validate `text` against `fields` (those the library has); `known` names fields
    that exist in recap but not (yet) in this library, for a clearer error."""
    tree = parse(text)
    _check(tree, fields, set(known or ()), text)
    return Where(text, tree, fields)


# ---- rendering ----------------------------------------------------------------------------------
def _lit_milvus(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return string_literal(v)   # Milvus reads \\ and \" in a string as ours does


def _milvus(node: Node, fields: dict[str, Field]) -> str:
    if isinstance(node, BoolOp):
        return "(" + f" {node.op} ".join(_milvus(a, fields) for a in node.args) + ")"
    if isinstance(node, Not):
        return f"(not {_milvus(node.arg, fields)})"
    f = fields[node.field]
    if f.not_null_of:   # derived bool: only ever used as a flag
        return f"({f.not_null_of} is not null)"
    if isinstance(node, Flag):
        return f"({f.name} == true)"
    if isinstance(node, IsNull):
        return f"({f.name} is {'not ' if node.negated else ''}null)"
    if isinstance(node, In):
        return f"({f.name} {'not in' if node.negated else 'in'} [{', '.join(_lit_milvus(v) for v in node.values)}])"
    return f"({f.name} {node.op} {_lit_milvus(node.value)})"


def _arrow(node: Node, fields: dict[str, Field]):
    if isinstance(node, BoolOp):
        out = _arrow(node.args[0], fields)
        for a in node.args[1:]:
            out = (out & _arrow(a, fields)) if node.op == "and" else (out | _arrow(a, fields))
        return out
    if isinstance(node, Not):
        return ~_arrow(node.arg, fields)
    f = fields[node.field]
    if f.not_null_of:
        return pc.field(f.not_null_of).is_valid()
    col = pc.field(f.name)
    if isinstance(node, Flag):
        return col == True  # noqa: E712  (an Expression, not a Python comparison)
    if isinstance(node, IsNull):
        return col.is_valid() if node.negated else col.is_null()
    if isinstance(node, In):
        hit = pc.coalesce(col.isin(list(node.values)), pa.scalar(False))
        return ~hit if node.negated else hit
    ops = {"==": col.__eq__, "!=": col.__ne__, "<": col.__lt__, "<=": col.__le__, ">": col.__gt__,
           ">=": col.__ge__}
    return ops[node.op](node.value)


def _lit_sql(v: Any) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, float)):
        return repr(v)
    return "'" + v.replace("'", "''") + "'"   # SQL: a quote is doubled, a backslash is itself


def _sql(node: Node, fields: dict[str, Field]) -> str:
    if isinstance(node, BoolOp):
        return "(" + f" {node.op.upper()} ".join(_sql(a, fields) for a in node.args) + ")"
    if isinstance(node, Not):
        return f"(NOT {_sql(node.arg, fields)})"
    f = fields[node.field]
    if f.not_null_of:
        return f'("{f.not_null_of}" IS NOT NULL)'
    col = f'"{f.name}"'
    if isinstance(node, Flag):
        return f"({col} = TRUE)"
    if isinstance(node, IsNull):
        return f"({col} IS {'NOT ' if node.negated else ''}NULL)"
    if isinstance(node, In):
        hit = f"coalesce({col} IN ({', '.join(_lit_sql(v) for v in node.values)}), FALSE)"
        return f"(NOT {hit})" if node.negated else f"({hit})"
    op = "=" if node.op == "==" else "<>" if node.op == "!=" else node.op
    return f"({col} {op} {_lit_sql(node.value)})"


# ---- fields of a table --------------------------------------------------------------------------
def field_kind(arrow_type) -> Kind | None:
    """The filter kind of an Arrow column type, or None when it cannot be filtered on."""
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "number"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return None


def fields_of(schema, values: dict[str, tuple[str, ...]] | None = None,
              derived: dict[str, str] | None = None) -> dict[str, Field]:
    """Filterable fields of an Arrow schema; `values` lists the allowed values of string fields,
    `derived` maps a derived bool name to the column whose non-null it means (added when present)."""
    out: dict[str, Field] = {}
    for f in schema:
        kind = field_kind(f.type)
        if kind:
            out[f.name] = Field(f.name, kind, (values or {}).get(f.name))
    for name, of in (derived or {}).items():
        if of in out:
            out[name] = Field(name, "bool", not_null_of=of)
    return out
