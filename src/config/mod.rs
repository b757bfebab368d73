//! The YAML configuration: raw serde structs that mirror the file, validated into the runtime form.

pub mod units;
