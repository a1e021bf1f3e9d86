//! PKCE (RFC 7636), S256 only, on both legs: the client's challenge checked at
//! `/authorize` and its verifier at `/token`; the proxy's own pair for Entra.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::super::keys::constant_time_eq;

/// The S256 challenge of `verifier`: base64url(SHA-256(verifier)).
pub(super) fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Whether `challenge` has the shape of an S256 challenge: 43 characters of base64url
/// (a SHA-256 digest).
pub(super) fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43 && URL_SAFE_NO_PAD.decode(challenge).is_ok()
}

/// Whether `verifier` is a well-formed verifier whose S256 challenge is `challenge`.
pub(super) fn verify(verifier: &str, challenge: &str) -> bool {
    valid_verifier(verifier) && constant_time_eq(s256(verifier).as_bytes(), challenge.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn the_rfc_example_verifies() {
        assert_eq!(s256(VERIFIER), CHALLENGE);
        assert!(valid_challenge(CHALLENGE));
        assert!(verify(VERIFIER, CHALLENGE));
    }

    #[test]
    fn a_wrong_or_malformed_verifier_is_refused() {
        let other = "eBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(!verify(other, CHALLENGE));
        // `plain`: the challenge itself as the verifier.
        assert!(!verify(CHALLENGE, CHALLENGE));
        assert!(!verify("", CHALLENGE));
        // Too short, too long, or outside the alphabet, even when its digest matches.
        let short = "a".repeat(42);
        assert!(!verify(&short, &s256(&short)));
        let long = "a".repeat(129);
        assert!(!verify(&long, &s256(&long)));
        let spaced = format!("{} ", "a".repeat(43));
        assert!(!verify(&spaced, &s256(&spaced)));
        for ok in [
            "a".repeat(43),
            "a".repeat(128),
            format!("{}-._~", "Z9".repeat(20)),
        ] {
            assert!(verify(&ok, &s256(&ok)), "{ok}");
        }
    }

    #[test]
    fn a_challenge_must_look_like_a_digest() {
        assert!(!valid_challenge(""));
        assert!(!valid_challenge(&CHALLENGE[..42]));
        assert!(!valid_challenge(&format!("{CHALLENGE}A")));
        assert!(
            !valid_challenge(&format!("{}+", &CHALLENGE[..42])),
            "not base64url"
        );
        assert!(!valid_challenge(&format!("{}=", &CHALLENGE[..42])));
    }
}
