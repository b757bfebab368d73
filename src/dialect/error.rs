//! Client-facing errors, rendered in the API's own shape, with a low-cardinality kind for metrics.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

/// How errors look on a route: OpenAI `{"error":{message,type,code,param}}` or Anthropic
/// `{"type":"error","error":{type,message}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    OpenAi,
    Anthropic,
}

/// Where a failure came from; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The upstream could not be reached (connect refused, DNS, TLS).
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream answered with something shenhe cannot read safely.
    UpstreamProtocol,
    /// The request body is over `server.body_limit`.
    BodyTooLarge,
    /// The client was too slow sending its body.
    BodyTimeout,
    /// The body is not the JSON this route needs.
    BadJson,
    /// The request is malformed in another way (path, content type, encoding).
    BadRequest,
    /// The content type is not one this route can moderate.
    UnsupportedMediaType,
    /// No route: an unlisted POST path.
    UnknownRoute,
    /// A method other than POST (or OPTIONS) on a moderated route.
    MethodNotAllowed,
    /// The prompt was refused by the policy.
    ContentFilter,
    /// The user is suspended (`enforce`).
    UserSuspended,
    /// A minor, outside the hours minors are served (`enforce.minors.hours`).
    MinorHours,
    /// The user is over a request limit: restricted, or a minor's daily cap (`enforce`), or has
    /// too many open complaints.
    UserLimit,
    /// What the request names does not exist (a complaint id).
    NotFound,
    /// The request needs to know who sends it and nothing says (complaints).
    Unidentified,
    /// The request conflicts with the current state (a complaint already resolved).
    Conflict,
    /// shenhe cannot record decisions and is configured to fail closed.
    Unavailable,
    /// A bug or resource failure inside shenhe.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::UpstreamUnreachable | ErrorKind::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::BadJson | ErrorKind::BadRequest | ErrorKind::ContentFilter => {
                StatusCode::BAD_REQUEST
            }
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::UnknownRoute => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::UserSuspended | ErrorKind::MinorHours => StatusCode::FORBIDDEN,
            ErrorKind::UserLimit => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unidentified => StatusCode::UNAUTHORIZED,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The metric label and the OpenAI `code`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamProtocol => "upstream_protocol_error",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::BodyTimeout => "body_timeout",
            ErrorKind::BadJson => "invalid_json",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::UnknownRoute => "unknown_route",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::ContentFilter => "content_filter",
            ErrorKind::UserSuspended => "user_suspended",
            ErrorKind::MinorHours => "minor_hours",
            ErrorKind::UserLimit => "rate_limit_exceeded",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unidentified => "unidentified",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "service_unavailable",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// OpenAI's `error.type` family for this kind.
    fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::BodyTooLarge
            | ErrorKind::BodyTimeout
            | ErrorKind::BadJson
            | ErrorKind::BadRequest
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::UnknownRoute
            | ErrorKind::MethodNotAllowed
            | ErrorKind::ContentFilter
            | ErrorKind::NotFound
            | ErrorKind::Conflict => "invalid_request_error",
            ErrorKind::UserSuspended | ErrorKind::MinorHours => "permission_error",
            ErrorKind::UserLimit => "rate_limit_error",
            ErrorKind::Unidentified => "authentication_error",
            _ => "api_error",
        }
    }

    /// Anthropic's `error.type` for this kind.
    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::BodyTooLarge => "request_too_large",
            ErrorKind::UnknownRoute | ErrorKind::NotFound => "not_found_error",
            ErrorKind::Unidentified => "authentication_error",
            ErrorKind::UpstreamTimeout | ErrorKind::Unavailable => "overloaded_error",
            ErrorKind::BodyTimeout
            | ErrorKind::BadJson
            | ErrorKind::BadRequest
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::MethodNotAllowed
            | ErrorKind::ContentFilter
            | ErrorKind::Conflict => "invalid_request_error",
            ErrorKind::UserSuspended | ErrorKind::MinorHours => "permission_error",
            ErrorKind::UserLimit => "rate_limit_error",
            _ => "api_error",
        }
    }

    /// Whether the client could retry the same request and succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::UpstreamUnreachable | ErrorKind::UpstreamTimeout | ErrorKind::Unavailable
        )
    }

    /// Whether the client, rather than the upstream or shenhe, is at fault.
    pub fn is_client_fault(self) -> bool {
        self.status().is_client_error()
    }
}

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    /// The policy category behind a `content_filter` refusal (never the matched term).
    pub category: Option<String>,
    pub shape: ErrorShape,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            category: None,
            shape: ErrorShape::OpenAi,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    pub fn shaped(mut self, shape: ErrorShape) -> Self {
        self.shape = shape;
        self
    }

    /// The JSON body in this error's shape.
    pub fn body_json(&self) -> serde_json::Value {
        match self.shape {
            ErrorShape::OpenAi => {
                let mut err = json!({
                    "message": self.message,
                    "type": self.kind.openai_type(),
                    "code": self.kind.code(),
                    "param": self.param,
                });
                if let Some(c) = &self.category {
                    err["innererror"] =
                        json!({ "code": "ResponsibleAIPolicyViolation", "category": c });
                }
                json!({ "error": err })
            }
            ErrorShape::Anthropic => {
                let mut err = json!({
                    "type": self.kind.anthropic_type(),
                    "message": self.message,
                });
                if let Some(c) = &self.category {
                    err["category"] = json!(c);
                }
                json!({ "type": "error", "error": err })
            }
        }
    }

    pub fn body_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.body_json()).unwrap_or_default())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.kind.status(), self.body_bytes()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.kind.retryable() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.kind == ErrorKind::MethodNotAllowed {
            // RFC 9110 §15.5.6: a 405 lists the methods the route takes.
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape_has_message_type_code_param() {
        let e = ApiError::new(ErrorKind::ContentFilter, "refused")
            .with_param("messages")
            .with_category("A1d");
        let v = e.body_json();
        assert_eq!(v["error"]["code"], "content_filter");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert_eq!(v["error"]["message"], "refused");
        assert_eq!(v["error"]["innererror"]["category"], "A1d");
    }

    #[test]
    fn anthropic_shape_is_type_error() {
        let e = ApiError::new(ErrorKind::BodyTooLarge, "too big").shaped(ErrorShape::Anthropic);
        let v = e.body_json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "request_too_large");
        assert_eq!(e.kind.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
