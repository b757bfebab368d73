#!/usr/bin/env bash
# Load bench: scripted model directly vs nginx proxy_pass vs shenhe (passthrough and moderated
# routes), all on 127.0.0.1, in one run. See bench/README.md.
#
#   bench/run.sh              # build (release, locked), then run everything (~6 min after the build)
#   bench/run.sh --no-build   # reuse target/release/{shenhe,examples/scripted_model}
#
# Knobs (environment): BENCH_DURATION (s per wrk run of workloads 1–2, default 12),
# BENCH_SLOW_DURATION (s of the 1,000-stream run, default 16), BENCH_WARMUP (s, default 3).
# Raw outputs go to bench/out/ (gitignored); the final Markdown tables go to stdout and
# bench/out/summary.md. Every process started here is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/bench/out
DUR=${BENCH_DURATION:-12}
SLOW_DUR=${BENCH_SLOW_DURATION:-16}
WARM=${BENCH_WARMUP:-3}
CONC=32
SLOW_CONC=1000
TOKENS=256
SLOW_DELAY_MS=20
WATCHDOG_S=900 # the whole run after the build; the script kills itself past this

MODEL_FAST=127.0.0.1:18001 # 256 tokens, no delay (workloads 1, 2)
MODEL_SLOW=127.0.0.1:18002 # 256 tokens, 20 ms apart (workload 3)
SHENHE=127.0.0.1:18080
SHENHE_ADMIN=127.0.0.1:19090
NGINX=127.0.0.1:18081

BUILD=1
[[ ${1:-} == --no-build ]] && BUILD=0

for tool in wrk nginx python3 curl ss; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y wrk nginx curl iproute2 python3)" >&2; exit 1; }
done

rm -rf "$OUT"
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[[ $(ulimit -n) -ge 4200 ]] || { echo "need >= 4200 file descriptors, have $(ulimit -n)" >&2; exit 1; }

