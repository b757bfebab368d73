//! OpenAI Images (`/v1/images/generations`) and prompt-only routes (embeddings and the like):
//! the prompt is judged like any prompt; generated images are labeled in place.
//!
//! An image returned as `b64_json` gets the signed `TC260:AIGC` XMP block (and the visible label
//! when configured). An image returned as a `url` cannot be labeled in-line: it is delivered and
//! recorded as `unlabeled:url_image`, or the answer is refused with `labels.images.url_responses:
//! reject`. An image that cannot be labeled is not delivered (fail closed).

use base64::Engine as _;
use serde_json::Value;

use super::paths::{Found, Seg};
use crate::dialect::error::{ApiError, ErrorKind};
use crate::label::{Labeler, UrlResponses};

/// How one delivered image was labeled, for its delivery record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDelivery {
    pub content_id: Option<String>,
    pub content_sha256: Option<String>,
    pub label: String,
}

/// The prompt of an image request: `prompt` must be a string.
pub fn prompt_texts(req: &Value) -> Result<Vec<Found>, ApiError> {
    if !req.is_object() {
        return Err(ApiError::new(
            ErrorKind::BadJson,
            "the request body must be a JSON object",
        ));
    }
    match &req["prompt"] {
        Value::String(s) => Ok(vec![Found {
            path: vec![Seg::Key("prompt".into())],
            text: s.clone(),
        }]),
        _ => Err(
            ApiError::new(ErrorKind::BadRequest, "`prompt` must be a string").with_param("prompt"),
        ),
    }
}

/// The prompt texts of a prompt-only route: `input`, `prompt` and `messages`, each a string or
/// an array of strings (`messages` may also hold chat messages). Token ids cannot be judged as
/// text and are refused.
pub fn prompt_only_texts(req: &Value) -> Result<Vec<Found>, ApiError> {
    let Some(obj) = req.as_object() else {
        return Err(ApiError::new(
            ErrorKind::BadJson,
            "the request body must be a JSON object",
        ));
    };
    let mut out = Vec::new();
    for field in ["input", "prompt", "messages"] {
        let refuse = || {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("`{field}` must be text (a string or an array of strings) to be moderated"),
            )
            .with_param(field)
        };
        let key = |rest: &[Seg]| {
            let mut p = vec![Seg::Key(field.into())];
            p.extend_from_slice(rest);
            p
        };
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => out.push(Found {
                path: key(&[]),
                text: s.clone(),
            }),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(Found {
                            path: key(&[Seg::Index(i)]),
                            text: s.clone(),
                        }),
                        Value::Object(m) if field == "messages" => match m.get("content") {
                            Some(Value::String(s)) => out.push(Found {
                                path: key(&[Seg::Index(i), Seg::Key("content".into())]),
                                text: s.clone(),
                            }),
                            Some(Value::Array(parts)) => {
                                for (j, p) in parts.iter().enumerate() {
                                    if let Some(Value::String(s)) = p.get("text") {
                                        out.push(Found {
                                            path: key(&[
                                                Seg::Index(i),
                                                Seg::Key("content".into()),
                                                Seg::Index(j),
                                                Seg::Key("text".into()),
                                            ]),
                                            text: s.clone(),
                                        });
                                    }
                                }
                            }
                            None | Some(Value::Null) => {}
                            Some(_) => return Err(refuse()),
                        },
                        _ => return Err(refuse()),
                    }
                }
            }
            Some(_) => return Err(refuse()),
        }
    }
    Ok(out)
}

/// Label every image of an Images answer in place. `labeler` is `None` when labels are off.
/// Returns one delivery per image; an error refuses the whole answer.
pub fn label_images(
    doc: &mut Value,
    labeler: Option<&Labeler>,
) -> Result<Vec<ImageDelivery>, ApiError> {
    let mut out = Vec::new();
    let Some(data) = doc.get_mut("data").and_then(Value::as_array_mut) else {
        return Ok(out);
    };
    let labels_on = labeler.is_some_and(|l| l.images().xmp || l.images().visible.is_some());
    for item in data.iter_mut() {
        if let Some(Value::String(b64)) = item.get("b64_json") {
            let Some(l) = labeler.filter(|_| labels_on) else {
                unlabeled("disabled");
                out.push(ImageDelivery {
                    content_id: None,
                    content_sha256: None,
                    label: "unlabeled".into(),
                });
                continue;
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| {
                    ApiError::new(
                        ErrorKind::UpstreamProtocol,
                        "the model server sent an image that is not valid base64",
                    )
                })?;
            let produce_id = crate::label::new_produce_id();
            let labeled = crate::label::label_image(&bytes, l, &produce_id).map_err(|e| {
                tracing::warn!(error = %e, "Image not labeled");
                ApiError::new(
                    ErrorKind::UpstreamProtocol,
                    "the generated image could not be labeled, so it is not delivered",
                )
            })?;
            let label = match (l.images().visible.is_some(), l.images().xmp) {
                (true, true) => "visible+implicit",
                (true, false) => "visible_only",
                _ => "implicit_only:image",
            };
            out.push(ImageDelivery {
                content_id: l.images().xmp.then(|| produce_id.clone()),
                content_sha256: Some(crate::audit::sha256_hex(&labeled)),
                label: label.into(),
            });
            item["b64_json"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(&labeled));
        } else if item.get("url").is_some_and(Value::is_string) {
            let reject = labeler.is_some_and(|l| l.images().url_responses == UrlResponses::Reject);
            if reject {
                return Err(ApiError::new(
                    ErrorKind::UpstreamProtocol,
                    "the model server answered with image URLs, which cannot be labeled; request `response_format: b64_json`",
                ));
            }
            unlabeled("url_image");
            out.push(ImageDelivery {
                content_id: None,
                content_sha256: None,
                label: "unlabeled:url_image".into(),
            });
        }
    }
    Ok(out)
}

fn unlabeled(reason: &str) {
    crate::metrics::metrics()
        .unlabeled_deliveries
        .with_label_values(&["image", reason])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompt_only_reads_strings_and_refuses_token_ids() {
        let t = prompt_only_texts(&json!({"input": ["a", "b"], "prompt": "c"})).unwrap();
        assert_eq!(t.len(), 3);
        assert!(prompt_only_texts(&json!({"input": [[1, 2]]})).is_err());
        assert!(prompt_only_texts(&json!({"input": 5})).is_err());
        let m =
            prompt_only_texts(&json!({"messages": [{"role": "user", "content": "x"}]})).unwrap();
        assert_eq!(m[0].text, "x");
    }

    #[test]
    fn url_images_are_recorded_unlabeled() {
        let mut doc = json!({"data": [{"url": "https://example.com/a.png"}]});
        let d = label_images(&mut doc, None).unwrap();
        assert_eq!(d[0].label, "unlabeled:url_image");
        assert!(prompt_texts(&json!({"prompt": 1})).is_err());
    }
}
