#!/usr/bin/env python3
"""Turn bench/out/results.tsv (written by bench/run.sh) into Markdown tables and goal ratios.

Workloads 1 and 2 run in rounds (every target once per round). The tables show each figure's
median over the rounds; each goal ratio is taken within a round (targets measured within a
minute of each other) and its median over the rounds is reported, with the lowest and highest
round in brackets.
"""
import csv
import statistics
import sys

path, terms_form, dur, slow_dur = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
n_rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 1
STREAMS = 1000
DIALECTS = {
    "chat": "OpenAI chat completions, `/v1/chat/completions`",
    "messages": "Anthropic Messages, `/v1/messages`",
    "responses": "OpenAI Responses, `/v1/responses`",
}

NUMERIC = ("rate", "p50", "p99", "cpu_us")
by_round = {}  # (dialect, workload, target) -> {round: row}
for r in csv.DictReader(open(path), delimiter="\t"):
    if not r["requests"]:
        print(f"warning: no wrk result for round {r['round']} {r['dialect']} {r['workload']} / {r['target']}",
              file=sys.stderr)
        continue
    r["rate"] = int(r["requests"]) / (int(r["duration_us"]) / 1e6)
    r["p50"] = int(r["p50_us"]) / 1000
    r["p99"] = int(r["p99_us"]) / 1000
    r["cpu_us"] = int(r["cpu_ms"]) * 1000 / max(int(r["requests"]), 1)
    by_round.setdefault((r["dialect"], r["workload"], r["target"]), {})[r["round"]] = r

# One row per target: the median of each figure over the rounds; errors summed; the rest
# (chunks per stream, RSS, connections) from the first round that has it.
rows = {}
for k, rounds in by_round.items():
    first = rounds[min(rounds, key=int)]
    r = dict(first)
    for f in NUMERIC:
        r[f] = statistics.median(x[f] for x in rounds.values())
    r["errors"] = sum(int(x["errors"]) for x in rounds.values())
    r["chunks_per_stream"] = next((x["chunks_per_stream"] for x in rounds.values()
                                   if x["chunks_per_stream"].isdigit()), first["chunks_per_stream"])
    rows[k] = r
dialects = [d for d in DIALECTS if any(k[0] == d for k in rows)]


def get(d, w, t):
    return rows.get((d, w, t))


def of(d, w):
    return [(t, r) for (rd, rw, t), r in rows.items() if rd == d and rw == w]


def per_round(d, w, f, *targets):
    """f(row, …) for each round in which every target has a result."""
    runs = [by_round.get((d, w, t), {}) for t in targets]
    common = set(runs[0]).intersection(*runs[1:]) if runs else set()
    return [f(*(run[k] for run in runs)) for k in sorted(common, key=int)]


def spread(values, fmt):
    """The median of per-round values, with the lowest and highest in brackets."""
    m = statistics.median(values)
    if len(values) < 2:
        return m, fmt.format(m)
    return m, f"{fmt.format(m)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def added(d, w, t, key):
    if t == "direct":
        return "–"
    v = per_round(d, w, lambda r, base: r[key] - base[key], t, "direct")
    return f"{statistics.median(v):+.2f}" if v else "–"


def kib_per_stream(r):
    try:
        return (int(r["rss_loaded_kib"]) - int(r["rss_idle_kib"])) / STREAMS
    except (ValueError, TypeError):
        return None


