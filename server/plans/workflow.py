"""One plan per person across care levels: the workflow rules, operations and background
work, wired into the FHIR service by :func:`install`.

* :mod:`.lifecycle` - one Patient per person, one open plan per person (unique keys), the
  plan's status rules, revocation when consent is withdrawn;
* :mod:`.careteam` - exactly one current coordinator, ``$change-coordinator``, the person's
  coordinator proposal;
* :mod:`.tasks` - the notification, transfer and coordinator-change Tasks' status rules and
  what completing one does;
* :mod:`.notification` - the hospital's notification with its contribution, the default due
  date, overdue reminders;
* :mod:`.transfer` - ``$transfer``;
* :mod:`.evaluation` - ``$evaluate``;
* :mod:`.goals` - the person's own goals join the plan;
* :mod:`server.notify` - Subscriptions, the outbox and delivery.

The background worker delivers notifications and sends reminders; it runs unless the
settings turn it off (``PLANBRO_WORKER=false``), and :meth:`Workflow.stop` ends it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..fhir.service import FhirService
from ..notify import Notifier
from ..notify import install as install_notify
from ..notify.delivery import DeliveryPolicy
from ..notify.worker import Job, JobRun, Worker
from . import careteam, evaluation, goals, lifecycle, notification, tasks, transfer
from .settings import WorkflowSettings
from .support import now_ms

DELIVERY_JOB = "deliver"
REMINDER_JOB = "remind"
IDLE_DELIVERY_S = 30.0


@dataclass
class Workflow:
    """What :func:`install` set up: the settings, the notifier and the background worker."""

    service: FhirService
    settings: WorkflowSettings
    notifier: Notifier
    worker: Worker

    def send_reminders(self) -> int:
        """Send the reminders due now (the worker does this every ``scan_interval_s``)."""
        return notification.send_reminders(self.service, self.settings, now_ms())

    def deliver(self) -> float | None:
        """Deliver the notifications due now (the worker does this when woken)."""
        return self.notifier.deliver()

    def stop(self) -> None:
        self.worker.stop()


def install(service: FhirService, settings: WorkflowSettings | None = None) -> Workflow:
    """Register the workflow's rules, hooks and operations on ``service`` and start the
    background worker (unless turned off)."""
    settings = settings or WorkflowSettings.from_config(service.config)
    lifecycle.install(service)
    careteam.install(service)
    tasks.install(service)
    notification.install(service, settings)
    transfer.install(service)
    evaluation.install(service)
    goals.install(service)
    policy = DeliveryPolicy(settings.delivery_attempts, settings.delivery_backoff_s,
                            settings.delivery_timeout_s)
    notifier = install_notify(service, policy, allow_loopback=settings.allow_loopback_endpoints)
    worker = Worker([Job(DELIVERY_JOB, IDLE_DELIVERY_S, notifier.deliver),
                     Job(REMINDER_JOB, settings.scan_interval_s,
                         _reminder_job(service, settings))])
    notifier.on_queued.append(lambda: worker.wake(DELIVERY_JOB))
    if settings.worker:
        worker.start()
    return Workflow(service, settings, notifier, worker)


def _reminder_job(service: FhirService, settings: WorkflowSettings) -> JobRun:
    def run() -> None:
        notification.send_reminders(service, settings, now_ms())
    return run
