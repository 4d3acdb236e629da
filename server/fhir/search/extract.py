"""Write-time extraction: a search parameter's FHIRPath expression -> index values.

Each parameter is compiled once into an :class:`Extractor`. The common FHIRPath forms of
search parameter definitions are compiled into plain closures over the JSON dict (the fast
path), typed with the element definitions in ``definitions/elements.json`` so that choice
types (``Goal.start as date`` -> ``startDate``) and the FHIR data type of every value are known
at compile time. The supported forms: dotted paths through arrays, ``[n]``, ``as``/``is``,
``as()``, ``ofType()``, ``where()``, ``exists()``, ``extension('url')``,
``hasExtension('url')``, ``resolve() is Type``, ``=``, ``!=``, ``and``, ``|``, string/boolean
literals and parentheses. Anything else is compiled with fhirpathpy (once) and its values are
typed by their shape.

The values are then converted by parameter type and data type into the index values of
:mod:`server.fhir.search.ast`, normalised by :mod:`server.fhir.search.normalize`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

import fhirpathpy
from fhirpathpy.engine.invocations import invocation_registry as _FHIRPATHPY_FUNCTIONS
from fhirpathpy.models import models as _FHIRPATHPY_MODELS

from .ast import (
    DateValue,
    IndexValues,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
)
from .normalize import date_range, normalize_string, parse_canonical, parse_reference, period_range

log = logging.getLogger(__name__)

Item = tuple[Any, str]
"""A JSON value and its FHIR type: a type code, or the path of a backbone element."""
Evaluate = Callable[[list[Item]], list[Item]]
Emit = Callable[[str, Any, IndexValues], None]
"""Adds the index values of one value (for the parameter code given) to an IndexValues."""


class Unsupported(Exception):
    """The expression uses FHIRPath the fast path does not compile."""


class NotIndexable(Exception):
    """The expression can never yield a value this parameter type can index."""


# ---------------------------------------------------------------------------------------------
# Element model
# ---------------------------------------------------------------------------------------------

_INLINE_TYPES = frozenset({"BackboneElement", "Element"})


def _cap(code: str) -> str:
    return code[0].upper() + code[1:]


class ElementModel:
    """Element definitions by path (``CarePlan.activity.detail.code``), for typing paths."""

    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self._elements: dict[str, Mapping[str, Any]] = {}
        for type_def in definitions["types"].values():
            self._elements.update(type_def["elements"])

    @classmethod
    @cache
    def load_default(cls) -> ElementModel:
        """The R4 elements of the stored types, read once per process (the search registry
        and the profiles' assignment rules share it; nothing changes it)."""
        text = resources.files("server.fhir").joinpath("definitions/elements.json").read_text()
        return cls(json.loads(text))

    def children(self, type_path: str, name: str) -> list[tuple[str, str]]:
        """The JSON keys and types of element ``name`` of ``type_path`` (several for a choice
        element); empty when there is no such element."""
        path = f"{type_path}.{name}"
        element = self._elements.get(path)
        if element is not None:
            if "contentReference" in element:
                return [(name, element["contentReference"])]
            code = element["types"][0]["code"]
            return [(name, path if code in _INLINE_TYPES else code)]
        element = self._elements.get(path + "[x]")
        if element is None:
            return []
        return [(name + _cap(t["code"]), t["code"]) for t in element["types"]]


# ---------------------------------------------------------------------------------------------
# FHIRPath subset: tokens and syntax tree
# ---------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<string>'(?:[^'\\]|\\.)*')|(?P<number>\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>!=|[.()\[\]|=,]))"
)


@dataclass(frozen=True)
class _This:
    """The input collection (the resource at the top, the item inside ``where``)."""


@dataclass(frozen=True)
class _Member:
    source: _Node
    name: str


@dataclass(frozen=True)
class _Call:
    source: _Node
    name: str
    args: tuple[_Node, ...]


@dataclass(frozen=True)
class _Index:
    source: _Node
    index: int


@dataclass(frozen=True)
class _TypeOp:
    source: _Node
    op: str  # as | is
    type_name: str


@dataclass(frozen=True)
class _Binary:
    op: str  # | and = !=
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Literal:
    value: str | bool | int


