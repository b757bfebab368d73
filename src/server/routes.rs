//! The route table: which dialect serves a request path, and refusal of path variants.
//!
//! Matching is on a canonical form of the path so that no spelling of a moderated route
//! (`/v1/chat/completions/`, `/V1/Chat/Completions`) reaches the upstream unmoderated. Paths
//! that a server could read as another path (`//`, dot segments, percent-encoded `/`, `.`, `\`)
//! are refused outright: shenhe cannot know how the upstream would interpret them.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;

use crate::config::{DefaultRoute, RoutesConfig};
use crate::dialect::DialectName;
use crate::metrics::RouteSeries;

/// Well-known model API paths and the dialect each speaks.
pub const BUILTIN_ROUTES: &[(&str, DialectName)] = &[
    ("/v1/chat/completions", DialectName::OpenaiChat),
    ("/v1/completions", DialectName::OpenaiCompletions),
    ("/v1/responses", DialectName::OpenaiResponses),
    ("/v1/messages", DialectName::AnthropicMessages),
    ("/v1/images/generations", DialectName::OpenaiImages),
    ("/v1/embeddings", DialectName::Passthrough),
    ("/v1/moderations", DialectName::Passthrough),
    ("/v1/models", DialectName::Passthrough),
    ("/v1/files", DialectName::Passthrough),
    ("/v1/audio/transcriptions", DialectName::Passthrough),
    ("/v1/messages/count_tokens", DialectName::Passthrough),
    ("/v1/tokenize", DialectName::Passthrough),
    ("/v1/detokenize", DialectName::Passthrough),
];

/// A route as requests see it.
#[derive(Debug)]
pub struct Route {
    /// The path as configured: the metric and log label.
    pub template: String,
    pub dialect: DialectName,
    /// Its metric series.
    pub series: RouteSeries,
}

impl Route {
    fn new(template: &str, dialect: DialectName) -> Arc<Route> {
        Arc::new(Route {
            template: template.to_string(),
            dialect,
            series: RouteSeries::new(template),
        })
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.template == other.template && self.dialect == other.dialect
    }
}

impl Eq for Route {}

/// What a request path resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    /// A listed route.
    Listed(Arc<Route>),
    /// Not listed, forwarded untouched (GET and friends, or `routes.default: passthrough`).
    Unlisted,
    /// Not listed and refused (a POST while `routes.default: reject`).
    Refused,
    /// Not listed, under a moderated route (`/v1/responses/{id}`, `/v1/chat/completions/{id}`,
    /// `/v1/messages/batches/…`), and refused while `routes.default: reject`: there a model
    /// server serves stored output (retrieval, background runs, batch results) that was never
    /// judged on its way out. The route is the moderated one it sits under. DELETE and OPTIONS
    /// carry no output and pass.
    StoredOutput(Arc<Route>),
    /// A path shenhe will not forward because the upstream could read it as another path.
    Ambiguous(&'static str),
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Canonical (lowercase, no trailing slash) path → route.
    routes: BTreeMap<String, Arc<Route>>,
    /// What unlisted requests count under (`unlisted`, passthrough).
    unlisted: Arc<Route>,
    default: DefaultRoute,
}

impl RouteTable {
    pub fn new(cfg: &RoutesConfig) -> Self {
        let mut routes = BTreeMap::new();
        if cfg.builtin {
            for (p, d) in BUILTIN_ROUTES {
                routes.insert(canonical_key(p).into_owned(), Route::new(p, *d));
            }
        }
        for (p, d) in &cfg.paths {
            routes.insert(canonical_key(p).into_owned(), Route::new(p, *d));
        }
        Self {
            routes,
            unlisted: Route::new("unlisted", DialectName::Passthrough),
            default: cfg.default,
        }
    }

    /// Every route with its dialect, in path order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, DialectName)> {
        self.routes
            .values()
            .map(|r| (r.template.as_str(), r.dialect))
    }

    /// The route unlisted (and refused) requests are counted under.
    pub fn unlisted(&self) -> &Arc<Route> {
        &self.unlisted
    }

    pub fn default_route(&self) -> DefaultRoute {
        self.default
    }

    pub fn lookup(&self, method: &Method, path: &str) -> RouteMatch {
        if let Err(why) = check_unambiguous(path) {
            return RouteMatch::Ambiguous(why);
        }
        let key = canonical_key(path);
        if let Some(route) = self.routes.get(key.as_ref()) {
            return RouteMatch::Listed(route.clone());
        }
        if self.default == DefaultRoute::Passthrough {
            return RouteMatch::Unlisted;
        }
        if !matches!(*method, Method::DELETE | Method::OPTIONS) {
            if let Some(parent) = self.moderated_parent(&key) {
                return RouteMatch::StoredOutput(parent);
            }
        }
        if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            RouteMatch::Refused
        } else {
            RouteMatch::Unlisted
        }
    }

    /// The moderated route that `key` (canonical, not itself listed) sits under, if any.
    fn moderated_parent(&self, key: &str) -> Option<Arc<Route>> {
        // The longest listed prefix that ends at a segment boundary: a passthrough route
        // under a moderated one (`/v1/messages/count_tokens`) keeps what sits under it.
        let mut end = key.len();
        while let Some(slash) = key[..end].rfind('/') {
            if slash == 0 {
                return None;
            }
            if let Some(r) = self.routes.get(&key[..slash]) {
                return (r.dialect != DialectName::Passthrough).then(|| r.clone());
            }
            end = slash;
        }
        None
    }
}

