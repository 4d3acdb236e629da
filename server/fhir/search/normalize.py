"""Value normalisation shared by write-time extraction and query parsing.

Both sides of a search must turn the same text into the same comparable value, so the rules of
:mod:`server.fhir.search.ast` live here once: FHIR dates to inclusive millisecond ranges (UTC),
strings to their normalised form, decimals to their implicit precision range, and reference
strings to type / id / url / version.
"""

from __future__ import annotations

import re
import unicodedata
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal

from .ast import MAX_MS, MIN_MS

# ---------------------------------------------------------------------------------------------
# Dates
# ---------------------------------------------------------------------------------------------

_DATE_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MS_PER_DAY = 86_400_000


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (no range limits)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _valid_day(year: int, month: int, day: int) -> bool:
    if not 1 <= month <= 12:
        return False
    last = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    return 1 <= day <= last


def _tz_offset_ms(tz: str | None) -> int:
    if not tz or tz == "Z":
        return 0
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"invalid time zone offset {tz!r}")
    sign = -1 if tz[0] == "-" else 1
    return sign * (hours * 60 + minutes) * 60_000


def date_range(text: str) -> tuple[int, int]:
    """The inclusive UTC millisecond range a FHIR date, dateTime or instant denotes.

    The precision given sets the width: ``2024`` is the whole year, ``2024-05-01T10:00`` one
    minute, ``2024-05-01T10:00:00.5`` a tenth of a second. Without a time zone the value is
    taken as UTC. Raises :class:`ValueError` for anything that is not such a value.
    """
    m = _DATE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a FHIR date, dateTime or instant")
    year = int(m["y"])
    month = int(m["m"] or 1)
    day = int(m["d"] or 1)
    if year == 0 or not _valid_day(year, month, day):
        raise ValueError(f"{text!r} is not a valid calendar date")
    if m["H"] is None:
        lo_days = _days_from_civil(year, month, day)
        if m["m"] is None:
            hi_days = _days_from_civil(year + 1, 1, 1)
        elif m["d"] is None:
            hi_days = _days_from_civil(year + month // 12, month % 12 + 1, 1)
        else:
            hi_days = lo_days + 1
        return _clamp(lo_days * _MS_PER_DAY, hi_days * _MS_PER_DAY - 1)
    return _time_range(m, _days_from_civil(year, month, day) * _MS_PER_DAY)


def _time_range(m: re.Match[str], day_ms: int) -> tuple[int, int]:
    hour, minute, second = int(m["H"]), int(m["M"]), int(m["S"] or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{m.string!r} has an invalid time of day")
    lo = day_ms + ((hour * 60 + minute) * 60 + second) * 1000 - _tz_offset_ms(m["tz"])
    fraction = m["f"]
    if m["S"] is None:
        width = 60_000
    elif fraction is None:
        width = 1000
    else:
        digits = fraction[:3]
        lo += int(digits.ljust(3, "0"))
        width = 10 ** (3 - len(digits))
    return _clamp(lo, lo + width - 1)


def _clamp(lo: int, hi: int) -> tuple[int, int]:
    return max(lo, MIN_MS), min(hi, MAX_MS)


def period_range(start: str | None, end: str | None) -> tuple[int, int]:
    """The range of a Period: from the start of ``start`` to the end of ``end``; open ends
    extend to :data:`MIN_MS` / :data:`MAX_MS`."""
    lo = date_range(start)[0] if start else MIN_MS
    hi = date_range(end)[1] if end else MAX_MS
    return lo, hi


# ---------------------------------------------------------------------------------------------
# Strings and numbers
# ---------------------------------------------------------------------------------------------


_BASE_LETTERS = str.maketrans({
    "ø": "o", "æ": "ae", "œ": "oe", "ß": "ss", "đ": "d", "ð": "d", "ł": "l", "þ": "th",
    "ŧ": "t", "ħ": "h"})
"""Letters that Unicode does not decompose into a base letter and an accent but that Unicode
collation compares as their base letters at primary strength (the root order, without a
language's tailoring): ``sorensen`` finds Sørensen as ``asa`` finds Åsa, ``baerum`` Bærum.
Lower case only: the text is lower-cased first."""


def normalize_string(text: str) -> str:
    """Lower case, accents removed, whitespace collapsed: the form string search compares.
    Changing it changes stored index values: bump :data:`.registry.INDEX_RULES`."""
    if text.isascii():
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.lower().translate(_BASE_LETTERS).split())


def decimal_range(value: Decimal) -> tuple[Decimal, Decimal]:
    """The implicit precision range of a decimal as written: half a unit of its last digit
    either side (``100`` -> [99.5, 100.5), ``100.00`` -> [99.995, 100.005),
    ``1e2`` -> [50, 150))."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"{value} is not a finite number")
    half = Decimal(5).scaleb(exponent - 1)
    return value - half, value + half


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------

_TYPE = r"[A-Z][A-Za-z]{1,63}"
_ID = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE_RE = re.compile(rf"(?P<type>{_TYPE})/(?P<id>{_ID})(?:/_history/(?P<version>{_ID}))?")
_URL_TAIL_RE = re.compile(rf"/(?P<type>{_TYPE})/{_ID}(?:/_history/{_ID})?$")
ID_RE = re.compile(_ID)
TYPE_RE = re.compile(_TYPE)


@dataclass(frozen=True)
class ReferenceParts:
    """A literal reference taken apart; empty strings for what it does not carry."""

    target_type: str = ""
    target_id: str = ""
    url: str = ""
    version: str = ""


def is_absolute(text: str) -> bool:
    return "://" in text or text.startswith(("urn:uuid:", "urn:oid:"))


_LOCAL_BASE: ContextVar[str | None] = ContextVar("planbro_local_base", default=None)


def serving(base: str | None) -> None:
    """Declare the base URL this server answers the current request under: an absolute
    reference below it is a reference to a resource here (the request's thread and what it
    calls; other threads and processes know no base)."""
    _LOCAL_BASE.set(base.rstrip("/") if base else None)


def url_names(text: str) -> str | None:
    """The resource type the last segments of an absolute URL name (``.../Type/id`` or
    ``.../Type/id/_history/v``), on whatever server; None when they name none."""
    m = _URL_TAIL_RE.search(text) if "://" in text else None
    return m["type"] if m else None


def parse_reference(text: str) -> ReferenceParts | None:
    """``Type/id[/_history/v]``; an absolute URL below this server's base (:func:`serving`)
    as that relative reference (type, id and the URL); any other absolute URL - another
    server's, a ``urn:uuid:``/``urn:oid:`` - as the URL only: it names nothing here, even
    when it ends like ``Type/id``. ``None`` for local (``#id``) and unparseable
    references."""
    if is_absolute(text):
        base = _LOCAL_BASE.get()
        if base is None or not text.startswith(base + "/"):
            return ReferenceParts(url=text)
        m = _RELATIVE_RE.fullmatch(text[len(base) + 1:])
        if m is None:
            return ReferenceParts(url=text)
        return ReferenceParts(m["type"], m["id"], text, m["version"] or "")
    m = _RELATIVE_RE.fullmatch(text)
    if m is None:
        return None
    return ReferenceParts(m["type"], m["id"], "", m["version"] or "")


def parse_canonical(text: str) -> ReferenceParts:
    """A canonical URL, optionally ``|version``: url and version."""
    url, _, version = text.partition("|")
    return ReferenceParts(url=url, version=version)
