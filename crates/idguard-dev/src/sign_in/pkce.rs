//! PKCE (RFC 7636) as the emulator enforces it: authorize accepts only an S256
//! `code_challenge` of 43 base64url characters, and redemption needs the `code_verifier`
//! that hashes to it.

use aws_lc_rs::{constant_time, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why authorize refuses its PKCE parameters.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ChallengeError {
    /// A `code_challenge_method` without a `code_challenge` (AADSTS900144).
    Missing,
    /// A method other than `S256`; an absent one means `plain` (AADSTS50149).
    Method,
    /// Not 43 base64url characters (AADSTS501491).
    Size,
}

/// The challenge authorize binds the code to, from `code_challenge` and
/// `code_challenge_method` (`None`: the request uses no PKCE).
pub(super) fn challenge(
    challenge: Option<&str>,
    method: Option<&str>,
) -> Result<Option<String>, ChallengeError> {
    match (challenge, method) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ChallengeError::Missing),
        (Some(challenge), method) => {
            // An absent method means `plain`, which the emulator refuses.
            if method != Some("S256") {
                return Err(ChallengeError::Method);
            }
            let base64url = challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if challenge.len() != 43 || !base64url {
                return Err(ChallengeError::Size);
            }
            Ok(Some(challenge.to_owned()))
        }
    }
}

/// Whether `verifier` hashes (S256) to `challenge`; compared in constant time.
pub(super) fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    constant_time::verify_slices_are_equal(s256(verifier).as_bytes(), challenge.as_bytes()).is_ok()
}

/// The PKCE S256 transform of `verifier`.
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636, appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn s256_matches_rfc_7636_example() {
        assert_eq!(s256(VERIFIER), CHALLENGE);
    }

    #[test]
    fn only_the_verifier_of_the_challenge_matches() {
        assert!(verifier_matches(VERIFIER, CHALLENGE));
        assert!(!verifier_matches(CHALLENGE, CHALLENGE));
        assert!(!verifier_matches("", CHALLENGE));
        assert!(!verifier_matches(VERIFIER, &CHALLENGE[..42]));
    }

    #[test]
    fn authorize_takes_only_an_s256_challenge_of_43_base64url_characters() {
        assert_eq!(challenge(None, None), Ok(None));
        assert_eq!(
            challenge(Some(CHALLENGE), Some("S256")),
            Ok(Some(CHALLENGE.to_owned()))
        );
        assert_eq!(challenge(None, Some("S256")), Err(ChallengeError::Missing));
        assert_eq!(
            challenge(Some(CHALLENGE), None),
            Err(ChallengeError::Method)
        );
        assert_eq!(
            challenge(Some(CHALLENGE), Some("plain")),
            Err(ChallengeError::Method)
        );
        assert_eq!(
            challenge(Some(CHALLENGE), Some("s256")),
            Err(ChallengeError::Method),
            "the method is case sensitive"
        );
        assert_eq!(
            challenge(Some(&CHALLENGE[..42]), Some("S256")),
            Err(ChallengeError::Size)
        );
        let padded = format!("{}=", &CHALLENGE[..42]);
        assert_eq!(
            challenge(Some(&padded), Some("S256")),
            Err(ChallengeError::Size),
            "43 characters, not base64url"
        );
    }
}
