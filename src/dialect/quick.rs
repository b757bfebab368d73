//! The clean fast path of moderated text routes.
//!
//! Most requests and answers hold nothing the policy acts on. For them a moderated route needs
//! the texts (to judge them), a few small values, and where the visible texts of an answer sit
//! (to splice the explicit label in and sign what is delivered). One strict read of the bytes
//! ([`super::capture`]) gives all of that, with no `serde_json::Value` tree and no second read
//! for the splice.
//!
//! A text with any finding, or a shape a dialect's fast read does not cover, sends the body
//! down the tree path (`moderate.rs`), the one place where findings are acted on and recorded:
//! the fast path only forwards and labels content the policy had nothing to say about. Both
//! paths give the same JSON for the same answer (tested per dialect); spacing and the spelling
//! of untouched values are the model server's own on both.

use std::borrow::Cow;
use std::ops::Range;

use crate::label::{explicit_affixes, Position, CHAT_AIGC_FIELD};

/// A request read by a dialect's fast read.
#[derive(Debug)]
pub struct QuickPrompt<'a> {
    /// Every prompt text the policy judges.
    pub texts: Vec<Cow<'a, str>>,
    /// The `model` the request names.
    pub model: Option<Cow<'a, str>>,
    /// Whether the client asked for JSON output (no explicit label then).
    pub json_mode: bool,
}

/// A whole answer read by a dialect's fast read.
#[derive(Debug)]
pub struct QuickAnswer<'a> {
    /// The generated texts the policy judges besides the visible ones (reasoning, tool-call
    /// arguments, configured extra fields).
    pub texts: Vec<Cow<'a, str>>,
    /// The visible texts in delivery order, each with its span in the body (quotes included).
    /// Each non-empty one gets the explicit label; together they are what the implicit label
    /// signs.
    pub visible: Vec<(Range<usize>, Cow<'a, str>)>,
    /// The offset of the closing brace of the top-level object.
    close: usize,
    /// Whether that object has members (a new one then needs a comma).
    has_members: bool,
}

