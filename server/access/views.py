"""Partial views of a plan: what a consent limited to some content classes shows of a CarePlan,
and how a write from such a view keeps what its writer could not see.

A CarePlan is of class ``plan``; inside it, each measure (``activity``) has its own class
(:func:`~.labels.activity_class`) and so do its references to goals (``goal``), conditions
(``addresses``: ``health``) and supporting information (the class of the type referred to).
A caller sees an item when its consent covers the item's class - and always sees the measures
it is responsible for itself. The narrative (``text``) is left out of a partial view (it may
describe hidden parts), and the view is labelled ``REDACTED`` in ``meta.security``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from .labels import (
    CLASSES,
    GOAL,
    HEALTH,
    REDACTED,
    TYPE_CLASS,
    activity_class,
)

Own = Callable[[dict[str, Any]], bool]
"""Whether the caller is responsible for an activity."""

_LISTS = ("activity", "goal", "addresses", "supportingInfo")


def _referred_type(node: Any) -> str:
    ref = node.get("reference") if isinstance(node, dict) else None
    return ref.split("/")[-2] if isinstance(ref, str) and "/" in ref else ""


def _keeper(field: str, classes: Collection[str], own: Own) -> Callable[[Any], bool]:
    if field == "activity":
        return lambda a: isinstance(a, dict) and (own(a) or activity_class(a) in classes)
    if field == "goal":
        return lambda _: GOAL in classes
    if field == "addresses":
        return lambda _: HEALTH in classes
    return lambda ref: TYPE_CLASS.get(_referred_type(ref), HEALTH) in classes


def is_whole(classes: Collection[str]) -> bool:
    return set(CLASSES) <= set(classes)


def plan_view(plan: dict[str, Any], classes: Collection[str], own: Own) -> dict[str, Any]:
    """``plan`` as a caller whose consent covers ``classes`` sees it."""
    if is_whole(classes):
        return plan
    out = {k: v for k, v in plan.items() if k != "text"}
    for field in _LISTS:
        if isinstance(plan.get(field), list):
            keep = _keeper(field, classes, own)
            out[field] = [item for item in plan[field] if keep(item)]
            if not out[field]:
                del out[field]
    meta = dict(out.get("meta") or {})
    meta["security"] = [*(meta.get("security") or []), REDACTED]
    out["meta"] = meta
    return out


def merge_hidden(new: dict[str, Any], previous: dict[str, Any], classes: Collection[str],
                 own: Own) -> dict[str, Any]:
    """A plan written from a partial view, completed with what its writer could not see:
    hidden items of the stored version stay where they were, the writer's items fill the
    places of those it could see (and follow after them), and the narrative stays."""
    if is_whole(classes):
        return new
    out = dict(new)
    for field in _LISTS:
        old = previous.get(field) if isinstance(previous.get(field), list) else []
        mine = list(new.get(field) or [])
        keep = _keeper(field, classes, own)
        merged = []
        for item in old:
            if keep(item):
                if mine:
                    merged.append(mine.pop(0))
            else:
                merged.append(item)
        merged.extend(mine)
        if merged:
            out[field] = merged
        else:
            out.pop(field, None)
    if "text" not in new and "text" in previous:
        out["text"] = previous["text"]
    meta = dict(out.get("meta") or {})
    security = [c for c in meta.get("security") or []
                if not (isinstance(c, dict) and c.get("code") == REDACTED["code"]
                        and c.get("system") == REDACTED["system"])]
    if security:
        meta["security"] = security
    else:
        meta.pop("security", None)
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    return out
