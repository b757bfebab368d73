#!/usr/bin/env bash
# Load bench: scripted model directly vs nginx proxy_pass vs shenhe (passthrough and moderated
# routes), all on 127.0.0.1, in one run, on OpenAI chat completions, Anthropic Messages and OpenAI
# Responses. See bench/README.md.
#
#   bench/run.sh              # build (release, locked), then run everything (~15 min after the build)
#   bench/run.sh --no-build   # reuse target/release/{shenhe,examples/scripted_model}
#
# Knobs (environment): BENCH_ROUNDS (rounds of workloads 1, 2 and 4, default 3: every target
# once per round, in forward then reverse order, and each ratio taken within a round),
# BENCH_DURATION (s per wrk run of workloads 1, 2 and 4, default 5), BENCH_SLOW_DURATION (s of
# the 1,000-stream run, default 16), BENCH_WARMUP (s, default 1), BENCH_DIALECTS (which APIs
# workloads 1–2 run on, of "chat messages responses", default all; workload 3 (once) and
# workload 4 (chat conversations turn by turn) run on chat only, when chat is selected).
# Raw outputs go to bench/out/ (gitignored); the final Markdown tables go to stdout and
# bench/out/summary.md. Every process started here is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/bench/out
ROUNDS=${BENCH_ROUNDS:-3}
DUR=${BENCH_DURATION:-5}
SLOW_DUR=${BENCH_SLOW_DURATION:-16}
WARM=${BENCH_WARMUP:-1}
CONC=32
SLOW_CONC=1000
TOKENS=256
SLOW_DELAY_MS=20
DIALECTS=${BENCH_DIALECTS:-chat messages responses}
DIALECTS=${DIALECTS//,/ }

MODEL_FAST=127.0.0.1:18001 # 256 tokens, no delay (workloads 1, 2)
MODEL_SLOW=127.0.0.1:18002 # 256 tokens, 20 ms apart (workload 3)
SHENHE=127.0.0.1:18080
SHENHE_ADMIN=127.0.0.1:19090
SHENHE_TERMS=127.0.0.1:18082 # the 10,000-term policy, running beside the other during workloads 1–2
SHENHE_TERMS_ADMIN=127.0.0.1:19092
SHENHE_KEPT=127.0.0.1:18083 # the 10,000-term policy with chat history kept (workload 4)
SHENHE_KEPT_ADMIN=127.0.0.1:19093
NGINX=127.0.0.1:18081

BUILD=1
[[ ${1:-} == --no-build ]] && BUILD=0

# The moderated path of each dialect, and the passthrough alias the scripted model answers alike.
api_path() { case $1 in chat) echo /v1/chat/completions ;; messages) echo /v1/messages ;; responses) echo /v1/responses ;; esac; }
raw_path() { case $1 in chat) echo /v1/raw/chat ;; messages) echo /v1/raw/messages ;; responses) echo /v1/raw/responses ;; esac; }
HAS_CHAT=0
for d in $DIALECTS; do
  [[ -n $(api_path "$d") ]] || { echo "BENCH_DIALECTS: unknown dialect '$d' (chat, messages, responses)" >&2; exit 1; }
  [[ $d == chat ]] && HAS_CHAT=1
