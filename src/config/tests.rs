//! Loading, validation and the secret.

use std::os::unix::fs::PermissionsExt as _;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn reference_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/carrier.toml")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"))
}

fn invalid_key(text: &str) -> String {
    match parse(text) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn no_path_gives_the_defaults() {
    assert_eq!(Config::load(None).unwrap(), Config::default());
}

#[test]
fn reference_file_loads() {
    Config::load(Some(&reference_path())).unwrap();
}

#[test]
fn minimal_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/minimal.toml");
    let config = Config::load(Some(&path)).unwrap();
    assert!(config.auth.secret_file.is_some());
}

#[test]
fn hbase_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hbase.toml");
    let config = Config::load(Some(&path)).unwrap();
    assert_eq!(config.storage.backend, Backend::Hbase);
    assert_eq!(config.storage.hbase.thrift, "127.0.0.1:9090");
}

#[test]
fn hbase_settings_are_checked() {
    let base = "[storage]\nbackend = \"hbase\"\n[storage.hbase]\n";
    assert_eq!(
        invalid_key(&format!("{base}pool_size = 0\n")),
        "storage.hbase.pool_size"
    );
    assert_eq!(
        invalid_key(&format!("{base}table_prefix = \"a b\"\n")),
        "storage.hbase.table_prefix"
    );
    assert_eq!(
        invalid_key(&format!("{base}call_timeout = 0\n")),
        "storage.hbase.call_timeout"
    );
}

#[test]
fn reference_file_states_the_defaults() {
    let file = Config::load(Some(&reference_path())).unwrap();
    let defaults = Config::default();
    assert_eq!(file.server.listen, defaults.server.listen);
    assert_eq!(file.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(file.storage.backend, Backend::Embedded);
    assert_eq!(file.storage.path, defaults.storage.path);
    assert_eq!(file.poll.default_timeout, defaults.poll.default_timeout);
    assert_eq!(file.poll.max_timeout, defaults.poll.max_timeout);
    assert_eq!(file.storage.hbase, defaults.storage.hbase);
    assert_eq!(file.limits.max_body_bytes, defaults.limits.max_body_bytes);
    // And every other key too.
    assert_eq!(file, defaults);
}

#[test]
fn empty_file_gives_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn keys_override_defaults() {
    let config = parse(
        r#"
        [server]
        listen = "0.0.0.0:9000"
        [storage]
        backend = "hbase"
        [storage.hbase]
        thrift = "hbase:9090"
        [poll]
        default_timeout = 5
        max_timeout = 10
        [send]
        prev_wait = 250
        [cluster]
        node_id = "b"
        peers = [{ id = "a", addr = "10.0.0.1:80" }, { id = "b", addr = "10.0.0.2:80" }]
        "#,
    )
    .unwrap();
    assert_eq!(config.server.listen.port(), 9000);
    assert_eq!(config.storage.backend, Backend::Hbase);
    assert_eq!(config.storage.hbase.thrift, "hbase:9090");
    assert_eq!(config.poll.max_timeout, Duration::from_secs(10));
    assert_eq!(config.send.prev_wait, Duration::from_millis(250));
    assert_eq!(config.cluster.peers.len(), 2);
}

#[test]
fn unknown_key_names_dotted_key_and_file() {
    for (text, key, table) in [
        ("bogus = 1", "bogus", None),
        (
            "[server]\nlisten = \"127.0.0.1:1\"\nlisten_typo = 1",
            "listen_typo",
            Some("server"),
        ),
        (
            "[storage.hbase]\nthrfit = \"x\"",
            "thrfit",
            Some("storage.hbase"),
        ),
        ("[metrics]\nlisten = \"x\"", "metrics", None),
        (
            "[[cluster.peers]]\nid = \"a\"\naddr = \"127.0.0.1:1\"\nport = 2",
            "port",
            Some("cluster.peers"),
        ),
    ] {
        let err = parse(text).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("test.toml"), "{message}");
        assert!(message.contains(&format!("`{key}`")), "{message}");
        let full = table.map_or(key.to_owned(), |t| format!("{t}.{key}"));
        assert!(
            message.contains(&format!("unknown key `{full}`")),
            "{message}"
        );
    }
}

#[test]
fn unknown_key_in_inline_table_is_not_misnamed() {
    let text = "[cluster]\npeers = [{ id = \"n1\", addr = \"127.0.0.1:1\", port = 2 }]";
    let message = parse(text).unwrap_err().to_string();
    assert!(message.contains("unknown key `port`"), "{message}");
    assert!(!message.contains("cluster.port"), "{message}");
}

#[test]
fn bad_values_are_parse_errors() {
    for text in [
        "[server]\nlisten = \"nowhere\"",
        "[storage]\nbackend = \"postgres\"",
        "[poll]\nmax_timeout = -1",
        "[limits]\nmax_body_bytes = \"big\"",
        "[server",
    ] {
        assert!(
            matches!(parse(text), Err(ConfigError::Parse { .. })),
            "{text}"
        );
    }
}

#[test]
fn missing_file_names_the_path() {
    let path = Path::new("/nonexistent/carrier.toml");
    let err = Config::load(Some(path)).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/carrier.toml"),
        "{err}"
    );
}

