"""Compile a search (:class:`~server.fhir.search.ast.SearchQuery`) into one SQLite statement.

The embedded engine keeps the current version of every resource in the ``resource`` table and
the index values extracted at write time in one table per value kind (``idx_token``,
``idx_reference``, ...; see :data:`INDEX_TABLES`), keyed by the resource ``pk``, the resource
``type`` and the parameter code. Index rows exist only for current, non-deleted resources.

A search becomes ONE ``SELECT`` over ``resource AS r`` (plus the same ``WHERE`` in a
``COUNT(*)`` when a total is asked for); nothing is filtered in Python afterwards. Positive
conditions are ``r.pk IN (SELECT pk FROM idx_... WHERE type = ? AND param = ? AND ...)`` so
that SQLite can drive the search from the index tables; negative ones (``:not``,
``:missing=true``) are ``NOT EXISTS`` probes on the ``(pk, param)`` index.

Semantics (FHIR R4 search; a resource matches a clause when ANY of its values matches ANY of
the clause's values, and matches the search when it matches every condition):

* token: ``system`` None matches any system, ``""`` only values without a system, otherwise
  that system; ``code`` None matches any code (``system|``). ``:not`` matches resources with
  no value equal to any of the query values (including resources without a value).
  ``:text`` is starts-with on the normalised display/text; the query value arrives normalised
  in ``TokenQuery.code``. The token index is ``(type, param, system, code)``: a code without
  a system is sought under each system the parameter's tokens have, found by skipping
  through the index (:meth:`_Compiler._systems`).
* reference: ``Type/id`` matches type and id; an id with ``target_type`` None matches any
  type; ``url`` matches the literal reference as written; ``version`` (when given) must
  match too. ``:identifier`` matches :class:`TokenQuery` values against the tokens indexed
  with ``identifier=True`` for that reference parameter. Those tokens are stored under the
  reference parameter's code, which no token parameter shares, so the token table needs no
  flag to tell them apart.
* :class:`~server.fhir.search.ast.Chain`: the reference points at a resource of the target
  type that matches the inner clause. :class:`~server.fhir.search.ast.Has`: a resource of
  the other type that matches the inner condition (which may be a chain or another ``_has``)
  points at this resource through the reference parameter. A chain's inner condition may be
  any condition too (the access layer nests chains, ``_has`` and combinations).
* :class:`~server.fhir.search.ast.AllOf` / :class:`~server.fhir.search.ast.AnyOf`: every /
  at least one of the conditions holds; compiled to ``INTERSECT`` / ``UNION`` of ``pk``
  selects when every part is one, else to ``AND`` / ``OR`` of predicates. An empty ``AnyOf``
  matches nothing.
* date: stored ranges ``[lo, hi]`` against the query range ``[qlo, qhi]`` (milliseconds,
  both ends inclusive): ``eq`` lo >= qlo and hi <= qhi; ``ne`` not eq; ``gt`` hi > qhi;
  ``lt`` lo < qlo; ``ge`` gt or eq; ``le`` lt or eq; ``sa`` lo > qhi; ``eb`` hi < qlo;
  ``ap`` the range overlaps [qlo - d, qhi + d] where d is 10 % of the distance from now to
  the query range (0 when now lies inside it), and at least one day.
* string: default starts-with on the normalised value (an index range
  ``norm >= v AND norm < v || U+10FFFF``), ``:exact`` equality with the value as written,
  ``:contains`` substring of the normalised value.
* uri: equality; ``:below`` the stored value starts with the query value; ``:above`` the query
  value starts with the stored value.
* number and quantity (values compared as floats): ``eq`` lo <= value < hi (the implicit
  precision range of the query), ``ne`` not eq, ``gt``/``lt``/``ge``/``le`` against the query
  value, ``sa`` value >= hi, ``eb`` value < lo, ``ap`` within 10 % of the query value.
  A quantity's ``system`` (when given) must match, and its ``code`` must match the code; with
  no system the code may also match the unit as written.
* ``:missing=true`` matches resources without a value for the parameter, ``false`` those
  with one.
* ``_id`` (token codes) and ``_lastUpdated`` (date, the stored range being the single
  millisecond of the last update) are answered from the resource row.
* ``ids`` restricts the result to those ids.

Order: each sort key in turn (token by code, string by normalised value, date by the range
start ascending / end descending, reference by target id, number and quantity by value, uri
by value, ``_id``, ``_lastUpdated``); a multi-valued parameter sorts by its smallest value
ascending and its largest descending; resources without a value come last either way; the
resource id breaks ties. Without sort keys: last update, then id. ``count``/``offset`` page
the ordered result, or a keyset (``SearchQuery.keyset``): the page after (before) a resource,
compared by the order's keys (:func:`keyset_keys`; a missing sort value is NULL and comes
last), among the resources with a version at or before its snapshot (a ``history`` probe,
for those written since). Each row of a page comes with its values of the order's keys.

Two plans for a search without sort keys (:class:`CompiledSearch`): the driven plan reads
every match from the most selective index condition and sorts them (its cost grows with the
number of matches); the ordered plan walks the type's resources in page order through the
``(type, deleted, last_updated_ms, id)`` index and tests each row against every condition,
stopping when the page is full (its cost grows with the page and how sparse the matches
are). The engine estimates the driver's size (``estimates``: at most ``cap`` index rows) and
walks only a bounded prefix of the order (``window``: rows up to ``:wms``/``:wid``); a prefix
that holds the whole page holds exactly the page the driven plan would return, otherwise the
driven plan answers.

Which index condition drives: the rank of each condition's kind (:func:`_selectivity`) orders
them, and the search can be driven by each of them in turn (``CompiledSearch.driven``). The
rank is a guess about typical data; when the first driver turns out large (its estimate
reaches the cap), the engine estimates the next ones and lets the smallest drive, so that,
say, an overdue date drives a search of one common code rather than every resource with that
code.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..fhir import jsonio
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
    Keyset,
    NumberQuery,
    QuantityQuery,
    QueryValue,
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

INDEX_TABLES: dict[str, str] = {
    "token": "idx_token",
    "reference": "idx_reference",
    "date": "idx_date",
    "string": "idx_string",
    "uri": "idx_uri",
    "number": "idx_number",
    "quantity": "idx_quantity",
}
"""Parameter type -> index table."""

DAY_MS = 24 * 60 * 60 * 1000
MAX_CHAR = "\U0010ffff"  # sorts after every other character (UTF-8 and code point order agree)

# The modifiers each parameter type supports (besides ``missing``, which every type has).
_MODIFIERS: dict[str, tuple[str | None, ...]] = {
    type_: (None, *(m for m in mods if m != "missing")) for type_, mods in MODIFIERS.items()}

_ROW_COLUMNS = {"_lastUpdated": "last_updated_ms", "_id": "id"}
"""The ``resource`` column of each sort key answered from the row itself."""

# Column a sort key orders by: (ascending, descending).
_SORT_COLUMNS: dict[str, tuple[str, str]] = {
    "token": ("code", "code"),
    "reference": ("target_id", "target_id"),
    "date": ("lo", "hi"),
    "string": ("norm", "norm"),
    "uri": ("value", "value"),
    "number": ("value", "value"),
    "quantity": ("value", "value"),
}


@dataclass(frozen=True)
class Plan:
    """A driven plan: ``select`` returns the ``json`` of the requested page; ``count`` (when
    a total was asked for) the number of matches."""

    select: str
    count: str | None


@dataclass(frozen=True)
class CompiledSearch:
    """``estimates``: for each index condition, the most selective by rank first, a count of
    its index rows up to ``:cap`` (empty when there is no index condition). ``driven(i)``:
    the driven plan whose driver is the ``i`` th of them (0 without an index condition); it
    is compiled when asked for, adding its parameters to ``params``, which every statement
    takes.

    For a search in the default order with an index condition, ``window`` is the ordered
    plan, returning the page among the resources up to ``(:wms, :wid)`` in page order (see
    the module doc)."""

    estimates: tuple[str, ...]
    driven: Callable[[int], Plan]
    params: dict[str, Any]
    window: str | None = None


def compile_search(query: SearchQuery, now_ms: int) -> CompiledSearch:
    """Compile ``query``; ``now_ms`` (epoch milliseconds) anchors the ``ap`` prefix."""
    if query.type is None:
        raise FhirError.of(400, "Searching across all resource types is not supported; "
                                "search one resource type", code="not-supported")
    type_ = query.type
    compiler = _Compiler(now_ms)
    parts = compiler.parts(type_, "r", query.conditions, query.ids)
    order = taken = compiler.order_by(query.sort)
    keyset, backward, start = query.keyset, False, ""
    if keyset is not None:
        parts.append(_Part(compiler.first_written("r", keyset.snapshot_ms)))
        backward = keyset.backward
        order, taken, start = compiler.keyset("r", query.sort, keyset)
        start = " AND " + start
    # Each resource's values of the order's keys come beside its JSON (SearchResult.keys).
    keys = "".join(f", {compiler.key_expr('r', code, query.sort)}"
                   for code, _ in page_order(query.sort))
    params = compiler.params
    params["limit"] = query.count
    params["offset"] = query.offset
    ctes = compiler.with_clause()

    def paged(rows: str) -> str:
        # Page first on the narrow columns, then read the JSON of that page only: SQLite's
        # sorter would otherwise carry every match's JSON.
        return (f"{ctes}SELECT r.json{keys} FROM resource AS r WHERE r.pk IN (SELECT r.pk "
                f"FROM {rows}{start} ORDER BY {taken} LIMIT :limit OFFSET :offset) "
                f"ORDER BY {order}")

    def driven(driver: int) -> Plan:
        where = compiler.where(type_, "r", parts, driver=driver)
        count = (f"{ctes}SELECT count(*) FROM resource AS r WHERE {where}"
                 if query.total else None)
        return Plan(paged(f"resource AS r WHERE {where}"), count)

    estimates = tuple(f"{ctes}SELECT count(*) FROM (SELECT 1 FROM ({p.sql}) LIMIT :cap)"
                      for p in _indexed(parts))
    if query.sort or backward or not estimates:
        return CompiledSearch(estimates, driven, params)
    walk = compiler.where(type_, "r", parts, ordered=True)
    window = paged(f"resource AS r INDEXED BY resource_updated WHERE {walk} "
                   "AND (r.last_updated_ms, r.id) <= (:wms, :wid)")
    return CompiledSearch(estimates, driven, params, window)


def _indexed(parts: list[_Part], driver: int = 0) -> list[_Part]:
    """The index conditions, most selective (by rank) first, except that the ``driver`` th
    of them comes first: the first drives the driven plan."""
    ranked = sorted((p for p in parts if p.pks), key=lambda p: p.rank)
    return ranked[driver:driver + 1] + ranked[:driver] + ranked[driver + 1:]


def compile_scope(types: Sequence[str], within: Sequence[SearchQuery],
                  now_ms: int) -> tuple[str, str, dict[str, Any]]:
    """A predicate on a row with ``type`` and ``id`` columns, such as a ``history`` row: its
    type is one of ``types``, or the current resource it is a version of matches one of the
    ``within`` searches (each of one type). With neither, nothing matches. Returns the
    ``WITH`` clause the statement must start with, the predicate and their named parameters
    (whose names start with ``s``, so that the caller's own do not clash)."""
    compiler = _Compiler(now_ms, prefix="s")
    ways = []
    if types:
        ways.append(f"type IN ({', '.join(compiler.bind(t) for t in types)})")
    for query in within:
        where = compiler.matches(query.type, "r", query.conditions, query.ids)
        ways.append(f"(type = {compiler.bind(query.type)} AND id IN "
                    f"(SELECT r.id FROM resource AS r WHERE {where}))")
    return compiler.with_clause(), _any(ways), compiler.params


@dataclass(frozen=True)
class _Part:
    """A compiled condition: a predicate on the resource row, or (``pks``) a ``SELECT`` of
    the ``pk`` of the matching resources."""

    sql: str
    pks: bool = False
    # The same condition as a correlated test of one row (through the index tables' ``pk``
    # index), for when another condition drives the search; and how selective the condition
    # usually is (lower: fewer matches), which picks the driver.
    probe: str | None = None
    rank: int = 1


def _selectivity(clause: Clause) -> int:
    """How many resources a clause usually matches, as a rank (lower: fewer): codes without
    a system (status, intent, category) and text searches match many, dates and quantities
    a range, the rest (references, identifiers, names) few."""
    if clause.param.type == "token" and (clause.modifier == "text" or all(
            isinstance(v, TokenQuery) and v.system is None for v in clause.values)):
        return 3
    if clause.param.type in ("date", "number", "quantity"):
        return 2
    return 1


def _flatten(conditions: tuple[Condition, ...] | list[Condition]) -> list[Condition]:
    """The conditions with nested :class:`AllOf` s spelled out (all are AND-ed anyway)."""
    out: list[Condition] = []
    for cond in conditions:
        out.extend(_flatten(cond.conditions) if isinstance(cond, AllOf) else [cond])
    return out


def _any(predicates: list[str]) -> str:
    if not predicates:
        return "0"
    return predicates[0] if len(predicates) == 1 else "(" + " OR ".join(predicates) + ")"


def _all(predicates: list[str]) -> str:
    if not predicates:
        return "1"
    return " AND ".join(predicates)


def _not_supported(param: SearchParam, modifier: str | None) -> FhirError:
    what = f"{param.code}:{modifier}" if modifier else param.code
    return FhirError.of(400, f"The search parameter '{what}' ({param.type}) is not supported",
                        code="not-supported", expression=param.code)


class _Compiler:
    """Builds SQL text and its named parameters."""

    def __init__(self, now_ms: int, prefix: str = "p") -> None:
        self.params: dict[str, Any] = {}
        self._now_ms = now_ms
        self._param_prefix = prefix
        self._aliases = itertools.count()
        self._nesting = 0
        self.ctes: list[str] = []

    def bind(self, value: Any) -> str:
        name = f"{self._param_prefix}{len(self.params)}"
        self.params[name] = value
        return ":" + name

    def _alias(self) -> str:
        return f"t{next(self._aliases)}"

    # -- conditions ----------------------------------------------------------------------------

    def matches(self, type_: str, r: str, conditions: list[Condition],
                ids: frozenset[str] | None = None) -> str:
        """``r`` (a ``resource`` alias) is a current ``type_`` resource matching every
        condition (and, when ``ids`` is given, having one of those ids).

        Conditions that select index rows (:class:`_Part` ``pks``) are written as
        ``r.pk IN (...)`` and let SQLite drive the search from the index tables. When there is
        one, ``r.type`` is written ``+r.type`` so that SQLite does not prefer walking every
        resource of the type in update order (which the default sort would reward)."""
        return self.where(type_, r, self.parts(type_, r, conditions, ids))

    def parts(self, type_: str, r: str, conditions: list[Condition],
              ids: frozenset[str] | None = None) -> list[_Part]:
        """The compiled conditions (and ``ids``) of a search of ``type_`` on alias ``r``."""
        parts = [self._condition(type_, r, c) for c in _flatten(conditions)]
        if ids is not None:
            listed = self.bind(jsonio.dumps(sorted(ids)))
            parts.append(self._ids(type_, f"SELECT value FROM json_each({listed})"))
        return parts

    def where(self, type_: str, r: str, parts: list[_Part], *, ordered: bool = False,
              driver: int = 0) -> str:
        """The predicate of ``parts``. Driven (default): the most selective index condition
        (or the ``driver`` th by rank) drives the search and the other index conditions are
        tested row by row on what it finds (instead of each being read in full).
        ``ordered``: every condition is tested row by row (the rows come in page order from
        the caller's scan)."""
        indexed = _indexed(parts, driver)
        drivers = [f"{r}.pk IN ({p.sql})" if (i == 0 and not ordered) or p.probe is None
                   else p.probe for i, p in enumerate(indexed)]
        kind = f"+{r}.type" if drivers and not ordered else f"{r}.type"
        where = [f"{kind} = {self.bind(type_)}", f"{r}.deleted = 0", *drivers]
        return _all(where + [p.sql for p in parts if not p.pks])

    def _condition(self, type_: str, r: str, cond: Condition) -> _Part:
        if isinstance(cond, Clause):
            return self._clause(type_, r, cond)
        self._nesting += 1
        try:
            if isinstance(cond, Chain):  # chains mostly name one resource (an identifier)
                part = dataclasses.replace(self._chain(type_, cond), rank=0)
            elif isinstance(cond, Has):
                part = self._has(type_, cond)
            elif isinstance(cond, AnyOf):  # access conditions: whole populations
                part = dataclasses.replace(
                    self._combined(type_, r, cond.conditions, "UNION", " OR ", "0"), rank=2)
            else:
                part = dataclasses.replace(self._combined(
                    type_, r, _flatten(cond.conditions), "INTERSECT", " AND ", "1"), rank=2)
        finally:
            self._nesting -= 1
        return self._hoisted(part) if self._nesting else part

    def _hoisted(self, part: _Part) -> _Part:
        """A nested ``pk`` select as a common table expression: nested chains, ``_has`` and
        combinations would otherwise nest deeper than SQLite's parser allows."""
        if not part.pks:
            return part
        name = f"c{len(self.ctes)}"
        self.ctes.append(f"{name}(pk) AS ({part.sql})")
        return _Part(f"SELECT pk FROM {name}", pks=True, rank=part.rank)

    def with_clause(self) -> str:
        """``WITH ...`` for the statement (empty when nothing was hoisted)."""
        return f"WITH {', '.join(self.ctes)} " if self.ctes else ""

    def _combined(self, type_: str, r: str, conditions: tuple[Condition, ...] | list[Condition],
                  compound: str, junction: str, empty: str) -> _Part:
        """:class:`AnyOf` (``UNION`` / ``OR``) or :class:`AllOf` (``INTERSECT`` / ``AND``):
        a ``pk`` select when every part is one (so that SQLite still drives the search from
        the index tables), otherwise a predicate on ``r``."""
        parts = [self._condition(type_, r, c) for c in conditions]
        if not parts:
            return _Part(empty)
        if all(p.pks for p in parts):
            selects = [f"SELECT * FROM ({p.sql})" for p in parts]
            return _Part(f" {compound} ".join(selects), pks=True)
        predicates = [f"{r}.pk IN ({p.sql})" if p.pks else p.sql for p in parts]
        return _Part("(" + junction.join(predicates) + ")")

    def _ids(self, type_: str, ids_sql: str) -> _Part:
        """The resources of ``type_`` whose id is among the values of ``ids_sql``."""
        t = self._alias()
        return _Part(f"SELECT {t}.pk FROM resource AS {t} WHERE {t}.type = {self.bind(type_)} "
                     f"AND {t}.id IN ({ids_sql})", pks=True)

    def _chain(self, type_: str, chain: Chain) -> _Part:
        x, t = self._alias(), self._alias()
        inner = self.matches(chain.target_type, t, [chain.inner])
        return _Part(f"SELECT {x}.pk FROM idx_reference AS {x} "
                     f"WHERE {x}.type = {self.bind(type_)} "
                     f"AND {x}.param = {self.bind(chain.param.code)} "
                     f"AND {x}.target_id IN (SELECT {t}.id FROM resource AS {t} WHERE {inner}) "
                     f"AND {x}.target_type = {self.bind(chain.target_type)}", pks=True)

    def _has(self, type_: str, has: Has) -> _Part:
        # Driven from the matching resources of the other type: their references (found by
        # ``pk``; ``+x.type`` keeps SQLite on that index) name the resources we want.
        x, o = self._alias(), self._alias()
        inner = self.matches(has.other_type, o, [has.inner])
        return self._ids(type_, (
            f"SELECT {x}.target_id FROM idx_reference AS {x} "
            f"WHERE {x}.pk IN (SELECT {o}.pk FROM resource AS {o} WHERE {inner}) "
            f"AND {x}.param = {self.bind(has.ref_param.code)} "
            f"AND +{x}.type = {self.bind(has.other_type)} "
            f"AND +{x}.target_type = {self.bind(type_)}"))

    def _clause(self, type_: str, r: str, clause: Clause) -> _Part:
        code = clause.param.code
        if code == "_id":
            return self._id_clause(type_, r, clause)
        if code == "_lastUpdated":
            return _Part(self._last_updated_clause(r, clause))
        table = INDEX_TABLES.get(clause.param.type)
        if table is None:
            raise _not_supported(clause.param, clause.modifier)
        if clause.modifier == "missing":
            return _Part(_any([self._has_value(table, r, clause.param, present=not v.missing)
                               for v in clause.values]))
        if clause.modifier not in _MODIFIERS[clause.param.type]:
            raise _not_supported(clause.param, clause.modifier)
        if clause.modifier == "identifier":
            table = "idx_token"
        param = self.bind(code)
        if clause.modifier == "not":
            x = self._alias()
            preds = [self._value(x, clause, v) for v in clause.values]
            return _Part(f"NOT EXISTS (SELECT 1 FROM {table} AS {x} WHERE {x}.pk = {r}.pk "
                         f"AND {x}.param = {param} AND {_any(preds)})")
        type_param = self.bind(type_)
        selects = []
        for value in clause.values:
            x = self._alias()
            pred = self._value(x, clause, value)
            if table == "idx_token" and clause.modifier != "text" and (
                    isinstance(value, TokenQuery) and value.system is None):
                pred = f"{x}.system IN ({self._systems(type_param, param)}) AND {pred}"
            selects.append(f"SELECT {x}.pk FROM {table} AS {x} WHERE {x}.type = {type_param} "
                           f"AND {x}.param = {param} AND {pred}")
        y = self._alias()
        probe = (f"EXISTS (SELECT 1 FROM {table} AS {y} WHERE {y}.pk = {r}.pk AND "
                 f"{y}.param = {param} AND "
                 f"{_any([self._value(y, clause, v) for v in clause.values])})")
        return _Part(" UNION ALL ".join(selects), pks=True, probe=probe,
                     rank=_selectivity(clause))

    def _systems(self, type_: str, param: str) -> str:
        """The systems of the tokens of parameter ``param`` of ``type_`` (bound names), one
        index seek each: the token index leads with the system, so a search by code alone
        seeks the code under each of them (most parameters have one to a few)."""
        s, a, b = f"{self._alias()}_systems", self._alias(), self._alias()
        return (f"WITH RECURSIVE {s}(system) AS (SELECT min({a}.system) FROM idx_token AS {a} "
                f"WHERE {a}.type = {type_} AND {a}.param = {param} UNION ALL "
                f"SELECT (SELECT min({b}.system) FROM idx_token AS {b} WHERE {b}.type = {type_} "
                f"AND {b}.param = {param} AND {b}.system > {s}.system) FROM {s} "
                f"WHERE {s}.system IS NOT NULL) SELECT system FROM {s} WHERE system IS NOT NULL")

    def _has_value(self, table: str, r: str, param: SearchParam, *, present: bool) -> str:
        x = self._alias()
        probe = (f"EXISTS (SELECT 1 FROM {table} AS {x} WHERE {x}.pk = {r}.pk "
                 f"AND {x}.param = {self.bind(param.code)})")
        return probe if present else "NOT " + probe

    def _id_clause(self, type_: str, r: str, clause: Clause) -> _Part:
        if clause.modifier == "missing":  # every resource has an id
            return _Part(_any(["0" if v.missing else "1" for v in clause.values]))
        if clause.modifier not in (None, "not"):
            raise _not_supported(clause.param, clause.modifier)
        ids = []
        for value in clause.values:
            if not isinstance(value, TokenQuery) or value.code is None:
                raise _not_supported(clause.param, clause.modifier)
            ids.append(self.bind(value.code))
        if clause.modifier == "not":
            return _Part(f"{r}.id NOT IN ({', '.join(ids)})")
        return self._ids(type_, ", ".join(ids))

    def _last_updated_clause(self, r: str, clause: Clause) -> str:
        if clause.modifier == "missing":  # every resource has been updated
            return _any(["0" if v.missing else "1" for v in clause.values])
        if clause.modifier is not None:
            raise _not_supported(clause.param, clause.modifier)
        preds = []
        for value in clause.values:
            if not isinstance(value, DateQuery):
                raise _not_supported(clause.param, clause.modifier)
            preds.append(self._instant(f"{r}.last_updated_ms", value))
        return _any(preds)

    # -- values --------------------------------------------------------------------------------

    def _value(self, x: str, clause: Clause, value: QueryValue) -> str:
        """A predicate on one index row ``x`` for one query value."""
        kind = clause.param.type
        modifier = clause.modifier
        if isinstance(value, TokenQuery) and (kind == "token" or modifier == "identifier"):
            return self._token(x, value, text=modifier == "text")
        if isinstance(value, ReferenceQuery) and kind == "reference":
            return self._reference(x, value)
        if isinstance(value, DateQuery) and kind == "date":
            return self._date(f"{x}.lo", f"{x}.hi", value)
        if isinstance(value, StringQuery) and kind == "string":
            return self._string(x, value, modifier)
        if isinstance(value, UriQuery) and kind == "uri":
            return self._uri(x, value, modifier)
        if isinstance(value, QuantityQuery) and kind == "quantity":
            return self._quantity(x, value)
        if isinstance(value, NumberQuery) and kind == "number":
            return self._number(f"{x}.value", value)
        raise _not_supported(clause.param, modifier)

    def _token(self, x: str, q: TokenQuery, *, text: bool) -> str:
        if text:  # the text index holds the codes that have a text
            return f"{x}.text != '' AND " + self._prefix(f"{x}.text", q.code or "")
        parts = []
        if q.code is not None:
            parts.append(f"{x}.code = {self.bind(q.code)}")
        if q.system is not None:
            parts.append(f"{x}.system = {self.bind(q.system)}")
        return _all(parts)

    def _reference(self, x: str, q: ReferenceQuery) -> str:
        ways = []
        if q.target_id is not None or q.target_type is not None:
            target = []
            if q.target_id is not None:
                target.append(f"{x}.target_id = {self.bind(q.target_id)}")
            if q.target_type is not None:
                target.append(f"{x}.target_type = {self.bind(q.target_type)}")
            ways.append("(" + _all(target) + ")")
        if q.url:  # the URL index holds the references that have one
            ways.append(f"({x}.url = {self.bind(q.url)} AND {x}.url != '')")
        pred = _any(ways) if ways else "1"
        if q.version:
            pred = f"{pred} AND {x}.version = {self.bind(q.version)}"
        return pred

    def _date(self, lo: str, hi: str, q: DateQuery) -> str:
        if q.prefix == "ap":
            d = self._approximation_ms(q)
            return f"({lo} <= {self.bind(q.hi + d)} AND {hi} >= {self.bind(q.lo - d)})"
        qlo, qhi = self.bind(q.lo), self.bind(q.hi)
        # ``ge``/``le``: the stored range reaches into the searched one or beyond it, so a
        # less precise value never matches less than a more precise one inside it (a plan
        # that ends on 31 August is found by ``ge2028-08-31`` as by ``ge2028-08-31T12:00Z``).
        # ``lo <= qhi`` is implied by ``hi <= qhi``; it bounds the index range on ``lo``.
        eq = f"({lo} >= {qlo} AND {lo} <= {qhi} AND {hi} <= {qhi})"
        preds = {
            "eq": eq,
            "ne": f"({lo} < {qlo} OR {hi} > {qhi})",
            "gt": f"{hi} > {qhi}",
            "lt": f"{lo} < {qlo}",
            "ge": f"{hi} >= {qlo}",
            "le": f"{lo} <= {qhi}",
            "sa": f"{lo} > {qhi}",
            "eb": f"{hi} < {qlo}",
        }
        return preds[q.prefix]

    def _instant(self, column: str, q: DateQuery) -> str:
        """:meth:`_date` for a stored single instant (``lo = hi``), simplified to plain
        comparisons on one column so that an index range serves every prefix."""
        if q.prefix == "ap":
            d = self._approximation_ms(q)
            return f"({column} >= {self.bind(q.lo - d)} AND {column} <= {self.bind(q.hi + d)})"
        qlo, qhi = self.bind(q.lo), self.bind(q.hi)
        preds = {
            "eq": f"({column} >= {qlo} AND {column} <= {qhi})",
            "ne": f"({column} < {qlo} OR {column} > {qhi})",
            "gt": f"{column} > {qhi}",
            "lt": f"{column} < {qlo}",
            "ge": f"{column} >= {qlo}",
            "le": f"{column} <= {qhi}",
            "sa": f"{column} > {qhi}",
            "eb": f"{column} < {qlo}",
        }
        return preds[q.prefix]

    def _approximation_ms(self, q: DateQuery) -> int:
        if self._now_ms < q.lo:
            distance = q.lo - self._now_ms
        elif self._now_ms > q.hi:
            distance = self._now_ms - q.hi
        else:
            distance = 0
        return max(DAY_MS, distance // 10)

    def _prefix(self, column: str, prefix: str) -> str:
        return f"{column} >= {self.bind(prefix)} AND {column} < {self.bind(prefix + MAX_CHAR)}"

    def _string(self, x: str, q: StringQuery, modifier: str | None) -> str:
        if modifier == "exact":
            return f"{x}.exact = {self.bind(q.value)}"
        if modifier == "contains":
            return f"instr({x}.norm, {self.bind(q.value)}) > 0"
        return self._prefix(f"{x}.norm", q.value)

    def _uri(self, x: str, q: UriQuery, modifier: str | None) -> str:
        if modifier == "below":
            return self._prefix(f"{x}.value", q.value)
        if modifier == "above":
            prefixes = [self.bind(q.value[:n]) for n in range(1, len(q.value) + 1)]
            return f"{x}.value IN ({', '.join(prefixes)})" if prefixes else "0"
        return f"{x}.value = {self.bind(q.value)}"

    def _number(self, column: str, q: NumberQuery | QuantityQuery) -> str:
        if q.prefix == "ap":
            margin = abs(q.value) / 10
            return (f"{column} >= {self.bind(float(q.value - margin))} "
                    f"AND {column} <= {self.bind(float(q.value + margin))}")
        value, lo, hi = self.bind(float(q.value)), self.bind(float(q.lo)), self.bind(float(q.hi))
        preds = {
            "eq": f"{column} >= {lo} AND {column} < {hi}",
            "ne": f"({column} < {lo} OR {column} >= {hi})",
            "gt": f"{column} > {value}",
            "lt": f"{column} < {value}",
            "ge": f"{column} >= {value}",
            "le": f"{column} <= {value}",
            "sa": f"{column} >= {hi}",
            "eb": f"{column} < {lo}",
        }
        return preds[q.prefix]

    def _quantity(self, x: str, q: QuantityQuery) -> str:
        parts = [self._number(f"{x}.value", q)]
        if q.system is not None:
            parts.append(f"{x}.system = {self.bind(q.system)}")
        if q.code is not None:
            code = self.bind(q.code)
            parts.append(f"{x}.code = {code}" if q.system is not None
                         else f"({x}.code = {code} OR {x}.unit = {code})")
        return "(" + _all(parts) + ")"

    # -- order ---------------------------------------------------------------------------------

    def order_by(self, keys: list[SortKey]) -> str:
        if not keys:
            return "r.last_updated_ms, r.id"
        parts = [f"{self.key_expr('r', k.param.code, keys)} "
                 f"{'DESC' if k.descending else 'ASC'} NULLS LAST" for k in keys]
        return ", ".join(parts + ["r.id"])

    def key_expr(self, r: str, code: str, sort: list[SortKey]) -> str:
        """What ``r`` is ordered by for the key ``code`` of the order of ``sort``: a column
        of the row, or a search parameter's sort value (:meth:`_sort_expr`)."""
        if code in _ROW_COLUMNS:
            return f"{r}.{_ROW_COLUMNS[code]}"
        return self._sort_expr(r, next(k for k in sort if k.param.code == code))

    def keyset(self, r: str, sort: list[SortKey], keyset: Keyset) -> tuple[str, str, str]:
        """A keyset page of a search sorted by ``sort`` (see :func:`keyset_keys`): the order
        of the result, the order the page is taken in (the reverse, for a page before a
        resource: its last ``limit`` rows), and the predicate that ``r`` comes after (before)
        the keyset's resource: a row value comparison when every key is a column that runs
        one way, else key by key, a search parameter's missing value (NULL) coming last."""
        keys = keyset_keys(sort, keyset)
        at = self.bind(keyset.snapshot_ms)
        cols = [f"({r}.last_updated_ms > {at})" if code == CHANGED
                else self.key_expr(r, code, sort) for code, _, _ in keys]
        nullable = [code not in _ROW_COLUMNS and code != CHANGED for code, _, _ in keys]
        values = [None if v is None else self.bind(float(v) if isinstance(v, Decimal) else v)
                  for _, _, v in keys]
        ops = [">" if descending == keyset.backward else "<" for _, descending, _ in keys]

        def order_by(reverse: bool) -> str:
            return ", ".join(
                f"{col} {'DESC' if descending != reverse else 'ASC'}"
                + ((" NULLS FIRST" if reverse else " NULLS LAST") if may_lack else "")
                for col, (_, descending, _), may_lack in zip(cols, keys, nullable, strict=True))

        def beyond(i: int) -> str:  # strictly after (backward: before) in the key's own order
            col, value, op = cols[i], values[i], ops[i]
            if not nullable[i]:
                return f"{col} {op} {value}"
            if value is None:  # the keyset's resource is among those without a value: last
                return f"{col} IS NOT NULL" if keyset.backward else "0"
            return f"{col} {op} {value}" if keyset.backward else (
                f"({col} {op} {value} OR {col} IS NULL)")

        def same(i: int) -> str:
            return f"{cols[i]} IS NULL" if values[i] is None else f"{cols[i]} = {values[i]}"

        if not any(nullable) and len(set(ops)) == 1:
            start = f"({', '.join(cols)}) {ops[0]} ({', '.join(map(str, values))})"
        else:
            start = "(" + " OR ".join(
                _all([same(j) for j in range(i)] + [beyond(i)]) for i in range(len(keys))) + ")"
        return order_by(False), order_by(keyset.backward), start

    def first_written(self, r: str, snapshot_ms: int) -> str:
        """Resource ``r`` was first written at or before ``snapshot_ms`` (some version of it
        is that old; the history is read only for what was written since)."""
        at, h = self.bind(snapshot_ms), self._alias()
        return (f"({r}.last_updated_ms <= {at} OR EXISTS (SELECT 1 FROM history AS {h} "
                f"WHERE {h}.type = {r}.type AND {h}.id = {r}.id "
                f"AND {h}.last_updated_ms <= {at}))")

    def _sort_expr(self, r: str, key: SortKey) -> str:
        """The value ``r`` sorts by for search parameter ``key``: the lowest of its values
        ascending, the highest descending (NULL when it has none)."""
        code = key.param.code
        table = INDEX_TABLES.get(key.param.type)
        if table is None:
            raise FhirError.of(400, f"Sorting by '{code}' ({key.param.type}) is not supported",
                               code="not-supported", expression="_sort")
        ascending, descending = _SORT_COLUMNS[key.param.type]
        column, aggregate = (descending, "max") if key.descending else (ascending, "min")
        s = self._alias()
        return (f"(SELECT {aggregate}({s}.{column}) FROM {table} AS {s} "
                f"WHERE {s}.pk = {r}.pk AND {s}.param = {self.bind(code)})")