impl<'a> QuickAnswer<'a> {
    /// `body` must be the strict JSON the texts were read from; `None` unless it is an object.
    pub fn new(
        body: &[u8],
        texts: Vec<Cow<'a, str>>,
        visible: Vec<(Range<usize>, Cow<'a, str>)>,
    ) -> Option<Self> {
        let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
        let close = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
        if body[open] != b'{' || body[close] != b'}' {
            return None;
        }
        let has_members = body[open + 1..close]
            .iter()
            .any(|b| !b.is_ascii_whitespace());
        Some(Self {
            texts,
            visible,
            close,
            has_members,
        })
    }

    /// Every text to judge.
    pub fn all_texts(&self) -> impl Iterator<Item = &str> {
        self.visible
            .iter()
            .map(|(_, t)| t.as_ref())
            .chain(self.texts.iter().map(AsRef::as_ref))
    }

    /// The body with the explicit label (when given) spliced into each non-empty visible text,
    /// up to the top-level object's end: [`Rendering::finish`] adds the implicit label, which
    /// signs [`Rendering::delivered`].
    pub fn render(&self, body: &[u8], label: Option<(&str, Position)>) -> Rendering {
        let mut out = Vec::with_capacity(body.len() + 512);
        let mut delivered = String::new();
        let mut explicit_used = false;
        let mut at = 0;
        for (span, text) in &self.visible {
            match label {
                Some((label, pos)) if !text.is_empty() => {
                    let (head, tail) = explicit_affixes(label, pos);
                    out.extend_from_slice(&body[at..span.start + 1]);
                    push_escaped(&mut out, &head);
                    // The text between the quotes, as the model server spelled it.
                    out.extend_from_slice(&body[span.start + 1..span.end - 1]);
                    push_escaped(&mut out, &tail);
                    at = span.end - 1;
                    delivered.push_str(&head);
                    delivered.push_str(text);
                    delivered.push_str(&tail);
                    explicit_used = true;
                }
                _ => delivered.push_str(text),
            }
        }
        out.extend_from_slice(&body[at..self.close]);
        Rendering {
            out,
            close: self.close,
            has_members: self.has_members,
            delivered,
            explicit_used,
        }
    }
}

/// An answer being labeled: see [`QuickAnswer::render`].
pub struct Rendering {
    out: Vec<u8>,
    close: usize,
    has_members: bool,
    /// The visible text as delivered (labels included): what the implicit label signs.
    pub delivered: String,
    /// Whether an explicit label was added.
    pub explicit_used: bool,
}

impl Rendering {
    /// The whole body: `aigc` (the implicit label's JSON) becomes the last member of the
    /// top-level object.
    pub fn finish(mut self, body: &[u8], aigc: Option<&str>) -> Vec<u8> {
        if let Some(aigc) = aigc {
            if self.has_members {
                self.out.push(b',');
            }
            self.out.push(b'"');
            self.out.extend_from_slice(CHAT_AIGC_FIELD.as_bytes());
            self.out.extend_from_slice(b"\":");
            self.out.extend_from_slice(aigc.as_bytes());
        }
        self.out.extend_from_slice(&body[self.close..]);
        self.out
    }
}

/// Whether a strict JSON body is an object.
pub fn is_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// `s` as the inside of a JSON string.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        return;
    }
    let quoted = serde_json::to_string(s).unwrap_or_default();
    out.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::generation::TextApi;
    use crate::dialect::json::{parse_answer, parse_strict, rewrite};
    use crate::dialect::openai::{Extras, Flavor, OpenAi};
    use proptest::prelude::*;
    use serde_json::Value;

    const AIGC: &str = r#"{"Label":"1","ContentProducer":"p","ProduceID":"x"}"#;

    /// An answer as the tree path delivers it: (body, delivered text, explicit label used,
    /// every judged text sorted).
    fn tree(
        api: &OpenAi,
        body: &[u8],
        extras: &Extras,
        label: Option<(&str, Position)>,
    ) -> (Value, String, bool, Vec<String>) {
        let mut doc = parse_answer(body).unwrap();
        let mut texts: Vec<String> = api
            .response_texts(&doc, extras)
            .into_iter()
            .map(|(_, f)| f.text)
            .collect();
        texts.sort();
        let used = label.is_some_and(|(l, p)| api.label(&mut doc, l, p, &[]));
        let delivered = api.delivered_text(&doc);
        doc.as_object_mut()
            .unwrap()
            .insert("aigc".into(), serde_json::from_str(AIGC).unwrap());
        let out = rewrite(body, &doc);
        (
            serde_json::from_slice(&out).unwrap(),
            delivered,
            used,
            texts,
        )
    }

    fn quick(
        api: &OpenAi,
        body: &[u8],
        extras: &Extras,
        label: Option<(&str, Position)>,
    ) -> Option<(Value, String, bool, Vec<String>)> {
        let q = api.quick_answer(body, extras)?;
        let mut texts: Vec<String> = q.all_texts().map(str::to_owned).collect();
        texts.sort();
        let r = q.render(body, label);
        let (delivered, used) = (r.delivered.clone(), r.explicit_used);
        let out = r.finish(body, Some(AIGC));
        Some((
            serde_json::from_slice(&out).unwrap(),
            delivered,
            used,
            texts,
        ))
    }

    const LABELS: [Option<(&str, Position)>; 4] = [
        None,
        Some(("【AI】", Position::End)),
        Some(("「AI」\"x\"", Position::Start)),
        Some(("AI", Position::Both)),
    ];

    #[test]
    fn chat_answers_read_fast_equal_the_tree() {
        let extras = Extras::parse(&["choices.*.message.audio.transcript".into()]).unwrap();
        let api = OpenAi(Flavor::Chat);
        for body in [
            r#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"天气\n很好"}}]}"#,
            r#" { "choices" : [ {"index":1,"message":{"content":"a","reasoning_content":"r","refusal":null}},
                 {"index":0,"message":{"content":"","tool_calls":[{"function":{"arguments":"{\"q\":1}"}}]}},
                 {"message":{"content":null,"audio":{"transcript":"t"}}} ], "usage":{"n":1.50} } "#,
            r#"{"choices":[]}"#,
            r#"{}"#,
            r#"{"choices":[{"message":{"content":"\u00e9\"\\"}}],"x":[{"a":1},{"a":2}]}"#,
            r#"{"choices":{"message":{"content":"not an array"}}}"#,
        ] {
            for label in LABELS {
                assert_eq!(
                    quick(&api, body.as_bytes(), &extras, label),
                    Some(tree(&api, body.as_bytes(), &extras, label)),
                    "{body} {label:?}"
                );
            }
        }
        let completions = OpenAi(Flavor::Completions);
        let body = br#"{"choices":[{"text":"a\tb","index":0},{"text":"c"}]}"#;
        for label in LABELS {
            assert_eq!(
                quick(&completions, body, &Extras::default(), label),
                Some(tree(&completions, body, &Extras::default(), label))
            );
        }
    }

    #[test]
    fn answers_the_fast_read_leaves_to_the_tree() {
        let api = OpenAi(Flavor::Chat);
        let x = Extras::default();
        for body in [
            // content parts, an `aigc` member already there, not an object, not strict JSON
            &br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"}]}}]}"#[..],
            br#"{"choices":[],"aigc":{}}"#,
            br#"[{"choices":[]}]"#,
            br#"{"choices":[],"choices":[]}"#,
            br#"{"choices":[]"#,
        ] {
            assert!(api.quick_answer(body, &x).is_none());
        }
    }

    #[test]
    fn requests_read_fast_equal_the_tree() {
        let chat = OpenAi(Flavor::Chat);
        let completions = OpenAi(Flavor::Completions);
        let cases: [(&OpenAi, &str); 10] = [
            (
                &chat,
                r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"t"},{"type":"image_url"}],"name":"n"}],"response_format":{"type":"json_object"}}"#,
            ),
            (
                &chat,
                r#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"arguments":"{}"}}],"function_call":{"arguments":"a"},"reasoning_content":"r","refusal":"no"}]}"#,
            ),
            (
                &chat,
                r#"{"messages":[],"response_format":{"type":"text"},"model":7}"#,
            ),
            (&chat, r#"{"messages":{}}"#),
            (&chat, r#"{"model":"m"}"#),
            (&chat, r#"[]"#),
            (&completions, r#"{"prompt":"p","model":"m"}"#),
            (&completions, r#"{"prompt":["a","b"]}"#),
            (&completions, r#"{"prompt":[1,2]}"#),
            (&completions, r#"{"prompt":true}"#),
        ];
        for (api, body) in cases {
            let tree = parse_strict(body.as_bytes()).and_then(|v| {
                let texts: Vec<String> =
                    api.prompt_texts(&v)?.into_iter().map(|f| f.text).collect();
                let model = v.get("model").and_then(Value::as_str).map(str::to_owned);
                Ok((texts, model, api.json_mode(&v)))
            });
            match api.quick_prompt(body.as_bytes()) {
                Some(q) => {
                    let texts: Vec<String> = q.texts.iter().map(|t| t.to_string()).collect();
                    let model = q.model.map(|m| m.into_owned());
                    assert_eq!(Some((texts, model, q.json_mode)), tree.ok(), "{body}");
                }
                // Declined: the tree path refuses it.
                None => assert!(tree.is_err(), "{body}"),
            }
        }
    }

    fn answer_like() -> impl Strategy<Value = Value> {
        let text = "[a\u{4e2d}\"\\\\\n ]{0,4}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<u8>().prop_map(Value::from),
            text.prop_map(Value::String),
        ];
        let keys = "(choices|message|content|reasoning|refusal|tool_calls|function|arguments|index|text|x)";
        leaf.prop_recursive(6, 64, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the shape, an answer the fast read takes comes out as the tree path makes it.
        #[test]
        fn any_answer_taken_fast_equals_the_tree(
            messages in prop::collection::vec(answer_like(), 0..3),
            texts in prop::collection::vec("[a\u{4e2d}\"\\\\\n ]{0,4}", 0..3),
            rest in answer_like(),
            pretty in any::<bool>(),
            chat in any::<bool>(),
            label in 0..LABELS.len(),
        ) {
            // Mostly answer-shaped: choices with a message (chat) or a text (completions),
            // around any shape at all.
            let mut choices: Vec<Value> = messages
                .into_iter()
                .map(|m| serde_json::json!({"message": m}))
                .collect();
            choices.extend(texts.into_iter().map(|t| serde_json::json!({"text": t, "message": {"content": t}})));
            let v = serde_json::json!({"choices": choices, "rest": rest});
            let body = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }
                .unwrap();
            let api = OpenAi(if chat { Flavor::Chat } else { Flavor::Completions });
            let x = Extras::default();
            if let Some(q) = quick(&api, &body, &x, LABELS[label]) {
                prop_assert_eq!(q, tree(&api, &body, &x, LABELS[label]));
            }
        }
    }
}
