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

use super::capture::{capture, Capture, MAX_STARS};
use super::paths::{Pat, StaticPatterns};
use crate::json_str::push_escaped;
use crate::label::{explicit_affixes, Position, CHAT_AIGC_FIELD};

/// A request read by a dialect's fast read.
#[derive(Debug, Default)]
pub struct QuickPrompt<'a> {
    /// Every prompt text the policy judges, as read (see [`QuickPrompt::push`]).
    pub texts: Vec<Cow<'a, str>>,
    /// Each text's pattern and `*` indexes: its place in reading order
    /// ([`super::paths::reading_steps`]).
    order: Vec<(&'static [Pat], [u32; MAX_STARS])>,
    /// The `model` the request names.
    pub model: Option<Cow<'a, str>>,
    /// Whether the client asked for JSON output (no explicit label then).
    pub json_mode: bool,
}

impl<'a> QuickPrompt<'a> {
    /// Take a prompt text that `pattern` matched, its `*` steps at indexes `stars`
    /// ([`Capture::stars`]).
    pub fn push(&mut self, text: Cow<'a, str>, pattern: &'static [Pat], stars: [u32; MAX_STARS]) {
        self.texts.push(text);
        self.order.push((pattern, stars));
    }

    /// The texts in reading order.
    pub fn in_reading_order(&self) -> impl ExactSizeIterator<Item = &str> {
        let mut at: Vec<usize> = (0..self.texts.len()).collect();
        if at.len() > 1 {
            let steps = |i: usize| {
                let (pattern, stars) = &self.order[i];
                super::paths::reading_steps(pattern, stars)
            };
            at.sort_by(|&a, &b| steps(a).cmp(steps(b)));
        }
        at.into_iter().map(|i| self.texts[i].as_ref())
    }
}