PIDS=()
WATCHDOG=
cleanup() {
  local p
  [[ -n $WATCHDOG ]] && kill "$WATCHDOG" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

stop_pid() { # stop one process we started and wait for it
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

wait_http() { # wait until something answers HTTP on $1
  local i
  for i in $(seq 100); do
    curl -s -o /dev/null --max-time 1 "http://$1/" && return 0
    sleep 0.1
  done
  echo "nothing answers on $1" >&2; return 1
}

# ---------------------------------------------------------------------------------- build
if [[ $BUILD == 1 ]]; then
  log "cargo build --release --locked (+ --examples)"
  cargo build --release --locked >"$OUT/build.log" 2>&1
  cargo build --release --locked --examples >>"$OUT/build.log" 2>&1
fi
SHENHE_BIN=$ROOT/target/release/shenhe
MODEL_BIN=$ROOT/target/release/examples/scripted_model
[[ -x $SHENHE_BIN && -x $MODEL_BIN ]] || { echo "build first (cargo build --release --locked && cargo build --release --locked --examples)" >&2; exit 1; }

# (the sleep is killed with the watchdog, so it holds no pipe open after the run)
( trap 'kill $sp 2>/dev/null; exit 0' TERM
  sleep "$WATCHDOG_S" </dev/null >/dev/null 2>&1 & sp=$!
  wait $sp && { echo "watchdog: run exceeded ${WATCHDOG_S}s, stopping" >&2; kill -TERM $$; } ) &
WATCHDOG=$!

# ---------------------------------------------------------------------------------- inputs
log "generating request bodies and the 10,000-term list"
python3 - "$OUT" <<'PY'
import json, random, sys
out = sys.argv[1]
rng = random.Random(20250101)
# ~1 KB request: mixed Chinese and English prompt text (nothing in it matches a generated term).
sys_text = "You are a helpful assistant. 你是一个乐于助人的助手，请用简洁的中文回答问题。"
user_text = ("Please summarise the following notes about the quarterly planning meeting. "
             "我们讨论了下一季度的产品路线图、招聘计划以及预算安排。") * 6
def body(stream, pad_to=1024):
    msgs = [{"role": "system", "content": sys_text}, {"role": "user", "content": user_text}]
    b = {"model": "demo", "stream": stream, "max_tokens": 256, "messages": msgs}
    s = json.dumps(b, ensure_ascii=False, separators=(",", ":"))
    # pad the user message with spaces up to ~1 KiB of UTF-8
    short = pad_to - len(s.encode())
    if short > 0:
        msgs[1]["content"] += " " * short
        s = json.dumps(b, ensure_ascii=False, separators=(",", ":"))
    return s
for name, stream in (("body_json.json", False), ("body_stream.json", True)):
    with open(f"{out}/{name}", "w", encoding="utf-8") as f:
        f.write(body(stream))
# 10,000 terms: 5,000 Chinese (2–8 chars) + 5,000 English pseudo-words (5–10 letters), none of
# which occurs in the prompt or in the scripted completion ("tok tok …").
haystack = (sys_text + user_text + " tok " * 8 + "assistant demo stop").lower()
cjk = [chr(c) for c in range(0x4E00, 0x9FA6)]
letters = "abcdefghijklmnopqrstuvwxyz"
terms = set()
while len(terms) < 5000:
    t = "".join(rng.choice(cjk) for _ in range(rng.randint(2, 8)))
    if t not in haystack:
        terms.add(t)
while len(terms) < 10000:
    t = "".join(rng.choice(letters) for _ in range(rng.randint(5, 10)))
    if t not in haystack:
        terms.add(t)
with open(f"{out}/terms.txt", "w", encoding="utf-8") as f:
    f.write("\n".join(sorted(terms)) + "\n")
PY
echo -e "workload\ttarget\trequests\tduration_us\tbytes\tp50_us\tp99_us\terrors\tcpu_ms\tchunks_per_stream\trss_idle_kib\trss_loaded_kib\tconns" >"$OUT/results.tsv"

# ---------------------------------------------------------------------------------- processes
"$MODEL_BIN" --listen $MODEL_FAST --tokens $TOKENS --delay-ms 0 >"$OUT/model_fast.log" 2>&1 &
MODEL_FAST_PID=$!; PIDS+=("$MODEL_FAST_PID")
"$MODEL_BIN" --listen $MODEL_SLOW --tokens $TOKENS --delay-ms $SLOW_DELAY_MS >"$OUT/model_slow.log" 2>&1 &
MODEL_SLOW_PID=$!; PIDS+=("$MODEL_SLOW_PID")
wait_http $MODEL_FAST; wait_http $MODEL_SLOW

NGINX_PID=
start_nginx() { # $1 upstream host:port
  local dir=$OUT/nginx
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 2;
$( [[ $(id -u) == 0 ]] && echo "user root;" )
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  upstream model {
    server $1;
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen $NGINX backlog=4096;
    location / {
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 60s;
    }
  }
}
EOF
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
  NGINX_PID=$!; PIDS+=("$NGINX_PID")
  wait_http $NGINX
}

SHENHE_PID=
write_shenhe_config() { # $1 file, $2 upstream host:port, $3 policy yaml block (may be empty)
  cat >"$1" <<EOF
server:
  listen: "$SHENHE"
  admin_listen: "$SHENHE_ADMIN"
upstream:
  base_url: "http://$2"
routes:
  paths:
    /v1/raw/chat: passthrough
log:
  level: warn
# explicit text label on (the default); implicit signed labels off: they need a producer code
# and a signing key (shenhe keygen), which a bench has no business holding
labels:
  implicit: { enabled: false }
audit:
  dir: "$OUT/audit"
$3
EOF
}
start_shenhe() { # $1 config file, $2 log name
  "$SHENHE_BIN" serve --config "$1" >"$OUT/$2.log" 2>&1 &
  SHENHE_PID=$!; PIDS+=("$SHENHE_PID")
  wait_http $SHENHE || { cat "$OUT/$2.log" >&2; return 1; }
}

# RSS (KiB) and CPU time (ms) of a proxy: shenhe = its process, nginx = sum over workers.
proxy_pids() { # $1 kind
  case $1 in
    shenhe) echo "$SHENHE_PID" ;;
    nginx) ps -o pid= --ppid "$NGINX_PID" | tr -d ' ' ;;
    *) echo "$2" ;;
  esac
}
rss_kib() {
  local kind=$1 p sum=0 v
  for p in $(proxy_pids "$kind"); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo $sum
}
cpu_ms() {
  local kind=$1 p sum=0 hz
  hz=$(getconf CLK_TCK)
  for p in $(proxy_pids "$kind" "${2:-}"); do
    # fields 14, 15 of /proc/PID/stat (after the ")" of the command name: 12, 13)
    sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo $((sum * 1000 / hz))
}

parse_result() { # RESULT line of a wrk output → tab-separated requests..errors
  awk '/^RESULT/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    printf "%s\t%s\t%s\t%s\t%s\t%s", v["requests"], v["duration_us"], v["bytes"], v["p50_us"], v["p99_us"],
      v["err_connect"] + v["err_read"] + v["err_write"] + v["err_status"] + v["err_timeout"]
  }' "$1"
}