done
[[ -n $DIALECTS ]] || { echo "BENCH_DIALECTS selects nothing" >&2; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_ROUNDS must be a whole number >= 1" >&2; exit 1; }
# The whole run after the build: twice the expected time (10 wrk runs per dialect and round,
# 3 more per round for workload 4, 5 slow runs); the script kills itself past this.
N_DIALECTS=$(wc -w <<<"$DIALECTS")
WATCHDOG_S=$((120 + 2 * (ROUNDS * (N_DIALECTS * 10 + HAS_CHAT * 3) * (WARM + DUR + 8) + HAS_CHAT * 5 * (SLOW_DUR + 24))))

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
SHENHE_BIN=${SHENHE_BIN:-$ROOT/target/release/shenhe} # another build of shenhe may be benched with --no-build
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
def body(dialect, stream, pad_to=1024):
    user = {"role": "user", "content": user_text}
    if dialect == "chat":
        msgs = [{"role": "system", "content": sys_text}, user]
        b = {"model": "demo", "stream": stream, "max_tokens": 256, "messages": msgs}
    elif dialect == "messages":
        b = {"model": "demo", "stream": stream, "max_tokens": 256, "system": sys_text, "messages": [user]}
    else:
        b = {"model": "demo", "stream": stream, "max_output_tokens": 256, "instructions": sys_text,
             "input": [user]}
    s = json.dumps(b, ensure_ascii=False, separators=(",", ":"))
    # pad the user message with spaces up to ~1 KiB of UTF-8
    short = pad_to - len(s.encode())
    if short > 0:
        user["content"] += " " * short
        s = json.dumps(b, ensure_ascii=False, separators=(",", ":"))
    return s
for dialect in ("chat", "messages", "responses"):
    for name, stream in (("json", False), ("stream", True)):
        with open(f"{out}/body_{name}_{dialect}.json", "w", encoding="utf-8") as f:
            f.write(body(dialect, stream))
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
# Workload 4: chat conversations sent turn by turn. Each body is a whole chat request as a client
# sends it (system prompt, the history so far, the new user message); one line per body, turn
# by turn across the conversations (line t * CONVS + k is turn t of conversation k). "@@" in
# the system prompt is replaced per pass by wrk_history.lua, so every pass is new conversations.
CONVS, TURNS = 128, 8
zh_chars = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下"
            "过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两"
            "体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线"
            "内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并")
en_words = ("the of and to in is that for it as with was on be by this are from or have an they which one "
            "you were all we when there can more if will would about their other into has time what some "
            "could them only new these two may first any like our over such how most after made also did "
            "many before must through years where much your way well down should because each just those "
            "people great little world still own see men work long here get both between life being under "
            "never day same another know while last might us great old year off come since against go came "
            "right used take three states himself few house use during without again place around however "
            "home small found thought went say part once general high upon school every does got united "
            "left number course war until always away something fact though water less public put think "
            "almost hand enough far took head yet government system better set told nothing night end why "
            "called didn eyes find going look asked later knew point next program city business give group "
            "toward young days let room president side social given present several order national second "
            "possible rather per face among form important often things looking early white case john become "
            "large big need four within felt along children saw best church ever least power development light").split()
def mixed(n_bytes, r):
    parts, size = [], 0
    while size < n_bytes:
        if r.random() < 0.6:
            t = "".join(r.choice(zh_chars) for _ in range(r.randint(6, 20))) + r.choice("，。；")
        else:
            t = " ".join(r.choice(en_words) for _ in range(r.randint(5, 14))).capitalize() + ". "
        parts.append(t)
        size += len(t.encode())
    return "".join(parts)
term_set = terms
def clean(text):
    # as shenhe reads it too: separators between two CJK characters are passed over
    low = text.lower()
    bare = "".join(c for c in low if c not in "，。；")
    return not any(x[i:i + n] in term_set for x in (low, bare) for i in range(len(x)) for n in range(2, 11))
def message(n_bytes, r):
    while True:
        t = mixed(n_bytes, r)
        if clean(t):
            return t
hr = random.Random(20250202)
convs = []
for k in range(CONVS):
    system = "Session @@. " + message(600, hr)
    msgs = [{"role": "system", "content": system}]
    bodies = []
    for t in range(TURNS):
        msgs.append({"role": "user", "content": message(hr.randint(100, 400), hr)})
        bodies.append(json.dumps({"model": "demo", "stream": False, "max_tokens": 256, "messages": msgs},
                                 ensure_ascii=False, separators=(",", ":")))
        msgs = msgs + [{"role": "assistant", "content": message(hr.randint(600, 1500), hr)}]
    convs.append(bodies)
with open(f"{out}/history_chat.jsonl", "w", encoding="utf-8") as f:
    for t in range(TURNS):
        for k in range(CONVS):
            f.write(convs[k][t] + "\n")
with open(f"{out}/history_info.txt", "w") as f:
    n = CONVS * TURNS
    total = sum(len(b.encode()) for c in convs for b in c)
    f.write(f"{CONVS} {TURNS} {total // n}\n")
