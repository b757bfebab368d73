//! The HTTP server: listeners, shared state, the public proxy router and the admin router.

pub mod body;
pub mod client;
pub mod headers;
pub mod listener;
pub mod proxy;
pub mod records;
pub mod reload;
pub mod routes;
pub mod signals;
pub mod upstream;
pub mod watch;
pub mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::{Config, LoadedConfig};
use crate::label::Labeler;
use crate::policy::Policy;

pub use listener::Shutdown;

/// Everything a request needs that a reload may replace, swapped as one unit.
/// In-flight requests keep the `Arc<Runtime>` they started with.
pub struct Runtime {
    pub config: Config,
    pub routes: routes::RouteTable,
    pub headers: headers::HeaderPlan,
    pub upstream: upstream::Upstream,
    pub policy: Arc<Policy>,
    pub extras: Extras,
    /// Labels for generated content; `None` when both explicit and implicit labels are off.
    pub labeler: Option<Arc<Labeler>>,
    /// The external classifier of prompts; `None` when off.
    pub classifier: Option<Arc<crate::classify::Classifier>>,
    /// `assessment.eval_report`, resolved against the config file's folder.
    pub eval_report: Option<PathBuf>,
}

/// Extra text fields per dialect, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    pub openai_chat: crate::dialect::openai::Extras,
    pub openai_completions: crate::dialect::openai::Extras,
    pub openai_responses: crate::dialect::openai::Extras,
    pub anthropic_messages: crate::dialect::openai::Extras,
}

impl Runtime {
    /// Compile everything a config needs; `base_dir` resolves relative file paths.
    pub fn build(config: Config, base_dir: &Path) -> Result<Self, String> {
        let routes = routes::RouteTable::new(&config.routes);
        let headers = headers::HeaderPlan::new(&config.headers, &config.upstream);
        let mut up = config.upstream.clone();
        up.ca_file = up.ca_file.map(|f| base_dir.join(f));
        let upstream = upstream::Upstream::new(&up)?;
        let compiled =
            Policy::compile(&config.policy, base_dir).map_err(|e| format!("policy: {e}"))?;
        for w in &compiled.warnings {
            tracing::warn!(warning = %w, "Policy");
        }
        let policy = Arc::new(compiled.policy);
        let d = &config.dialects;
        let parse = |f: &[String]| crate::dialect::openai::Extras::parse(f);
        let extras = Extras {
            openai_chat: parse(&d.openai_chat.extra_text_fields)?,
            openai_completions: parse(&d.openai_completions.extra_text_fields)?,
            openai_responses: parse(&d.openai_responses.extra_text_fields)?,
            anthropic_messages: parse(&d.anthropic_messages.extra_text_fields)?,
        };
        let labels = config
            .labels
            .validate()
            .map_err(|e| format!("labels: {}", e.join("; ")))?;
        let labeler = if labels.explicit.is_none() && labels.implicit.is_none() {
            None
        } else {
            let mut valid = labels;
            if let Some(imp) = valid.implicit.as_mut() {
                resolve_key_path(imp, base_dir);
            }
            Some(Arc::new(
                Labeler::from_config(&valid).map_err(|e| format!("labels: {e}"))?,
            ))
        };
        let classifier = crate::classify::Classifier::new(&config.classifier, &policy)?;
        let eval_report = config
            .assessment
            .eval_report
            .as_ref()
            .map(|f| base_dir.join(f));
        Ok(Self {
            config,
            routes,
            headers,
            upstream,
            policy,
            extras,
            labeler,
            classifier,
            eval_report,
        })
    }
}

/// A relative signing-key path is relative to the config file, like keyword lists.
fn resolve_key_path(imp: &mut crate::label::ValidImplicit, base_dir: &Path) {
    if let Some(p) = imp.signing_key_file.as_mut() {
        if p.is_relative() {
            *p = base_dir.join(&*p);
        }
    }
}

/// State shared by both listeners for the life of the process.
pub struct AppState {
    runtime: ArcSwap<Runtime>,
    /// Audit records for the life of the process (a reload does not restart the writer).
    pub records: Arc<records::Records>,
    /// Where the config came from, for reloads.
    pub config_path: Option<PathBuf>,
    /// False while a reload has failed and `server.unready_on_reload_error` is set.
    pub reload_ok: AtomicBool,
    /// Complaints and reports (`complaints`); `None` when off. Set at start, like the records.
    pub complaints: Option<crate::complaints::Complaints>,
}

impl AppState {
    pub fn new(
        runtime: Runtime,
        records: records::Records,
        config_path: Option<PathBuf>,
        complaints: Option<crate::complaints::Complaints>,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime: ArcSwap::from_pointee(runtime),
            records: Arc::new(records),
            config_path,
            reload_ok: AtomicBool::new(true),
            complaints,
        })
    }

    /// The runtime in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Replace the runtime; requests already running keep the old one.
    pub fn swap(&self, rt: Runtime) {
        rt.policy.publish_metrics();
        self.runtime.store(Arc::new(rt));
    }

    pub fn is_ready_config(&self) -> bool {
        self.reload_ok.load(Ordering::Relaxed)
            || !self.runtime().config.server.unready_on_reload_error
    }
}

