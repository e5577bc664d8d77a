"""`ecoserve operator`: the kopf operator that turns MacroInstance resources into serving macro instances."""

from __future__ import annotations

import argparse

from .serve import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "operator",
        help="run the kopf operator for MacroInstance resources",
        description="Reconcile MacroInstance resources: worker pods, router, gateway, ingress, status and events. "
        "Talks to the cluster of the pod's service account, else the kubeconfig. Runs standalone: one replica.",
    )
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="watch this namespace (repeat it; kopf glob patterns allowed); default: every namespace",
    )
    p.add_argument("--liveness-port", type=positive_int, default=8080, help="kopf's /healthz (default 8080)")
    p.add_argument("--metrics-port", type=positive_int, default=9090, help="Prometheus /metrics (default 9090)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import kopf

    from ecoserve.operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz",
        memo=kopf.Memo(metrics_port=args.metrics_port),
    )
    return 0
