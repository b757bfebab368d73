//! shenhe: an inline moderation proxy for generative-model APIs.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod classify;
pub mod cli;
pub mod complaints;
pub mod config;
pub mod demo;
pub mod dialect;
pub mod enforce;
pub mod eval;
pub mod json_str;
pub mod label;
pub mod metrics;
pub mod pg;
pub mod policy;
pub mod review;
pub mod server;
pub mod stream;
pub mod tls;
pub mod utf8;