out = []
p = out.append
each = f"{dur} s per run, median of {n_rounds} rounds" if n_rounds > 1 else f"{dur} s"
p(f"### 1. 1 KB JSON requests, `stream: false`, concurrency 32, {each}\n")
for d in dialects:
    p(f"#### {DIALECTS[d]}\n")
    p("| target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | CPU µs/req ¹ |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t, r in of(d, "json"):
        p(f"| {t} | {r['rate']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {added(d, 'json', t, 'p50')} | "
          f"{added(d, 'json', t, 'p99')} | {r['errors']} | {r['cpu_us']:.0f} |")
    p("")
p(f"### 2. 256-token streams, no delay, concurrency 32, {each}\n")
for d in dialects:
    p(f"#### {DIALECTS[d]}\n")
    p("| target | streams/s | chunks/s ² | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | CPU µs/stream ¹ |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, r in of(d, "stream"):
        chunks = int(r["chunks_per_stream"]) if r["chunks_per_stream"].isdigit() else 0
        p(f"| {t} | {r['rate']:,.0f} | {r['rate'] * chunks:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
          f"{added(d, 'stream', t, 'p50')} | {added(d, 'stream', t, 'p99')} | {r['errors']} | {r['cpu_us']:.0f} |")
    p("")
slow = of("chat", "slow")
if slow:
    p(f"### 3. {STREAMS:,} concurrent 256-token chat streams, 20 ms between tokens, {slow_dur} s\n")
    p("| target | streams/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | open conns ³ | idle RSS MiB | RSS with streams MiB | KiB per open stream |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, r in slow:
        k = kib_per_stream(r)
        idle = f"{int(r['rss_idle_kib']) / 1024:.1f}" if r["rss_idle_kib"].isdigit() else "–"
        loaded = f"{int(r['rss_loaded_kib']) / 1024:.1f}" if r["rss_loaded_kib"].isdigit() else "–"
        p(f"| {t} | {r['rate']:,.0f} | {r['p50']:.0f} | {r['p99']:.0f} | {added('chat', 'slow', t, 'p50')} | "
          f"{added('chat', 'slow', t, 'p99')} | {r['errors']} | {r['conns']} | {idle} | {loaded} | "
          f"{'–' if k is None else f'{k:.1f}'} |")
    p("")
history = of("chat", "history")
if history:
    info = open(path.rsplit("/", 1)[0] + "/history_info.txt").read().split()
    p(f"### 4. Chat conversations turn by turn, 10k terms, concurrency 32, {each}\n")
    p(f"{info[0]} conversations of {info[1]} turns (a 600-byte system prompt, user messages of 100–400 "
      f"bytes, answers of 600–1,500 in the history; {int(info[2]):,} bytes a request on average), "
      "each pass new conversations. `kept`: `policy.prompt_prefix_cache: 32MiB` (the default); "
      "the other moderated row scans every prompt whole.\n")
    p("| target | req/s | p50 ms | p99 ms | errors | CPU µs/req ¹ |")
    p("|---|---:|---:|---:|---:|---:|")
    for t, r in history:
        p(f"| {t} | {r['rate']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | {r['cpu_us']:.0f} |")
    try:
        kept = dict(l.split() for l in open(path.rsplit("/", 1)[0] + "/history_kept_metrics.txt"))
        reqs = sum(int(x["requests"]) for x in by_round.get(("chat", "history", "shenhe-moderated-10k-terms-kept"), {}).values())
        p(f"\nKept process at the end: {int(kept['shenhe_prompt_prefix_states']):,} states, "
          f"{int(kept['shenhe_prompt_prefix_bytes']) / 2**20:.1f} MiB; "
          f"{int(kept['shenhe_prompt_bytes_reused_total']) / max(reqs, 1):,.0f} prompt bytes a request not scanned again "
          "(warm-ups included in the count).")
    except (OSError, KeyError, ValueError):
        pass
    p("")
p("¹ CPU time (user+sys from /proc/PID/stat) of the proxy process(es) during the run divided by "
  "requests; for `direct` it is the scripted model's own CPU.  ")
p("² streams/s × SSE events per stream as a client receives them (counted once with curl: "
  + "; ".join(f"{d}: " + ", ".join(f"{t} {r['chunks_per_stream']}" for t, r in of(d, "stream"))
              for d in dialects if of(d, "stream")) + ").  ")
if slow:
    p("³ the smallest count of established client connections on the proxy port while RSS was sampled.")
if terms_form == "inline":
    p("\nThe 10k-term rows use the terms inline as `keywords:` because `keyword_files:` did not load "
      "(see bench/out/check_terms.log).")
elif not terms_form:
    p("\nThe 10k-term rows were skipped: neither `keyword_files:` nor inline `keywords:` loaded.")

# ------------------------------------------------------------------ goals
p("\n### Goals (ratios from this run" + (f"; each the median of {n_rounds} rounds, lowest and highest "
  "round in brackets" if n_rounds > 1 else "") + ")\n")
p("| goal | target | " + " | ".join(dialects) + " |")
p("|---|---|" + "---:|" * len(dialects))


def verdict(ok):
    return "met" if ok else "**missed**"


def ratio_row(name, target, w, num, den, ok, key="rate"):
    cells = []
    for d in dialects:
        v = per_round(d, w, lambda a, b: a[key] / b[key], num, den)
        if v:
            m, text = spread(v, "{:.2f}")
            cells.append(text if ok is None else f"{text} {verdict(ok(m))}")
        else:
            cells.append("n/a")
    p(f"| {name} | {target} | " + " | ".join(cells) + " |")


for w, label in (("json", "1 KB req/s"), ("stream", "256-token streams/s")):
    ratio_row(f"shenhe passthrough / nginx, {label}", "≥ 1.00", w, "shenhe-passthrough", "nginx",
              lambda v: v >= 1.0)
for w, label in (("json", "1 KB req/s"), ("stream", "256-token streams/s")):
    # The moderation goal is set with the 10,000-term policy on both directions; the row
    # without terms shows what parsing, labels and records cost alone.
    if any(get(d, w, "shenhe-moderated-10k-terms") for d in dialects):
        ratio_row(f"shenhe moderated + 10k terms / passthrough, {label}", "≥ 0.85", w,
                  "shenhe-moderated-10k-terms", "shenhe-passthrough", lambda v: v >= 0.85)
    ratio_row(f"shenhe moderated, no terms / passthrough, {label}", "≥ 0.85 (info)", w,
              "shenhe-moderated", "shenhe-passthrough", lambda v: v >= 0.85)
# CPU per request does not depend on how the two cores were shared out in a round (which
# worker took wrk's connections, what else ran): the same comparison with less of the noise.
ratio_row("CPU per 1 KB request, shenhe passthrough / nginx (info)", "≤ 1.00", "json",
          "shenhe-passthrough", "nginx", lambda v: v <= 1.0, key="cpu_us")
if any(get(d, "json", "shenhe-moderated-10k-terms") for d in dialects):
    ratio_row("CPU per 1 KB request, moderated + 10k terms / passthrough (info)", "–", "json",
              "shenhe-moderated-10k-terms", "shenhe-passthrough", None, key="cpu_us")
if history:
    # workload 4 runs on chat only: the other columns read n/a
    ratio_row("chat history, kept / whole prompt scans, req/s (info)", "–", "history",
              "shenhe-moderated-10k-terms-kept", "shenhe-moderated-10k-terms", None)
    ratio_row("chat history, kept / whole prompt scans, CPU per request (info)", "–", "history",
              "shenhe-moderated-10k-terms-kept", "shenhe-moderated-10k-terms", None, key="cpu_us")
    for t in ("shenhe-moderated-10k-terms", "shenhe-moderated-10k-terms-kept"):
        ratio_row(f"chat history, {t.removeprefix('shenhe-')} / passthrough, req/s (info)", "≥ 0.85 (info)",
                  "history", t, "shenhe-passthrough", lambda v: v >= 0.85)
for w, label in (("json", "1 KB"), ("stream", "256-token stream")):
    for q in ("p50", "p99"):
        for route in ("passthrough", "moderated"):
            cells = []
            for d in dialects:
                v = per_round(d, w, lambda s, n, base: (s[q] - base[q], n[q] - base[q]),
                              f"shenhe-{route}", "nginx", "direct")
                if v:
                    sa = statistics.median(x[0] for x in v)
                    na = statistics.median(x[1] for x in v)
                    cells.append(f"{sa:+.2f} vs {na:+.2f} ms {verdict(sa <= na)}")
                else:
                    cells.append("n/a")
            p(f"| added {q}, {label}: shenhe {route} vs nginx | ≤ nginx | " + " | ".join(cells) + " |")

if slow:
    p("\n1,000 slow chat streams:\n")
    p("| goal | measured | target | verdict |")
    p("|---|---:|---:|---|")
    for q in ("p50", "p99"):
        for route in ("passthrough", "moderated"):
            s, n, base = get("chat", "slow", f"shenhe-{route}"), get("chat", "slow", "nginx"), get("chat", "slow", "direct")
            if s and n and base:
                sa, na = s[q] - base[q], n[q] - base[q]
                p(f"| added {q}: shenhe {route} vs nginx | {sa:+.2f} ms vs {na:+.2f} ms | ≤ nginx | {verdict(sa <= na)} |")
    for route in ("passthrough", "moderated", "moderated-10k-terms"):
        s, n = get("chat", "slow", f"shenhe-{route}"), get("chat", "slow", "nginx")
        if s and n:
            ks, kn = kib_per_stream(s), kib_per_stream(n)
            if ks is not None and kn is not None:
                p(f"| KiB per open stream: shenhe {route} vs nginx | {ks:.1f} vs {kn:.1f} | ≤ nginx and ≤ 32 | "
                  f"{'met' if ks <= kn and ks <= 32 else ('**missed** (≤ 32 met)' if ks <= 32 else '**missed**')} |")
print("\n".join(out))
