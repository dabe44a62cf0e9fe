//! The `exp` claim of a ServiceAccount token (a JWT), read without checking
//! its signature.
//!
//! That is safe for its one use, bounding how long an accepted token stays in
//! the review cache: the cache is keyed by the whole token, so an entry only
//! exists for a token kube-apiserver authenticated, signature included, and
//! the `exp` read here is the one it verified. It can only shorten an entry's
//! life, never extend it past `token-review-cache-ttl`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// When the token expires, if it is a JWT with a numeric `exp` claim.
pub fn expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    if !exp.is_finite() || exp < 0.0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(exp).ok()?)
}

/// A JWT-shaped token with the given payload (unsigned), for tests.
#[cfg(test)]
pub fn unsigned_token(payload: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    format!("{header}.{}.c2lnbmF0dXJl", URL_SAFE_NO_PAD.encode(payload.to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_the_exp_claim() {
        let token = unsigned_token(&json!({"aud": ["system:konnectivity-server"], "exp": 1_900_000_000u64}));
        assert_eq!(expiry(&token), Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)));
        let padded = {
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            parts[1].push_str("==");
            parts.join(".")
        };
        assert_eq!(expiry(&padded), expiry(&token), "padding tolerated");
    }

    #[test]
    fn anything_else_has_no_expiry() {
        let cases = [
            String::new(),
            "opaque-token".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            "eyJhbGciOiJub25lIn0.%%%.sig".to_owned(),
            unsigned_token(&json!({"sub": "system:serviceaccount:kube-system:x"})),
            unsigned_token(&json!({"exp": "tomorrow"})),
            unsigned_token(&json!({"exp": -5})),
            unsigned_token(&json!({"exp": 1e300})),
        ];
        for token in &cases {
            assert_eq!(expiry(token), None, "{token:?}");
        }
    }
}