/// A server started on its listeners, for `serve` and for tests.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Runtime(String),
}

/// Bind both listeners and start serving. Port 0 picks a free port (tests).
pub async fn start(loaded: LoadedConfig) -> Result<Running, StartError> {
    let cfg = loaded.config.clone();
    let public = TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: cfg.server.listen,
            source,
        })?;
    let admin = TcpListener::bind(cfg.server.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: cfg.server.admin_listen,
            source,
        })?;
    let public_addr = public.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.server.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.server.admin_listen,
        source,
    })?;
    let runtime = Runtime::build(cfg.clone(), &loaded.base_dir).map_err(StartError::Runtime)?;
    let audit_cfg = cfg.audit.validate().map_err(|issues| {
        StartError::Runtime(
            issues
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    if audit_cfg.pseudonym_is_ephemeral() {
        tracing::warn!("No pseudonym secret configured (audit.pseudonym_secret_env or _file): user ids in records change on every restart");
    }
    let (auditor, audit_task) = crate::audit::Auditor::start(&audit_cfg)
        .map_err(|e| StartError::Runtime(format!("audit: {e}")))?;
    if cfg.enforce.enabled
        && cfg.enforce.store == crate::enforce::config::StoreKind::Redis
        && audit_cfg.pseudonym_is_ephemeral()
    {
        return Err(StartError::Runtime(
            "enforce.store: redis shares users among replicas, which needs the same user ids on \
             each: set audit.pseudonym_secret_env or audit.pseudonym_secret_file"
                .into(),
        ));
    }
    let mut records = records::Records::new(auditor, &audit_cfg);
    records.enforcer = crate::enforce::Enforcer::new(&cfg.enforce).map_err(StartError::Runtime)?;
    records.minor_header =
        crate::enforce::minor_header(&cfg.enforce.minors).map_err(StartError::Runtime)?;
    records.review =
        crate::review::Review::start(&cfg.review, &loaded.base_dir).map_err(StartError::Runtime)?;
    let complaints = crate::complaints::Complaints::new(&cfg.complaints, &loaded.base_dir)
        .map_err(StartError::Runtime)?;
    let state = AppState::new(runtime, records, Some(loaded.path.clone()), complaints);
    let shutdown = Shutdown::new();
    let public_service = listener::Service::Proxy(state.clone());
    let admin_service =
        listener::Service::Router(crate::admin::router(state.clone(), shutdown.clone()));
    if cfg.server.watch {
        tokio::spawn(watch::run(state.clone(), shutdown.clone()));
    }
    let header_timeout = cfg.server.header_timeout.get();
    let grace = cfg.server.shutdown_grace.get();
    let drain_delay = cfg.server.drain_delay.get();
    // Worker threads 1.. accept on clones of the public socket; this task's runtime is worker 0.
    let mut workers = Vec::new();
    let public = if worker::count(cfg.server.workers) > 1 {
        let std_public = public.into_std().map_err(|source| StartError::Bind {
            addr: public_addr,
            source,
        })?;
        for i in 1..worker::count(cfg.server.workers) {
            let (service, sd) = (public_service.clone(), shutdown.clone());
            let serve =
                move |l| listener::serve(l, service, sd, header_timeout, grace, drain_delay);
            workers.push(worker::spawn(i, &std_public, serve).map_err(|e| {
                StartError::Runtime(format!("cannot start worker thread {i}: {e}"))
            })?);
        }
        TcpListener::from_std(std_public).map_err(|source| StartError::Bind {
            addr: public_addr,
            source,
        })?
    } else {
        public
    };
    let sd = shutdown.clone();
    let task = tokio::spawn(async move {
        let admin_sd = sd.clone();
        let admin_task = tokio::spawn(async move {
            // The admin listener stays up through the drain so probes and metrics keep answering.
            listener::serve(
                admin,
                admin_service,
                admin_sd,
                header_timeout,
                grace,
                drain_delay,
            )
            .await;
        });
        listener::serve(
            public,
            public_service,
            sd,
            header_timeout,
            grace,
            drain_delay,
        )
        .await;
        for w in workers {
            let _ = w.await;
        }
        let _ = admin_task.await;
        // Every record queued before the listeners closed is written and synced.
        if let Err(e) = audit_task.shutdown().await {
            tracing::error!(error = %e, "Audit writer did not shut down cleanly");
        }
    });
    tracing::info!(%public_addr, %admin_addr, "Listening");
    Ok(Running {
        public_addr,
        admin_addr,
        state,
        shutdown,
        task,
    })
}