PY
echo -e "round\tdialect\tworkload\ttarget\trequests\tduration_us\tbytes\tp50_us\tp99_us\terrors\tcpu_ms\tchunks_per_stream\trss_idle_kib\trss_loaded_kib\tconns" >"$OUT/results.tsv"

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
SHENHE_TERMS_PID=
SHENHE_KEPT_PID=
write_shenhe_config() { # $1 file, $2 upstream host:port, $3 policy yaml block (may be empty), $4 listen, $5 admin
  cat >"$1" <<EOF
server:
  listen: "${4:-$SHENHE}"
  admin_listen: "${5:-$SHENHE_ADMIN}"
upstream:
  base_url: "http://$2"
routes:
  paths:
    /v1/raw/chat: passthrough
    /v1/raw/messages: passthrough
    /v1/raw/responses: passthrough
log:
  level: warn
# explicit text label on (the default); implicit signed labels off: they need a producer code
# and a signing key (shenhe keygen), which a bench has no business holding
labels:
  implicit: { enabled: false }
audit:
  dir: "$OUT/audit"
# Every request of a run sends the same body, so kept prompt states would make every prompt a
# hit, which no real traffic is: the bench measures the prompt scanned whole (bench/README.md,
# item 28, measures the cache).
policy:
  prompt_prefix_cache: 0
$3
EOF
}
start_shenhe() { # $1 config file, $2 log name, $3 listen address (default $SHENHE); sets SHENHE_PID
  "$SHENHE_BIN" serve --config "$1" >"$OUT/$2.log" 2>&1 &
  SHENHE_PID=$!; PIDS+=("$SHENHE_PID")
  wait_http "${3:-$SHENHE}" || { cat "$OUT/$2.log" >&2; return 1; }
}

# RSS (KiB) and CPU time (ms) of a proxy: shenhe = its process, nginx = sum over workers.
proxy_pids() { # $1 kind
  case $1 in
    shenhe) echo "$SHENHE_PID" ;;
    shenhe-terms) echo "$SHENHE_TERMS_PID" ;;
    shenhe-kept) echo "$SHENHE_KEPT_PID" ;;
    nginx) ps -o pid= --ppid "$NGINX_PID" | tr -d ' ' ;;
    *) echo "${2:-}" ;;
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
    [[ -r /proc/$p/stat ]] || continue
    # fields 14, 15 of /proc/PID/stat (after the ")" of the command name: 12, 13)
    sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo $((sum * 1000 / hz))
}

