//! Signatures on calls between nodes.
//!
//! A signed call carries `v1 <node> <at_ms> <sha256 of its content> <mac>`,
//! the MAC being HMAC-SHA256 over the node, the time, the method, the path
//! and that digest, under a key derived for this purpose alone from the
//! configured secret (HKDF), so a token key and the cluster key are never
//! the same bytes. What "content" is depends on the call: the body of an
//! internal call, the `Authorization` header of a forwarded request.
//!
//! The digest travels in the header so the head is checked *before* the
//! body is read: a stranger cannot make a node buffer anything. A
//! signature older (or newer) than [`MAX_SKEW`] is refused, so a captured
//! call cannot be replayed later; within that window every internal call is
//! idempotent by design (pushed entries are deduplicated by id, wakes and
//! watches only move things forward).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};

/// How far a signature's time may be from this node's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// The key for one purpose, derived from the configured secret.
pub fn derive_key(secret: &[u8], purpose: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 255 blocks: cannot fail.
    if Hkdf::<Sha256>::new(Some(b"carrier/v1"), secret)
        .expand(purpose.as_bytes(), &mut key)
        .is_err()
    {
        unreachable!("HKDF-SHA256 expands 32 bytes");
    }
    key
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature")]
    Malformed,
    #[error("signature from an unknown node")]
    UnknownNode,
    #[error("signature too old or from the future")]
    Stale,
    #[error("bad signature")]
    Bad,
    #[error("the content does not match its signature")]
    ContentMismatch,
}

/// Signs and checks calls with the cluster's key.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { .. }")
    }
}

/// A signature whose head checked: the node that signed, and the digest
/// the content must have.
#[derive(Debug)]
pub struct Claim {
    pub node: String,
    digest: [u8; 32],
}

impl Claim {
    /// Whether `content` is what was signed.
    pub fn covers(&self, content: &[u8]) -> Result<(), SignatureError> {
        let digest: [u8; 32] = Sha256::digest(content).into();
        // Not secret: the digest came in the clear; equality is enough.
        if digest == self.digest {
            Ok(())
        } else {
            Err(SignatureError::ContentMismatch)
        }
    }
}

impl Signer {
    /// A signer for the cluster key derived from `secret`.
    pub fn new(secret: &[u8]) -> Signer {
        let key = derive_key(secret, "cluster-mac");
        let mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
        Signer { mac }
    }

    /// The header value signing a call by `node` with `content`, now.
    pub fn sign(&self, node: &str, method: &str, path: &str, content: &[u8]) -> String {
        self.sign_at(node, method, path, content, now_ms())
    }

    fn sign_at(&self, node: &str, method: &str, path: &str, content: &[u8], at: u64) -> String {
        let digest = hex(&Sha256::digest(content));
        let mac = hex(&self
            .mac(node, at, method, path, &digest)
            .finalize()
            .into_bytes());
        format!("v1 {node} {at} {digest} {mac}")
    }

    /// Checks a signature's head for `method` and `path`: the MAC, the
    /// time, and that `known` accepts its node. The content is checked
    /// afterwards, with [`Claim::covers`].
    pub fn check(
        &self,
        value: &str,
        method: &str,
        path: &str,
        known: impl Fn(&str) -> bool,
    ) -> Result<Claim, SignatureError> {
        self.check_at(value, method, path, known, now_ms())
    }