#[test]
fn validation_names_the_key() {
    let both = format!("[auth]\nsecret = \"{SECRET}\"\nsecret_file = \"f\"");
    assert_eq!(invalid_key(&both), "auth.secret");
    assert_eq!(invalid_key("[auth]\nsecret = \"short\""), "auth.secret");
    assert_eq!(
        invalid_key("[poll]\nmax_timeout = 0\ndefault_timeout = 0"),
        "poll.max_timeout"
    );
    assert_eq!(
        invalid_key("[poll]\ndefault_timeout = 60"),
        "poll.default_timeout"
    );
    assert_eq!(
        invalid_key("[limits]\nmax_body_bytes = 0"),
        "limits.max_body_bytes"
    );
    assert_eq!(
        invalid_key("[limits]\nmax_polls_per_user = 0"),
        "limits.max_polls_per_user"
    );
    assert_eq!(
        invalid_key("[limits]\nmax_polls_per_node = 0"),
        "limits.max_polls_per_node"
    );
    assert_eq!(
        invalid_key("[limits]\nmax_group_members = 0"),
        "limits.max_group_members"
    );
    assert_eq!(
        invalid_key("[cache]\nmailbox_bytes = 0"),
        "cache.mailbox_bytes"
    );
    assert_eq!(
        invalid_key("[cache]\nhistory_bytes = 0"),
        "cache.history_bytes"
    );
    assert_eq!(invalid_key("[send]\nmax_batch = 0"), "send.max_batch");
    assert_eq!(invalid_key("[cluster]\nnode_id = \"\""), "cluster.node_id");
    let dup = "[cluster]\nnode_id = \"a\"\npeers = [{ id = \"a\", addr = \"127.0.0.1:1\" }, { id = \"a\", addr = \"127.0.0.1:2\" }]";
    assert_eq!(invalid_key(dup), "cluster.peers");
    let absent = "[cluster]\nnode_id = \"c\"\npeers = [{ id = \"a\", addr = \"127.0.0.1:1\" }]";
    assert_eq!(invalid_key(absent), "cluster.node_id");
}

#[test]
fn invalid_message_names_file_and_key_but_not_the_secret() {
    let err = parse("[auth]\nsecret = \"hunter2\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test.toml") && err.contains("auth.secret"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn debug_redacts_the_secret() {
    let config = parse(&format!("[auth]\nsecret = \"{SECRET}\"")).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

#[test]
fn literal_secret_is_its_utf8_bytes() {
    let config = parse(&format!("[auth]\nsecret = \"{SECRET}\"")).unwrap();
    assert_eq!(config.secret().unwrap(), SECRET.as_bytes());
}

#[test]
fn secret_file_is_read_without_its_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let mut config = Config::default();
    config.auth.secret_file = Some(file.clone());
    assert_eq!(config.secret().unwrap(), SECRET.as_bytes());

    std::fs::write(&file, "too short\n").unwrap();
    let err = config.secret().unwrap_err();
    assert!(
        matches!(err, ConfigError::SecretTooShort { len: 9, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );

    config.auth.secret_file = Some(dir.path().join("absent"));
    let err = config.secret().unwrap_err();
    assert!(matches!(err, ConfigError::SecretIo { .. }), "{err:?}");
    assert!(err.to_string().contains("absent"), "{err}");
}

#[test]
fn missing_secret_is_generated_once_and_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.path = dir.path().join("nested/data");
    let first = config.secret().unwrap();
    assert_eq!(first.len(), 64, "48 random bytes, base64url");
    assert!(
        first
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    );

    let path = config.generated_secret_path();
    assert_eq!(std::fs::read(&path).unwrap(), first);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(config.secret().unwrap(), first, "reused, not regenerated");

    let mut other = Config::default();
    other.storage.path = tempfile::tempdir().unwrap().path().join("d");
    assert_ne!(other.secret().unwrap(), first, "random, not a constant");
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&config.storage.path).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn concurrent_first_uses_agree_on_one_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.path = dir.path().join("data");
    let secrets: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| config.secret().unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(secrets.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn an_empty_metrics_token_is_refused() {
    for token in ["\"\"", "\"  \""] {
        assert_eq!(
            invalid_key(&format!("[auth]\nmetrics_token = {token}\n")),
            "auth.metrics_token"
        );
    }
}

#[test]
fn published_and_placeholder_secrets_are_refused() {
    for secret in [
        "change me: at least 32 bytes of random text",
        "EXAMPLE-ONLY-shared-cluster-secret-replace-me-0123456789",
        "please CHANGEME to something random, ok?",
    ] {
        assert_eq!(
            invalid_key(&format!("[auth]\nsecret = {secret:?}\n")),
            "auth.secret"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(
        &file,
        "EXAMPLE-ONLY-shared-cluster-secret-replace-me-0123456789\n",
    )
    .unwrap();
    let mut config = Config::default();
    config.auth.secret_file = Some(file);
    assert!(config.secret().is_err());
}

#[test]
fn no_shipped_sample_carries_a_secret() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let samples = [
        "carrier.toml",
        "minimal.toml",
        "hbase.toml",
        "cluster/n1.toml",
        "cluster/n2.toml",
        "cluster/n3.toml",
    ];
    for sample in samples {
        let text = std::fs::read_to_string(root.join(sample)).unwrap();
        let config: toml::Value = toml::from_str(&text).unwrap();
        assert!(
            config.get("auth").and_then(|a| a.get("secret")).is_none(),
            "{sample} ships a secret anyone could sign tokens with"
        );
    }
}
