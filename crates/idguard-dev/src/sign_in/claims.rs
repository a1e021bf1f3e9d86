//! The OpenID `claims` request of an authorize request: what it asks of the access token
//! (the MFA policy of [`MFA_CLAIMS`], authentication contexts `acrs`, client capabilities
//! `xms_cc`).

use serde_json::Value;

use crate::MFA_CLAIMS;

/// What an OpenID `claims` request asks of the access token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ClaimsRequest {
    /// Conditional Access policy ids (`polids`).
    polids: Vec<String>,
    /// Authentication context class references (`acrs`).
    pub(super) acrs: Vec<String>,
    /// Client capabilities (`xms_cc`).
    pub(super) xms_cc: Vec<String>,
}

impl ClaimsRequest {
    /// `None` when `raw` is not a JSON object.
    pub(super) fn parse(raw: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(raw).ok()?;
        v.as_object()?;
        let at = v.get("access_token");
        let values = |name: &str| -> Vec<String> {
            let Some(c) = at.and_then(|a| a.get(name)) else {
                return Vec::new();
            };
            let one = c.get("value").and_then(Value::as_str).map(str::to_owned);
            let many = c
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned);
            one.into_iter().chain(many).collect()
        };
        Some(Self {
            polids: values("polids"),
            acrs: values("acrs"),
            xms_cc: values("xms_cc"),
        })
    }

    /// Asks for the policy of [`MFA_CLAIMS`].
    pub(super) fn satisfies_mfa(&self) -> bool {
        let mfa = Self::parse(MFA_CLAIMS).unwrap_or_default();
        !mfa.polids.is_empty() && mfa.polids.iter().all(|p| self.polids.contains(p))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn claims_request_reads_value_and_values() {
        let c = ClaimsRequest::parse(
            r#"{"access_token":{"acrs":{"essential":true,"value":"c1"},"xms_cc":{"values":["cp1"]}}}"#,
        )
        .unwrap();
        assert_eq!(c.acrs, ["c1"]);
        assert_eq!(c.xms_cc, ["cp1"]);
        assert!(!c.satisfies_mfa());
        assert!(ClaimsRequest::parse(MFA_CLAIMS).unwrap().satisfies_mfa());
        assert!(ClaimsRequest::parse("not json").is_none());
        assert!(ClaimsRequest::parse("[1]").is_none());
    }

    #[test]
    fn an_empty_request_asks_for_nothing() {
        let c = ClaimsRequest::parse("{}").unwrap();
        assert_eq!(c, ClaimsRequest::default());
        assert!(!c.satisfies_mfa());
        let id_token_only = ClaimsRequest::parse(r#"{"id_token":{"acrs":{"value":"c1"}}}"#);
        assert_eq!(id_token_only, Some(ClaimsRequest::default()));
    }
}