/// Which visible texts of an answer get the explicit label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelRule {
    /// Each non-empty one, at the configured place (the choices of a chat answer).
    Each,
    /// The first and the last, as `generation::label_slots` does (the blocks or parts of one
    /// answer): a label at the start goes before the first, one at the end after the last.
    Ends,
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
    /// Which visible texts the explicit label goes into.
    rule: LabelRule,
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
        rule: LabelRule,
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
            rule,
            close,
            has_members,
        })
    }

    /// How many texts [`QuickAnswer::all_texts`] gives.
    pub fn text_count(&self) -> usize {
        self.visible.len() + self.texts.len()
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
        let n = self.visible.len();
        for (i, (span, text)) in self.visible.iter().enumerate() {
            let place = label.and_then(|(label, pos)| {
                let at_start = matches!(pos, Position::Start | Position::Both);
                let at_end = matches!(pos, Position::End | Position::Both);
                let pos = match self.rule {
                    LabelRule::Each if text.is_empty() => return None,
                    LabelRule::Each => pos,
                    LabelRule::Ends if n == 1 => pos,
                    LabelRule::Ends if i == 0 && at_start => Position::Start,
                    LabelRule::Ends if i == n - 1 && at_end => Position::End,
                    LabelRule::Ends => return None,
                };
                Some((label, pos))
            });
            let Some((label, pos)) = place else {
                delivered.push_str(text);
                continue;
            };
            // An empty text becomes the label alone, as `apply_explicit` makes it.
            let (head, tail) = if text.is_empty() {
                (crate::label::apply_explicit("", label, pos), String::new())
            } else {
                explicit_affixes(label, pos)
            };
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

/// The patterns of a fast read: a dialect's own, then `more` (the other fields a request's
/// read takes, or the configured extra answer fields).
pub fn patterns<'p>(own: &'p [Vec<Pat>], more: &'p [Vec<Pat>]) -> Vec<&'p [Pat]> {
    own.iter().chain(more).map(Vec::as_slice).collect()
}

/// The captures of a request's fast read at a dialect's prompt patterns, then at `more`; the
/// number of prompt patterns (a capture at `pattern - prompt` is one of `more`). `None` unless
/// the body is a strict JSON object.
pub fn read_request<'a>(
    body: &'a [u8],
    prompt: &StaticPatterns,
    more: &StaticPatterns,
) -> Option<(usize, Vec<Capture<'a>>)> {
    if !is_object(body) {
        return None;
    }
    let captures = capture(body, &patterns(prompt.parsed(), more.parsed()))?;
    Some((prompt.parsed().len(), captures))
}

/// Whether a strict JSON body is an object.
pub fn is_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::anthropic::Anthropic;
    use crate::dialect::generation::TextApi;
    use crate::dialect::json::{parse_answer, parse_strict, rewrite};
    use crate::dialect::openai::{Extras, Flavor, OpenAi};
    use crate::dialect::paths::reading_key;
    use crate::dialect::responses::Responses;
    use proptest::prelude::*;
    use serde_json::Value;

    const AIGC: &str = r#"{"Label":"1","ContentProducer":"p","ProduceID":"x"}"#;

    /// An answer as the tree path delivers it: (body, delivered text, explicit label used,
    /// every judged text sorted).
    fn tree<A: TextApi>(
        api: &A,
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

    fn quick<A: TextApi>(
        api: &A,
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
    fn messages_and_responses_answers_read_fast_equal_the_tree() {
        let x = Extras::default();
        for body in [
            r#"{"id":"m","content":[{"type":"thinking","thinking":"t"},{"type":"text","text":"a\nb"},{"type":"text","text":""},{"type":"text","text":"c"}],"stop_reason":"end_turn"}"#,
            r#"{"content":[{"type":"text","text":"only"}]}"#,
            r#"{"content":[{"text":"untyped"},{"type":"other","text":"x"}]}"#,
            r#"{"content":[]}"#,
        ] {
            for label in LABELS {
                assert_eq!(
                    quick(&Anthropic, body.as_bytes(), &x, label),
                    Some(tree(&Anthropic, body.as_bytes(), &x, label)),
                    "{body} {label:?}"
                );
            }
        }
        for body in [
            r#"{"output":[{"type":"reasoning","summary":[{"type":"summary_text","text":"s"}]},
                {"type":"message","content":[{"type":"output_text","text":"a"},{"type":"refusal","refusal":"r"},{"type":"output_text","text":"b"}]},
                {"type":"function_call","arguments":"{}"}],"status":"completed"}"#,
            r#"{"output":[{"content":[{"type":"output_text","text":"no item type"}]},{"type":"message","content":[{"text":"no part type"}]}],"output_text":"z"}"#,
            r#"{"output":[{"type":"message","content":[{"type":"output_text","text":""}]}]}"#,
        ] {
            for label in LABELS {
                assert_eq!(
                    quick(&Responses, body.as_bytes(), &x, label),
                    Some(tree(&Responses, body.as_bytes(), &x, label)),
                    "{body} {label:?}"
                );
            }
        }
        // Tool inputs are judged as their compact JSON: the tree path reads them.
        let tool = br#"{"content":[{"type":"tool_use","input":{"b":1,"a":2}}]}"#;
        assert!(Anthropic.quick_answer(tool, &x).is_none());
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

    fn same_prompt<A: TextApi>(api: &A, body: &str) {
        let tree = parse_strict(body.as_bytes()).and_then(|v| {
            let mut found = api.prompt_texts(&v)?;
            found.sort_by(|a, b| reading_key(&a.path).cmp(reading_key(&b.path)));
            let texts: Vec<String> = found.into_iter().map(|f| f.text).collect();
            let model = v.get("model").and_then(Value::as_str).map(str::to_owned);
            Ok((texts, model, api.json_mode(&v)))
        });
        // Declined (`None`): the tree path either refuses the request or reads it.
        if let Some(q) = api.quick_prompt(body.as_bytes()) {
            // The same texts in the same reading order: the seams between them are scanned.
            let texts: Vec<String> = q.in_reading_order().map(str::to_owned).collect();
            let model = q.model.map(|m| m.into_owned());
            assert_eq!(Some((texts, model, q.json_mode)), tree.ok(), "{body}");
        }
    }

    #[test]
    fn requests_read_fast_equal_the_tree() {
        let chat = OpenAi(Flavor::Chat);
        let completions = OpenAi(Flavor::Completions);
        for body in [
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"t"},{"type":"image_url"}],"name":"n"}],"response_format":{"type":"json_object"}}"#,
            r#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"arguments":"{}"}}],"function_call":{"arguments":"a"},"reasoning_content":"r","refusal":"no"}]}"#,
            r#"{"messages":[],"response_format":{"type":"text"},"model":7}"#,
            // Read in another order than written: parts before a later message's string, a
            // name written after the content.
            r#"{"messages":[{"content":[{"type":"text","text":"a"},{"text":"b"}],"role":"user"},{"content":"c","name":"n0"}]}"#,
        ] {
            assert!(chat.quick_prompt(body.as_bytes()).is_some(), "{body}");
            same_prompt(&chat, body);
        }
        for body in [r#"{"prompt":"p","model":"m"}"#, r#"{"prompt":["a","b"]}"#] {
            assert!(
                completions.quick_prompt(body.as_bytes()).is_some(),
                "{body}"
            );
            same_prompt(&completions, body);
        }
        for body in [
            r#"{"model":"c","system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":[{"type":"text","text":"t"},{"type":"tool_result","content":[{"type":"text","text":"r"}]}]},{"role":"assistant","content":"x"}],"output_format":{"type":"json_schema"}}"#,
            r#"{"system":"s","messages":[],"output_config":{"format":{"type":"json_schema"}}}"#,
            // The system prompt written last is read first.
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"t"}]},{"role":"user","content":"u"}],"system":[{"type":"text","text":"s"}]}"#,
        ] {
            assert!(Anthropic.quick_prompt(body.as_bytes()).is_some(), "{body}");
            same_prompt(&Anthropic, body);
        }
        for body in [
            r#"{"model":"g","instructions":"i","input":[{"role":"user","content":[{"type":"input_text","text":"t"}]},{"type":"function_call_output","output":"o"}],"text":{"format":{"type":"json_schema"}}}"#,
            r#"{"input":"just text"}"#,
            r#"{"input":[{"role":"user","content":"u"}],"instructions":"i"}"#,
            r#"{"input":null}"#,
        ] {
            assert!(Responses.quick_prompt(body.as_bytes()).is_some(), "{body}");
            same_prompt(&Responses, body);
        }
        // What the tree path refuses, the fast read declines.
        fn declines<A: TextApi>(api: &A, body: &str) -> bool {
            parse_strict(body.as_bytes())
                .and_then(|v| api.prompt_texts(&v))
                .is_err()
                && api.quick_prompt(body.as_bytes()).is_none()
        }
        assert!(declines(&chat, r#"{"messages":{}}"#));
        assert!(declines(&chat, r#"{"model":"m"}"#));
        assert!(declines(&chat, "[]"));
        assert!(declines(&completions, r#"{"prompt":[1,2]}"#));
        assert!(declines(&completions, r#"{"prompt":true}"#));
        assert!(declines(&Responses, r#"{"input":5}"#));
        assert!(declines(&Anthropic, r#"{"system":"s"}"#));
        // Tool inputs are judged as their compact JSON: the tree path reads them.
        let tool =
            br#"{"messages":[{"role":"assistant","content":[{"type":"tool_use","input":{}}]}]}"#;
        assert!(Anthropic.quick_prompt(tool).is_none());
    }

    fn answer_like() -> impl Strategy<Value = Value> {
        let text = "[a\u{4e2d}\"\\\\\n ]{0,4}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<u8>().prop_map(Value::from),
            text.prop_map(Value::String),
        ];
        let keys = "(choices|message|content|reasoning|refusal|tool_calls|function|arguments|index|text|type|output|thinking|x)";
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
            label in 0..LABELS.len(),
        ) {
            // Mostly answer-shaped for each API (chat choices, completions texts, Messages
            // blocks, Responses items), around and among any shape at all; every API reads
            // the same body.
            let mut choices: Vec<Value> = messages
                .iter()
                .map(|m| serde_json::json!({"message": m}))
                .collect();
            choices.extend(texts.iter().map(|t| serde_json::json!({"text": t, "message": {"content": t}})));
            let mut blocks: Vec<Value> = messages.clone();
            blocks.extend(texts.iter().map(|t| serde_json::json!({"type": "text", "text": t})));
            let mut items: Vec<Value> = messages;
            items.push(serde_json::json!({"type": "message", "content":
                texts.iter().map(|t| serde_json::json!({"type": "output_text", "text": t})).collect::<Vec<_>>()}));
            let v = serde_json::json!({"choices": choices, "content": blocks, "output": items, "rest": rest});
            let body = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }
                .unwrap();
            let x = Extras::default();
            let l = LABELS[label];
            if let Some(q) = quick(&OpenAi(Flavor::Chat), &body, &x, l) {
                prop_assert_eq!(q, tree(&OpenAi(Flavor::Chat), &body, &x, l));
            }
            if let Some(q) = quick(&OpenAi(Flavor::Completions), &body, &x, l) {
                prop_assert_eq!(q, tree(&OpenAi(Flavor::Completions), &body, &x, l));
            }
            if let Some(q) = quick(&Anthropic, &body, &x, l) {
                prop_assert_eq!(q, tree(&Anthropic, &body, &x, l));
            }
            if let Some(q) = quick(&Responses, &body, &x, l) {
                prop_assert_eq!(q, tree(&Responses, &body, &x, l));
            }
        }
    }
}
