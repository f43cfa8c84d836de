//! Bearer tokens: HS256 JWTs (RFC 7519) minted and checked by hand.
//!
//! A token is `base64url(header) . base64url(claims) . base64url(signature)`
//! (no padding), the header `{"alg":"HS256","typ":"JWT"}`, the claims `sub`
//! (the user's UUID) and `exp` (Unix seconds), the signature HMAC-SHA256 of
//! the first two parts under the configured secret's bytes. Any JWT library
//! can mint tokens Carrier accepts.
//!
//! Every [`AuthError`] is a `401`; the variants only say why, for logs and
//! tests.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::UserId;

/// Tokens longer than this are refused before any decoding or hashing.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The only header Carrier writes.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Why a request is not authenticated. All of them answer `401`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing bearer token")]
    Missing,
    /// Not `Bearer <JWT>`, not HS256, bad base64 or JSON, bad `sub`, too long.
    #[error("malformed bearer token")]
    Malformed,
    /// Well formed, but not signed with this node's secret.
    #[error("bad token signature")]
    BadSignature,
    /// Correctly signed, but `exp` has passed.
    #[error("token expired")]
    Expired,
}

/// Mints and checks tokens with one secret. Cloning is cheap (the keyed
/// HMAC state is copied, the key is not re-hashed).
#[derive(Clone)]
pub struct Auth {
    /// HMAC-SHA256 already keyed with the secret; cloned per token.
    mac: Hmac<Sha256>,
}

/// Never prints key material.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Auth { .. }")
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    /// RFC 7515 says a header naming extensions we do not know is invalid.
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// NumericDate: JWT allows a fraction, so take any JSON number.
    exp: f64,
}

impl Auth {
    /// An authority for `secret` (the configured secret's bytes).
    pub fn new(secret: &[u8]) -> Auth {
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        Auth { mac }
    }

