"""Working days in Norway: Monday to Friday except the public holidays (helligdager).

Fixed holidays: 1 January, 1 May, 17 May, 25 and 26 December. Movable ones follow Easter
Sunday: Maundy Thursday, Good Friday, Easter Monday, Ascension Day (+39 days) and Whit
Monday (+50 days); Easter and Whit Sunday fall on Sundays anyway.
"""

from __future__ import annotations

import datetime as dt
from functools import cache

_FIXED = ((1, 1), (5, 1), (5, 17), (12, 25), (12, 26))
_AFTER_EASTER = (-3, -2, 1, 39, 50)


def easter_sunday(year: int) -> dt.date:
    """Easter Sunday of the Gregorian calendar (the anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return dt.date(year, month, day + 1)


@cache
def public_holidays(year: int) -> frozenset[dt.date]:
    easter = easter_sunday(year)
    return frozenset([dt.date(year, m, d) for m, d in _FIXED]
                     + [easter + dt.timedelta(days=n) for n in _AFTER_EASTER])


def is_working_day(day: dt.date) -> bool:
    return day.weekday() < 5 and day not in public_holidays(day.year)


def add_working_days(start: dt.datetime, days: int) -> dt.datetime:
    """The same time of day ``days`` working days after ``start``."""
    at = start
    left = days
    while left > 0:
        at += dt.timedelta(days=1)
        if is_working_day(at.date()):
            left -= 1
    return at
