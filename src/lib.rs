//! shenhe: an inline moderation proxy for generative-model APIs.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod metrics;
pub mod dialect;
pub mod admin;
pub mod server;
pub mod demo;