_Node = _This | _Member | _Call | _Index | _TypeOp | _Binary | _Literal


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise Unsupported(f"cannot read {text[pos:]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    """Recursive descent over the FHIRPath subset (precedence: path, as/is, |, =/!=, and,
    or)."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0

    def parse(self) -> _Node:
        node = self.expression()
        if self.pos != len(self.tokens):
            raise Unsupported(f"unexpected {self.tokens[self.pos][1]!r}")
        return node

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise Unsupported("unexpected end of expression")
        token = self.tokens[self.pos]
        if expected is not None and token[1] != expected:
            raise Unsupported(f"expected {expected!r}, found {token[1]!r}")
        self.pos += 1
        return token

    def expression(self) -> _Node:
        return self.joined("or", lambda: self.joined("and", self.equality))

    def joined(self, op: str, operand: Callable[[], _Node]) -> _Node:
        """Operands joined by ``op``, left to right."""
        node = operand()
        while self.peek() == op:
            self.take()
            node = _Binary(op, node, operand())
        return node

    def equality(self) -> _Node:
        node = self.union()
        if self.peek() in ("=", "!="):
            op = self.take()[1]
            node = _Binary(op, node, self.union())
        return node

    def union(self) -> _Node:
        return self.joined("|", self.type_op)

    def type_op(self) -> _Node:
        node = self.postfix()
        while self.peek() in ("as", "is"):
            op = self.take()[1]
            node = _TypeOp(node, op, self.type_name())
        return node

    def type_name(self) -> str:
        kind, name = self.take()
        if kind != "name":
            raise Unsupported(f"expected a type name, found {name!r}")
        if name in ("FHIR", "System") and self.peek() == ".":
            self.take()
            return self.type_name()
        return name

    def postfix(self) -> _Node:
        node = self.term()
        while self.peek() in (".", "["):
            if self.take()[1] == ".":
                node = self.invocation(node)
            else:
                kind, number = self.take()
                if kind != "number":
                    raise Unsupported("only literal indexes are supported")
                self.take("]")
                node = _Index(node, int(number))
        return node

    def term(self) -> _Node:
        kind, value = self.tokens[self.pos] if self.pos < len(self.tokens) else ("", "")
        if value == "(":
            self.take()
            node = self.expression()
            self.take(")")
            return node
        if kind == "string":
            self.take()
            return _Literal(re.sub(r"\\(.)", r"\1", value[1:-1]))
        if kind == "number":
            self.take()
            return _Literal(int(value))
        if value in ("true", "false"):
            self.take()
            return _Literal(value == "true")
        return self.invocation(_This())

    def invocation(self, source: _Node) -> _Node:
        kind, name = self.take()
        if kind != "name":
            raise Unsupported(f"expected a name, found {name!r}")
        if self.peek() != "(":
            return _Member(source, name)
        self.take("(")
        args: list[_Node] = []
        if name in ("as", "ofType"):
            args.append(_Literal(self.type_name()))
        else:
            while self.peek() != ")":
                args.append(self.expression())
                if self.peek() == ",":
                    self.take()
        self.take(")")
        return _Call(source, name, tuple(args))


# ---------------------------------------------------------------------------------------------
# FHIRPath subset: compiler
# ---------------------------------------------------------------------------------------------

_ROOT_NAMES = ("Resource", "DomainResource")
Sources = frozenset[tuple[str, str]]
"""Elements values are read from: (owner type code or backbone path, JSON key)."""
_QUANTITY_TYPES = frozenset({"Quantity", "Age", "Count", "Distance", "Duration",
                             "SimpleQuantity", "MoneyQuantity"})
Types = frozenset[str]


def _type_matches(actual: str, wanted: str) -> bool:
    return actual == wanted or (wanted == "Quantity" and actual in _QUANTITY_TYPES)


def _identity(items: list[Item]) -> list[Item]:
    return items


def _truth(items: list[Item]) -> bool | None:
    """FHIRPath singleton evaluation of a collection as a Boolean (None: empty/ambiguous)."""
    if len(items) != 1:
        return None
    value = items[0][0]
    return value if isinstance(value, bool) else True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _reference_type(value: Any) -> str:
    """The resource type a Reference (or reference string) points at, or ``""``."""
    if isinstance(value, dict):
        parts = parse_reference(value.get("reference") or "")
        if parts is not None and parts.target_type:
            return parts.target_type
        return str(value.get("type") or "").rsplit("/", 1)[-1]
    if isinstance(value, str):
        parts = parse_reference(value)
        return parts.target_type if parts is not None else ""
    return ""


class _Compiler:
    """Compiles the subset's syntax tree into closures, tracking the possible types."""

    def __init__(self, model: ElementModel, resource_type: str) -> None:
        self.model = model
        self.resource_type = resource_type

    def compile(self, node: _Node, types: Types) -> tuple[Evaluate, Types]:
        if isinstance(node, _This):
            return _identity, types
        if isinstance(node, _Member):
            return self._member(node, types)
        if isinstance(node, _Call):
            return self._call(node, types)
        if isinstance(node, _Index):
            return self._index(node, types)
        if isinstance(node, _TypeOp):
            return self._type_op(node, types)
        if isinstance(node, _Binary):
            return self._binary(node, types)
        return self._literal(node)

    def sources(self, node: _Node, types: Types) -> Sources:
        """The elements the values of ``node`` are read from, as (owner, JSON key): the
        owner is a type code or a backbone element's path. None where the values are
        computed (literals, ``exists()``, comparisons, ``is``, extensions)."""
        if isinstance(node, _Member):
            _, in_types = self.compile(node.source, types)
            return frozenset((owner, key) for owner in in_types
                             for key, _ in self.model.children(owner, node.name))
        if isinstance(node, _Index) or (isinstance(node, _TypeOp) and node.op == "as") or (
                isinstance(node, _Call) and node.name in ("as", "ofType", "where")):
            return self.sources(node.source, types)
        if isinstance(node, _Binary) and node.op == "|":
            return self.sources(node.left, types) | self.sources(node.right, types)
        return frozenset()

    def _literal(self, node: _Literal) -> tuple[Evaluate, Types]:
        value = node.value
        type_ = "boolean" if isinstance(value, bool) else (
            "integer" if isinstance(value, int) else "string")
        result: list[Item] = [(value, type_)]
        return (lambda _items: result), frozenset({type_})

    def _member(self, node: _Member, types: Types) -> tuple[Evaluate, Types]:
        source, in_types = self.compile(node.source, types)
        is_root = isinstance(node.source, _This) and in_types == {self.resource_type}
        if is_root and node.name in (self.resource_type, *_ROOT_NAMES):
            return source, in_types
        table = {t: self.model.children(t, node.name) for t in in_types}
        table = {t: keys for t, keys in table.items() if keys}
        if not table:
            raise Unsupported(f"no element {node.name!r} in {sorted(in_types)}")
        out_types = frozenset(t for keys in table.values() for _, t in keys)
        return _child_step(source, table), out_types

    def _index(self, node: _Index, types: Types) -> tuple[Evaluate, Types]:
        source, out_types = self.compile(node.source, types)
        i = node.index
        return (lambda items: source(items)[i:i + 1]), out_types

    def _type_op(self, node: _TypeOp, types: Types) -> tuple[Evaluate, Types]:
        wanted = node.type_name
        if node.op == "as":
            source, in_types = self.compile(node.source, types)
            return _type_filter(source, wanted), _narrow(in_types, wanted)
        if isinstance(node.source, _Call) and node.source.name == "resolve":
            if node.source.args:
                raise Unsupported("resolve() takes no arguments")
            source, _ = self.compile(node.source.source, types)
            return _is_step(source, lambda item: _reference_type(item[0]) == wanted), BOOLEAN
        source, _ = self.compile(node.source, types)
        return _is_step(source, lambda item: _type_matches(item[1], wanted)), BOOLEAN

    def _binary(self, node: _Binary, types: Types) -> tuple[Evaluate, Types]:
        left, left_types = self.compile(node.left, types)
        right, right_types = self.compile(node.right, types)
        if node.op == "|":
            return (lambda items: left(items) + right(items)), left_types | right_types
        if node.op in ("and", "or"):
            return _logic_step(left, right, decisive=node.op == "or"), BOOLEAN
        return _equality_step(left, right, negate=node.op == "!="), BOOLEAN

    def _call(self, node: _Call, types: Types) -> tuple[Evaluate, Types]:
        source, in_types = self.compile(node.source, types)
        name, args = node.name, node.args
        if name in ("as", "ofType") and len(args) == 1 and isinstance(args[0], _Literal):
            wanted = str(args[0].value)
            return _type_filter(source, wanted), _narrow(in_types, wanted)
        if name == "where" and len(args) == 1:
            criteria, _ = self.compile(args[0], in_types)
            return _where_step(source, criteria), in_types
        if name == "exists" and not args:
            return (lambda items: [(bool(source(items)), "boolean")]), BOOLEAN
        if name in ("extension", "hasExtension") and len(args) == 1:
            url = args[0].value if isinstance(args[0], _Literal) else None
            if not isinstance(url, str):
                raise Unsupported(f"{name}() needs a literal url")
            extensions, ext_types = self._member(_Member(node.source, "extension"), types)
            step = _extension_step(extensions, url)
            if name == "extension":
                return step, ext_types
            return (lambda items: [(bool(step(items)), "boolean")]), BOOLEAN
        raise Unsupported(f"function {name}() is not compiled")


BOOLEAN: Types = frozenset({"boolean"})


def _narrow(types: Types, wanted: str) -> Types:
    return frozenset(t for t in types if _type_matches(t, wanted))


def _child_step(source: Evaluate, table: dict[str, list[tuple[str, str]]]) -> Evaluate:
    def step(items: list[Item]) -> list[Item]:
        out: list[Item] = []
        for node, type_ in source(items):
            keys = table.get(type_)
            if keys is None or type(node) is not dict:
                continue
            for key, child_type in keys:
                value = node.get(key)
                if value is None:
                    continue
                if type(value) is list:
                    out.extend((v, child_type) for v in value if v is not None)
                else:
                    out.append((value, child_type))
        return out
    return step


def _type_filter(source: Evaluate, wanted: str) -> Evaluate:
    return lambda items: [item for item in source(items) if _type_matches(item[1], wanted)]


def _is_step(source: Evaluate, test: Callable[[Item], bool]) -> Evaluate:
    def step(items: list[Item]) -> list[Item]:
        found = source(items)
        return [(test(found[0]), "boolean")] if len(found) == 1 else []
    return step


def _where_step(source: Evaluate, criteria: Evaluate) -> Evaluate:
    return lambda items: [item for item in source(items) if _truth(criteria([item])) is True]


def _extension_step(extensions: Evaluate, url: str) -> Evaluate:
    return lambda items: [e for e in extensions(items)
                          if type(e[0]) is dict and e[0].get("url") == url]


def _logic_step(left: Evaluate, right: Evaluate, *, decisive: bool) -> Evaluate:
    """FHIRPath's three-valued ``and`` (``decisive`` False: one false operand makes it
    false) and ``or`` (``decisive`` True: one true operand makes it true); empty when
    undecided by an empty operand."""
    def step(items: list[Item]) -> list[Item]:
        a, b = _truth(left(items)), _truth(right(items))
        if a is decisive or b is decisive:
            return [(decisive, "boolean")]
        if a is None or b is None:
            return []
        return [(not decisive, "boolean")]
    return step


def _equality_step(left: Evaluate, right: Evaluate, *, negate: bool) -> Evaluate:
    def step(items: list[Item]) -> list[Item]:
        a, b = left(items), right(items)
        if not a or not b:
            return []
        equal = len(a) == len(b) and all(_same(x[0], y[0]) for x, y in zip(a, b, strict=True))
        return [(equal != negate, "boolean")]
    return step


def compile_fast(expression: str, resource_type: str, model: ElementModel
                 ) -> tuple[Callable[[dict[str, Any]], list[Item]], Types, Sources]:
    """Compile ``expression`` into a closure over the resource JSON, with its result types
    and the elements its values are read from. Raises :class:`Unsupported` for FHIRPath
    outside the compiled subset."""
    compiler = _Compiler(model, resource_type)
    tree, root = _Parser(expression).parse(), frozenset({resource_type})
    evaluate, types = compiler.compile(tree, root)
    return ((lambda resource: evaluate([(resource, resource_type)])), types,
            compiler.sources(tree, root))


# ---------------------------------------------------------------------------------------------
# Fallback: fhirpathpy
# ---------------------------------------------------------------------------------------------

_CALLED_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def compile_fallback(expression: str, resource_type: str,
                     param_type: str) -> Callable[[dict[str, Any]], list[Item]]:
    """Compile ``expression`` with fhirpathpy (R4 model); values are typed by their shape.

    The expression is tried once on an empty resource, as fhirpathpy reports some errors
    (wrong arity) only when evaluating.
    """
    missing = {f for f in _CALLED_RE.findall(expression) if f not in _FHIRPATHPY_FUNCTIONS}
    if missing:
        raise Unsupported(f"functions not available: {sorted(missing)}")
    try:
        compiled = fhirpathpy.compile(expression, _FHIRPATHPY_MODELS["r4"])
        compiled({"resourceType": resource_type})
    except Exception as exc:  # fhirpathpy raises plain Exceptions
        raise Unsupported(f"cannot evaluate {expression!r}: {exc}") from exc

    def evaluate(resource: dict[str, Any]) -> list[Item]:
        try:
            values = compiled(resource)
        except Exception:  # a failing value must not fail the write; it is logged
            log.warning("FHIRPath %r failed on %s/%s", expression,
                        resource.get("resourceType"), resource.get("id"), exc_info=True)
            return []
        string_type = _STRING_TYPE_BY_PARAM.get(param_type, "string")
        return [(v, string_type if isinstance(v, str) else _shape_type(v))
                for v in values if v is not None]

    return evaluate


_STRING_TYPE_BY_PARAM = {"reference": "canonical", "date": "dateTime", "uri": "uri"}
"""The type a string value is taken to be, by parameter type (fallback only)."""


def _shape_type(value: Any) -> str:
    """The most likely FHIR type of a non-string value known only by its JSON shape."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | Decimal | float):
        return "decimal"
    if not isinstance(value, dict):
        return ""
    for keys, type_ in _SHAPES:
        if any(k in value for k in keys):
            return type_
    if isinstance(value.get("value"), str):
        return "ContactPoint" if value.get("system") in _CONTACT_SYSTEMS else "Identifier"
    if "value" in value or "unit" in value:
        return "Quantity"
    return "Coding" if "code" in value or "system" in value else ""


_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


_SHAPES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("coding",), "CodeableConcept"),
    (("reference", "identifier"), "Reference"),
    (("family", "given"), "HumanName"),
    (("line", "city", "postalCode", "country"), "Address"),
    (("start", "end"), "Period"),
    (("event", "repeat"), "Timing"),
    (("low", "high"), "Range"),
    (("url",), "Extension"),
    (("text",), "CodeableConcept"),
)


# ---------------------------------------------------------------------------------------------
# Conversion to index values
# ---------------------------------------------------------------------------------------------

_STRING_PRIMITIVES = ("string", "code", "id", "markdown", "uri", "url", "canonical", "oid",
                      "uuid")


def _norm(text: Any) -> str:
    return normalize_string(text) if isinstance(text, str) else ""


def _token_coding(code: str, c: Any, out: IndexValues) -> None:
    if type(c) is dict and (c.get("code") or c.get("system") or c.get("display")):
        out.tokens.append(TokenValue(code, c.get("system") or "", c.get("code") or "",
                                     _norm(c.get("display"))))


def _token_concept(code: str, cc: Any, out: IndexValues) -> None:
    if type(cc) is not dict:
        return
    text = _norm(cc.get("text"))
    texts: set[str] = set()
    for coding in cc.get("coding") or ():
        if type(coding) is dict and (coding.get("code") or coding.get("system")):
            display = _norm(coding.get("display")) or text
            texts.add(display)
            out.tokens.append(TokenValue(code, coding.get("system") or "",
                                         coding.get("code") or "", display))
    if text and text not in texts:
        out.tokens.append(TokenValue(code, "", "", text))


def _token_identifier(code: str, ident: Any, out: IndexValues) -> None:
    if type(ident) is dict and ident.get("value"):
        type_text = (ident.get("type") or {}).get("text")
        out.tokens.append(TokenValue(code, ident.get("system") or "", str(ident["value"]),
                                     _norm(type_text)))


def _token_contact(code: str, cp: Any, out: IndexValues) -> None:
    if type(cp) is dict and cp.get("value"):
        out.tokens.append(TokenValue(code, "", str(cp["value"])))


def _token_primitive(code: str, value: Any, out: IndexValues) -> None:
    if isinstance(value, bool):
        out.tokens.append(TokenValue(code, "", "true" if value else "false"))
    elif isinstance(value, str) and value:
        out.tokens.append(TokenValue(code, "", value))


def _reference(code: str, ref: Any, out: IndexValues) -> None:
    if type(ref) is not dict:
        return
    literal = ref.get("reference")
    if isinstance(literal, str):
        parts = parse_reference(literal)
        if parts is not None:
            out.references.append(ReferenceValue(code, parts.target_type, parts.target_id,
                                                 parts.url, parts.version))
    ident = ref.get("identifier")
    if type(ident) is dict and ident.get("value"):
        out.tokens.append(TokenValue(code, ident.get("system") or "", str(ident["value"]),
                                     identifier=True))


def _reference_canonical(code: str, url: Any, out: IndexValues) -> None:
    if isinstance(url, str) and url:
        parts = parse_canonical(url)
        out.references.append(ReferenceValue(code, "", "", parts.url, parts.version))


def _date_value(code: str, text: Any, out: IndexValues) -> None:
    if isinstance(text, str):
        try:
            lo, hi = date_range(text)
        except ValueError:
            return
        out.dates.append(DateValue(code, lo, hi))


def _date_period(code: str, period: Any, out: IndexValues) -> None:
    if type(period) is not dict or not (period.get("start") or period.get("end")):
        return
    try:
        lo, hi = period_range(period.get("start"), period.get("end"))
    except ValueError:
        return
    out.dates.append(DateValue(code, lo, hi))


def _date_timing(code: str, timing: Any, out: IndexValues) -> None:
    if type(timing) is not dict:
        return
    for event in timing.get("event") or ():
        _date_value(code, event, out)
    repeat = timing.get("repeat")
    if type(repeat) is dict:
        _date_period(code, repeat.get("boundsPeriod"), out)


def _string(code: str, text: Any, out: IndexValues) -> None:
    if isinstance(text, str) and text:
        out.strings.append(StringValue(code, normalize_string(text), text))


def _string_parts(*fields: str) -> Emit:
    def emit(code: str, value: Any, out: IndexValues) -> None:
        if type(value) is not dict:
            return
        for name in fields:
            part = value.get(name)
            if type(part) is list:
                for text in part:
                    _string(code, text, out)
            else:
                _string(code, part, out)
    return emit


def _uri(code: str, value: Any, out: IndexValues) -> None:
    if isinstance(value, str) and value:
        out.uris.append(UriValue(code, value))


def _number(code: str, value: Any, out: IndexValues) -> None:
    if isinstance(value, int | Decimal | float) and not isinstance(value, bool):
        out.numbers.append(NumberValue(code, Decimal(str(value))))


def _quantity(code: str, q: Any, out: IndexValues) -> None:
    if type(q) is dict and isinstance(q.get("value"), int | Decimal | float):
        out.quantities.append(QuantityValue(code, Decimal(str(q["value"])), q.get("system") or "",
                                            q.get("code") or "", q.get("unit") or ""))


def _money(code: str, m: Any, out: IndexValues) -> None:
    if type(m) is dict and isinstance(m.get("value"), int | Decimal | float):
        currency = m.get("currency") or ""
        out.quantities.append(QuantityValue(code, Decimal(str(m["value"])),
                                            "urn:iso:std:iso:4217", currency, currency))


def _range(code: str, r: Any, out: IndexValues) -> None:
    if type(r) is dict:
        _quantity(code, r.get("low"), out)
        _quantity(code, r.get("high"), out)


def _emitters(pairs: Iterable[tuple[Iterable[str], Emit]]) -> dict[str, Emit]:
    return {type_: emit for types, emit in pairs for type_ in types}


EMITTERS: dict[str, dict[str, Emit]] = {
    "token": _emitters([
        (("Coding",), _token_coding),
        (("CodeableConcept",), _token_concept),
        (("Identifier",), _token_identifier),
        (("ContactPoint",), _token_contact),
        ((*_STRING_PRIMITIVES, "boolean"), _token_primitive),
    ]),
    "reference": _emitters([
        (("Reference",), _reference),
        (("canonical", "uri", "url"), _reference_canonical),
    ]),
    "date": _emitters([
        (("date", "dateTime", "instant"), _date_value),
        (("Period",), _date_period),
        (("Timing",), _date_timing),
    ]),
    "string": _emitters([
        (_STRING_PRIMITIVES, _string),
        (("HumanName",), _string_parts("family", "given", "prefix", "suffix", "text")),
        (("Address",), _string_parts("line", "city", "district", "state", "postalCode",
                                     "country", "text")),
    ]),
    "uri": _emitters([(("uri", "url", "canonical", "oid", "uuid"), _uri)]),
    "number": _emitters([(("decimal", "integer", "positiveInt", "unsignedInt"), _number)]),
    "quantity": _emitters([
        (_QUANTITY_TYPES, _quantity),
        (("Money",), _money),
        (("Range",), _range),
    ]),
}
"""Converters by parameter type, then FHIR data type."""


def _extension_emitter(emitters: Mapping[str, Emit], model: ElementModel) -> Emit:
    """Indexes an Extension through its ``value[x]``."""
    by_key = {key: emitters[t] for key, t in model.children("Extension", "value")
              if t in emitters}

    def emit(code: str, ext: Any, out: IndexValues) -> None:
        if type(ext) is not dict:
            return
        for key, value in ext.items():
            convert = by_key.get(key)
            if convert is not None:
                convert(code, value, out)
    return emit


# ---------------------------------------------------------------------------------------------
# Extractor
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extractor:
    """One search parameter of one resource type, compiled."""

    code: str
    param_type: str
    fast: bool  # compiled to plain closures (False: fhirpathpy)
    types: frozenset[str]  # FHIR types the expression yields ("" unknown: fhirpathpy)
    evaluate: Callable[[dict[str, Any]], list[Item]]
    emitters: Mapping[str, Emit]
    sources: Sources = frozenset()  # the elements values are read from (fast path only)

    def extract(self, resource: dict[str, Any], out: IndexValues) -> None:
        emitters = self.emitters
        for value, type_ in self.evaluate(resource):
            emit = emitters.get(type_)
            if emit is not None:
                emit(self.code, value, out)


def compile_extractor(code: str, param_type: str, expression: str, resource_type: str,
                      model: ElementModel) -> Extractor:
    """Compile one parameter's (type-filtered) expression for ``resource_type``.

    Raises :class:`Unsupported` when neither the fast path nor fhirpathpy can evaluate it, and
    :class:`NotIndexable` when its values can never be indexed as ``param_type``.
    """
    base = EMITTERS.get(param_type)
    if base is None:
        raise NotIndexable(f"{param_type} parameters are not indexed")
    emitters = dict(base)
    emitters["Extension"] = _extension_emitter(base, model)
    try:
        evaluate, types, sources = compile_fast(expression, resource_type, model)
    except Unsupported:
        return Extractor(code, param_type, False, frozenset(),
                         compile_fallback(expression, resource_type, param_type), emitters)
    if not types & emitters.keys():
        raise NotIndexable(f"{expression!r} yields {sorted(types)}, not {param_type} values")
    return Extractor(code, param_type, True, types, evaluate, emitters, sources)


def extract_all(extractors: Iterable[Extractor], resource: dict[str, Any]) -> IndexValues:
    """Run extractors over one resource; duplicate values are dropped."""
    out = IndexValues()
    for extractor in extractors:
        extractor.extract(resource, out)
    for name in ("tokens", "references", "dates", "strings", "uris", "numbers", "quantities"):
        values = getattr(out, name)
        if len(values) > 1:
            setattr(out, name, list(dict.fromkeys(values)))
    return out
