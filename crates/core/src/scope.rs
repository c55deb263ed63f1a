//! Scopes of personal access tokens.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// List and get anything.
    Read,
    /// Create, change and delete apps, concepts, inputs, annotations and datasets.
    Write,
    /// Start and cancel training.
    Train,
    /// Run predictions.
    Predict,
    /// Everything, including managing tokens; not restricted to one user's apps.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [Scope::Read, Scope::Write, Scope::Train, Scope::Predict, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Train => "train",
            Scope::Predict => "predict",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s.trim())
    }
}

/// Parses "read,write" into scopes, naming the first unknown one.
pub fn parse_scopes(list: &str) -> Result<Vec<Scope>, String> {
    let mut scopes = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let scope = Scope::parse(part)
            .ok_or_else(|| format!("unknown scope {part:?}; expected one of read, write, train, predict, admin"))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    scopes.sort();
    Ok(scopes)
}

pub fn format_scopes(scopes: &[Scope]) -> String {
    scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}
