#!/usr/bin/env python3
"""Turn bench/out/results.tsv (written by bench/run.sh) into Markdown tables and goal ratios."""
import csv
import sys

path, terms_form, dur, slow_dur = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
STREAMS = 1000

rows = {}
for r in csv.DictReader(open(path), delimiter="\t"):
    if not r["requests"]:
        print(f"warning: no wrk result for {r['workload']} / {r['target']}", file=sys.stderr)
        continue
    r["rate"] = int(r["requests"]) / (int(r["duration_us"]) / 1e6)
    r["p50"] = int(r["p50_us"]) / 1000
    r["p99"] = int(r["p99_us"]) / 1000
    r["cpu_us"] = int(r["cpu_ms"]) * 1000 / max(int(r["requests"]), 1)
    rows[(r["workload"], r["target"])] = r


def get(w, t):
    return rows.get((w, t))


def added(w, t, key):
    r, d = get(w, t), get(w, "direct")
    if not r or not d or t == "direct":
        return "–"
    return f"{r[key] - d[key]:+.2f}"


def kib_per_stream(r):
    try:
        return (int(r["rss_loaded_kib"]) - int(r["rss_idle_kib"])) / STREAMS
    except (ValueError, TypeError):
        return None


out = []
p = out.append
p(f"### 1. 1 KB JSON requests, `stream: false`, concurrency 32, {dur} s\n")
p("| target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | CPU µs/req ¹ |")
p("|---|---:|---:|---:|---:|---:|---:|---:|")
for (w, t), r in rows.items():
    if w == "json":
        p(f"| {t} | {r['rate']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {added(w, t, 'p50')} | "
          f"{added(w, t, 'p99')} | {r['errors']} | {r['cpu_us']:.0f} |")
p(f"\n### 2. 256-token streams, no delay, concurrency 32, {dur} s\n")
p("| target | streams/s | chunks/s ² | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | CPU µs/stream ¹ |")
p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for (w, t), r in rows.items():
    if w == "stream":
        chunks = int(r["chunks_per_stream"]) if r["chunks_per_stream"].isdigit() else 0
        p(f"| {t} | {r['rate']:,.0f} | {r['rate'] * chunks:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
          f"{added(w, t, 'p50')} | {added(w, t, 'p99')} | {r['errors']} | {r['cpu_us']:.0f} |")
p(f"\n### 3. {STREAMS:,} concurrent 256-token streams, 20 ms between tokens, {slow_dur} s\n")
p("| target | streams/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | open conns ³ | idle RSS MiB | RSS with streams MiB | KiB per open stream |")
p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for (w, t), r in rows.items():
    if w == "slow":
        k = kib_per_stream(r)
        idle = f"{int(r['rss_idle_kib']) / 1024:.1f}" if r["rss_idle_kib"].isdigit() else "–"
        loaded = f"{int(r['rss_loaded_kib']) / 1024:.1f}" if r["rss_loaded_kib"].isdigit() else "–"
        p(f"| {t} | {r['rate']:,.0f} | {r['p50']:.0f} | {r['p99']:.0f} | {added(w, t, 'p50')} | "
          f"{added(w, t, 'p99')} | {r['errors']} | {r['conns']} | {idle} | {loaded} | "
          f"{'–' if k is None else f'{k:.1f}'} |")
p("")
p("¹ CPU time (user+sys from /proc/PID/stat) of the proxy process(es) during the run divided by "
  "requests; for `direct` it is the scripted model's own CPU.  ")
p("² streams/s × SSE events per stream as a client receives them (counted once with curl: "
  + ", ".join(f"{t} {r['chunks_per_stream']}" for (w, t), r in rows.items() if w == "stream") + ").  ")
p("³ the smallest count of established client connections on the proxy port while RSS was sampled.")
if terms_form == "inline":
    p("\nThe 10k-term rows use the terms inline as `keywords:` because `keyword_files:` did not load "
      "(see bench/out/check_terms.log).")
elif not terms_form:
    p("\nThe 10k-term rows were skipped: neither `keyword_files:` nor inline `keywords:` loaded.")

# ------------------------------------------------------------------ goals
p("\n### Goals (ratios from this run)\n")
p("| goal | measured | target | verdict |")
p("|---|---:|---:|---|")


def goal(name, value, target, ok, fmt="{:.2f}"):
    if value is None:
        p(f"| {name} | n/a | {target} | – |")
    else:
        p(f"| {name} | {fmt.format(value)} | {target} | {'met' if ok(value) else '**missed**'} |")


for w, label in (("json", "1 KB req/s"), ("stream", "256-token streams/s")):
    s, n = get(w, "shenhe-passthrough"), get(w, "nginx")
    goal(f"shenhe passthrough / nginx, {label}", s and n and s["rate"] / n["rate"], "≥ 1.00", lambda v: v >= 1.0)
for w, label in (("json", "1 KB"), ("stream", "256-token stream"), ("slow", "1,000 slow streams")):
    for q in ("p50", "p99"):
        for route in ("passthrough", "moderated"):
            s, n, d = get(w, f"shenhe-{route}"), get(w, "nginx"), get(w, "direct")
            if s and n and d:
                sa, na = s[q] - d[q], n[q] - d[q]
                p(f"| added {q}, {label}: shenhe {route} vs nginx | {sa:+.2f} ms vs {na:+.2f} ms | "
                  f"≤ nginx | {'met' if sa <= na else '**missed**'} |")
for route in ("passthrough", "moderated", "moderated-10k-terms"):
    s, n = get("slow", f"shenhe-{route}"), get("slow", "nginx")
    if s and n:
        ks, kn = kib_per_stream(s), kib_per_stream(n)
        if ks is not None and kn is not None:
            p(f"| KiB per open stream: shenhe {route} vs nginx | {ks:.1f} vs {kn:.1f} | ≤ nginx and ≤ 32 | "
              f"{'met' if ks <= kn and ks <= 32 else ('**missed** (≤ 32 met)' if ks <= 32 else '**missed**')} |")
for w, label in (("json", "1 KB req/s"), ("stream", "256-token streams/s")):
    m, s = get(w, "shenhe-moderated"), get(w, "shenhe-passthrough")
    goal(f"shenhe moderated / passthrough, {label}", m and s and m["rate"] / s["rate"], "≥ 0.85", lambda v: v >= 0.85)
    mt = get(w, "shenhe-moderated-10k-terms")
    if mt and s:
        goal(f"shenhe moderated + 10k terms / passthrough, {label}", mt["rate"] / s["rate"], "≥ 0.85 (info)",
             lambda v: v >= 0.85)
print("\n".join(out))
