//! Dialects: where a model API keeps its text, how it refuses, how it ends a stream, how it shapes errors.

use serde::{Deserialize, Serialize};

pub mod error;

/// The API a route speaks. Chosen per path by the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DialectName {
    /// OpenAI Chat Completions (`/v1/chat/completions`), also DeepSeek, Qwen, vLLM, Ollama, llama.cpp.
    OpenaiChat,
    /// OpenAI legacy Completions (`/v1/completions`).
    OpenaiCompletions,
    /// OpenAI Responses (`/v1/responses`).
    OpenaiResponses,
    /// Anthropic Messages (`/v1/messages`).
    AnthropicMessages,
    /// OpenAI Images (`/v1/images/generations`): prompt moderated, images labeled.
    OpenaiImages,
    /// Prompt-only moderation of a JSON `input`/`prompt` field (embeddings and similar).
    PromptOnly,
    /// Forwarded untouched: routes that carry no generated text (`/v1/models`).
    Passthrough,
}

impl DialectName {
    pub fn as_str(self) -> &'static str {
        match self {
            DialectName::OpenaiChat => "openai_chat",
            DialectName::OpenaiCompletions => "openai_completions",
            DialectName::OpenaiResponses => "openai_responses",
            DialectName::AnthropicMessages => "anthropic_messages",
            DialectName::OpenaiImages => "openai_images",
            DialectName::PromptOnly => "prompt_only",
            DialectName::Passthrough => "passthrough",
        }
    }

    /// The shape client-facing errors take on this route.
    pub fn error_shape(self) -> error::ErrorShape {
        match self {
            DialectName::AnthropicMessages => error::ErrorShape::Anthropic,
            _ => error::ErrorShape::OpenAi,
        }
    }

    /// Which directions are moderated: (prompt, completion).
    pub fn moderates(self) -> (bool, bool) {
        match self {
            DialectName::OpenaiChat
            | DialectName::OpenaiCompletions
            | DialectName::OpenaiResponses
            | DialectName::AnthropicMessages => (true, true),
            DialectName::OpenaiImages | DialectName::PromptOnly => (true, false),
            DialectName::Passthrough => (false, false),
        }
    }
}

impl std::fmt::Display for DialectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub mod anthropic;
pub mod capture;
pub mod generation;
pub mod images;
pub mod json;
pub mod labels;
pub mod moderate;
pub mod openai;
pub mod paths;
pub mod quick;
pub mod responses;
