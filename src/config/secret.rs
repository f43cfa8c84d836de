//! The HS256 secret: from the configuration, a file, or generated once into
//! the data folder with owner-only permissions.

use std::io::{self, Write};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;

use super::{ConfigError, GENERATED_SECRET_FILE, MIN_SECRET_BYTES};

/// Reads a key from `path` (`what` names it in errors), without trailing newlines.
pub(super) fn read_secret_file(path: &Path, what: &'static str) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = std::fs::read(path).map_err(|source| ConfigError::SecretIo {
        doing: if what == GENERATED {
            "cannot read the generated secret"
        } else {
            "cannot read auth.secret_file"
        },
        path: path.to_owned(),
        source,
    })?;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::SecretTooShort {
            what,
            path: path.to_owned(),
            len: bytes.len(),
        });
    }
    if is_placeholder(&bytes) {
        return Err(ConfigError::Invalid {
            file: Some(path.to_owned()),
            key: "auth.secret_file".to_owned(),
            reason: PLACEHOLDER_REASON.to_owned(),
        });
    }
    Ok(bytes)
}

/// Why a secret that looks like a sample's is refused.
pub(super) const PLACEHOLDER_REASON: &str = "this is a published example secret: anyone could \
     sign tokens with it; use at least 32 random bytes (e.g. `head -c 48 /dev/urandom | base64`)";

/// Whether `secret` is one the project ever published, or reads like a
/// placeholder someone forgot to replace.
pub(super) fn is_placeholder(secret: &[u8]) -> bool {
    const PUBLISHED: [&[u8]; 2] = [
        b"change me: at least 32 bytes of random text",
        b"EXAMPLE-ONLY-shared-cluster-secret-replace-me-0123456789",
    ];
    const WORDS: [&str; 5] = [
        "change me",
        "changeme",
        "change-me",
        "replace-me",
        "replace me",
    ];
    let lower = String::from_utf8_lossy(secret).to_ascii_lowercase();
    PUBLISHED.contains(&secret)
        || WORDS.iter().any(|w| lower.contains(w))
        || lower.starts_with("example")
}

/// How errors name the generated secret file.
const GENERATED: &str = "the generated secret";

/// Reads `<dir>/secret`, creating it first if it does not exist.
///
/// The new secret is written to a private temporary file, synced, then
/// linked into place with `hard_link`, which (unlike `rename`) never replaces
/// an existing file: when two processes start together, exactly one secret
/// wins and both use it, and nobody ever reads a half-written file.
pub(super) fn generated_secret(dir: &Path) -> Result<Vec<u8>, ConfigError> {
    let path = dir.join(GENERATED_SECRET_FILE);
    let io_err = |doing: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| ConfigError::SecretIo {
            doing,
            path,
            source,
        }
    };
    match std::fs::metadata(&path) {
        Ok(_) => return read_secret_file(&path, GENERATED),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot read the generated secret", &path)(e)),
    }

    std::fs::create_dir_all(dir).map_err(io_err("cannot create the storage folder", dir))?;
    let mut raw = [0u8; 48];
    rand::rng().fill_bytes(&mut raw);
    let text = URL_SAFE_NO_PAD.encode(raw);

    let tmp = dir.join(format!(
        ".{GENERATED_SECRET_FILE}.{}.{:016x}.tmp",
        std::process::id(),
        rand::rng().next_u64()
    ));
    let written = write_private(&tmp, text.as_bytes()).and_then(|()| {
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(()),
            // Another process got there first: use its secret.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            // A file system without hard links: fall back to rename.
            Err(_) => std::fs::rename(&tmp, &path),
        }
    });
    let _ = std::fs::remove_file(&tmp);
    written.map_err(io_err("cannot write the generated secret", &path))?;
    read_secret_file(&path, GENERATED)
}

/// Creates `path` readable and writable by its owner only, writes, syncs.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
