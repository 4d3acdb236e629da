"""Search parameters (query string and/or POST _search form) -> :class:`ParsedSearch`.

Repeated parameters are AND-ed, commas inside one value OR-ed; ``\\,``, ``\\|``, ``\\$`` and
``\\\\`` escape. Every problem becomes one OperationOutcome issue naming the parameter, and all
of them are reported together (HTTP 400). With ``lenient=True`` (``Prefer: handling=lenient``)
unknown or unsupported parameters and modifiers are ignored and listed instead; bad values of
known parameters are still errors.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from .. import jsonio
from ..outcome import FhirError, Issue, issue
from .ast import (
    AllOf,
    AnyOf,
    Chain,
    Clause,
    Condition,
    DateQuery,
    Has,
    Keyset,
    MissingQuery,
    NumberQuery,
    Prefix,
    QuantityQuery,
    QueryValue,
    ReferenceQuery,
    SearchParam,
    SearchQuery,
    SortKey,
    StringQuery,
    TokenQuery,
    UriQuery,
    page_order,
)
from .normalize import (
    ID_RE,
    TYPE_RE,
    date_range,
    decimal_range,
    is_absolute,
    normalize_string,
    parse_canonical,
    parse_reference,
)
from .registry import Registry


@dataclass
class Include:
    """``_include`` (``reverse=False``) or ``_revinclude`` (``reverse=True``)."""

    source_type: str  # the type holding the reference parameter
    param: SearchParam  # a reference parameter of source_type
    target_type: str | None  # only references to this type (``Type:param:Target``)
    iterate: bool
    reverse: bool


@dataclass(frozen=True)
class BareId:
    """An id without a type given to a reference parameter (``subject=123``) that may refer
    to resources of several stored types, which the data may make ambiguous (R4 search
    3.1.1.4.12; :class:`~server.fhir.service.FhirService` checks)."""

    name: str  # the parameter as given (``subject``, ``focus:Goal.subject``)
    id: str
    types: tuple[str, ...]  # the stored types it may refer to


@dataclass
class ParsedSearch:
    query: SearchQuery
    includes: list[Include] = field(default_factory=list)
    elements: list[str] | None = None
    summary: str | None = None  # true | text | data | count | false
    self_params: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    bare_ids: list[BareId] = field(default_factory=list)


class _Unsupported(Exception):
    """An unknown or unsupported parameter or modifier (ignored when lenient)."""


class _Invalid(Exception):
    """A bad value of a known parameter (always an error)."""


_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_PREFIX_RE = re.compile(rf"({'|'.join(_PREFIXES)})?(.*)", re.DOTALL)
_SUMMARY = ("true", "text", "data", "count", "false")
_TOTAL = ("none", "estimate", "accurate")
_JSON_FORMATS = ("json", "application/json", "application/fhir+json", "application/json+fhir",
                 "text/json")
_XML_FORMATS = ("xml", "application/xml", "application/fhir+xml", "application/xml+fhir",
                "text/xml")
_ELEMENT_RE = re.compile(r"(?:[A-Z][A-Za-z]+\.)?[a-z][A-Za-z0-9]*")
_UNSUPPORTED = {
    "_text": "full-text search", "_content": "full-text search", "_list": "list search",
    "_query": "named queries", "_filter": "_filter expressions", "_contained": "contained search",
    "_containedType": "contained search", "_type": "_type (system search only)",
}
_SINGLE = ("_count", "_offset", "_page", "_total", "_summary", "_elements", "_format", "_sort")


# ---------------------------------------------------------------------------------------------
# Escapes
# ---------------------------------------------------------------------------------------------


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped by a backslash; parts stay escaped."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", text)


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def _prefixed(raw: str, name: str) -> tuple[Prefix, str]:
    m = _PREFIX_RE.fullmatch(raw)
    assert m is not None  # the pattern matches every string
    prefix, rest = m.group(1), m.group(2)
    if prefix and not rest[:1].isdigit() and rest[:1] not in "-+.":
        prefix, rest = None, raw
    if not rest:
        raise _Invalid(f"Parameter '{name}' has a prefix but no value: {raw!r}")
    return (prefix or "eq"), rest  # type: ignore[return-value]


def _date(raw: str, name: str) -> DateQuery:
    prefix, rest = _prefixed(raw, name)
    text = unescape(rest).replace(" ", "+")  # a '+' of a time zone decoded as a space
    try:
        lo, hi = date_range(text)
    except ValueError as exc:
        raise _Invalid(f"Parameter '{name}': {raw!r} is not a valid date search value "
                       f"([prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][Z|+hh:mm]]]]): {exc}") from exc
    return DateQuery(prefix, lo, hi)


def _decimal(text: str, name: str, raw: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise _Invalid(f"Parameter '{name}': {raw!r} is not a number") from exc
    if not value.is_finite():
        raise _Invalid(f"Parameter '{name}': {raw!r} is not a finite number")
    return value


def _number(raw: str, name: str) -> NumberQuery:
    prefix, rest = _prefixed(raw, name)
    value = _decimal(unescape(rest), name, raw)
    lo, hi = decimal_range(value)
    return NumberQuery(prefix, value, lo, hi)


def _quantity(raw: str, name: str) -> QuantityQuery:
    prefix, rest = _prefixed(raw, name)
    parts = [unescape(p) for p in split_escaped(rest, "|")]
    if len(parts) not in (1, 3):
        raise _Invalid(f"Parameter '{name}': {raw!r} is not [prefix]number[|system|code]")
    value = _decimal(parts[0], name, raw)
    lo, hi = decimal_range(value)
    system, code = (parts[1] or None, parts[2] or None) if len(parts) == 3 else (None, None)
    return QuantityQuery(prefix, value, lo, hi, system, code)


def _token(raw: str, name: str) -> TokenQuery:
    parts = [unescape(p) for p in split_escaped(raw, "|")]
    if len(parts) == 1:
        return TokenQuery(None, parts[0])
    if len(parts) == 2:
        return TokenQuery(parts[0], parts[1] or None)
    raise _Invalid(f"Parameter '{name}': {raw!r} is not [system]|[code] (escape '|' as '\\|')")


def _implicit(implicit: frozenset[tuple[str, str]],
              values: tuple[QueryValue, ...]) -> tuple[QueryValue, ...]:
    """Token values read against the systems a parameter's values have implicitly
    (:attr:`SearchParam.implicit`; they are indexed without them): ``system|code`` matches
    the code when ``system`` is its implicit system (another system matches nothing),
    ``system|`` every code of that system, and ``|code`` (no system) only a code without an
    implicit system (R4 search, token: for a ``code`` "the system is defined in the value
    set"; for a boolean it is special-values)."""
    codes = {code for _, code in implicit}
    out: list[QueryValue] = []
    for value in values:
        assert isinstance(value, TokenQuery)
        if value.system is None:
            out.append(value)
        elif value.system == "":
            if value.code is not None and value.code not in codes:
                out.append(value)
        else:
            out.extend(TokenQuery("", code) for system, code in sorted(implicit)
                       if system == value.system and value.code in (None, code))
    return tuple(dict.fromkeys(out))


def _in_system(system: str, values: tuple[QueryValue, ...]) -> tuple[QueryValue, ...]:
    """Token values read against the one code system every value of a parameter has
    implicitly (:attr:`SearchParam.implicit_system`; indexed without it): ``system|code``
    matches the code, ``system|`` every value, another system nothing, and ``|code`` (no
    system) nothing either."""
    out: list[QueryValue] = []
    for value in values:
        assert isinstance(value, TokenQuery)
        if value.system is None:
            out.append(value)
        elif value.system == system:
            out.append(TokenQuery("", value.code))
    return tuple(dict.fromkeys(out))


def _resource_id(raw: str, name: str) -> TokenQuery:
    value = unescape(raw)
    if not ID_RE.fullmatch(value):
        raise _Invalid(f"Parameter '{name}': {value!r} is not a resource id")
    return TokenQuery(None, value)


def _reference(raw: str, name: str, param: SearchParam, type_: str | None) -> ReferenceQuery:
    """A reference value. An absolute URL under this server's base (as
    :func:`~.normalize.parse_reference` knows it) is read as the relative reference it
    stands for, which also matches the absolute form (R4 search 3.1.1.4.12: a relative
    reference and the absolute URL it resolves to match each other)."""
    text = unescape(raw)
    ref = parse_reference(text)
    if is_absolute(text) and (ref is None or not ref.target_type):
        parts = parse_canonical(text)
        return ReferenceQuery(None, None, url=parts.url, version=parts.version or None)
    if ref is not None:
        if type_ and ref.target_type != type_:
            raise _Invalid(f"Parameter '{name}': {text!r} is not a {type_} reference")
        if param.targets and ref.target_type not in param.targets:
            raise _Invalid(f"Parameter '{name}': {param.code} cannot refer to a "
                           f"{ref.target_type} (allowed: {', '.join(param.targets)})")
        return ReferenceQuery(ref.target_type, ref.target_id, version=ref.version or None)
    if ID_RE.fullmatch(text):
        return ReferenceQuery(type_, text)
    raise _Invalid(f"Parameter '{name}': {text!r} is not Type/id, an id or an absolute URL")


def _missing(raw: str, name: str) -> MissingQuery:
    if raw not in ("true", "false"):
        raise _Invalid(f"Parameter '{name}': :missing takes true or false, not {raw!r}")
    return MissingQuery(raw == "true")


ValueParser = Callable[[str, str], QueryValue]


def _value_parser(param: SearchParam, modifier: str | None,
                  type_modifier: str | None) -> ValueParser:
    """How the values of ``param[:modifier]`` are read."""
    if modifier == "missing":
        return _missing
    if param.code == "_id":
        return _resource_id
    kind = param.type
    if kind == "reference":
        if modifier == "identifier":
            return _token
        return lambda raw, name: _reference(raw, name, param, type_modifier)
    if kind == "token":
        if modifier == "text":  # the normalised text, matched against TokenValue.text
            return lambda raw, _name: TokenQuery(None, normalize_string(unescape(raw)))
        return _token
    if kind == "string":
        if modifier == "exact":
            return lambda raw, _name: StringQuery(unescape(raw))
        return lambda raw, _name: StringQuery(normalize_string(unescape(raw)))
    if kind == "uri":
        return lambda raw, _name: UriQuery(unescape(raw))
    if kind == "date":
        return _date
    if kind == "number":
        return _number
    return _quantity


# ---------------------------------------------------------------------------------------------
# Conditions: clause, chain, _has
# ---------------------------------------------------------------------------------------------


def _split_or(raw: str) -> list[str]:
    return [v for v in split_escaped(raw, ",") if v]


def _param(registry: Registry, type_: str, code: str) -> SearchParam:
    param = registry.param(type_, code)
    if param is None:
        why = _UNSUPPORTED.get(code)
        raise _Unsupported(f"{why} ('{code}') is not supported" if why
                           else f"Unknown search parameter '{code}' for {type_}")
    return param


def _target_modifier(param: SearchParam, registry: Registry, target: str) -> bool:
    return bool(TYPE_RE.fullmatch(target)) and target in registry.types and (
        not param.targets or target in param.targets)


def _clause(registry: Registry, type_: str, key: str, raw: str) -> Condition:
    code, _, modifier = key.partition(":")
    param = _param(registry, type_, code)
    type_modifier = None
    if modifier and param.type == "reference" and modifier not in param.modifiers:
        if not _target_modifier(param, registry, modifier):
            raise _Unsupported(f"'{modifier}' is not a modifier or target type of reference "
                               f"parameter '{code}' of {type_}")
        type_modifier = modifier
    elif modifier and modifier not in param.modifiers:
        raise _Unsupported(f"The modifier ':{modifier}' is not supported for {param.type} "
                           f"parameter '{code}' of {type_}")
    read = _value_parser(param, modifier or None, type_modifier)
    values = tuple(read(v, key) for v in _split_or(raw))
    modifier = "" if type_modifier else modifier
    if (param.implicit or param.implicit_system) and modifier in ("", "not"):
        values = (_implicit(param.implicit, values) if param.implicit
                  else _in_system(param.implicit_system or "", values))
        if not values:  # no value can match: no resource does (with :not, every one does)
            return AllOf(()) if modifier else AnyOf(())
    return Clause(param, modifier or None, values)


def _chain(registry: Registry, type_: str, head: str, tail: str, raw: str) -> Chain:
    code, _, target = head.partition(":")
    param = _param(registry, type_, code)
    if param.type != "reference":
        raise _Invalid(f"'{head}.{tail}': only reference parameters can be chained, "
                       f"'{code}' is a {param.type} parameter")
    if "." in tail or tail.startswith("_has:"):
        raise _Unsupported(f"'{head}.{tail}': only one level of chaining is supported")
    inner_code = tail.partition(":")[0]
    if target:
        if not _target_modifier(param, registry, target):
            raise _Unsupported(f"'{head}.{tail}': '{code}' cannot refer to a {target} "
                               "stored here")
    else:
        candidates = [t for t in param.targets
                      if t in registry.types and registry.param(t, inner_code) is not None]
        if not candidates and param.targets:
            raise _Unsupported(f"'{head}.{tail}': no type '{code}' can refer to has a "
                               f"search parameter '{inner_code}'")
        if len(candidates) != 1:
            named = ", ".join(candidates) or "any type"
            raise _Invalid(f"'{head}.{tail}': '{code}' can refer to {named}; name the type "
                           f"to chain through, as {code}:Type.{tail}")
        target = candidates[0]
    return Chain(param, target, _clause(registry, target, tail, raw))


def _has(registry: Registry, type_: str, key: str, raw: str) -> Has:
    pieces = key[len("_has:"):].split(":", 2)
    if len(pieces) != 3 or not all(pieces):
        raise _Invalid(f"'{key}' is not _has:Type:reference-parameter:parameter")
    other, ref_code, inner_key = pieces
    if other not in registry.types:
        raise _Unsupported(f"'{key}': resource type {other!r} is not supported")
    ref = _param(registry, other, ref_code)
    if ref.type != "reference":
        raise _Invalid(f"'{key}': '{ref_code}' of {other} is not a reference parameter")
    if ref.targets and type_ not in ref.targets:
        raise _Invalid(f"'{key}': '{ref_code}' of {other} cannot refer to a {type_}")
    return Has(other, ref, _condition(registry, other, inner_key, raw))


def _bare_ids(registry: Registry, name: str, cond: Condition) -> list[BareId]:
    """The ids without a type in ``cond`` (given as ``name``) of reference parameters that
    may refer to more than one stored type."""
    if isinstance(cond, Chain | Has):
        return _bare_ids(registry, name, cond.inner)
    if not isinstance(cond, Clause) or cond.param.type != "reference" or cond.modifier:
        return []
    types = tuple(t for t in cond.param.targets or registry.types if t in registry.types)
    if len(types) < 2:
        return []
    return [BareId(name, v.target_id, types) for v in cond.values
            if isinstance(v, ReferenceQuery) and v.target_id and v.target_type is None]


def _condition(registry: Registry, type_: str, key: str, raw: str) -> Condition:
    if key.startswith("_has:"):
        return _has(registry, type_, key, raw)
    head, dot, tail = key.partition(".")
    if dot:
        return _chain(registry, type_, head, tail, raw)
    return _clause(registry, type_, key, raw)


# ---------------------------------------------------------------------------------------------
# Result parameters
# ---------------------------------------------------------------------------------------------


def _int(raw: str, name: str) -> int:
    if not raw.isdigit():
        raise _Invalid(f"Parameter '{name}' must be a non-negative integer, not {raw!r}")
    return int(raw)


def _choice(raw: str, name: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise _Invalid(f"Parameter '{name}' must be one of {', '.join(allowed)}, not {raw!r}")
    return raw


def page_token(keyset: Keyset) -> str:
    """The ``_page`` value of a keyset page (read back by the parser): the direction (``n``
    after, ``p`` before), the snapshot, whether the resource it starts at was written after
    it (``c``), and that resource's values of the order's keys, as base64url JSON."""
    head = (f"{'p' if keyset.backward else 'n'}{keyset.snapshot_ms}"
            f"{'c' if keyset.changed else ''}")
    text = jsonio.dumps([head, *keyset.values]).encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


_PAGE_HEAD_RE = re.compile(r"([np])(\d{1,18})(c?)")


def _key_value(code: str, value: object) -> bool:
    """Whether ``value`` may be a resource's value of the key ``code`` of an order: an id,
    epoch milliseconds, or a search parameter's sort value (None when it has none)."""
    if code == "_id":
        return isinstance(value, str) and ID_RE.fullmatch(value) is not None
    if code == "_lastUpdated":
        return type(value) is int
    return value is None or type(value) in (int, str, Decimal)


def _page(raw: str, order: list[tuple[str, bool]]) -> Keyset:
    """The keyset a ``_page`` value names, for a search in ``order``."""
    problem = _Invalid(f"Parameter '_page' is not a page of this search: {raw!r}")
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        head, *values = jsonio.loads(text)
    except (ValueError, TypeError, FhirError):
        raise problem from None
    m = _PAGE_HEAD_RE.fullmatch(head) if isinstance(head, str) else None
    if m is None or len(values) != len(order) or not all(
            _key_value(code, value) for (code, _), value in zip(order, values, strict=True)):
        raise problem
    return Keyset(tuple(values), int(m.group(2)), backward=m.group(1) == "p",
                  changed=m.group(3) == "c")


def _sort(registry: Registry, type_: str, raw: str, ignored: list[str],
          lenient: bool) -> list[SortKey]:
    keys: list[SortKey] = []
    for item in raw.split(","):
        code = item.strip()
        descending = code.startswith("-")
        code = code.removeprefix("-")
        if not code:
            raise _Invalid(f"Parameter '_sort' has an empty sort key in {raw!r}")
        param = registry.param(type_, code)
        if param is None:
            if not lenient:
                raise _Unsupported(f"Cannot sort {type_} by unknown parameter '{code}'")
            ignored.append("_sort")
            continue
        keys.append(SortKey(param, descending))
    return keys


def _include(registry: Registry, type_: str, name: str, raw: str) -> Include:
    base, _, modifier = name.partition(":")
    reverse = base == "_revinclude"
    if modifier not in ("", "iterate", "recurse"):
        raise _Unsupported(f"The modifier ':{modifier}' is not supported for {base}")
    iterate = bool(modifier)
    if raw == "*":
        raise _Unsupported(f"{base}=* is not supported; name Type:parameter")
    pieces = raw.split(":")
    if len(pieces) not in (2, 3) or not all(pieces):
        raise _Invalid(f"Parameter '{name}': {raw!r} is not Type:parameter[:targetType]")
    source, code = pieces[0], pieces[1]
    target = pieces[2] if len(pieces) == 3 else None
    if source not in registry.types:
        raise _Unsupported(f"Parameter '{name}': resource type {source!r} is not supported")
    param = _param(registry, source, code)
    if param.type != "reference":
        raise _Invalid(f"Parameter '{name}': '{code}' of {source} is not a reference parameter")
    if not iterate and not reverse and source != type_:
        raise _Invalid(f"Parameter '{name}': {raw!r} does not start from {type_} "
                       f"(use {name}:iterate to include from included resources)")
    if not iterate and reverse and param.targets and type_ not in param.targets:
        raise _Invalid(f"Parameter '{name}': '{code}' of {source} cannot refer to a {type_}")
    if target is not None and param.targets and target not in param.targets:
        raise _Invalid(f"Parameter '{name}': '{code}' of {source} cannot refer to a {target}")
    return Include(source, param, target, iterate, reverse)


def _format(raw: str) -> None:
    media = raw.split(";", 1)[0].strip().replace(" ", "+").lower()
    if media in _JSON_FORMATS:
        return
    what = "XML is not supported; use JSON" if media in _XML_FORMATS else (
        f"the format {raw!r} is not supported; use application/fhir+json")
    raise _Unsupported(f"Parameter '_format': {what}")


def _elements(raw: str) -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if not _ELEMENT_RE.fullmatch(n)]
    if bad or not names:
        raise _Invalid(f"Parameter '_elements': {', '.join(bad) or raw!r} is not a list of "
                       "element names")
    return names


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


@dataclass
class _Parse:
    registry: Registry
    type_: str
    lenient: bool
    max_count: int
    result: ParsedSearch
    issues: list[Issue] = field(default_factory=list)
    conditions: list[tuple[str, str]] = field(default_factory=list)
    includes: list[tuple[str, str]] = field(default_factory=list)
    singles: dict[str, str] = field(default_factory=dict)

    def run(self, params: list[tuple[str, str]]) -> None:
        for name, raw in params:
            if not name or not raw:
                continue  # empty parameters are ignored
            try:
                self.one(name, raw)
            except _Unsupported as exc:
                if self.lenient:
                    self.result.ignored.append(name)
                else:
                    self.issues.append(issue(str(exc), code="not-supported", expression=name))
            except _Invalid as exc:
                self.issues.append(issue(str(exc), code="value", expression=name))

    def one(self, name: str, raw: str) -> None:
        base = name.partition(":")[0]
        if base in ("_include", "_revinclude"):
            self.result.includes.append(_include(self.registry, self.type_, name, raw))
            self.includes.append((name, raw))
        elif name == "_pretty":
            return
        elif name in _SINGLE:
            if name in self.singles:
                raise _Invalid(f"Parameter '{name}' may be given only once")
            self.result_param(name, raw)
            self.singles[name] = raw
        elif base in _SINGLE:
            raise _Unsupported(f"Parameter '{base}' takes no modifier")
        else:
            condition = _condition(self.registry, self.type_, name, raw)
            self.result.query.conditions.append(condition)
            self.result.bare_ids.extend(_bare_ids(self.registry, name, condition))
            self.conditions.append((name, raw))

    def result_param(self, name: str, raw: str) -> None:
        query = self.result.query
        if name == "_count":
            query.count = min(_int(raw, name), self.max_count)
        elif name == "_offset":
            query.offset = _int(raw, name)
        elif name == "_page":
            return  # read by page(), once the order is known
        elif name == "_total":
            _choice(raw, name, _TOTAL)
        elif name == "_summary":
            self.result.summary = _choice(raw, name, _SUMMARY)
        elif name == "_elements":
            self.result.elements = _elements(raw)
        elif name == "_format":
            _format(raw)
        else:
            query.sort = _sort(self.registry, self.type_, raw, self.result.ignored, self.lenient)

    def page(self) -> None:
        """Read ``_page`` against the search's order (known once every parameter is read)."""
        raw = self.singles.get("_page")
        if raw is None:
            return
        if "_offset" in self.singles:
            self.issues.append(issue("Parameters '_page' and '_offset' exclude each other",
                                     code="value", expression="_page"))
            return
        try:
            self.result.query.keyset = _page(raw, page_order(self.result.query.sort))
        except _Invalid as exc:
            self.issues.append(issue(str(exc), code="value", expression="_page"))

    def finish(self) -> None:
        query, result, singles = self.result.query, self.result, self.singles
        if result.summary == "count":
            query.count = 0
        total = singles.get("_total")
        query.total = total in ("accurate", "estimate") or (query.count == 0 and total is None)
        self_params = sorted(self.conditions) + sorted(self.includes)
        if query.sort:
            self_params.append(("_sort", ",".join(
                ("-" if k.descending else "") + k.param.code for k in query.sort)))
        for name in ("_elements", "_summary", "_total"):
            if name in singles:
                self_params.append((name, singles[name]))
        self_params.append(("_count", str(query.count)))
        if query.offset:
            self_params.append(("_offset", str(query.offset)))
        if query.keyset is not None:
            self_params.append(("_page", singles["_page"]))
        result.self_params = self_params


def parse_search(registry: Registry, type_: str, params: list[tuple[str, str]], *,
                 lenient: bool = False, default_count: int = 20,
                 max_count: int = 1000) -> ParsedSearch:
    """Parse the search parameters of a search of ``type_``.

    Raises :class:`FhirError` (400) with one issue per problem, each naming its parameter.
    """
    if type_ not in registry.types:
        raise FhirError.of(400, f"Searching {type_} is not supported", code="not-supported")
    result = ParsedSearch(SearchQuery(type=type_, count=min(default_count, max_count)))
    parse = _Parse(registry, type_, lenient, max_count, result)
    parse.run(params)
    parse.page()
    if parse.issues:
        raise FhirError(400, parse.issues)
    parse.finish()
    return result
