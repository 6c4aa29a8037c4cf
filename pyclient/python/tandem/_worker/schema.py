"""An op's parameter schema, read from its function's signature, and the
parsing of the string values a step carries against it.

Every param travels as a string (``map<string, string>`` in the protos). The
schema is the same ``ParamSpec`` language compute's ops use, so the
orchestrator validates a worker op's params at submit exactly as it does a
built-in op's; the worker checks again when the step arrives (a step may
have been queued under an older version of the op) with the same reasons
and messages (``orchestrator-go/internal/compute/validate.go``).

Types: ``int`` (``Annotated[int, Range(lo, hi)]`` for bounds), ``bool``,
``str`` (``Annotated[str, MaxLen(n)]``), ``Literal[...]`` and ``enum.Enum``
subclasses (an ENUM of the values' string forms), each optionally
``| None``. :class:`Param` overrides or adds anything, as ``Annotated``
metadata or through ``@worker.op(params={...})``.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from tandem.v1 import compute_pb2

__all__ = [
    "Range",
    "MaxLen",
    "Param",
    "ParamField",
    "ParamError",
    "Signature",
    "read_signature",
    "parse_params",
    "check_op_name",
    "check_param_name",
    "one_line",
]

# Limits the orchestrator enforces on what a worker announces and on every
# step (orchestrator-go/internal/ident; docs/ARCHITECTURE.md "Identifiers").
MAX_OP_NAME = 128
MAX_PARAM_NAME = 64
MAX_PARAMS = 64
MAX_PARAM_VALUE = 4096
MAX_DESCRIPTION = 1024
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_INT_RE = re.compile(r"[+-]?[0-9]+")


# ---------------------------------------------------------------- markers


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of an ``int`` param: ``Annotated[int, Range(1, 600)]``."""

    min: int
    max: int


@dataclass(frozen=True)
class MaxLen:
    """Most bytes (UTF-8) of a ``str`` param: ``Annotated[str, MaxLen(64)]``.
    Without it a string may be as long as any param value (4096 bytes)."""

    max: int


_UNSET: Any = object()


@dataclass(frozen=True)
class Param:
    """Everything about one param that type hints do not say, or an override
    of what they say. Use it as ``Annotated`` metadata
    (``Annotated[int, Param(description="dots per inch")]``) or in
    ``@worker.op(params={"dpi": Param(min=72, max=1200)})``; the fields left
    unset keep what the signature gives.

    ``name`` is the name on the wire when it is no Python identifier
    (``"max-width"``); ``type`` one of ``"int"``, ``"bool"``, ``"str"``,
    ``"enum"``; ``choices`` the values of an ``"enum"``; ``default`` the
    value used when a step omits the param (its absence makes the param
    required).
    """

    description: str | None = None
    name: str | None = None
    type: Literal["int", "bool", "str", "enum"] | None = None
    min: int | None = None
    max: int | None = None
    max_len: int | None = None
    choices: Sequence[str] | None = None
    default: Any = _UNSET
    required: bool | None = None