count_chunks() { # SSE events a client receives for one stream on $1
  curl -sN --max-time 30 -X POST "$1" -H 'content-type: application/json' --data-binary @"$OUT/body_stream.json" \
    | tee "$OUT/sample_$2.sse" | grep -c '^data: ' || true
}

# $1 workload, $2 target label, $3 url, $4 body file, $5 proxy kind (direct|nginx|shenhe)
run_wrk() {
  local w=$1 target=$2 url=$3 body=$4 kind=$5 tag cpu0 cpu1 chunks=-
  tag=$(echo "${w}_$target" | tr -c 'A-Za-z0-9_\n' '_')
  log "$w / $target: warmup ${WARM}s, run ${DUR}s"
  echo "$w $target $(cat /proc/loadavg)" >>"$OUT/loadavg.log"
  WRK_BODY_FILE=$body timeout $((WARM + 30)) wrk -t2 -c$CONC -d${WARM}s --timeout 30s -s bench/wrk_post.lua "$url" >"$OUT/warm_$tag.txt" 2>&1
  if [[ $body == *stream* ]]; then chunks=$(count_chunks "$url" "$tag"); fi
  cpu0=$(cpu_ms "$kind" "$MODEL_FAST_PID")
  WRK_BODY_FILE=$body timeout $((DUR + 30)) wrk -t2 -c$CONC -d${DUR}s --timeout 30s --latency -s bench/wrk_post.lua "$url" >"$OUT/wrk_$tag.txt" 2>&1
  cpu1=$(cpu_ms "$kind" "$MODEL_FAST_PID")
  printf '%s\t%s\t%s\t%s\t%s\t-\t-\t-\n' "$w" "$target" "$(parse_result "$OUT/wrk_$tag.txt")" $((cpu1 - cpu0)) "$chunks" >>"$OUT/results.tsv"
}

# Workload 3: 1,000 slow streams; RSS sampled every second while they are open.
# $1 target label, $2 url, $3 proxy kind (direct|nginx|shenhe), $4 port of the proxy
run_slow() {
  local target=$1 url=$2 kind=$3 port=$4 tag idle=- loaded=- conns=- wrk_pid t r c cpu0 cpu1 chunks
  tag=$(echo "slow_$target" | tr -c 'A-Za-z0-9_\n' '_')
  log "slow / $target: warmup, idle RSS, ${SLOW_CONC} streams for ${SLOW_DUR}s"
  echo "slow $target $(cat /proc/loadavg)" >>"$OUT/loadavg.log"
  WRK_BODY_FILE=$OUT/body_stream.json timeout 40 wrk -t2 -c16 -d6s --timeout 30s -s bench/wrk_post.lua "$url" >"$OUT/warm_$tag.txt" 2>&1
  chunks=$(count_chunks "$url" "$tag")
  sleep 2
  [[ $kind != direct ]] && idle=$(rss_kib "$kind")
  cpu0=$(cpu_ms "$kind" "$MODEL_SLOW_PID")
  WRK_BODY_FILE=$OUT/body_stream.json timeout $((SLOW_DUR + 40)) wrk -t2 -c$SLOW_CONC -d${SLOW_DUR}s --timeout 30s --latency \
    -s bench/wrk_post.lua "$url" >"$OUT/wrk_$tag.txt" 2>&1 &
  wrk_pid=$!; PIDS+=("$wrk_pid")
  echo -e "t_s\trss_kib\testablished" >"$OUT/rss_$tag.tsv"
  for t in $(seq 1 $((SLOW_DUR - 1))); do
    sleep 1
    r=0; [[ $kind != direct ]] && r=$(rss_kib "$kind")
    c=$(ss -Htn state established "( sport = :$port )" | wc -l)
    echo -e "$t\t$r\t$c" >>"$OUT/rss_$tag.tsv"
  done
  wait "$wrk_pid" || true
  cpu1=$(cpu_ms "$kind" "$MODEL_SLOW_PID")
  # loaded RSS: the largest sample from 3 s to 3 s before the end (all streams connected, wrk not
  # yet stopping); conns: the smallest count of established connections in the same window
  local w="NR > 1 && \$1 >= 3 && \$1 <= $((SLOW_DUR - 3))"
  loaded=$(awk -F'\t' "$w && \$2 > m { m = \$2 } END { print m + 0 }" "$OUT/rss_$tag.tsv")
  conns=$(awk -F'\t' "$w && (m == \"\" || \$3 < m) { m = \$3 } END { print m + 0 }" "$OUT/rss_$tag.tsv")
  [[ $kind == direct ]] && loaded=-
  printf 'slow\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$(parse_result "$OUT/wrk_$tag.txt")" $((cpu1 - cpu0)) "$chunks" "$idle" "$loaded" "$conns" >>"$OUT/results.tsv"
}