    /// A token for `user`, valid for `ttl` from now.
    pub fn mint(&self, user: UserId, ttl: Duration) -> String {
        let exp = unix_now().saturating_add(ttl.as_secs());
        // Integer `exp`, as JWT tools print it.
        let claims = format!(r#"{{"sub":"{user}","exp":{exp}}}"#);
        let mut token = URL_SAFE_NO_PAD.encode(HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let signature = self
            .mac
            .clone()
            .chain_update(&token)
            .finalize()
            .into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// The user a token speaks for, if this secret signed it and it has not
    /// expired.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let (header, claims) = signed.split_once('.').ok_or(AuthError::Malformed)?;
        if claims.contains('.') {
            return Err(AuthError::Malformed);
        }

        // The header first, so `alg: none` and friends never reach the MAC.
        let header: Header = decode_json(header)?;
        if header.alg != "HS256" || header.crit.is_some() {
            return Err(AuthError::Malformed);
        }

        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Malformed)?;
        self.mac
            .clone()
            .chain_update(signed)
            .verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;

        let claims: Claims = decode_json(claims)?;
        let user = claims.sub.parse().map_err(|_| AuthError::Malformed)?;
        if claims.exp <= unix_now() as f64 {
            return Err(AuthError::Expired);
        }
        Ok(user)
    }

    /// The user named by an `Authorization` header value: `Bearer <token>`,
    /// the scheme in any case.
    pub fn user_from_header(&self, value: Option<&[u8]>) -> Result<UserId, AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        self.verify(token.trim_start())
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn alice() -> UserId {
        "8c1f6b8e-6a0b-4c64-9d0a-2f5c1b7e9a10".parse().unwrap()
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Signs `header.claims` the long way, independently of `Auth::mint`.
    fn sign(secret: &[u8], header: &str, claims: &str) -> String {
        let signing_input = format!("{}.{}", b64(header), b64(claims));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(mac.finalize().into_bytes()))
    }

    #[test]
    fn minted_token_round_trips() {
        let auth = Auth::new(SECRET);
        let token = auth.mint(alice(), Duration::from_secs(60));
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(auth.verify(&token), Ok(alice()));
    }

    #[test]
    fn minted_token_has_the_jwt_header_and_claims() {
        let token = Auth::new(SECRET).mint(alice(), Duration::from_secs(60));
        let parts: Vec<&str> = token.split('.').collect();
        let header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
        assert_eq!(header, HEADER.as_bytes());
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], alice().to_string());
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp >= unix_now() + 59 && exp <= unix_now() + 61);
    }

    #[test]
    fn token_from_an_independent_encoder_verifies() {
        // Different key order, spacing and an extra claim: still a JWT.
        let exp = unix_now() + 300;
        let token = sign(
            SECRET,
            r#"{"typ":"JWT", "alg":"HS256"}"#,
            &format!(r#"{{"iat": 1, "exp": {exp}, "sub": "{}"}}"#, alice()),
        );
        assert_eq!(Auth::new(SECRET).verify(&token), Ok(alice()));
    }

    #[test]
    fn expired_token_is_refused() {
        let auth = Auth::new(SECRET);
        assert_eq!(
            auth.verify(&auth.mint(alice(), Duration::ZERO)),
            Err(AuthError::Expired)
        );
        let past = sign(
            SECRET,
            HEADER,
            &format!(r#"{{"sub":"{}","exp":{}}}"#, alice(), unix_now() - 10),
        );
        assert_eq!(auth.verify(&past), Err(AuthError::Expired));
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let token = Auth::new(b"another secret, also 32 bytes long!")
            .mint(alice(), Duration::from_secs(60));
        assert_eq!(
            Auth::new(SECRET).verify(&token),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_a_bad_signature() {
        let auth = Auth::new(SECRET);
        let token = auth.mint(alice(), Duration::from_secs(60));
        let parts: Vec<&str> = token.split('.').collect();
        let mallory = "00000000-0000-4000-8000-000000000000";
        let claims = format!(r#"{{"sub":"{mallory}","exp":{}}}"#, unix_now() + 60);
        let forged = format!("{}.{}.{}", parts[0], b64(claims), parts[2]);
        assert_eq!(auth.verify(&forged), Err(AuthError::BadSignature));

        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[0] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
        assert_eq!(auth.verify(&flipped), Err(AuthError::BadSignature));
        let truncated = format!("{}.{}.{}", parts[0], parts[1], b64(&sig[..16]));
        assert_eq!(auth.verify(&truncated), Err(AuthError::BadSignature));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let auth = Auth::new(SECRET);
        let claims = format!(r#"{{"sub":"{}","exp":{}}}"#, alice(), unix_now() + 60);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims));
        assert_eq!(auth.verify(&none), Err(AuthError::Malformed));
        // Correctly keyed, but claiming another algorithm: still refused.
        for header in [
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
        ] {
            assert_eq!(
                auth.verify(&sign(SECRET, header, &claims)),
                Err(AuthError::Malformed),
                "{header}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let auth = Auth::new(SECRET);
        let good = auth.mint(alice(), Duration::from_secs(60));
        let claims = |sub: &str| format!(r#"{{"sub":"{sub}","exp":{}}}"#, unix_now() + 60);
        let no_exp = format!(r#"{{"sub":"{}"}}"#, alice());
        for token in [
            String::new(),
            "garbage".to_owned(),
            "a.b".to_owned(),
            "a.b.c".to_owned(),
            format!("{good}.extra"),
            format!("{good}="),
            format!("{good}!"),
            format!("!{good}"),
            "x".repeat(MAX_TOKEN_BYTES + 1),
            sign(SECRET, HEADER, &claims("not-a-uuid")),
            sign(SECRET, HEADER, &claims("8c1f6b8e6a0b4c649d0a2f5c1b7e9a10")),
            sign(SECRET, HEADER, &no_exp),
            sign(SECRET, HEADER, "[]"),
        ] {
            assert_eq!(auth.verify(&token), Err(AuthError::Malformed), "{token}");
        }
    }

    #[test]
    fn header_needs_the_bearer_scheme() {
        let auth = Auth::new(SECRET);
        let token = auth.mint(alice(), Duration::from_secs(60));
        assert_eq!(auth.user_from_header(None), Err(AuthError::Missing));
        assert_eq!(
            auth.user_from_header(Some(token.as_bytes())),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.user_from_header(Some(format!("Basic {token}").as_bytes())),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.user_from_header(Some(b"Bearer")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.user_from_header(Some(b"\xff\xfe")),
            Err(AuthError::Malformed)
        );
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let value = format!("{scheme} {token}");
            assert_eq!(
                auth.user_from_header(Some(value.as_bytes())),
                Ok(alice()),
                "{scheme}"
            );
        }
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", Auth::new(SECRET)), "Auth { .. }");
    }
}
