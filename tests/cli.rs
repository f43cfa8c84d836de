//! The `carrier` binary as scripts see it: help, `token`, exit codes, and
//! `serve` announcing its address and stopping on SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use carrier::auth::Auth;
use carrier::domain::UserId;

const USER: &str = "8c1f6b8e-6a0b-4c64-9d0a-2f5c1b7e9a10";
const SECRET: &str = "a test secret of at least 32 bytes";

fn carrier(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carrier"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the carrier binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Writes `body` as `carrier.toml` in `dir`, with storage under `dir/data`.
fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("carrier.toml");
    let data = dir.join("data");
    let text = format!("{body}\n[storage]\npath = {:?}\n", data.to_str().unwrap());
    std::fs::write(&path, text).unwrap();
    path
}

fn user() -> UserId {
    USER.parse().unwrap()
}

/// Runs `carrier token` and returns the token it printed.
fn mint_with(config: &Path) -> String {
    let out = carrier(&[
        "token",
        "--user",
        USER,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "token failed: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.ends_with('\n'), "{text:?}");
    let token = text.trim_end().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    token
}

#[test]
fn help_names_the_commands() {
    let out = carrier(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    assert!(help.contains("serve") && help.contains("token"), "{help}");

    let out = carrier(&["serve", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("--config"), "{}", stdout(&out));

    let out = carrier(&["token", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("--ttl"), "{}", stdout(&out));
}

#[test]
fn token_is_a_jwt_signed_with_the_configured_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("[auth]\nsecret = {SECRET:?}"));
    let token = mint_with(&config);
    assert_eq!(Auth::new(SECRET.as_bytes()).verify(&token), Ok(user()));
    assert!(
        Auth::new(b"some other secret, 32 bytes or more")
            .verify(&token)
            .is_err()
    );
}

#[test]
fn token_honours_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("[auth]\nsecret = {SECRET:?}"));
    let config = config.to_str().unwrap();
    let out = carrier(&["token", "--user", USER, "--ttl", "60", "--config", config]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        Auth::new(SECRET.as_bytes()).verify(stdout(&out).trim()),
        Ok(user())
    );

    let out = carrier(&["token", "--user", USER, "--ttl", "soon", "--config", config]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn token_without_a_secret_uses_one_generated_private_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let first = mint_with(&config);
    let second = mint_with(&config);

    let secret_file = dir.path().join("data/secret");
    let secret = std::fs::read(&secret_file).unwrap();
    assert!(secret.len() >= 32);
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");

    let auth = Auth::new(&secret);
    assert_eq!(auth.verify(&first), Ok(user()));
    assert_eq!(auth.verify(&second), Ok(user()));
}

#[test]
fn secret_file_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{SECRET}\n")).unwrap();
    let config = write_config(dir.path(), &format!("[auth]\nsecret_file = {key:?}"));
    let token = mint_with(&config);
    assert_eq!(Auth::new(SECRET.as_bytes()).verify(&token), Ok(user()));
}

#[test]
fn unknown_key_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[server]\nlisten_adress = \"127.0.0.1:1\"");
    for command in ["token", "serve"] {
        let mut args = vec![command, "--config", config.to_str().unwrap()];
        if command == "token" {
            args.extend(["--user", USER]);
        }
        let out = carrier(&args);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let err = stderr(&out);
        assert!(err.contains("server.listen_adress"), "{command}: {err}");
        assert!(err.contains("carrier.toml"), "{command}: {err}");
        assert!(stdout(&out).is_empty(), "{command}");
    }
}

#[test]
fn invalid_value_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[auth]\nsecret = \"too short\"");
    let out = carrier(&[
        "token",
        "--user",
        USER,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("auth.secret"), "{err}");
    assert!(
        !err.contains("too short"),
        "the secret is never printed: {err}"
    );
}

#[test]
fn missing_config_file_exits_2_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["token", "--user", USER, "--config", missing],
        vec!["serve", "--config", missing],
    ] {
        let out = carrier(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(missing), "{}", stderr(&out));
    }
}

#[test]
fn unreadable_secret_file_exits_2_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("absent-key");
    let config = write_config(dir.path(), &format!("[auth]\nsecret_file = {key:?}"));
    let out = carrier(&[
        "token",
        "--user",
        USER,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("absent-key"), "{}", stderr(&out));
}

#[test]
fn bad_user_exits_2() {
    for bad in ["nope", "8c1f6b8e6a0b4c649d0a2f5c1b7e9a10", ""] {
        let out = carrier(&["token", "--user", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(stderr(&out).contains("--user"), "{}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
    let out = carrier(&["token"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn address_in_use_exits_2_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("[server]\nlisten = {addr:?}"));
    let out = carrier(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&addr), "{}", stderr(&out));
}

/// Kills the child if a test fails before it exits.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_announces_its_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[server]\nlisten = \"127.0.0.1:0\"");
    let mut node = Node(
        Command::new(env!("CARGO_BIN_EXE_carrier"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    let (lines, stdout_lines) = mpsc::channel();
    let out = node.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let (lines, stderr_lines) = mpsc::channel();
    let err = node.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });

    let announced = stdout_lines
        .recv_timeout(Duration::from_secs(30))
        .expect("serve prints its address");
    let addr = announced
        .strip_prefix("carrier listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {announced:?}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    std::net::TcpStream::connect(addr).expect("the announced address accepts connections");

    // The log line carries the same address in the `addr` field.
    let logged = std::iter::from_fn(|| stderr_lines.recv_timeout(Duration::from_secs(10)).ok())
        .find(|line| line.contains("listening"))
        .expect("a `listening` log line");
    assert!(logged.contains(&format!("addr={addr}")), "{logged}");

    let pid = node.0.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}
