#!/usr/bin/env bash
# Real-cluster e2e: build the control image, start kind, load the image, run `pytest -m cluster`.
# Needs docker and kind on PATH (not available on the project's CI machines; run it on a workstation).
# An existing cluster works too: ECOSERVE_E2E_KUBECONFIG=~/.kube/config pytest -m cluster (images pullable).
set -euo pipefail
cd "$(dirname "$0")/../.."
make tools install
docker build -f Dockerfile.router -t ecoserve/control:0.1.0 .
kind get clusters | grep -qx ecoserve-e2e || kind create cluster --config tests/e2e/kind-config.yaml
kind load docker-image ecoserve/control:0.1.0 --name ecoserve-e2e
kubeconfig="$(mktemp)"
kind get kubeconfig --name ecoserve-e2e > "$kubeconfig"
ECOSERVE_E2E_KUBECONFIG="$kubeconfig" .venv/bin/pytest -m cluster tests/test_cluster.py -v "$@"