# CPU ticks per thread of a shenhe process ("name=ticks ..."), to see where the client's
# connections landed: each worker keeps the connections it accepted, and the kernel decides
# which worker wakes first, so one run may put most of them on one thread and the next spread
# them (bench/README, item 20). nginx: one line per worker process.
thread_ticks() { # $1 kind
  local p t
  for p in $(proxy_pids "$1"); do
    for t in /proc/$p/task/*; do
      [[ -r $t/stat ]] || continue
      printf '%s=%s ' "$(tr ' ' '_' <"$t/comm")" "$(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')"
    done
  done
}
# Share of the busiest thread in the CPU between two thread_ticks snapshots, e.g. "0.71 (of 2)".
busiest_share() { # $1 before, $2 after
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, "="); t0[i] = kv[2] }
    m = split(b, y, " "); tot = 0; top = 0; busy = 0
    for (i = 1; i <= m; i++) { split(y[i], kv, "="); d = kv[2] - t0[i]; tot += d; if (d > top) top = d; if (d > 0) busy++ }
    if (tot > 0) printf "%.2f (of %d busy)", top / tot, busy; else printf "-"
  }'
}

check_alive() { # $1 kind, $2 model pid (direct): stop the bench if what was measured is gone
  local pid
  case $1 in shenhe) pid=$SHENHE_PID ;; shenhe-terms) pid=$SHENHE_TERMS_PID ;; shenhe-kept) pid=$SHENHE_KEPT_PID ;;
    nginx) pid=$NGINX_PID ;; *) pid=$2 ;; esac
  kill -0 "$pid" 2>/dev/null && return 0
  echo "$1 (pid $pid) is gone after a run (something else stopped it, or it crashed: see bench/out/*.log)" >&2
  exit 1
}

parse_result() { # RESULT line of a wrk output → tab-separated requests..errors
  awk '/^RESULT/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    printf "%s\t%s\t%s\t%s\t%s\t%s", v["requests"], v["duration_us"], v["bytes"], v["p50_us"], v["p99_us"],
      v["err_connect"] + v["err_read"] + v["err_write"] + v["err_status"] + v["err_timeout"]
  }' "$1"
}

count_chunks() { # SSE events a client receives for one stream of body $3 on $1
  curl -sN --max-time 30 -X POST "$1" -H 'content-type: application/json' --data-binary @"$3" \
    | tee "$OUT/sample_$2.sse" | grep -c '^data: ' || true
}

# $1 round, $2 dialect, $3 workload, $4 target label, $5 url, $6 body file,
# $7 proxy kind (direct|nginx|shenhe|shenhe-terms|shenhe-kept), $8 wrk script (bench/wrk_post.lua)
run_wrk() {
  local round=$1 d=$2 w=$3 target=$4 url=$5 body=$6 kind=$7 script=${8:-bench/wrk_post.lua} tag cpu0 cpu1 th0 chunks=-
  tag=$(echo "${d}_${w}_${target}_r$round" | tr -c 'A-Za-z0-9_\n' '_')
  log "round $round: $d $w / $target: warmup ${WARM}s, run ${DUR}s"
  echo "$round $d $w $target $(cat /proc/loadavg)" >>"$OUT/loadavg.log"
  WRK_BODY_FILE=$body timeout $((WARM + 30)) wrk -t2 -c$CONC -d${WARM}s --timeout 30s -s "$script" "$url" >"$OUT/warm_$tag.txt" 2>&1
  if [[ $w == stream && $round == 1 ]]; then chunks=$(count_chunks "$url" "$tag" "$body"); fi
  cpu0=$(cpu_ms "$kind" "$MODEL_FAST_PID")
  th0=$(thread_ticks "$kind")
  WRK_BODY_FILE=$body timeout $((DUR + 30)) wrk -t2 -c$CONC -d${DUR}s --timeout 30s --latency -s "$script" "$url" >"$OUT/wrk_$tag.txt" 2>&1
  check_alive "$kind" "$MODEL_FAST_PID"
  cpu1=$(cpu_ms "$kind" "$MODEL_FAST_PID")
  [[ $kind == direct ]] || echo "$round $d $w $target busiest thread $(busiest_share "$th0" "$(thread_ticks "$kind")")" >>"$OUT/threads.log"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t-\t-\t-\n' "$round" "$d" "$w" "$target" "$(parse_result "$OUT/wrk_$tag.txt")" $((cpu1 - cpu0)) "$chunks" >>"$OUT/results.tsv"
}

# Workload 3: 1,000 slow chat streams; RSS sampled every second while they are open.
# $1 target label, $2 url, $3 proxy kind (direct|nginx|shenhe), $4 port of the proxy
run_slow() {
  local target=$1 url=$2 kind=$3 port=$4 tag idle=- loaded=- conns=- wrk_pid t r c cpu0 cpu1 chunks
  tag=$(echo "slow_$target" | tr -c 'A-Za-z0-9_\n' '_')
  log "slow / $target: warmup, idle RSS, ${SLOW_CONC} streams for ${SLOW_DUR}s"
  echo "slow $target $(cat /proc/loadavg)" >>"$OUT/loadavg.log"
  WRK_BODY_FILE=$OUT/body_stream_chat.json timeout 40 wrk -t2 -c16 -d6s --timeout 30s -s bench/wrk_post.lua "$url" >"$OUT/warm_$tag.txt" 2>&1
  chunks=$(count_chunks "$url" "$tag" "$OUT/body_stream_chat.json")
  sleep 2
  [[ $kind != direct ]] && idle=$(rss_kib "$kind")
  cpu0=$(cpu_ms "$kind" "$MODEL_SLOW_PID")
  WRK_BODY_FILE=$OUT/body_stream_chat.json timeout $((SLOW_DUR + 40)) wrk -t2 -c$SLOW_CONC -d${SLOW_DUR}s --timeout 30s --latency \
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
  check_alive "$kind" "$MODEL_SLOW_PID"
  cpu1=$(cpu_ms "$kind" "$MODEL_SLOW_PID")
  # loaded RSS: the largest sample from 3 s to 3 s before the end (all streams connected, wrk not
  # yet stopping); conns: the smallest count of established connections in the same window
  local w="NR > 1 && \$1 >= 3 && \$1 <= $((SLOW_DUR - 3))"
  loaded=$(awk -F'\t' "$w && \$2 > m { m = \$2 } END { print m + 0 }" "$OUT/rss_$tag.tsv")
  conns=$(awk -F'\t' "$w && (m == \"\" || \$3 < m) { m = \$3 } END { print m + 0 }" "$OUT/rss_$tag.tsv")
  [[ $kind == direct ]] && loaded=-
  printf '1\tchat\tslow\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$(parse_result "$OUT/wrk_$tag.txt")" $((cpu1 - cpu0)) "$chunks" "$idle" "$loaded" "$conns" >>"$OUT/results.tsv"
}

# ---------------------------------------------------------------------------------- configs
write_shenhe_config "$OUT/shenhe_fast.yaml" $MODEL_FAST ""
write_shenhe_config "$OUT/shenhe_slow.yaml" $MODEL_SLOW ""
TERMS_FORM=
terms_policy_files="  categories:
    - { id: A1d, action: block, keyword_files: [\"$OUT/terms.txt\"] }"
write_shenhe_config "$OUT/shenhe_terms_fast.yaml" $MODEL_FAST "$terms_policy_files" $SHENHE_TERMS $SHENHE_TERMS_ADMIN
if "$SHENHE_BIN" check --config "$OUT/shenhe_terms_fast.yaml" >"$OUT/check_terms.log" 2>&1; then
  TERMS_FORM=keyword_files
else
  log "policy with keyword_files does not load (see bench/out/check_terms.log); trying the terms inline as keywords:"
  inline=$(python3 -c 'import json,sys; print(json.dumps([l.strip() for l in open(sys.argv[1], encoding="utf-8") if l.strip()], ensure_ascii=False))' "$OUT/terms.txt")
  write_shenhe_config "$OUT/shenhe_terms_fast.yaml" $MODEL_FAST "  categories:
    - { id: A1d, action: block, keywords: $inline }" $SHENHE_TERMS $SHENHE_TERMS_ADMIN
  if "$SHENHE_BIN" check --config "$OUT/shenhe_terms_fast.yaml" >"$OUT/check_terms_inline.log" 2>&1; then
    TERMS_FORM=inline
  else
    log "policy with inline keywords does not load either; skipping the 10k-term rows"
  fi
fi
if [[ -n $TERMS_FORM ]]; then
  # workload 3 runs one proxy at a time, on the usual port
  sed -e "s#http://$MODEL_FAST#http://$MODEL_SLOW#" -e "s#$SHENHE_TERMS#$SHENHE#" -e "s#$SHENHE_TERMS_ADMIN#$SHENHE_ADMIN#" \
    "$OUT/shenhe_terms_fast.yaml" >"$OUT/shenhe_terms_slow.yaml"
fi
echo "$TERMS_FORM" >"$OUT/terms_form.txt"

D=http://$MODEL_FAST; N=http://$NGINX; S=http://$SHENHE; ST=http://$SHENHE_TERMS
CHAT=/v1/chat/completions; RAW=/v1/raw/chat

# ---------------------------------------------------------------------------------- workloads 1, 2
log "dialects: $DIALECTS; $ROUNDS rounds; watchdog ${WATCHDOG_S}s"
start_nginx $MODEL_FAST
if [[ -n $TERMS_FORM ]]; then
  start_shenhe "$OUT/shenhe_terms_fast.yaml" shenhe_terms_fast $SHENHE_TERMS
  SHENHE_TERMS_PID=$SHENHE_PID
fi
start_shenhe "$OUT/shenhe_fast.yaml" shenhe_fast
# One round runs every target once for each dialect and workload, back to back, so that a ratio
# compares targets measured within a minute of each other; the order is reversed every other
# round, so that drift in the machine's speed does not favour the targets that run first.
for round in $(seq 1 "$ROUNDS"); do
  for d in $DIALECTS; do
    api=$(api_path "$d"); raw=$(raw_path "$d")
    for w in json stream; do
      body=$OUT/body_${w}_$d.json
      targets=("direct|$D$api|direct" "nginx|$N$api|nginx" "shenhe-passthrough|$S$raw|shenhe"
        "shenhe-moderated|$S$api|shenhe")
      [[ -n $TERMS_FORM ]] && targets+=("shenhe-moderated-10k-terms|$ST$api|shenhe-terms")
      if ((round % 2 == 0)); then
        for ((i = 0, j = ${#targets[@]} - 1; i < j; i++, j--)); do
          t=${targets[i]}; targets[i]=${targets[j]}; targets[j]=$t
        done
      fi
      for t in "${targets[@]}"; do
        IFS='|' read -r label url kind <<<"$t"
        run_wrk "$round" "$d" "$w" "$label" "$url" "$body" "$kind"
      done
    done
  done
done

# ---------------------------------------------------------------------------------- workload 4
# Chat conversations turn by turn (chat only, with the 10k-term policy): the prompt scanned whole
# every turn (the process above, prompt_prefix_cache: 0) against the same policy keeping the
# scanner's state at the ends of messages (prompt_prefix_cache: 32MiB, the default).
if [[ $HAS_CHAT == 1 && -n $TERMS_FORM ]]; then
  sed -e "s#$SHENHE_TERMS#$SHENHE_KEPT#" -e "s#$SHENHE_TERMS_ADMIN#$SHENHE_KEPT_ADMIN#" \
    -e "s#prompt_prefix_cache: 0#prompt_prefix_cache: 32MiB#" "$OUT/shenhe_terms_fast.yaml" >"$OUT/shenhe_kept_fast.yaml"
  passthrough_pid=$SHENHE_PID
  start_shenhe "$OUT/shenhe_kept_fast.yaml" shenhe_kept_fast $SHENHE_KEPT
  SHENHE_KEPT_PID=$SHENHE_PID SHENHE_PID=$passthrough_pid
  read -r H_CONVS _ _ <"$OUT/history_info.txt"
  export WRK_CONVERSATIONS=$H_CONVS WRK_THREADS=2
  for round in $(seq 1 "$ROUNDS"); do
    targets=("shenhe-passthrough|$S$RAW|shenhe" "shenhe-moderated-10k-terms|$ST$CHAT|shenhe-terms"
      "shenhe-moderated-10k-terms-kept|http://$SHENHE_KEPT$CHAT|shenhe-kept")
    if ((round % 2 == 0)); then targets=("${targets[2]}" "${targets[1]}" "${targets[0]}"); fi
    for t in "${targets[@]}"; do
      IFS='|' read -r label url kind <<<"$t"
      run_wrk "$round" chat history "$label" "$url" "$OUT/history_chat.jsonl" "$kind" bench/wrk_history.lua
    done
  done
  curl -s "http://$SHENHE_KEPT_ADMIN/metrics" | grep -E '^shenhe_prompt_(bytes_reused_total|prefix_states|prefix_bytes) ' >"$OUT/history_kept_metrics.txt" || true
  stop_pid "$SHENHE_KEPT_PID"
fi
stop_pid "$SHENHE_PID"
[[ -n $SHENHE_TERMS_PID ]] && stop_pid "$SHENHE_TERMS_PID"
stop_pid "$NGINX_PID"

# ---------------------------------------------------------------------------------- workload 3
if [[ $HAS_CHAT == 1 ]]; then
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
fi

# ---------------------------------------------------------------------------------- report
python3 bench/summary.py "$OUT/results.tsv" "$TERMS_FORM" "$DUR" "$SLOW_DUR" "$ROUNDS" | tee "$OUT/summary.md"
log "done; raw outputs in bench/out/"
