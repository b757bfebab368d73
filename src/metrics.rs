//! Every Prometheus metric shenhe exports, declared once with its help text.
//!
//! Code that counts holds `metrics()` and touches the handle it needs. Label sets are bounded:
//! route templates, categories, actions, outcome kinds; never a user id, a term or a raw path.

use std::sync::{LazyLock, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: sub-millisecond proxy overhead up to multi-minute generations.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];
/// Scan-time buckets in seconds: one event's scan is microseconds.
const SCAN_BUCKETS: &[f64] = &[
    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05,
];
/// Held-back bytes per released event: most are 0, a term prefix is a few dozen bytes.
const HOLDBACK_BUCKETS: &[f64] = &[0.0, 1.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

pub struct Metrics {
    pub registry: Registry,
    // Proxy core.
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_ttfb: HistogramVec,
    pub requests_in_flight: IntGauge,
    pub active_streams: IntGauge,
    pub request_bytes: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub client_errors: IntCounterVec,
    pub build_info: IntGaugeVec,
    // Policy and config.
    pub policy_terms: IntGaugeVec,
    pub policy_age_seconds: IntGauge,
    pub policy_info: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    // Moderation.
    pub decisions: IntCounterVec,
    pub stream_stops: IntCounterVec,
    pub stream_holdback_bytes: Histogram,
    pub scan_duration: HistogramVec,
    /// `scan_duration` for prompts and for completions, resolved once: every moderated request
    /// observes both, and a label lookup hashes its values each time.
    pub scan_prompt: Histogram,
    pub scan_completion: Histogram,
    /// Prompt bytes not scanned again: they began with text an earlier prompt ended a text at
    /// (`policy.prompt_prefix_cache`).
    pub prompt_bytes_reused: IntCounter,
    /// The active policy's prompt prefix cache: states kept and the bytes it takes (set when
    /// `/metrics` is read).
    pub prompt_prefix_states: IntGauge,
    pub prompt_prefix_bytes: IntGauge,
    pub stop_to_close: Histogram,
    // Labels.
    pub labels_applied: IntCounterVec,
    /// `labels_applied{medium="text",kind="explicit",result="ok"}`, counted on nearly every
    /// answer, resolved once.
    pub text_labels_ok: IntCounter,
    pub unlabeled_deliveries: IntCounterVec,
    // Audit.
    pub audit_records: IntCounter,
    pub audit_dropped: IntCounter,
    pub audit_write_failures: IntCounter,
    pub audit_queue_depth: IntGauge,
    // Actions on users.
    pub enforce_verdicts: IntCounterVec,
    pub enforce_strikes: IntCounterVec,
    pub minor_usage_reminders: IntCounter,
    pub enforce_store_errors: IntCounterVec,
    // Complaints.
    pub complaints_filed: IntCounterVec,
    pub complaints_resolved: IntCounterVec,
    pub complaints_open: IntGaugeVec,
    pub complaints_overdue: IntGaugeVec,
    pub complaints_store_errors: IntCounterVec,
    /// Personal-information requests served through the admin API (Art. 11).
    pub pi_requests: IntCounterVec,
    // The monitors' review queue.
    pub review_items: IntCounterVec,
    pub review_verdicts: IntCounterVec,
    pub review_queue_depth: IntGauge,
    pub review_oldest_age: IntGauge,
    pub review_store_errors: IntCounterVec,
    // The external classifier.
    pub classifier_calls: IntCounterVec,
    pub classifier_duration: Histogram,
}

fn counter_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    reg.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(reg: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    reg.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    reg.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    reg.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    reg.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn histogram(reg: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric");
    reg.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    fn new() -> Self {
        let reg = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "shenhe",
            );
            let _ = reg.register(Box::new(pc));
        }
        let scan_duration = histogram_vec(
            &reg,
            "shenhe_scan_duration_seconds",
            "Time to scan one prompt or one streamed event, by direction.",
            &["direction"],
            SCAN_BUCKETS,
        );
        let labels_applied = counter_vec(&reg, "shenhe_labels_applied_total", "Provenance labels applied, by medium (text, image), kind (explicit, implicit, visible) and result (ok, error, skipped).", &["medium", "kind", "result"]);
        let m = Metrics {
            requests: counter_vec(&reg, "shenhe_requests_total", "Client requests answered, by route template, method and status class.", &["route", "method", "status"]),
            request_duration: histogram_vec(&reg, "shenhe_request_duration_seconds", "Time from request received to response body finished, by route template.", &["route"], LATENCY_BUCKETS),
            upstream_duration: histogram_vec(&reg, "shenhe_upstream_duration_seconds", "Time from upstream request sent to upstream body finished, by route template.", &["route"], LATENCY_BUCKETS),
            upstream_ttfb: histogram_vec(&reg, "shenhe_upstream_ttfb_seconds", "Time from upstream request sent to upstream response headers, by route template.", &["route"], LATENCY_BUCKETS),
            requests_in_flight: gauge(&reg, "shenhe_requests_in_flight", "Client requests being served now."),
            active_streams: gauge(&reg, "shenhe_active_streams", "Streamed (SSE) responses open now."),
            request_bytes: counter_vec(&reg, "shenhe_request_bytes_total", "Request body bytes received from clients, by route template.", &["route"]),
            response_bytes: counter_vec(&reg, "shenhe_response_bytes_total", "Response body bytes sent to clients, by route template.", &["route"]),
            upstream_errors: counter_vec(&reg, "shenhe_upstream_errors_total", "Upstream failures by kind (connect, tls, timeout, protocol, decode).", &["kind"]),
            client_errors: counter_vec(&reg, "shenhe_client_errors_total", "Requests refused for a client fault, by kind (body_too_large, bad_json, unknown_route, ...).", &["kind"]),
            build_info: gauge_vec(&reg, "shenhe_build_info", "Always 1; the version label names the running build.", &["version"]),
            policy_terms: gauge_vec(&reg, "shenhe_policy_terms", "Keyword terms in the active policy, by category.", &["category"]),
            policy_age_seconds: gauge(&reg, "shenhe_policy_age_seconds", "Age of the oldest keyword list file of the active policy, in seconds."),
            policy_info: gauge_vec(&reg, "shenhe_policy_info", "Always 1; the version label is the hash of the active compiled policy.", &["version"]),
            config_reloads: counter_vec(&reg, "shenhe_config_reload_total", "Config reload attempts by result (ok, error).", &["result"]),
            decisions: counter_vec(&reg, "shenhe_decisions_total", "Moderation findings acted on, by direction (prompt, completion), category and action.", &["direction", "category", "action"]),
            stream_stops: counter_vec(&reg, "shenhe_stream_stops_total", "Streams stopped mid-generation, by category.", &["category"]),
            enforce_verdicts: counter_vec(&reg, "shenhe_enforce_verdicts_total", "Requests on moderated routes judged by the user's standing (enforce): served, warned, restricted, or refused and why.", &["verdict"]),
            minor_usage_reminders: counter(&reg, "shenhe_minor_usage_reminders_total", "Answers to minors that carried a reminder of their continuous use (enforce.minors.session_reminder)."),
            enforce_strikes: counter_vec(&reg, "shenhe_enforce_strikes_total", "Strikes counted against users (a request with a block decision), by what followed: counted, suspended (the strike began a suspension), store_error.", &["outcome"]),
            enforce_store_errors: counter_vec(&reg, "shenhe_enforce_store_errors_total", "Enforcement store operations that failed or timed out, by operation.", &["op"]),
            complaints_filed: counter_vec(&reg, "shenhe_complaints_filed_total", "Complaints and reports filed (Art. 15), by type and channel (app: the public entry; others: filed by an operator).", &["type", "channel"]),
            complaints_resolved: counter_vec(&reg, "shenhe_complaints_resolved_total", "Complaints resolved, by type, outcome (upheld, rejected) and whether within the type's time limit (in_time: yes, no).", &["type", "outcome", "in_time"]),
            complaints_open: gauge_vec(&reg, "shenhe_complaints_open", "Open complaints by type, read from the complaint store at each scrape (the same on every replica).", &["type"]),
            complaints_overdue: gauge_vec(&reg, "shenhe_complaints_overdue", "Open complaints past their type's time limit, read from the store at each scrape (the same on every replica).", &["type"]),
            complaints_store_errors: counter_vec(&reg, "shenhe_complaints_store_errors_total", "Complaint store calls that failed or timed out, by operation.", &["op"]),
            pi_requests: counter_vec(&reg, "shenhe_pi_requests_total", "Personal-information requests (Interim Measures Art. 11) served through the admin API, by type: access (a user's records read or exported), delete (a user's records erased).", &["type"]),
            review_items: counter_vec(&reg, "shenhe_review_items_total", "Decisions offered to the monitors' review queue, by outcome: queued, or dropped (the queue in front of the store was full).", &["outcome"]),
            review_verdicts: counter_vec(&reg, "shenhe_review_verdicts_total", "Monitors' verdicts on review items by category: confirmed (a violation), dismissed (a false positive).", &["verdict", "category"]),
            review_queue_depth: gauge(&reg, "shenhe_review_queue_depth", "Review items waiting for a monitor, read from the store at each scrape (the same on every replica)."),
            review_oldest_age: gauge(&reg, "shenhe_review_oldest_age_seconds", "Age of the oldest review item waiting for a monitor, read from the store at each scrape; 0 when none waits."),
            review_store_errors: counter_vec(&reg, "shenhe_review_store_errors_total", "Review store calls that failed or timed out, by operation.", &["op"]),
            classifier_calls: counter_vec(&reg, "shenhe_classifier_calls_total", "Calls to the external classifier by result: ok, error, timeout; unknown_label counts labels that name no policy category.", &["result"]),
            classifier_duration: histogram(&reg, "shenhe_classifier_duration_seconds", "Time the external classifier took to answer.", LATENCY_BUCKETS),
            stream_holdback_bytes: histogram(&reg, "shenhe_stream_holdback_bytes", "Bytes of channel text held back after each streamed event.", HOLDBACK_BUCKETS),
            scan_prompt: scan_duration.with_label_values(&["prompt"]),
            scan_completion: scan_duration.with_label_values(&["completion"]),
            scan_duration,
            prompt_bytes_reused: counter(&reg, "shenhe_prompt_bytes_reused_total", "Prompt bytes not scanned again because an earlier prompt began with the same text (policy.prompt_prefix_cache)."),
            prompt_prefix_states: gauge(&reg, "shenhe_prompt_prefix_states", "Prompt scanner states the active policy keeps at the ends of texts it has seen (policy.prompt_prefix_cache)."),
            prompt_prefix_bytes: gauge(&reg, "shenhe_prompt_prefix_bytes", "Bytes the prompt prefix cache of the active policy takes, at most policy.prompt_prefix_cache."),
            stop_to_close: histogram(&reg, "shenhe_stop_to_close_seconds", "Time from the violating event arriving to the upstream request being closed.", SCAN_BUCKETS),
            text_labels_ok: labels_applied.with_label_values(&["text", "explicit", "ok"]),
            labels_applied,
            unlabeled_deliveries: counter_vec(&reg, "shenhe_unlabeled_deliveries_total", "Generated content delivered without an explicit label, by medium and reason.", &["medium", "reason"]),
            audit_records: counter(&reg, "shenhe_audit_records_total", "Audit records written."),
            audit_dropped: counter(&reg, "shenhe_audit_dropped_total", "Audit records dropped because the queue stayed full past its wait bound."),
            audit_write_failures: counter(&reg, "shenhe_audit_write_failures_total", "Audit record writes or syncs that failed."),
            audit_queue_depth: gauge(&reg, "shenhe_audit_queue_depth", "Audit records waiting to be written."),
            registry: reg,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// The scan-time histogram of one direction.
    pub fn scan_time(&self, direction: crate::policy::Direction) -> &Histogram {
        match direction {
            crate::policy::Direction::Prompt => &self.scan_prompt,
            crate::policy::Direction::Completion => &self.scan_completion,
        }
    }

    /// The text exposition of every metric, for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = enc.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metric handles.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The series of one route template, each looked up on first use and then held, so a request
/// touches its counters without hashing labels (six label lookups cost 4% of a passthrough
/// request's instructions). A route table holds one per route.
#[derive(Debug, Default)]
pub struct RouteSeries {
    route: String,
    /// `shenhe_requests_total` for POST, by status class 1xx..5xx.
    post: [OnceLock<IntCounter>; 5],
    request_duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
    upstream_ttfb: OnceLock<Histogram>,
    request_bytes: OnceLock<IntCounter>,
    response_bytes: OnceLock<IntCounter>,
}

impl RouteSeries {
    pub fn new(route: &str) -> Self {
        Self {
            route: route.to_string(),
            ..Self::default()
        }
    }

    /// Count an answered request with status `status`.
    pub fn answered(&self, method: &http::Method, status: u16) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if *method == http::Method::POST {
            self.post[class]
                .get_or_init(|| {
                    metrics()
                        .requests
                        .with_label_values(&[&self.route, "POST", CLASSES[class]])
                })
                .inc();
        } else {
            metrics()
                .requests
                .with_label_values(&[&self.route, method.as_str(), CLASSES[class]])
                .inc();
        }
    }

    pub fn request_duration(&self) -> &Histogram {
        self.request_duration
            .get_or_init(|| metrics().request_duration.with_label_values(&[&self.route]))
    }

    pub fn upstream_duration(&self) -> &Histogram {
        self.upstream_duration.get_or_init(|| {
            metrics()
                .upstream_duration
                .with_label_values(&[&self.route])
        })
    }

    pub fn upstream_ttfb(&self) -> &Histogram {
        self.upstream_ttfb
            .get_or_init(|| metrics().upstream_ttfb.with_label_values(&[&self.route]))
    }

    pub fn request_bytes(&self) -> &IntCounter {
        self.request_bytes
            .get_or_init(|| metrics().request_bytes.with_label_values(&[&self.route]))
    }

    pub fn response_bytes(&self) -> &IntCounter {
        self.response_bytes
            .get_or_init(|| metrics().response_bytes.with_label_values(&[&self.route]))
    }
}
