"""Settings of the plan workflow and of notification delivery.

Read from ``Config.extra["workflow"]`` (a dict with the field names below), else from the
environment:

| variable | field | default |
|---|---|---|
| ``PLANBRO_NOTIFICATION_DUE_DAYS`` | ``due_working_days`` | 5 working days |
| ``PLANBRO_REMINDER_INTERVAL`` | ``reminder_interval_s`` | 86400 (a day) |
| ``PLANBRO_SCAN_INTERVAL`` | ``scan_interval_s`` | 60 |
| ``PLANBRO_DELIVERY_ATTEMPTS`` | ``delivery_attempts`` | 6 |
| ``PLANBRO_DELIVERY_BACKOFF`` | ``delivery_backoff_s`` | 5 (doubles per attempt) |
| ``PLANBRO_DELIVERY_TIMEOUT`` | ``delivery_timeout_s`` | 10 |
| ``PLANBRO_SUBSCRIPTION_LOOPBACK`` | ``allow_loopback_endpoints`` | false |
| ``PLANBRO_WORKER`` | ``worker`` | true |
| ``PLANBRO_TIME_ZONE`` | ``time_zone`` | Europe/Oslo |
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..config import Config

_ENV = {
    "due_working_days": "PLANBRO_NOTIFICATION_DUE_DAYS",
    "reminder_interval_s": "PLANBRO_REMINDER_INTERVAL",
    "scan_interval_s": "PLANBRO_SCAN_INTERVAL",
    "delivery_attempts": "PLANBRO_DELIVERY_ATTEMPTS",
    "delivery_backoff_s": "PLANBRO_DELIVERY_BACKOFF",
    "delivery_timeout_s": "PLANBRO_DELIVERY_TIMEOUT",
    "allow_loopback_endpoints": "PLANBRO_SUBSCRIPTION_LOOPBACK",
    "worker": "PLANBRO_WORKER",
    "time_zone": "PLANBRO_TIME_ZONE",
}


@dataclass(frozen=True)
class WorkflowSettings:
    due_working_days: int = 5  # default due date of a notification or transfer
    reminder_interval_s: float = 86400.0  # one reminder per overdue notification per interval
    scan_interval_s: float = 60.0  # how often the worker looks for overdue notifications
    delivery_attempts: int = 6  # attempts per notification before the subscription errs
    delivery_backoff_s: float = 5.0  # wait after the first failure; doubles each time
    delivery_timeout_s: float = 10.0
    allow_loopback_endpoints: bool = False  # http:// to 127.0.0.1/::1/localhost (tests, dev)
    worker: bool = True  # run the background worker (delivery, reminders)
    time_zone: str = "Europe/Oslo"  # working days and due dates are local

    @classmethod
    def from_config(cls, config: Config, env: Mapping[str, str] | None = None
                    ) -> WorkflowSettings:
        environ = os.environ if env is None else env
        given: dict[str, Any] = {name: environ[var] for name, var in _ENV.items()
                                 if var in environ}
        given.update(config.extra.get("workflow", {}))
        settings = cls(**{f.name: _convert(f, given[f.name])
                          for f in dataclasses.fields(cls) if f.name in given})
        settings.validate()
        return settings

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def validate(self) -> None:
        if self.due_working_days < 0:
            raise ValueError("due_working_days must not be negative")
        for name in ("reminder_interval_s", "scan_interval_s", "delivery_backoff_s",
                     "delivery_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.delivery_attempts < 1:
            raise ValueError("delivery_attempts must be at least 1")
        try:
            self.zone  # noqa: B018 - raises for an unknown time zone
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"Unknown time zone {self.time_zone!r}") from exc


def _convert(field: dataclasses.Field[Any], value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if field.type in ("bool", bool):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if field.type in ("int", int):
        return int(value)
    if field.type in ("float", float):
        return float(value)
    return value