# ---------------------------------------------------------------------------------- configs
write_shenhe_config "$OUT/shenhe_fast.yaml" $MODEL_FAST ""
write_shenhe_config "$OUT/shenhe_slow.yaml" $MODEL_SLOW ""
TERMS_FORM=
terms_policy_files="policy:
  categories:
    - { id: A1d, action: block, keyword_files: [\"$OUT/terms.txt\"] }"
write_shenhe_config "$OUT/shenhe_terms_fast.yaml" $MODEL_FAST "$terms_policy_files"
if "$SHENHE_BIN" check --config "$OUT/shenhe_terms_fast.yaml" >"$OUT/check_terms.log" 2>&1; then
  TERMS_FORM=keyword_files
else
  log "policy with keyword_files does not load (see bench/out/check_terms.log); trying the terms inline as keywords:"
  inline=$(python3 -c 'import json,sys; print(json.dumps([l.strip() for l in open(sys.argv[1], encoding="utf-8") if l.strip()], ensure_ascii=False))' "$OUT/terms.txt")
  write_shenhe_config "$OUT/shenhe_terms_fast.yaml" $MODEL_FAST "policy:
  categories:
    - { id: A1d, action: block, keywords: $inline }"
  if "$SHENHE_BIN" check --config "$OUT/shenhe_terms_fast.yaml" >"$OUT/check_terms_inline.log" 2>&1; then
    TERMS_FORM=inline
  else
    log "policy with inline keywords does not load either; skipping the 10k-term rows"
  fi
fi
if [[ -n $TERMS_FORM ]]; then
  sed "s#http://$MODEL_FAST#http://$MODEL_SLOW#" "$OUT/shenhe_terms_fast.yaml" >"$OUT/shenhe_terms_slow.yaml"
fi
echo "$TERMS_FORM" >"$OUT/terms_form.txt"

D=http://$MODEL_FAST; N=http://$NGINX; S=http://$SHENHE
CHAT=/v1/chat/completions; RAW=/v1/raw/chat

# ---------------------------------------------------------------------------------- workloads 1, 2
start_nginx $MODEL_FAST
start_shenhe "$OUT/shenhe_fast.yaml" shenhe_fast
for w in json:body_json.json stream:body_stream.json; do
  name=${w%%:*}; body=$OUT/${w#*:}
  run_wrk "$name" direct "$D$CHAT" "$body" direct
  run_wrk "$name" nginx "$N$CHAT" "$body" nginx
  run_wrk "$name" shenhe-passthrough "$S$RAW" "$body" shenhe
  run_wrk "$name" shenhe-moderated "$S$CHAT" "$body" shenhe
done
stop_pid "$SHENHE_PID"
if [[ -n $TERMS_FORM ]]; then
  start_shenhe "$OUT/shenhe_terms_fast.yaml" shenhe_terms_fast
  run_wrk json shenhe-moderated-10k-terms "$S$CHAT" "$OUT/body_json.json" shenhe
  run_wrk stream shenhe-moderated-10k-terms "$S$CHAT" "$OUT/body_stream.json" shenhe
  stop_pid "$SHENHE_PID"
fi
stop_pid "$NGINX_PID"

# ---------------------------------------------------------------------------------- workload 3
D=http://$MODEL_SLOW
run_slow direct "$D$CHAT" direct "${MODEL_SLOW##*:}"
start_nginx $MODEL_SLOW
run_slow nginx "$N$CHAT" nginx "${NGINX##*:}"
stop_pid "$NGINX_PID"
# a fresh shenhe for each route, so each idle RSS is measured on a process that only warmed up
for route in passthrough:$RAW moderated:$CHAT; do
  start_shenhe "$OUT/shenhe_slow.yaml" "shenhe_slow_${route%%:*}"
  run_slow "shenhe-${route%%:*}" "$S${route#*:}" shenhe "${SHENHE##*:}"
  stop_pid "$SHENHE_PID"
done
if [[ -n $TERMS_FORM ]]; then
  start_shenhe "$OUT/shenhe_terms_slow.yaml" shenhe_terms_slow
  run_slow shenhe-moderated-10k-terms "$S$CHAT" shenhe "${SHENHE##*:}"
  stop_pid "$SHENHE_PID"
fi

# ---------------------------------------------------------------------------------- report
python3 bench/summary.py "$OUT/results.tsv" "$TERMS_FORM" "$DUR" "$SLOW_DUR" | tee "$OUT/summary.md"
log "done; raw outputs in bench/out/"