/// The matching key of a path: ASCII-lowercased, trailing slashes removed (borrowed when the
/// path is already in that form, as nearly every request's is).
fn canonical_key(path: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = path.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

fn check_unambiguous(path: &str) -> Result<(), &'static str> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err("the path must start with `/`");
    }
    // one pass over the bytes: this runs on every request
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                return Err("the path contains an empty segment (`//`)")
            }
            b'\\' => return Err("the path contains a backslash"),
            b';' => return Err("the path contains a `;` parameter"),
            b'%' => {
                let code = b.get(i + 1..i + 3).map(|p| p.to_ascii_lowercase());
                if matches!(code.as_deref(), Some(b"2f" | b"2e" | b"5c" | b"00")) {
                    return Err("the path contains a percent-encoded separator or dot");
                }
            }
            _ => {}
        }
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("the path contains a dot segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(default: DefaultRoute) -> RouteTable {
        RouteTable::new(&RoutesConfig {
            default,
            ..Default::default()
        })
    }

    #[test]
    fn spellings_of_a_moderated_route_are_the_same_route() {
        let t = table(DefaultRoute::Reject);
        for p in [
            "/v1/chat/completions",
            "/v1/chat/completions/",
            "/V1/Chat/Completions",
        ] {
            assert!(
                matches!(
                    t.lookup(&Method::POST, p),
                    RouteMatch::Listed(r) if r.dialect == DialectName::OpenaiChat
                        && r.template == "/v1/chat/completions"
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let t = table(DefaultRoute::Passthrough);
        for p in [
            "//v1/chat/completions",
            "/v1/./chat/completions",
            "/v1/x/../chat/completions",
            "/v1/chat%2Fcompletions",
            "/v1/chat/completions;x=1",
            "/v1\\chat",
            "/v1/%2e%2E/chat",
            "/v1%5Cchat",
            "/v1/chat%00",
            "v1/chat/completions",
            "/v1/chat/completions/.",
        ] {
            assert!(
                matches!(t.lookup(&Method::POST, p), RouteMatch::Ambiguous(_)),
                "{p}"
            );
        }
        for p in ["/v1/chat%20x", "/v1/chat%", "/v1/chat%2", "/v1/models/"] {
            assert!(
                !matches!(t.lookup(&Method::POST, p), RouteMatch::Ambiguous(_)),
                "{p}"
            );
        }
    }

    #[test]
    fn unlisted_post_is_refused_unless_default_passthrough() {
        assert_eq!(
            table(DefaultRoute::Reject).lookup(&Method::POST, "/v2/generate"),
            RouteMatch::Refused
        );
        assert_eq!(
            table(DefaultRoute::Reject).lookup(&Method::GET, "/v2/anything"),
            RouteMatch::Unlisted
        );
        assert_eq!(
            table(DefaultRoute::Passthrough).lookup(&Method::POST, "/v2/generate"),
            RouteMatch::Unlisted
        );
    }

    #[test]
    fn stored_output_under_a_moderated_route_is_refused_unless_default_passthrough() {
        let t = table(DefaultRoute::Reject);
        for (method, path, parent) in [
            (Method::GET, "/v1/responses/resp_1", "/v1/responses"),
            (
                Method::GET,
                "/V1/Responses/resp_1/input_items/",
                "/v1/responses",
            ),
            (
                Method::GET,
                "/v1/chat/completions/chatcmpl-1",
                "/v1/chat/completions",
            ),
            (Method::POST, "/v1/messages/batches", "/v1/messages"),
            (
                Method::GET,
                "/v1/messages/batches/b1/results",
                "/v1/messages",
            ),
        ] {
            assert!(
                matches!(
                    t.lookup(&method, path),
                    RouteMatch::StoredOutput(r) if r.template == parent
                ),
                "{method} {path}"
            );
        }
        // Deleting stored output, a preflight, a passthrough route under a moderated one
        // and what sits under it, and paths that only share a prefix, are not stored output.
        for (method, path) in [
            (Method::DELETE, "/v1/responses/resp_1"),
            (Method::OPTIONS, "/v1/responses/resp_1"),
            (Method::POST, "/v1/messages/count_tokens"),
            (Method::GET, "/v1/messages/count_tokens/x"),
            (Method::GET, "/v1/responsesx/1"),
            (Method::GET, "/v1/models/m1"),
        ] {
            assert!(
                !matches!(t.lookup(&method, path), RouteMatch::StoredOutput(_)),
                "{method} {path}"
            );
        }
        assert_eq!(
            table(DefaultRoute::Passthrough).lookup(&Method::GET, "/v1/responses/resp_1"),
            RouteMatch::Unlisted
        );
    }

    #[test]
    fn configured_paths_override_builtins() {
        let mut cfg = RoutesConfig::default();
        cfg.paths
            .insert("/v1/embeddings".into(), DialectName::PromptOnly);
        cfg.paths
            .insert("/api/v3/chat/completions".into(), DialectName::OpenaiChat);
        let t = RouteTable::new(&cfg);
        assert!(matches!(
            t.lookup(&Method::POST, "/v1/embeddings"),
            RouteMatch::Listed(r) if r.dialect == DialectName::PromptOnly
        ));
        assert!(matches!(
            t.lookup(&Method::POST, "/api/v3/chat/completions"),
            RouteMatch::Listed(r) if r.dialect == DialectName::OpenaiChat
        ));
    }
}
