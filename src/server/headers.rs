//! Header hygiene between client and upstream: hop-by-hop removal, forwarding headers, request ids,
//! the upstream key, and the configured drop/add rules.

use http::{header, HeaderMap, HeaderName, HeaderValue};
use rand::RngCore;

use crate::config::{HeaderRules, UpstreamConfig};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus ones shenhe must own on each hop.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Header rules compiled once per config.
#[derive(Debug, Clone, Default)]
pub struct HeaderPlan {
    drop_request: Vec<HeaderName>,
    add_request: Vec<(HeaderName, HeaderValue)>,
    drop_response: Vec<HeaderName>,
    add_response: Vec<(HeaderName, HeaderValue)>,
    /// The upstream credential, replacing whatever the client sent.
    upstream_key: Option<(HeaderName, HeaderValue)>,
}

impl HeaderPlan {
    /// Build from validated config (invalid names were rejected at load, so they are skipped here).
    pub fn new(rules: &HeaderRules, upstream: &UpstreamConfig) -> Self {
        let names = |v: &[String]| {
            v.iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect::<Vec<_>>()
        };
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect::<Vec<_>>()
        };
        // An empty key (`${UPSTREAM_API_KEY:-}` with the variable unset) means no key: the
        // client's own credentials then pass through.
        let upstream_key = upstream
            .api_key
            .as_ref()
            .filter(|k| !k.is_empty())
            .and_then(|key| match &upstream.api_key_header {
                Some(h) => Some((
                    HeaderName::from_bytes(h.as_bytes()).ok()?,
                    HeaderValue::from_str(key).ok()?,
                )),
                None => Some((
                    header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("Bearer {key}")).ok()?,
                )),
            });
        let upstream_key = upstream_key.map(|(n, mut v)| {
            v.set_sensitive(true);
            (n, v)
        });
        Self {
            drop_request: names(&rules.drop_request),
            add_request: pairs(&rules.add_request),
            drop_response: names(&rules.drop_response),
            add_response: pairs(&rules.add_response),
            upstream_key,
        }
    }

    /// The headers to send upstream for a client request.
    pub fn upstream_request(
        &self,
        client: &HeaderMap,
        peer: Option<&HeaderValue>,
        request_id: &HeaderValue,
        moderated: bool,
    ) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(client.len() + 4);
        let listed = connection_listed(client);
        for (name, value) in client {
            if is_hop_by_hop(name) || listed.contains(name) || self.drop_request.contains(name) {
                continue;
            }
            out.append(name.clone(), value.clone());
        }
        if let Some((name, value)) = &self.upstream_key {
            // The client's own credential is for shenhe's caller identity, never for the upstream.
            out.remove(header::AUTHORIZATION);
            out.remove(HeaderName::from_static("x-api-key"));
            out.insert(name.clone(), value.clone());
        }
        if let Some(ip) = peer {
            let xff = match client.get(&X_FORWARDED_FOR).filter(|v| !v.is_empty()) {
                Some(prev) => {
                    HeaderValue::from_bytes(&[prev.as_bytes(), b", ", ip.as_bytes()].concat()).ok()
                }
                None => Some(ip.clone()),
            };
            if let Some(v) = xff {
                out.insert(X_FORWARDED_FOR, v);
            }
        }
        if !out.contains_key(&X_FORWARDED_PROTO) {
            out.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        out.insert(X_REQUEST_ID, request_id.clone());
        if moderated {
            // shenhe must read what it judges: ask for plain bytes (compressed answers are decoded anyway).
            out.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        for (name, value) in &self.add_request {
            out.insert(name.clone(), value.clone());
        }
        out
    }

    /// The headers to send to the client for an upstream response.
    pub fn client_response(&self, upstream: &HeaderMap, request_id: &HeaderValue) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(upstream.len() + 2);
        let listed = connection_listed(upstream);
        for (name, value) in upstream {
            if is_hop_by_hop(name) || listed.contains(name) || self.drop_response.contains(name) {
                continue;
            }
            out.append(name.clone(), value.clone());
        }
        out.insert(X_REQUEST_ID, request_id.clone());
        self.decorate_response(&mut out);
        out
    }

    /// Add the configured response headers (also on answers shenhe makes itself).
    pub fn decorate_response(&self, out: &mut HeaderMap) {
        for (name, value) in &self.add_response {
            out.insert(name.clone(), value.clone());
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Headers named in `Connection:` are hop-by-hop too.
fn connection_listed(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// The client's request id when it is sane (1–128 visible ASCII chars), else a new random one.
pub fn request_id(client: &HeaderMap) -> HeaderValue {
    if let Some(v) = client.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

pub fn new_request_id() -> HeaderValue {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    HeaderValue::from_str(&s).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::listener::PeerAddr;

    fn plan(key: Option<&str>) -> HeaderPlan {
        let upstream = UpstreamConfig {
            api_key: key.map(str::to_string),
            ..Default::default()
        };
        let mut rules = HeaderRules::default();
        rules.drop_request.push("x-secret-debug".into());
        rules.add_request.insert("x-added".into(), "1".into());
        HeaderPlan::new(&rules, &upstream)
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-foo"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        h.insert("x-secret-debug", HeaderValue::from_static("1"));
        let out = plan(None).upstream_request(&h, None, &new_request_id(), false);
        assert!(out.get("x-foo").is_none());
        assert!(out.get("te").is_none());
        assert!(out.get("connection").is_none());
        assert!(out.get("x-secret-debug").is_none());
        assert_eq!(out["x-keep"], "yes");
        assert_eq!(out["x-added"], "1");
    }

    #[test]
    fn upstream_key_replaces_client_credentials() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer client-key"),
        );
        let out = plan(Some("up-key")).upstream_request(&h, None, &new_request_id(), true);
        assert_eq!(out["authorization"], "Bearer up-key");
        assert_eq!(out["accept-encoding"], "identity");
    }

    #[test]
    fn an_empty_upstream_key_leaves_client_credentials_alone() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer client-key"),
        );
        let out = plan(Some("")).upstream_request(&h, None, &new_request_id(), false);
        assert_eq!(out["authorization"], "Bearer client-key");
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let peer = PeerAddr::new("127.0.0.9:5555".parse().unwrap());
        let out = plan(None).upstream_request(&h, Some(&peer.ip), &new_request_id(), false);
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "http");
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        let id = request_id(&h);
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_request_id());
    }
}
