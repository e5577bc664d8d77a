"""The kopf handlers: every trigger (create, update, resume, a periodic resync, any event of a worker pod) runs
the same idempotent reconcile pass for the MacroInstance concerned, one pass at a time per MacroInstance.
Run with `ecoserve operator`, or `kopf run -m ecoserve.operator.handlers`."""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server
from pydantic import ValidationError

from . import metrics
from .autoscale import Autoscaler
from .children import API_GROUP, OperatorSettings, router_endpoint
from .kube import Kube, Manifest, load_config
from .labels import MACRO_INSTANCE, ROLE, Role
from .reconcile import Reconciler

MACRO_INSTANCES = (API_GROUP, "v1alpha1", "macroinstances")
RESYNC_SECONDS = float(os.environ.get("ECOSERVE_OPERATOR_RESYNC_SECONDS", "10"))

AUTOSCALE_TICK_SECONDS = float(os.environ.get("ECOSERVE_OPERATOR_AUTOSCALE_TICK_SECONDS", "5"))
# Where a MacroInstance's router answers ({name}, {namespace}); unset: its Service. Tests point it at stand-ins.
ROUTER_URL = os.environ.get("ECOSERVE_OPERATOR_ROUTER_URL")

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def _router_url(name: str, namespace: str) -> str:
    return ROUTER_URL.format(name=name, namespace=namespace) if ROUTER_URL else router_endpoint(name, namespace)


def macro_lock(namespace: str, name: str) -> threading.Lock:
    """One reconcile pass or scaling action at a time per MacroInstance."""
    with _locks_guard:
        return _locks[namespace, name]


def _post_event(obj: Manifest, kind: str, reason: str, message: str) -> None:
    kopf.event(obj, type=kind, reason=reason, message=message)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # The CRD's status schema has no room for kopf's own bookkeeping: keep it in annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.ecoserve.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.ecoserve.io")
    settings.posting.level = logging.WARNING  # our own events say what happened; kopf's log lines stay in logs
    # A MacroInstance deleted while its resync timer runs a pass keeps kopf's finalizer until the timer has exited,
    # and kopf looks again only after this long (60 s by default): a pass takes well under a second.
    settings.background.cancellation_polling = 1.0
    load_config()
    kube = Kube()
    memo.reconciler = Reconciler(kube, _post_event, OperatorSettings.from_env())
    memo.autoscaler = Autoscaler(kube, _post_event, macro_lock, _router_url)
    if memo.get("metrics_port"):  # set by `ecoserve operator`
        start_http_server(memo.metrics_port)


def reconcile(
    memo: kopf.Memo,
    namespace: str,
    name: str,
    logger: logging.Logger | logging.LoggerAdapter,
    body: kopf.Body | None = None,
) -> None:
    """One pass; a spec the operator cannot serve is a permanent error, reported as a Warning event on `body`
    (given by the spec-change handlers only, so the periodic resync does not repeat it)."""
    with macro_lock(namespace, name):
        try:
            status = memo.reconciler.reconcile(namespace, name)
        except (ValidationError, ValueError) as err:
            metrics.RECONCILES.labels("error").inc()
            if body is not None:
                kopf.warn(body, reason="InvalidSpec", message=str(err))
            raise kopf.PermanentError(f"invalid MacroInstance spec: {err}") from err
        except ApiException as err:
            metrics.RECONCILES.labels("error").inc()
            raise kopf.TemporaryError(f"API error {err.status}: {err.reason}", delay=5) from err
        metrics.RECONCILES.labels("ok").inc()
    if status is not None:
        logger.debug(f"reconciled: {status['phase']}, {status['readyInstances']}/{status['instances']} ready")


@kopf.on.resume(*MACRO_INSTANCES)
@kopf.on.create(*MACRO_INSTANCES)
@kopf.on.update(*MACRO_INSTANCES)
def on_macro_instance(
    memo: kopf.Memo, namespace: str, name: str, logger: logging.Logger, body: kopf.Body, **_: Any
) -> None:
    reconcile(memo, namespace, name, logger, body)


@kopf.timer(*MACRO_INSTANCES, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(memo: kopf.Memo, namespace: str, name: str, logger: logging.Logger, **_: Any) -> None:
    """Drain deadlines pass and pods become ready without any spec change: look again periodically."""
    reconcile(memo, namespace, name, logger)


@kopf.timer(*MACRO_INSTANCES, interval=AUTOSCALE_TICK_SECONDS, initial_delay=AUTOSCALE_TICK_SECONDS)
def autoscale(memo: kopf.Memo, namespace: str, name: str, logger: logging.Logger, **_: Any) -> None:
    """Mitosis scaling: each group's leader plans once per `spec.autoscaling.intervalSeconds` (see autoscale)."""
    try:
        decision = memo.autoscaler.tick(namespace, name)
    except (ValidationError, ValueError):
        return  # an invalid spec is reported by the spec handlers
    except ApiException as err:
        logger.warning(f"autoscaling step failed (retried next interval): API error {err.status}: {err.reason}")
        return
    if decision is not None:
        logger.debug(f"autoscaling: {decision.action.value} ({decision.reason})")


@kopf.on.event("v1", "pods", labels={ROLE: Role.WORKER.value, MACRO_INSTANCE: kopf.PRESENT})
def on_worker_pod(memo: kopf.Memo, namespace: str, labels: dict[str, str], logger: logging.Logger, **_: Any) -> None:
    """A worker pod appeared, changed (readiness) or went away: its macro instance may need a new one."""
    try:
        reconcile(memo, namespace, labels[MACRO_INSTANCE], logger)
    except (kopf.PermanentError, kopf.TemporaryError) as err:
        logger.warning(f"reconcile after a pod event failed (the resync retries): {err}")
