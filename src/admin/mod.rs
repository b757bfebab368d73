//! The admin listener: health, readiness, metrics and the admin API. Never on the public listener.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::metrics;
use crate::server::{AppState, Shutdown};

#[derive(Clone)]
pub struct AdminState {
    pub app: Arc<AppState>,
    pub shutdown: Shutdown,
}

pub fn router(app: Arc<AppState>, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { app, shutdown })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.shutdown.is_triggered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if !s.app.is_ready_config() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "last config reload failed\n",
        )
            .into_response();
    }
    if !s.app.runtime().upstream.probe_ok().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "upstream not reachable\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics().render(),
    )
        .into_response()
}