class ParamError(Exception):
    """A step's params do not fit the op's schema (reason ``PARAM_INVALID``
    or ``PARAM_OUT_OF_RANGE``, as the orchestrator would say)."""

    def __init__(self, reason: str, param: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.param = param
        self.message = message
        self.metadata = {"param": param, **metadata}


# ---------------------------------------------------------------- names and text


def check_op_name(name: str) -> None:
    """Raises ValueError unless ``name`` is 1 to 128 of A-Z a-z 0-9 _ - . in
    dot-separated tokens, none empty (``acme.ocr``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"op name must be a non-empty str, got {name!r}")
    if len(name.encode()) > MAX_OP_NAME:
        raise ValueError(f"op name {name[:40]!r}… is longer than {MAX_OP_NAME} characters")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"op name {name!r} may only contain A-Z a-z 0-9 _ - . (dot-separated tokens)"
        )
    if any(not token for token in name.split(".")):
        raise ValueError(f"op name {name!r} has an empty dot-separated token")


def check_param_name(name: str, op: str) -> None:
    """Raises ValueError unless ``name`` is 1 to 64 of A-Z a-z 0-9 _ - ."""
    if not name or len(name.encode()) > MAX_PARAM_NAME or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"op {op}: param name {name!r} must be 1 to {MAX_PARAM_NAME} characters "
            "of A-Z a-z 0-9 _ - ."
        )


def _printable(text: str) -> str:
    return "".join(
        " " if (ord(c) < 0x20 or ord(c) == 0x7F or 0x80 <= ord(c) < 0xA0) else c for c in text
    )


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def one_line(text: str | None, limit: int = MAX_DESCRIPTION) -> str:
    """``text`` as one printable line of at most ``limit`` bytes (the
    orchestrator refuses control characters, newlines included)."""
    return truncate_utf8(" ".join(_printable(text or "").split()), limit)


def doc_summary(fn: Callable[..., Any]) -> str:
    """The first paragraph of ``fn``'s docstring, as one line."""
    doc = inspect.getdoc(fn) or ""
    return one_line(doc.split("\n\n", 1)[0])


# ---------------------------------------------------------------- one param


_KIND = {
    "int": compute_pb2.PARAM_TYPE_INT,
    "bool": compute_pb2.PARAM_TYPE_BOOL,
    "str": compute_pb2.PARAM_TYPE_STRING,
    "enum": compute_pb2.PARAM_TYPE_ENUM,
}


def wire_str(value: Any) -> str:
    """A Python value in its wire form (``True`` → ``"true"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return wire_str(value.value)
    return str(value)


@dataclass
class ParamField:
    """One param of an op: its schema and how to turn its string into the
    Python value the function receives."""

    #: The function's keyword for it.
    arg: str
    #: Its name on the wire.
    name: str
    type: Literal["int", "bool", "str", "enum"]
    description: str = ""
    required: bool = True
    #: The Python value used when the step omits it (when not required).
    default: Any = None
    has_default: bool = False
    min: int = INT64_MIN
    max: int = INT64_MAX
    max_len: int = MAX_PARAM_VALUE
    #: ENUM: wire strings → Python values.
    choices: dict[str, Any] = field(default_factory=dict)

    def to_proto(self) -> compute_pb2.ParamSpec:
        spec = compute_pb2.ParamSpec(
            name=self.name,
            type=_KIND[self.type],
            description=self.description,
            required=self.required,
        )
        if self.has_default and self.default is not None:
            spec.default_value = wire_str(self.default)
        if self.type == "int":
            spec.min, spec.max = self.min, self.max
        elif self.type == "str":
            spec.max = self.max_len
        elif self.type == "enum":
            spec.choices.extend(self.choices)
        return spec

    def parse(self, value: str) -> Any:
        """The Python value of ``value``; raises :class:`ParamError`."""
        name = self.name
        if self.type == "int":
            if not _INT_RE.fullmatch(value) or not INT64_MIN <= int(value) <= INT64_MAX:
                raise ParamError(
                    "PARAM_INVALID", name, f"param {name!r} = {_quote(value)} is not an integer"
                )
            n = int(value)
            if not self.min <= n <= self.max:
                raise ParamError(
                    "PARAM_OUT_OF_RANGE",
                    name,
                    f"param {name!r} = {n} is out of range [{self.min}, {self.max}]",
                    limit=f"[{self.min}, {self.max}]",
                    actual=value,
                )
            return n
        if self.type == "bool":
            if value not in ("true", "false"):
                raise ParamError(
                    "PARAM_INVALID", name, f"param {name!r} = {_quote(value)} is not true or false"
                )
            return value == "true"
        if self.type == "enum":
            if value not in self.choices:
                raise ParamError(
                    "PARAM_INVALID",
                    name,
                    f"param {name!r} = {_quote(value)} is not one of {list(self.choices)}",
                    actual=truncate_utf8(value, 128),
                )
            return self.choices[value]
        size = len(value.encode("utf-8", errors="surrogatepass"))
        if size > self.max_len:
            raise ParamError(
                "PARAM_OUT_OF_RANGE",
                name,
                f"param {name!r} is {size} bytes, longer than {self.max_len}",
                limit=str(self.max_len),
                actual=str(size),
            )
        return value


def _quote(value: str) -> str:
    """A caller's value quoted, at most 64 bytes of it (as the orchestrator does)."""
    if len(value.encode()) <= 64:
        return repr(value)
    return f"{truncate_utf8(value, 64)!r}…({len(value.encode())} bytes)"


# ---------------------------------------------------------------- the signature


@dataclass
class Signature:
    """What an op function takes: the input's argument, the params, and the
    name of its :class:`tandem.StepContext` argument, if any."""

    input_arg: str
    params: list[ParamField]
    ctx_arg: str | None


def _split_annotated(hint: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(hint) is typing.Annotated:
        base, *meta = typing.get_args(hint)
        inner, more = _split_annotated(base)
        return inner, [*more, *meta]
    return hint, []


def _split_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _from_hint(op: str, arg: str, hint: Any, default: Any) -> ParamField:
    """The field of one argument from its type hint (or its default's type)."""
    hint, meta = _split_annotated(hint)
    hint, optional = _split_optional(hint)
    hint, more = _split_annotated(hint)  # Optional[Annotated[...]]
    meta += more
    if hint is inspect.Parameter.empty:
        hint = type(default) if default not in (inspect.Parameter.empty, None) else str
    f = ParamField(arg=arg, name=arg, type="str")
    if hint is bool:
        f.type = "bool"
    elif hint is int:
        f.type = "int"
    elif hint is str:
        f.type = "str"
    elif typing.get_origin(hint) is Literal:
        values = typing.get_args(hint)
        f.type = "enum"
        f.choices = _choices(op, arg, values, values)
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        members = list(hint)
        f.type = "enum"
        f.choices = _choices(op, arg, [m.value for m in members], members)
    elif hint is float:
        raise TypeError(
            f"op {op}: param {arg!r} is a float; params are int, bool, str or an enum "
            "(take a str, or an int in a smaller unit)"
        )
    else:
        raise TypeError(
            f"op {op}: param {arg!r} has type {hint!r}; use int, bool, str, "
            "Literal[...] or an enum.Enum (optionally Annotated with tandem.Range/MaxLen)"
        )
    if default is not inspect.Parameter.empty:
        f.default, f.has_default, f.required = default, True, False
    elif optional:
        f.default, f.has_default, f.required = None, True, False
    for m in meta:
        _apply(op, f, m)
    return f


def _choices(op: str, arg: str, values: Sequence[Any], results: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v, r in zip(values, results):
        key = wire_str(v)
        if key in out:
            raise TypeError(f"op {op}: param {arg!r} has two choices spelled {key!r}")
        out[key] = r
    if not out:
        raise TypeError(f"op {op}: param {arg!r} has no choices")
    return out


def _apply(op: str, f: ParamField, m: Any) -> None:
    """Applies one ``Annotated`` marker or :class:`Param` override to ``f``."""
    if isinstance(m, Range):
        if f.type != "int":
            raise TypeError(f"op {op}: tandem.Range on param {f.arg!r}, which is no int")
        f.min, f.max = m.min, m.max
    elif isinstance(m, MaxLen):
        if f.type != "str":
            raise TypeError(f"op {op}: tandem.MaxLen on param {f.arg!r}, which is no str")
        f.max_len = m.max
    elif isinstance(m, Param):
        if m.type is not None:
            if m.type not in _KIND:
                raise TypeError(f"op {op}: param {f.arg!r}: unknown type {m.type!r}")
            if m.type != f.type:
                f.type, f.choices = m.type, {}
        if m.name is not None:
            f.name = m.name
        if m.description is not None:
            f.description = m.description
        if m.min is not None:
            f.min = m.min
        if m.max is not None:
            f.max = m.max
        if m.max_len is not None:
            f.max_len = m.max_len
        if m.choices is not None:
            f.choices = {str(c): str(c) for c in m.choices}
        if m.default is not _UNSET:
            f.default, f.has_default, f.required = m.default, True, False
        if m.required is not None:
            f.required = m.required
    elif isinstance(m, str):
        f.description = m  # Annotated[int, "dots per inch"]


def _check(op: str, f: ParamField) -> None:
    """Raises when a field could not be announced or could never be met."""
    check_param_name(f.name, op)
    f.description = one_line(f.description)
    where = f"op {op}: param {f.name!r}"
    if f.type == "int":
        if not INT64_MIN <= f.min <= f.max <= INT64_MAX:
            raise ValueError(f"{where}: range [{f.min}, {f.max}] is empty or beyond int64")
    if f.type == "str" and not 0 < f.max_len <= MAX_PARAM_VALUE:
        raise ValueError(f"{where}: max length {f.max_len} is not in 1..{MAX_PARAM_VALUE}")
    if f.type == "enum":
        if not f.choices:
            raise ValueError(f"{where}: an enum needs choices")
        for c in f.choices:
            if not c or len(c.encode()) > MAX_PARAM_VALUE or one_line(c, MAX_PARAM_VALUE) != c:
                raise ValueError(f"{where}: choice {c!r} is not 1 to 4096 printable bytes")
    if f.has_default and f.default is not None:
        try:
            parsed = f.parse(wire_str(f.default))
        except ParamError as err:
            raise ValueError(f"{where}: the default does not fit: {err.message}") from None
        if f.type == "enum" and parsed != f.default and wire_str(parsed) != wire_str(f.default):
            raise ValueError(f"{where}: the default {f.default!r} is not one of the choices")


def read_signature(
    op: str,
    fn: Callable[..., Any],
    overrides: Mapping[str, Param] | None = None,
    context_type: type | None = None,
) -> Signature:
    """The :class:`Signature` of an op function; raises TypeError/ValueError
    naming the op and the argument when it cannot be one.

    The first positional argument receives the input bytes; an argument named
    ``ctx`` (or annotated with ``context_type``) the step context; every other
    argument is a param.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as err:
        raise TypeError(f"op {op}: cannot read the signature of {fn!r}: {err}") from None
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as err:  # noqa: BLE001 - any failure to resolve hints is the user's to fix
        raise TypeError(f"op {op}: cannot resolve the type hints of {fn!r}: {err}") from None
    args = list(sig.parameters.values())
    if not args or args[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(f"op {op}: the function's first argument must take the input (bytes)")
    input_arg, ctx_arg = args[0].name, None
    fields: list[ParamField] = []
    for a in args[1:]:
        hint = hints.get(a.name, inspect.Parameter.empty)
        if a.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"op {op}: *{a.name} / **{a.name} cannot be params; name each one")
        if a.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"op {op}: param {a.name!r} is positional-only; params are keywords")
        base = _split_annotated(hint)[0]
        if a.name == "ctx" or (context_type is not None and base is context_type):
            ctx_arg = a.name
            continue
        fields.append(_from_hint(op, a.name, hint, a.default))
    for arg, override in (overrides or {}).items():
        match = [f for f in fields if f.arg == arg]
        if not match:
            raise ValueError(f"op {op}: params= names {arg!r}, which the function does not take")
        if not isinstance(override, Param):
            raise TypeError(f"op {op}: params[{arg!r}] must be a tandem.Param")
        _apply(op, match[0], override)
    if len(fields) > MAX_PARAMS:
        raise ValueError(f"op {op}: {len(fields)} params, more than {MAX_PARAMS}")
    seen: set[str] = set()
    for f in fields:
        _check(op, f)
        if f.name in seen:
            raise ValueError(f"op {op}: two params are named {f.name!r}")
        seen.add(f.name)
    return Signature(input_arg, fields, ctx_arg)


def parse_params(fields: Sequence[ParamField], raw: Mapping[str, str]) -> dict[str, Any]:
    """The function's keyword arguments from a step's string params; raises
    :class:`ParamError` for an unknown, missing or invalid one (unknown names
    first, in sorted order, then the schema's order: as the orchestrator)."""
    by_name = {f.name: f for f in fields}
    for name in sorted(raw):
        if name not in by_name:
            raise ParamError("PARAM_INVALID", name, f"unknown param {_quote(name)}")
    out: dict[str, Any] = {}
    for f in fields:
        if f.name in raw:
            out[f.arg] = f.parse(raw[f.name])
        elif f.required:
            raise ParamError("PARAM_INVALID", f.name, f"param {f.name!r} is required")
        else:
            out[f.arg] = f.default
    return out
