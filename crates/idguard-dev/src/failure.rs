//! The per-user failure modes a test can switch on: on-behalf-of refusals
//! ([`DevOboFailure`]), interactive sign-in refusals ([`DevSignInFailure`]) and Graph
//! throttling ([`DevGraphFailure`]), and the table that holds them by user object id.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// How the token endpoint fails on-behalf-of requests for one user
/// ([`DevEntra::set_obo_failure`](crate::DevEntra::set_obo_failure)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DevOboFailure {
    /// `invalid_grant`, AADSTS65001, suberror `consent_required`.
    ConsentRequired,
    /// `interaction_required`, AADSTS50079, with a `claims` challenge
    /// ([`MFA_CLAIMS`](crate::MFA_CLAIMS)).
    MfaRequired,
    /// `429` with `Retry-After: retry_after` (seconds).
    Throttled {
        /// Seconds in `Retry-After`.
        retry_after: u64,
    },
    /// `503` for the next `times` requests, then success.
    ServerError {
        /// How many requests fail.
        times: u32,
    },
    /// Answer (successfully) only after `millis` milliseconds.
    Slow {
        /// The delay.
        millis: u64,
    },
}

/// How the interactive sign-in (authorize and code or refresh-token redemption) fails for
/// one user ([`DevEntra::set_sign_in_failure`](crate::DevEntra::set_sign_in_failure)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DevSignInFailure {
    /// The user has not consented: redeeming a code answers `invalid_grant`, AADSTS65001,
    /// suberror `consent_required`, unless the code came from an authorize request with
    /// `prompt=consent` (the user consented then). `prompt=none` at authorize redirects
    /// with `error=consent_required`.
    ConsentRequired,
    /// A Conditional Access policy wants MFA: redeeming a code or a refresh token answers
    /// `interaction_required`, AADSTS50079, with `claims` =
    /// [`MFA_CLAIMS`](crate::MFA_CLAIMS), unless the authorize request carried that
    /// `claims` value; then the access token's `amr` includes `mfa`. `prompt=none` without
    /// it redirects with `error=interaction_required`.
    MfaRequired,
    /// The user declines: authorize redirects with `error=access_denied` (AADSTS65004).
    AccessDenied,
}

/// How the Graph emulation fails for one user
/// ([`DevEntra::set_graph_failure`](crate::DevEntra::set_graph_failure)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DevGraphFailure {
    /// `429` with `Retry-After: retry_after` for the next `times` requests.
    Throttled {
        /// How many requests are throttled.
        times: u32,
        /// Seconds in `Retry-After`.
        retry_after: u64,
    },
}

/// Sets (or clears) one user's failure mode in a shared table.
pub(crate) fn set_failure<F>(table: &Mutex<HashMap<String, F>>, oid: String, failure: Option<F>) {
    let mut all = table.lock().unwrap_or_else(PoisonError::into_inner);
    match failure {
        Some(f) => all.insert(oid, f),
        None => all.remove(&oid),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_set_replaced_and_cleared() {
        let table = Mutex::new(HashMap::new());
        set_failure(
            &table,
            "oid".to_owned(),
            Some(DevOboFailure::ConsentRequired),
        );
        set_failure(&table, "oid".to_owned(), Some(DevOboFailure::MfaRequired));
        assert_eq!(
            table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get("oid"),
            Some(&DevOboFailure::MfaRequired)
        );
        set_failure::<DevOboFailure>(&table, "oid".to_owned(), None);
        assert!(
            table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        );
    }
}