    fn check_at(
        &self,
        value: &str,
        method: &str,
        path: &str,
        known: impl Fn(&str) -> bool,
        now: u64,
    ) -> Result<Claim, SignatureError> {
        let mut parts = value.rsplitn(4, ' ');
        let (Some(mac), Some(digest), Some(at), Some(head)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SignatureError::Malformed);
        };
        let node = head.strip_prefix("v1 ").ok_or(SignatureError::Malformed)?;
        let at: u64 = at.parse().map_err(|_| SignatureError::Malformed)?;
        let mac = unhex(mac).ok_or(SignatureError::Malformed)?;
        let digest_bytes: [u8; 32] = unhex(digest)
            .and_then(|d| d.try_into().ok())
            .ok_or(SignatureError::Malformed)?;
        if !known(node) {
            return Err(SignatureError::UnknownNode);
        }
        self.mac(node, at, method, path, digest)
            .verify_slice(&mac)
            .map_err(|_| SignatureError::Bad)?;
        if now.abs_diff(at) > MAX_SKEW.as_millis() as u64 {
            return Err(SignatureError::Stale);
        }
        Ok(Claim {
            node: node.to_owned(),
            digest: digest_bytes,
        })
    }

    fn mac(&self, node: &str, at: u64, method: &str, path: &str, digest: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        for part in [node, &at.to_string(), method, path, digest] {
            // Length-prefixed, so no two different tuples sign the same bytes.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(text, "{b:02x}");
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn signer() -> Signer {
        Signer::new(b"a secret of at least thirty-two bytes!")
    }

    fn peers(node: &str) -> bool {
        matches!(node, "n1" | "n2")
    }

    #[test]
    fn a_signature_checks_for_its_call_and_content_only() {
        let s = signer();
        let value = s.sign_at("n1", "POST", "/internal/v1/appends", b"body", NOW);
        let claim = s
            .check_at(&value, "POST", "/internal/v1/appends", peers, NOW + 1000)
            .expect("valid");
        assert_eq!(claim.node, "n1");
        assert_eq!(claim.covers(b"body"), Ok(()));
        assert_eq!(claim.covers(b"bodx"), Err(SignatureError::ContentMismatch));
        for (method, path) in [
            ("GET", "/internal/v1/appends"),
            ("POST", "/internal/v1/wake"),
        ] {
            assert_eq!(
                s.check_at(&value, method, path, peers, NOW).unwrap_err(),
                SignatureError::Bad
            );
        }
    }

    #[test]
    fn a_stale_or_future_signature_is_refused() {
        let s = signer();
        let skew = MAX_SKEW.as_millis() as u64;
        let value = s.sign_at("n1", "POST", "/p", b"", NOW);
        for now in [NOW + skew + 1, NOW - skew - 1] {
            assert_eq!(
                s.check_at(&value, "POST", "/p", peers, now).unwrap_err(),
                SignatureError::Stale
            );
        }
        assert!(s.check_at(&value, "POST", "/p", peers, NOW + skew).is_ok());
    }

    #[test]
    fn changing_any_part_of_the_header_breaks_it() {
        let s = signer();
        let value = s.sign_at("n1", "POST", "/p", b"x", NOW);
        // Another time, node or digest with the same MAC.
        let parts: Vec<&str> = value.split(' ').collect();
        let later = format!("v1 n1 {} {} {}", NOW + 1, parts[3], parts[4]);
        let other_node = format!("v1 n2 {NOW} {} {}", parts[3], parts[4]);
        let other_digest = format!("v1 n1 {NOW} {} {}", hex(&Sha256::digest(b"y")), parts[4]);
        for forged in [later, other_node, other_digest] {
            assert_eq!(
                s.check_at(&forged, "POST", "/p", peers, NOW).unwrap_err(),
                SignatureError::Bad
            );
        }
        let unknown = s.sign_at("n9", "POST", "/p", b"x", NOW);
        assert_eq!(
            s.check_at(&unknown, "POST", "/p", peers, NOW).unwrap_err(),
            SignatureError::UnknownNode
        );
        for junk in ["", "v1", "v2 n1 1 00 00", "v1 n1 x 00 00", "v1 n1 1 zz 00"] {
            assert_eq!(
                s.check_at(junk, "POST", "/p", peers, NOW).unwrap_err(),
                SignatureError::Malformed
            );
        }
    }

    #[test]
    fn another_secret_and_the_token_key_do_not_verify() {
        let value = signer().sign_at("n1", "POST", "/p", b"", NOW);
        let other = Signer::new(b"another secret of at least thirty-two bytes");
        assert_eq!(
            other
                .check_at(&value, "POST", "/p", peers, NOW)
                .unwrap_err(),
            SignatureError::Bad
        );
        // The cluster key is not the secret itself (which signs tokens).
        let secret = b"a secret of at least thirty-two bytes!";
        assert_ne!(&derive_key(secret, "cluster-mac")[..], &secret[..32]);
        assert_ne!(
            derive_key(secret, "cluster-mac"),
            derive_key(secret, "other")
        );
    }
}
