//! shenhe: an inline moderation proxy for generative-model APIs.
#![forbid(unsafe_code)]

pub mod config;
pub mod metrics;
