"""The MongoDB search compiler: index documents and query filters, as pure functions.

Nothing here talks to a database; :mod:`server.store.mongo` runs what this module builds.

One ``resources`` document holds the current version of one resource::

    {_id: "Type/id", type, id, version, lu, lum, born, deleted, method, keys, json,
     ix: {tok: [{p, s, c, x, i}],     token: param, system, code, text, identifier flag
          ref: [{p, t, id, u, v}],    reference: param, target type, id, url, version
          dt:  [{p, lo, hi}],         date range, epoch ms, both ends inclusive
          str: [{p, n, e}],           string: normalised, exact
          uri: [{p, v}],
          num: [{p, v}],              v is Decimal128
          qty: [{p, v, s, c, u}],     quantity: value, system, code, unit
          has: [param, ...]}}         params with at least one value (for ``:missing``)

Every clause becomes ``$elemMatch`` on one of these arrays, so that the parameter code and
the value match in the same element, and leads with the fields of a declared index
(:data:`RESOURCE_INDEXES`). The semantics are those of the embedded engine (see
:mod:`server.store.sql_query`), which shares the engine test-suite: a resource matches a value
when ANY of its values matches it, so ``ne`` is "some value not equal", while ``:not`` is
"no value equal to any of the query values" (resources without a value included).

* Dates are ranges ``[lo, hi]`` against the query range ``[qlo, qhi]``: eq ``lo >= qlo and
  hi <= qhi``; ne ``lo < qlo or hi > qhi``; gt ``hi > qhi``; lt ``lo < qlo``; ge gt or eq;
  le lt or eq; sa ``lo > qhi``; eb ``hi < qlo``; ap overlaps ``[qlo - d, qhi + d]`` where
  ``d`` is 10 % of the distance between now and the query range (0 inside it), at least a
  day. ``_lastUpdated`` is the point ``lum``, compared by the same rules.
* Numbers and quantities (Decimal128): eq ``lo <= v < hi`` (the query's implicit precision
  range), ne ``v < lo or v >= hi``; gt/lt/ge/le against the exact query value; sa ``v >= hi``,
  eb ``v < lo``; ap within 10 % of the query value. A quantity's system must match when given;
  its code matches the code - or, without a system, the code or the unit.
* Tokens (never the identifier tokens of a reference parameter): system ``None`` any, ``""``
  none; code ``None`` any code. ``:text`` starts-with on the normalised text, which arrives
  normalised in ``TokenQuery.code``. References: type and id (type ``None``: any type), or
  the url as written; the version too when given. ``:identifier``: the identifier tokens.
* Strings: default starts-with on the normalised form, ``:exact`` equality with the text as
  written, ``:contains`` anywhere in the normalised form. User input only ever reaches a
  regular expression escaped (:func:`regex_literal`), and an anchored literal prefix is
  served from the index.
* uri: equality, ``:below`` prefix, ``:above`` (the stored value is a prefix of the query
  value, matched as ``$in`` the query's prefixes so that the index serves it).
* Chains and ``_has`` need the ids of other resources: the compiler builds an aggregation that
  yields them and asks ``resolve`` to run it (inner-most first), then uses ``$in``. A chain's
  inner condition may be any condition (the access layer nests chains and ``_has``).
* :class:`~server.fhir.search.ast.AllOf` / :class:`~server.fhir.search.ast.AnyOf` are
  ``$and`` / ``$or`` of their conditions; an empty ``AnyOf`` matches nothing.
* Order: each sort key (the smallest value ascending, the largest descending; dates by start
  ascending and end descending; without a value last either way), then the id. Without sort
  keys: last update, then id. A keyset page (``SearchQuery.keyset``) compares the order's
  keys with ``$or`` of key-by-key filters (on the computed sort values, in an aggregation,
  when it sorts by a search parameter), among the documents ``born`` (first written) at or
  before its snapshot. A found document carries its values of the order's keys
  (:func:`key_fields`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128, create_decimal128_context

from ..fhir.outcome import FhirError
from ..fhir.search.ast import (
    CHANGED,
    MODIFIERS,
    AllOf,
    AnyOf,
    Chain,
    Clause,
    Condition,
    DateQuery,
    Has,
    IndexValues,
    MissingQuery,
    NumberQuery,
    QuantityQuery,
    ReferenceQuery,
    SearchParam,
    SearchQuery,
    SortKey,
    StringQuery,
    TokenQuery,
    UriQuery,
    keyset_keys,
    page_order,
)

Filter = dict[str, Any]
Pipeline = list[dict[str, Any]]
Resolve = Callable[[Pipeline], list[str]]
"""Runs an id pipeline (see :func:`id_pipeline`) and returns the ``id`` of each result."""

MS_PER_DAY = 86_400_000
NOTHING: Filter = {"_id": {"$in": []}}
"""A filter no document matches."""

ROW_FIELDS = {"_id": "id", "_lastUpdated": "lum"}
"""Search parameters answered from the resource document itself, and their field."""

DEFAULT_SORT = [("lum", 1), ("id", 1)]

RESOURCE_INDEXES: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    ("tok_code", (("type", 1), ("ix.tok.p", 1), ("ix.tok.c", 1), ("ix.tok.s", 1),
                  ("ix.tok.i", 1))),
    ("tok_text", (("type", 1), ("ix.tok.p", 1), ("ix.tok.x", 1))),
    ("ref_id", (("type", 1), ("ix.ref.p", 1), ("ix.ref.id", 1), ("ix.ref.t", 1))),
    ("ref_url", (("type", 1), ("ix.ref.p", 1), ("ix.ref.u", 1))),
    ("dt_range", (("type", 1), ("ix.dt.p", 1), ("ix.dt.lo", 1), ("ix.dt.hi", 1))),
    ("dt_end", (("type", 1), ("ix.dt.p", 1), ("ix.dt.hi", 1))),
    ("str_norm", (("type", 1), ("ix.str.p", 1), ("ix.str.n", 1))),
    ("str_exact", (("type", 1), ("ix.str.p", 1), ("ix.str.e", 1))),
    ("uri_value", (("type", 1), ("ix.uri.p", 1), ("ix.uri.v", 1))),
    ("num_value", (("type", 1), ("ix.num.p", 1), ("ix.num.v", 1))),
    ("qty_value", (("type", 1), ("ix.qty.p", 1), ("ix.qty.v", 1))),
    ("has_param", (("type", 1), ("ix.has", 1))),
    ("type_id", (("type", 1), ("id", 1))),
    ("type_lum", (("type", 1), ("lum", 1), ("id", 1))),
)
"""Indexes of the ``resources`` collection: (name, keys). Every filter this module emits
leads with the fields of one of them (``_id`` lookups use the built-in ``_id`` index), and
``type_lum`` / ``type_id`` serve the default order and the ``_lastUpdated``/``_id`` sorts."""

# Modifiers each parameter type supports (besides ``missing``, which every type has).
_MODIFIERS: dict[str, tuple[str | None, ...]] = {
    type_: (None, *(m for m in mods if m != "missing")) for type_, mods in MODIFIERS.items()}

# param type -> (ix array, field sorted ascending (by its minimum), descending (by its maximum))
_SORT_FIELDS = {
    "token": ("tok", "c", "c"),
    "reference": ("ref", "id", "id"),
    "date": ("dt", "lo", "hi"),
    "string": ("str", "n", "n"),
    "uri": ("uri", "v", "v"),
    "number": ("num", "v", "v"),
    "quantity": ("qty", "v", "v"),
}

_DECIMAL128 = create_decimal128_context()  # rounds to 34 digits instead of failing


# ---------------------------------------------------------------------------------------------
# Write side: the ``ix`` sub-document
# ---------------------------------------------------------------------------------------------


def to_decimal128(value: Decimal) -> Decimal128:
    """A search value as BSON decimal (rounded to 34 significant digits if longer; the
    resource JSON keeps the exact value)."""
    rounded = _DECIMAL128.create_decimal(value)
    if rounded.is_infinite() and value.is_finite():
        raise FhirError.of(400, f"The number {value} is too large to be searched", code="value")
    return Decimal128(rounded)


def _unique(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, ...]] = set()
    out = []
    for item in items:
        marker = tuple(str(v) for v in item.values())
        if marker not in seen:
            seen.add(marker)
            out.append(item)
    return out


ABSOLUTE_REFERENCE: Filter = {"$elemMatch": {"u": {"$ne": ""}}}
"""The ``ix.ref`` condition of a resource whose index holds an absolute reference or
canonical URL (a ``url``)."""


def index_document(values: IndexValues) -> dict[str, Any]:
    """The ``ix`` sub-document of a resource version (empty arrays are left out)."""
    arrays: dict[str, list[dict[str, Any]]] = {
        "tok": [{"p": t.param, "s": t.system, "c": t.code, "x": t.text, "i": t.identifier}
                for t in values.tokens],
        "ref": [{"p": r.param, "t": r.target_type, "id": r.target_id, "u": r.url,
                 "v": r.version} for r in values.references],
        "dt": [{"p": d.param, "lo": d.lo, "hi": d.hi} for d in values.dates],
        "str": [{"p": s.param, "n": s.norm, "e": s.exact} for s in values.strings],
        "uri": [{"p": u.param, "v": u.value} for u in values.uris],
        "num": [{"p": n.param, "v": to_decimal128(n.value)} for n in values.numbers],
        "qty": [{"p": q.param, "v": to_decimal128(q.value), "s": q.system, "c": q.code,
                 "u": q.unit} for q in values.quantities],
    }
    out: dict[str, Any] = {name: _unique(items) for name, items in arrays.items() if items}
    has = sorted(values.params())
    if has:
        out["has"] = has
    return out


# ---------------------------------------------------------------------------------------------
# Read side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledQuery:
    """A search ready to run: ``find(filter).sort(sort).skip(skip).limit(limit)`` - or, when
    sorting by a search parameter, ``aggregate(pipeline)`` (which already pages). ``filter``
    alone gives the total (``count_documents``)."""

    filter: Filter
    sort: list[tuple[str, int]]
    skip: int
    limit: int
    pipeline: Pipeline | None = None
    # A keyset page (``SearchQuery.keyset``): the page's own filter (where it starts), and
    # whether ``sort`` is the reverse order (a page before a resource), to be turned back.
    page: Filter | None = None
    reverse: bool = False
    # The fields of a found document with its values of the order's keys (:func:`key_fields`).
    key_fields: tuple[str, ...] = ("lum", "id")


def compile_query(query: SearchQuery, resolve: Resolve, now_ms: int) -> CompiledQuery:
    """Compile a search. ``resolve`` runs the id pipelines that chains and ``_has`` need;
    ``now_ms`` (epoch milliseconds) anchors ``ap`` on dates."""
    if query.type is None:
        raise FhirError.of(400, "Searching across all resource types is not supported; "
                                "search one resource type", code="not-supported")
    filter_ = query_filter(query, resolve, now_ms)
    if query.keyset is not None:
        return _keyset_page(query, filter_)
    keys = _unique_keys(query.sort)
    found = key_fields(query.sort)
    if not keys:
        return CompiledQuery(filter_, list(DEFAULT_SORT), query.offset, query.count,
                             key_fields=found)
    if all(k.param.code in ROW_FIELDS for k in keys):
        sort = [(ROW_FIELDS[k.param.code], -1 if k.descending else 1) for k in keys]
        if "id" not in dict(sort):
            sort.append(("id", 1))
        return CompiledQuery(filter_, sort, query.offset, query.count, key_fields=found)
    pipeline = sort_pipeline(filter_, keys, query.offset, query.count)
    return CompiledQuery(filter_, [], query.offset, query.count, pipeline, key_fields=found)


def key_fields(sort: Sequence[SortKey]) -> tuple[str, ...]:
    """The field of a found document that holds its value of each key of the order
    (:func:`~server.fhir.search.ast.page_order`): a row field, or the computed sort value
    ``_s{n}`` of the ``n`` th sort key (as :func:`sort_pipeline` names it)."""
    unique = [k.param.code for k in _unique_keys(sort)]
    return tuple(ROW_FIELDS.get(code) or f"_s{unique.index(code)}"
                 for code, _ in page_order(list(sort)))


def _order_fields(sort: Sequence[SortKey], keys: Sequence[tuple[str, bool]], *,
                  reverse: bool = False, snapshot: int | None = None
                  ) -> tuple[list[str], dict[str, Any], dict[str, str], dict[str, int]]:
    """How documents are sorted by ``keys`` (``(code, descending)`` of the order of ``sort``,
    perhaps led by :data:`~server.fhir.search.ast.CHANGED` against ``snapshot``): the field
    of each key, the fields to compute first (a search parameter's sort value ``_s{n}``, as
    :func:`key_fields` names it, ``_chg``), the missing flag of each computed sort value
    (``_m{n}``, sorted before it: a document without a value comes last), and the ``$sort``
    (``reverse``: every direction turned)."""
    unique = _unique_keys(sort)
    turn = -1 if reverse else 1
    fields: list[str] = []
    computed: dict[str, Any] = {}
    flags: dict[str, str] = {}
    order: dict[str, int] = {}
    for code, descending in keys:
        if code == CHANGED:
            field = "_chg"
            computed[field] = {"$cond": [{"$gt": ["$lum", snapshot]}, 1, 0]}
        elif code in ROW_FIELDS:
            field = ROW_FIELDS[code]
        else:
            n = next(i for i, k in enumerate(unique) if k.param.code == code)
            field = f"_s{n}"
            computed[field] = sort_value(unique[n])
            flags[field] = f"_m{n}"
            order[flags[field]] = turn
        order[field] = (-1 if descending else 1) * turn
        fields.append(field)
    return fields, computed, flags, order


def _missing_flag(field: str) -> dict[str, Any]:
    """1 when the computed ``field`` has no value (the document then sorts last), else 0."""
    return {"$cond": [{"$eq": [{"$ifNull": [f"${field}", None]}, None]}, 1, 0]}


def _bson(value: Any) -> Any:
    return Decimal128(str(value)) if isinstance(value, Decimal) else value


def _keyset_page(query: SearchQuery, filter_: Filter) -> CompiledQuery:
    """A keyset page: among the resources first written (``born``) by the snapshot, those
    after (backward: before, taken in the reverse order) the keyset's resource, compared
    key by key (:func:`~server.fhir.search.ast.keyset_keys`), a missing sort value coming
    last. Keys answered from the document itself page with ``find``; computed ones (a search
    parameter's sort value, :data:`~server.fhir.search.ast.CHANGED`) by an aggregation."""
    keyset = query.keyset
    if keyset is None:
        raise ValueError("a keyset page needs a keyset")
    keys = keyset_keys(query.sort, keyset)
    snapshot = keyset.snapshot_ms
    fields, computed, flags, order = _order_fields(
        query.sort, [(code, descending) for code, descending, _ in keys],
        reverse=keyset.backward, snapshot=snapshot)

    def beyond(i: int) -> Filter:  # strictly after (backward: before) in the key's order
        (_, descending, value), field = keys[i], fields[i]
        op = {field: {"$gt" if descending == keyset.backward else "$lt": _bson(value)}}
        flag = flags.get(field)
        if flag is None:
            return op
        if value is None:  # the keyset's resource is among those without a value: last
            return {flag: 0} if keyset.backward else NOTHING
        return {flag: 0, **op} if keyset.backward else {"$or": [op, {flag: 1}]}

    def same(i: int) -> Filter:
        value, field = keys[i][2], fields[i]
        return {flags[field]: 1} if value is None and field in flags else {field: _bson(value)}

    start = _any([{"$and": [*(same(j) for j in range(i)), beyond(i)]}
                  for i in range(len(keys))])
    # A document without ``born`` was first written before the field was: it is old enough.
    counted = {"$and": [filter_, {"$nor": [{"born": {"$gt": snapshot}}]}]}
    found = key_fields(query.sort)
    if not computed:
        return CompiledQuery(counted, list(order.items()), 0, query.count,
                             page={"$and": [counted, start]}, reverse=keyset.backward,
                             key_fields=found)
    pipeline: Pipeline = [{"$match": counted}, {"$addFields": computed}]
    if flags:
        pipeline.append({"$addFields": {flag: _missing_flag(f) for f, flag in flags.items()}})
    pipeline += [{"$match": start}, {"$sort": order}, {"$limit": query.count},
                 {"$project": {"json": 1, **{f: 1 for f in found}}}]
    return CompiledQuery(counted, [], 0, query.count, pipeline, reverse=keyset.backward,
                         key_fields=found)


def query_filter(query: SearchQuery, resolve: Resolve, now_ms: int) -> Filter:
    """The filter of the resources a search matches (its conditions and ``ids``)."""
    parts = [compile_condition(c, query.type, resolve, now_ms) for c in query.conditions]
    if query.ids is not None:
        parts.append(ids_filter(query.type, sorted(query.ids)))
    return match_filter(query.type, parts)


def scope_filter(types: Sequence[str], within: Sequence[SearchQuery], resolve: Resolve,
                 now_ms: int) -> Filter:
    """A filter on ``history`` documents: the version's type is one of ``types``, or the
    current version of its resource matches one of the ``within`` searches. With neither,
    nothing matches."""
    ways: list[Filter] = []
    if types:
        ways.append({"type": {"$in": list(types)}})
    for query in within:
        ids = resolve(id_pipeline(query_filter(query, resolve, now_ms)))
        ways.append({"type": query.type, "id": {"$in": ids}})
    return _any(ways)


def history_at_pipeline(filter_: Filter, at: Sequence[tuple[int, int]],
                        collection: str) -> Pipeline:
    """The ``history`` documents matching ``filter_`` that were current at some time in
    each period of ``at`` (epoch ms, both ends inclusive): written by the period's end
    (``lum``), and the next version of the resource (``later``, found by the
    ``type_id_version`` index of ``collection``) none or written after the period's start."""
    return [
        {"$match": {"$and": [filter_, *({"lum": {"$lte": hi}} for _lo, hi in at)]}},
        {"$lookup": {
            "from": collection,
            "let": {"type": "$type", "id": "$id", "next": {"$add": ["$version", 1]}},
            "pipeline": [
                {"$match": {"$expr": {"$and": [{"$eq": ["$type", "$$type"]},
                                               {"$eq": ["$id", "$$id"]},
                                               {"$eq": ["$version", "$$next"]}]}}},
                {"$project": {"_id": 0, "lum": 1}}],
            "as": "later"}},
        {"$match": {"$and": [{"$or": [{"later": {"$size": 0}}, {"later.0.lum": {"$gt": lo}}]}
                             for lo, _hi in at]}},
    ]


def match_filter(type_: str, parts: Sequence[Filter]) -> Filter:
    """Current, non-deleted resources of ``type_`` matching every part."""
    out: Filter = {"type": type_, "deleted": False}
    if parts:
        out["$and"] = list(parts)
    return out


def ids_filter(type_: str, ids: Iterable[str], *, negate: bool = False) -> Filter:
    """Resources of ``type_`` with (negated: without) one of these ids (the ``_id`` index)."""
    return {"_id": {"$nin" if negate else "$in": [f"{type_}/{i}" for i in ids]}}


def compile_condition(cond: Condition, type_: str, resolve: Resolve, now_ms: int) -> Filter:
    """One AND-ed condition of a search of ``type_``."""
    if isinstance(cond, Clause):
        return compile_clause(cond, type_, now_ms)
    if isinstance(cond, Chain):
        inner = match_filter(cond.target_type,
                             [compile_condition(cond.inner, cond.target_type, resolve, now_ms)])
        ids = resolve(id_pipeline(inner))
        return _elem("ref", {"p": cond.param.code, "id": {"$in": ids}, "t": cond.target_type})
    if isinstance(cond, AllOf):
        parts = [compile_condition(c, type_, resolve, now_ms) for c in cond.conditions]
        return {"$and": parts} if parts else {}
    if isinstance(cond, AnyOf):
        return _any([compile_condition(c, type_, resolve, now_ms) for c in cond.conditions])
    if isinstance(cond, Has):
        inner = match_filter(cond.other_type,
                             [compile_condition(cond.inner, cond.other_type, resolve, now_ms)])
        return ids_filter(type_, resolve(referenced_ids_pipeline(inner, cond.ref_param.code,
                                                                 type_)))
    raise TypeError(f"not a search condition: {cond!r}")


def id_pipeline(filter_: Filter) -> Pipeline:
    """The ids of the resources matching ``filter_``."""
    return [{"$match": filter_}, {"$project": {"_id": 0, "id": 1}}]


def referenced_ids_pipeline(filter_: Filter, ref_param: str, target_type: str) -> Pipeline:
    """The distinct ids of the ``target_type`` resources that the resources matching
    ``filter_`` reference through ``ref_param``."""
    return [
        {"$match": filter_},
        {"$unwind": "$ix.ref"},
        {"$match": {"ix.ref.p": ref_param, "ix.ref.t": target_type}},
        {"$group": {"_id": "$ix.ref.id"}},
        {"$project": {"_id": 0, "id": "$_id"}},
    ]


# -- clauses ----------------------------------------------------------------------------------


def _unsupported(param: SearchParam, modifier: str | None) -> FhirError:
    what = f"{param.code}:{modifier}" if modifier else param.code
    return FhirError.of(400, f"The search parameter '{what}' ({param.type}) is not supported",
                        code="not-supported", expression=param.code)


def _values(clause: Clause, kind: type[Any]) -> list[Any]:
    """The clause's values, which must all be ``kind``."""
    if not all(isinstance(v, kind) for v in clause.values):
        raise _unsupported(clause.param, clause.modifier)
    return list(clause.values)


def _elem(array: str, cond: Filter) -> Filter:
    return {f"ix.{array}": {"$elemMatch": cond}}


def _any(filters: Sequence[Filter]) -> Filter:
    """OR of filters: one is itself, none matches nothing."""
    if not filters:
        return NOTHING
    return filters[0] if len(filters) == 1 else {"$or": list(filters)}


def compile_clause(clause: Clause, type_: str, now_ms: int) -> Filter:
    """One ``param[:modifier]=v1,v2`` clause of a search of ``type_`` (values OR-ed)."""
    code = clause.param.code
    if code in ROW_FIELDS:
        return _row_clause(clause, type_, now_ms)
    if clause.param.type not in _MODIFIERS:
        raise _unsupported(clause.param, clause.modifier)
    if clause.modifier == "missing":
        return _any([{"ix.has": {"$ne": code}} if v.missing else {"ix.has": code}
                     for v in _values(clause, MissingQuery)])
    if clause.modifier not in _MODIFIERS[clause.param.type]:
        raise _unsupported(clause.param, clause.modifier)
    return _COMPILERS[clause.param.type](clause, now_ms)


def _row_clause(clause: Clause, type_: str, now_ms: int) -> Filter:
    """``_id`` and ``_lastUpdated``, answered from the document itself."""
    if clause.modifier == "missing":  # always present
        return _any([NOTHING if v.missing else {} for v in _values(clause, MissingQuery)])
    if clause.param.code == "_lastUpdated":
        if clause.modifier is not None:
            raise _unsupported(clause.param, clause.modifier)
        return _any([last_updated_condition(v, now_ms) for v in _values(clause, DateQuery)])
    if clause.modifier not in (None, "not"):
        raise _unsupported(clause.param, clause.modifier)
    values = _values(clause, TokenQuery)
    if any(v.code is None for v in values):
        raise _unsupported(clause.param, clause.modifier)
    return ids_filter(type_, [v.code for v in values], negate=clause.modifier == "not")


def token_condition(code: str, value: TokenQuery, *, identifier: bool = False) -> Filter:
    """The element condition of one token value (``identifier``: a reference parameter's
    identifier tokens, for ``:identifier``)."""
    cond: Filter = {"p": code}
    if value.code is not None:
        cond["c"] = value.code
    if value.system is not None:
        cond["s"] = value.system
    cond["i"] = identifier
    return cond


def _token(clause: Clause, _now: int) -> Filter:
    code = clause.param.code
    values = _values(clause, TokenQuery)
    if clause.modifier == "text":
        return _any([_elem("tok", {"p": code, "x": starts_with(v.code or ""), "i": False})
                     for v in values])
    elems = [_elem("tok", token_condition(code, v)) for v in values]
    if clause.modifier == "not":
        return {"$nor": elems} if elems else {}
    return _any(elems)


def reference_conditions(code: str, value: ReferenceQuery) -> list[Filter]:
    """Element conditions, any of which matches one reference value: by target (type and/or
    id) or by the url as written; each with the version when the query names one."""
    ways: list[Filter] = []
    if value.target_id is not None or value.target_type is not None:
        target: Filter = {"p": code}
        if value.target_id is not None:
            target["id"] = value.target_id
        if value.target_type is not None:
            target["t"] = value.target_type
        ways.append(target)
    if value.url:
        ways.append({"p": code, "u": value.url})
    if not ways:
        ways.append({"p": code})
    if value.version:
        ways = [{**way, "v": value.version} for way in ways]
    return ways


def _reference(clause: Clause, _now: int) -> Filter:
    code = clause.param.code
    if clause.modifier == "identifier":
        return _any([_elem("tok", token_condition(code, v, identifier=True))
                     for v in _values(clause, TokenQuery)])
    return _any([_elem("ref", way) for v in _values(clause, ReferenceQuery)
                 for way in reference_conditions(code, v)])


# -- dates ------------------------------------------------------------------------------------


def approx_margin(value: DateQuery, now_ms: int) -> int:
    """``ap`` on dates: 10 % of the distance between now and the query range (0 when now
    lies inside it), at least one day."""
    if now_ms < value.lo:
        distance = value.lo - now_ms
    elif now_ms > value.hi:
        distance = now_ms - value.hi
    else:
        distance = 0
    return max(MS_PER_DAY, distance // 10)


def date_conditions(value: DateQuery, now_ms: int) -> list[Filter]:
    """Conditions on one stored range ``{lo, hi}``, any of which makes it match (the
    prefixes mean what they mean in the embedded engine's ``_Compiler._date``)."""
    qlo, qhi = value.lo, value.hi
    # `lo <= qhi` follows from `hi <= qhi`; it bounds the index range on `lo`.
    eq = {"lo": {"$gte": qlo, "$lte": qhi}, "hi": {"$lte": qhi}}
    if value.prefix == "ap":
        margin = approx_margin(value, now_ms)
        return [{"lo": {"$lte": qhi + margin}, "hi": {"$gte": qlo - margin}}]
    table: dict[str, list[Filter]] = {
        "eq": [eq],
        "ne": [{"lo": {"$lt": qlo}}, {"hi": {"$gt": qhi}}],
        "gt": [{"hi": {"$gt": qhi}}],
        "lt": [{"lo": {"$lt": qlo}}],
        "ge": [{"hi": {"$gte": qlo}}],
        "le": [{"lo": {"$lte": qhi}}],
        "sa": [{"lo": {"$gt": qhi}}],
        "eb": [{"hi": {"$lt": qlo}}],
    }
    return table[value.prefix]


def _date(clause: Clause, now_ms: int) -> Filter:
    code = clause.param.code
    return _any([_elem("dt", {"p": code, **cond}) for v in _values(clause, DateQuery)
                 for cond in date_conditions(v, now_ms)])


def last_updated_condition(value: DateQuery, now_ms: int) -> Filter:
    """``_lastUpdated``: the date rules with ``lo = hi = lum``, simplified to one field."""
    qlo, qhi = value.lo, value.hi
    if value.prefix == "ap":
        margin = approx_margin(value, now_ms)
        return {"lum": {"$gte": qlo - margin, "$lte": qhi + margin}}
    table: dict[str, Filter] = {
        "eq": {"lum": {"$gte": qlo, "$lte": qhi}},
        "ne": {"$or": [{"lum": {"$lt": qlo}}, {"lum": {"$gt": qhi}}]},
        "gt": {"lum": {"$gt": qhi}},
        "lt": {"lum": {"$lt": qlo}},
        "ge": {"lum": {"$gte": qlo}},
        "le": {"lum": {"$lte": qhi}},
        "sa": {"lum": {"$gt": qhi}},
        "eb": {"lum": {"$lt": qlo}},
    }
    return table[value.prefix]


# -- strings and uris -------------------------------------------------------------------------


def regex_literal(text: str) -> str:
    """``text`` as a regular expression that matches exactly it: every ASCII character that
    is not a letter or digit is escaped (a backslash before such a character is always
    literal in PCRE, and MongoDB still serves an escaped ``^prefix`` from the index)."""
    out = []
    for ch in text:
        if ch == "\x00":
            out.append(r"\x00")
        elif ch.isascii() and not ch.isalnum():
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def starts_with(text: str) -> Filter:
    return {"$regex": "^" + regex_literal(text)}


def _string(clause: Clause, _now: int) -> Filter:
    code = clause.param.code
    texts = [v.value for v in _values(clause, StringQuery)]
    if clause.modifier == "exact":
        conds = [{"p": code, "e": t} for t in texts]
    elif clause.modifier == "contains":
        conds = [{"p": code, "n": {"$regex": regex_literal(t)}} for t in texts]
    else:
        conds = [{"p": code, "n": starts_with(t)} for t in texts]
    return _any([_elem("str", c) for c in conds])


def uri_prefixes(value: str) -> list[str]:
    """Every non-empty prefix of ``value``, longest last (for ``:above``)."""
    return [value[:n] for n in range(1, len(value) + 1)]


def _uri(clause: Clause, _now: int) -> Filter:
    code = clause.param.code
    uris = [v.value for v in _values(clause, UriQuery)]
    if clause.modifier == "below":
        conds = [{"p": code, "v": starts_with(u)} for u in uris]
    elif clause.modifier == "above":
        conds = [{"p": code, "v": {"$in": uri_prefixes(u)}} for u in uris if u]
    else:
        conds = [{"p": code, "v": u} for u in uris]
    return _any([_elem("uri", c) for c in conds])


# -- numbers and quantities -------------------------------------------------------------------


def number_conditions(value: NumberQuery | QuantityQuery) -> list[Filter]:
    """Conditions on a stored decimal ``v``, any of which makes it match."""
    exact, lo, hi = (to_decimal128(d) for d in (value.value, value.lo, value.hi))
    if value.prefix == "ap":
        margin = abs(value.value) / 10
        return [{"$gte": to_decimal128(value.value - margin),
                 "$lte": to_decimal128(value.value + margin)}]
    table: dict[str, list[Filter]] = {
        "eq": [{"$gte": lo, "$lt": hi}],
        "ne": [{"$lt": lo}, {"$gte": hi}],
        "gt": [{"$gt": exact}],
        "lt": [{"$lt": exact}],
        "ge": [{"$gte": exact}],
        "le": [{"$lte": exact}],
        "sa": [{"$gte": hi}],
        "eb": [{"$lt": lo}],
    }
    return table[value.prefix]


def unit_conditions(value: QuantityQuery) -> list[Filter]:
    """Conditions on a stored quantity's system, code and unit, any of which matches."""
    if value.system is None:
        return [{}] if value.code is None else [{"c": value.code}, {"u": value.code}]
    return [{"s": value.system} if value.code is None else {"s": value.system,
                                                            "c": value.code}]


def _number(clause: Clause, _now: int) -> Filter:
    code = clause.param.code
    return _any([_elem("num", {"p": code, "v": cond}) for v in _values(clause, NumberQuery)
                 for cond in number_conditions(v)])


def _quantity(clause: Clause, _now: int) -> Filter:
    code = clause.param.code
    return _any([_elem("qty", {"p": code, "v": cond, **unit})
                 for v in _values(clause, QuantityQuery)
                 for cond in number_conditions(v) for unit in unit_conditions(v)])


_COMPILERS: dict[str, Callable[[Clause, int], Filter]] = {
    "token": _token,
    "reference": _reference,
    "date": _date,
    "string": _string,
    "uri": _uri,
    "number": _number,
    "quantity": _quantity,
}


# -- sorting ----------------------------------------------------------------------------------


def _unique_keys(keys: Sequence[SortKey]) -> list[SortKey]:
    """The sort keys without repeats of a parameter (the first one wins)."""
    seen: set[str] = set()
    out = []
    for key in keys:
        if key.param.code not in seen:
            seen.add(key.param.code)
            out.append(key)
    return out


def sort_value(key: SortKey) -> dict[str, Any]:
    """The sort value of one document for ``key``: the lowest of the parameter's values when
    ascending, the highest when descending; null when it has none."""
    spec = _SORT_FIELDS.get(key.param.type)
    if spec is None:
        raise FhirError.of(400, f"Sorting by '{key.param.code}' ({key.param.type}) is not "
                                "supported", code="not-supported", expression="_sort")
    array, low_field, high_field = spec
    own: Any = {"$eq": ["$$v.p", key.param.code]}
    if array == "tok":
        own = {"$and": [own, {"$eq": ["$$v.i", False]}]}
    values = {"$filter": {"input": {"$ifNull": [f"$ix.{array}", []]}, "as": "v", "cond": own}}
    field = high_field if key.descending else low_field
    return {"$max" if key.descending else "$min": {"$map": {"input": values, "as": "v",
                                                            "in": f"$$v.{field}"}}}


def sort_pipeline(filter_: Filter, keys: Sequence[SortKey], skip: int, limit: int) -> Pipeline:
    """Matches sorted by the keys (documents without a value last, whatever the direction),
    then by id; paged with ``skip``/``limit``; projected to ``json``."""
    fields, values, flags, order = _order_fields(keys, page_order(list(keys)))
    pipeline: Pipeline = [{"$match": filter_}, {"$addFields": values},
                          {"$addFields": {flag: _missing_flag(field)
                                          for field, flag in flags.items()}},
                          {"$sort": order}]
    if skip:
        pipeline.append({"$skip": skip})
    if limit:
        pipeline.append({"$limit": limit})
    pipeline.append({"$project": {"json": 1, **{f: 1 for f in fields}}})
    return pipeline
