"""The search contract shared by the parser, the extractors and every storage engine.

Two halves:

* **Index values** (:class:`IndexValues`): what a resource offers to search, extracted once at
  write time from the resource JSON by the search-parameter registry, and stored by the engine
  beside the resource in a few typed tables/arrays.
* **Queries** (:class:`SearchQuery`): a parsed search, AND of :class:`Clause` s, each an OR of
  values of one parameter. Engines compile them into their own query language; no engine ever
  filters after fetching.

Normalisation rules, so that extraction and query parsing agree:

* Dates are ranges of integer **milliseconds since the Unix epoch, UTC**, ``lo`` inclusive and
  ``hi`` inclusive (the last millisecond of the period). ``2024`` is
  [2024-01-01T00:00:00.000Z, 2024-12-31T23:59:59.999Z]. A date or dateTime without a time zone
  is taken as UTC. A Period with no end has ``hi = MAX_MS``; with no start ``lo = MIN_MS``.
* Strings are stored twice: ``norm`` (lower case, accents removed, letters such as ø, æ and ß
  read as their base letters, whitespace collapsed: :func:`.normalize.normalize_string`) for
  the default starts-with and ``:contains`` searches, and ``exact`` as written for ``:exact``.
* Tokens: ``system`` is ``""`` when the data has none; ``code`` is the code/value;
  ``text`` is the normalised display/text for ``:text``. Booleans index as code ``true``/``false``.
  A ``code`` element indexes without the system it has implicitly (its value set's), as does a
  boolean; the parser reads the query against that system (``SearchParam.implicit``).
  ``Reference.identifier`` is indexed as a token of the reference parameter with the same code
  and ``identifier=True``, serving ``param:identifier``.
* References: ``target_type``/``target_id`` for relative (and local absolute) references,
  ``url`` for the literal reference as written (absolute URLs, canonical references), and
  ``version`` when the reference is versioned (``Patient/1/_history/2``).
* Numbers and quantities: ``value`` as :class:`decimal.Decimal`; engines may store floats and
  must then use the implicit precision range ``lo``/``hi`` for ``eq``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

MIN_MS = -62135596800000  # 0001-01-01T00:00:00Z
MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z

# The modifiers this server supports per parameter type (the type modifier ``ref:Type`` and
# chaining are spelled in the AST itself, not as modifiers).
MODIFIERS: dict[str, tuple[str, ...]] = {
    "token": ("missing", "not", "text"),
    "reference": ("missing", "identifier"),
    "string": ("missing", "exact", "contains"),
    "uri": ("missing", "below", "above"),
    "date": ("missing",),
    "number": ("missing",),
    "quantity": ("missing",),
}

ParamType = Literal["token", "reference", "date", "string", "uri", "number", "quantity",
                    "composite", "special"]

# ---------------------------------------------------------------------------------------------
# Index values (write side)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenValue:
    param: str
    system: str
    code: str
    text: str = ""
    identifier: bool = False  # True: a Reference.identifier indexed for `param:identifier`


@dataclass(frozen=True)
class ReferenceValue:
    param: str
    target_type: str
    target_id: str
    url: str = ""
    version: str = ""


@dataclass(frozen=True)
class DateValue:
    param: str
    lo: int
    hi: int


@dataclass(frozen=True)
class StringValue:
    param: str
    norm: str
    exact: str


@dataclass(frozen=True)
class UriValue:
    param: str
    value: str


@dataclass(frozen=True)
class NumberValue:
    param: str
    value: Decimal


@dataclass(frozen=True)
class QuantityValue:
    param: str
    value: Decimal
    system: str
    code: str
    unit: str = ""


@dataclass
class IndexValues:
    """Everything one resource version offers to search."""

    tokens: list[TokenValue] = field(default_factory=list)
    references: list[ReferenceValue] = field(default_factory=list)
    dates: list[DateValue] = field(default_factory=list)
    strings: list[StringValue] = field(default_factory=list)
    uris: list[UriValue] = field(default_factory=list)
    numbers: list[NumberValue] = field(default_factory=list)
    quantities: list[QuantityValue] = field(default_factory=list)

    def params(self) -> set[str]:
        """Codes of the parameters that have at least one value (for ``:missing``)."""
        out: set[str] = set()
        for group in (self.tokens, self.references, self.dates, self.strings, self.uris,
                      self.numbers, self.quantities):
            out.update(v.param for v in group if not getattr(v, "identifier", False))
        return out


# ---------------------------------------------------------------------------------------------
# Queries (read side)
# ---------------------------------------------------------------------------------------------

Prefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]


@dataclass(frozen=True)
class SearchParam:
    """One search parameter as the registry knows it."""

    code: str
    type: ParamType
    base: tuple[str, ...]
    expression: str = ""
    targets: tuple[str, ...] = ()  # reference: allowed target resource types
    url: str = ""
    modifiers: tuple[str, ...] = ()  # modifiers this server supports for the parameter
    # token: the (system, code) pairs its values, indexed without a system, stand for, when
    # every value has an implicit system (R4 search, token: a ``code``'s system "is defined
    # in the value set"; a boolean's is special-values). Empty: values match as indexed.
    implicit: frozenset[tuple[str, str]] = field(default=frozenset(), repr=False)
    # token: the one code system of every value, when the codes are a grammar's rather than
    # a list (a ``code`` bound to BCP-13 mime types or BCP-47 languages); None otherwise.
    implicit_system: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TokenQuery:
    """``[system]|[code]``. ``system=None``: any system; ``""``: no system.
    ``code=None``: any code in the system (``system|``)."""

    system: str | None
    code: str | None


@dataclass(frozen=True)
class ReferenceQuery:
    """``Type/id``, ``id`` (type from ``param:Type`` or any), or an absolute ``url``."""

    target_type: str | None
    target_id: str | None
    url: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class DateQuery:
    prefix: Prefix
    lo: int
    hi: int


@dataclass(frozen=True)
class StringQuery:
    value: str  # normalised for default/contains; as given for :exact


@dataclass(frozen=True)
class UriQuery:
    value: str


@dataclass(frozen=True)
class NumberQuery:
    prefix: Prefix
    value: Decimal
    lo: Decimal  # implicit precision range: 100 -> [99.5, 100.5)
    hi: Decimal


@dataclass(frozen=True)
class QuantityQuery:
    prefix: Prefix
    value: Decimal
    lo: Decimal
    hi: Decimal
    system: str | None
    code: str | None


@dataclass(frozen=True)
class MissingQuery:
    """``param:missing=true|false``."""

    missing: bool


QueryValue = (TokenQuery | ReferenceQuery | DateQuery | StringQuery | UriQuery | NumberQuery
              | QuantityQuery | MissingQuery)


@dataclass(frozen=True)
class Clause:
    """One ``param[:modifier]=v1,v2`` occurrence: the values are OR-ed.

    ``param.code`` is one of the registry's parameters, or one of the resource-row
    parameters ``_id`` (token) and ``_lastUpdated`` (date), which engines answer from the
    resource row itself. Modifiers: token ``not``/``text``/``identifier`` (the latter on a
    reference parameter with TokenQuery values), string ``exact``/``contains``, uri
    ``below``/``above``, ``missing`` (values are MissingQuery). For ``:not`` a resource matches
    when it has NO value equal to any of the values.
    """

    param: SearchParam
    modifier: str | None
    values: tuple[QueryValue, ...]


@dataclass(frozen=True)
class Chain:
    """``ref_param[:Type].inner`` - resources whose ``ref_param`` points at a ``target_type``
    resource matching ``inner``. A client's chain has one level (``inner`` a clause); the
    access layer nests further conditions (another chain, a ``_has``, :class:`AllOf`)."""

    param: SearchParam  # the reference parameter on the searched type
    target_type: str
    inner: Condition  # a condition on target_type


@dataclass(frozen=True)
class Has:
    """``_has:OtherType:ref_param:inner`` - resources that some ``other_type`` resource
    matching ``inner`` references through its ``ref_param``."""

    other_type: str
    ref_param: SearchParam  # reference parameter on other_type
    inner: Condition  # a condition on other_type


@dataclass(frozen=True)
class AllOf:
    """Every condition holds (no conditions: every resource matches). Search parameters of a
    client never produce it; the access layer uses it to combine its own conditions."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    """At least one condition holds (no conditions: NO resource matches)."""

    conditions: tuple[Condition, ...]


Condition = Clause | Chain | Has | AllOf | AnyOf


@dataclass(frozen=True)
class SortKey:
    param: SearchParam  # registry parameter, or _id / _lastUpdated
    descending: bool = False


def page_order(sort: list[SortKey]) -> list[tuple[str, bool]]:
    """The order of a search as ``(code, descending)`` keys ending with ``_id`` (which is
    unique, so the order is total): its sort keys without repeats, up to ``_id``; without
    sort keys, last update then id."""
    if not sort:
        return [("_lastUpdated", False), ("_id", False)]
    order: list[tuple[str, bool]] = []
    for key in sort:
        if all(code != key.param.code for code, _ in order):
            order.append((key.param.code, key.descending))
        if key.param.code == "_id":
            return order  # ids are unique: later keys never decide
    return [*order, ("_id", False)]


KeyValue = int | str | Decimal | None
"""A resource's value of a key of the order: epoch milliseconds for ``_lastUpdated``, the
id for ``_id``; for a search parameter what the engine sorts by (its lowest value ascending,
its highest descending: a code, a normalised string, a date's milliseconds, a number), None
when the resource has none (it then comes last either way)."""


@dataclass(frozen=True)
class Keyset:
    """A page of a search given by where it starts rather than by an offset, so that writes
    during paging neither skip nor shift what is left.

    The page holds the matches that come after (``backward``: before, the page then being
    the last ``count`` of them) the resource whose values of the :func:`page_order` keys are
    ``values``, among the resources first written at or before ``snapshot_ms``: what was
    created after the first page is left out (paging AuditEvents, which the paging itself
    creates, ends), while what was updated after it is still there (see
    :func:`keyset_keys`)."""

    values: tuple[KeyValue, ...]
    snapshot_ms: int
    backward: bool = False
    changed: bool = False  # that resource was written after the snapshot


CHANGED = "_changed"
"""The key a keyset page may lead with: 1 when the resource was written after the keyset's
snapshot, else 0 (see :func:`keyset_keys`)."""


def keyset_keys(sort: list[SortKey], keyset: Keyset) -> list[tuple[str, bool, KeyValue]]:
    """The keys a keyset page compares, ``(code, descending, the keyset resource's value)``:
    those of :func:`page_order`, led by :data:`CHANGED` ascending unless the order starts
    with the last update oldest first or with the id (which no update moves back). An update
    may move a resource to a place in the order the walk has passed; it comes at the end
    instead."""
    order = page_order(sort)
    if len(order) != len(keyset.values):
        raise ValueError("a keyset page needs a value for each key of the order")
    keys: list[tuple[str, bool, KeyValue]] = [
        (code, descending, value) for (code, descending), value
        in zip(order, keyset.values, strict=True)]
    if order[0] != ("_lastUpdated", False) and order[0][0] != "_id":
        keys.insert(0, (CHANGED, False, int(keyset.changed)))
    return keys


@dataclass
class SearchQuery:
    """A compiled search of one resource type (``type=None`` is reserved for system search)."""

    type: str
    conditions: list[Condition] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int = 20
    offset: int = 0
    total: bool = False  # compute the total number of matches (within the keyset's snapshot)
    # Restrict to these ids (access control and _include reads add this; None = no limit).
    ids: frozenset[str] | None = None
    # Where the page starts, instead of ``offset``.
    keyset: Keyset | None = None


@dataclass
class SearchResult:
    resources: list[dict[str, object]]  # current resource JSON, in sort order
    total: int | None = None
    # Each resource's values of the :func:`page_order` keys (where a next page starts).
    keys: list[tuple[KeyValue, ...]] | None = None


def types_read(query: SearchQuery) -> set[str]:
    """The resource types a search reads: its own and those its chains and ``_has`` reach."""
    out = {query.type}
    pending: list[Condition] = list(query.conditions)
    while pending:
        cond = pending.pop()
        if isinstance(cond, Chain):
            out.add(cond.target_type)
            pending.append(cond.inner)
        elif isinstance(cond, Has):
            out.add(cond.other_type)
            pending.append(cond.inner)
        elif isinstance(cond, AllOf | AnyOf):
            pending.extend(cond.conditions)
    return out
