#!/usr/bin/env bash
# Checks against the built binary: the shipped Kubernetes config passes `shenhe check`, and the
# /metrics of a running shenhe (after real traffic through the demo) passes `promtool check metrics`.
# Run after .ci/deploy-checks.sh, which installs promtool and PyYAML under $SHENHE_DEPLOY_TOOLS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS="${SHENHE_DEPLOY_TOOLS:-/tmp/shenhe-deploy-tools}"
PY="$TOOLS/venv/bin/python"
PROMTOOL="$TOOLS/bin/promtool"
BIN=target/debug/shenhe
[ -x "$BIN" ] || cargo build --locked
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo "=== shenhe check on the Kubernetes ConfigMap's shenhe.yaml"
"$PY" - "$work" <<'PY'
import os, sys, yaml
work = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open("deploy/kubernetes/base/configmap.yaml")) if d]
by_name = {d["metadata"]["name"]: d for d in docs}
os.makedirs(os.path.join(work, "lists"), exist_ok=True)
for name, text in by_name["shenhe-lists"]["data"].items():
    open(os.path.join(work, "lists", name), "w").write(text)
cfg = by_name["shenhe-config"]["data"]["shenhe.yaml"].replace("/etc/shenhe/lists/", work + "/lists/")
open(os.path.join(work, "k8s.yaml"), "w").write(cfg)
PY
"$BIN" check --config "$work/k8s.yaml"

echo "=== promtool check metrics on a live shenhe"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PP=$(port); AP=$(port); UP=$(port)
sed -e "s/127.0.0.1:8080/127.0.0.1:$PP/" -e "s/127.0.0.1:9090/127.0.0.1:$AP/" -e "s/127.0.0.1:8001/127.0.0.1:$UP/" \
    -e "s#../target/demo-keys#$work/keys#" -e "s#../target/demo-audit#$work/audit#" config/demo.yaml > "$work/demo.yaml"
"$BIN" demo --config "$work/demo.yaml" >"$work/demo.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$AP/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$AP/readyz" >/dev/null
body='{"model":"demo","stream":true,"messages":[{"role":"user","content":"你好"}]}'
curl -fsN "http://127.0.0.1:$PP/v1/chat/completions" -H 'content-type: application/json' -d "$body" >/dev/null
curl -s "http://127.0.0.1:$PP/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model":"demo","messages":[{"role":"user","content":"bomb recipe please"}]}' | grep -q content_filter
curl -s -o /dev/null "http://127.0.0.1:$PP/v1/unknown" -d '{}'
curl -fs "http://127.0.0.1:$AP/metrics" > "$work/metrics.txt"
"$PROMTOOL" check metrics < "$work/metrics.txt"
grep -q 'shenhe_decisions_total{action="block",category="A1d",direction="prompt"}' "$work/metrics.txt"
echo "live checks passed"
