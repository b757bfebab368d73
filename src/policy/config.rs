//! Policy configuration (the minimal form).

use serde::{Deserialize, Serialize};

use super::Action;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub categories: Vec<CategoryConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CategoryConfig {
    pub id: String,
    pub action: Action,
    pub keywords: Vec<String>,
}
