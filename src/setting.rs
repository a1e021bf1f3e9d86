//! Setting values that every configuration section shares: [`Secret`], durations (`"5m"`),
//! cache capacities, and their checks. A leaf: it knows no section and imports nothing of
//! the crate but [`ConfigProblem`], so that each section's owner (`config`, `mcp`, `obo`,
//! `oauth`) can use it without depending on the others.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigProblem;

/// A secret value: no `Display`, and `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"12h"` or `"1d"`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like `30s`, `5m` or `12h`"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}` is not a duration like `30s`, `5m` or `12h`")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// The largest cache capacity a key accepts (a guard against a typo's extra zeros).
const MAX_CACHE_CAPACITY: u64 = 10_000_000;

/// A cache capacity key: its value, or `default` when it is not set or out of range (a
/// problem then names `key`).
pub(crate) fn capacity(
    key: &str,
    value: Option<u64>,
    default: u64,
    problems: &mut Vec<ConfigProblem>,
) -> u64 {
    match value {
        None => default,
        Some(n @ 1..=MAX_CACHE_CAPACITY) => n,
        Some(n) => {
            problems.push(ConfigProblem::new(
                key,
                format!("`{n}` is not between 1 and {MAX_CACHE_CAPACITY}"),
            ));
            default
        }
    }
}

/// Whether a secret is the placeholder of an example rather than a secret: the example
/// file's `change-me-…`, `<…>` and the like.
pub(crate) fn is_placeholder(secret: &str) -> bool {
    let s = secret.trim().to_ascii_lowercase();
    s.starts_with('<')
        || s.contains('…')
        || s.contains("...")
        || [
            "change-me",
            "changeme",
            "change_me",
            "replace-me",
            "replaceme",
            "placeholder",
            "your-secret",
            "random-bytes",
        ]
        .iter()
        .any(|p| s.contains(p))
}

/// Checks a list of secrets (their values): each long enough and not an example's
/// placeholder. Never quotes a secret.
pub(crate) fn check_secrets<'a>(
    key: &str,
    secrets: impl IntoIterator<Item = &'a str>,
    min: usize,
    problems: &mut Vec<ConfigProblem>,
) {
    for (i, secret) in secrets.into_iter().enumerate() {
        let n = i + 1;
        if is_placeholder(secret) {
            problems.push(ConfigProblem::new(
                key,
                format!("secret {n} is an example's placeholder: generate one, e.g. `openssl rand -base64 48`"),
            ));
        } else if secret.len() < min {
            problems.push(ConfigProblem::new(
                key,
                format!("secret {n} is shorter than {min} bytes (e.g. `openssl rand -base64 48`)"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }
}
