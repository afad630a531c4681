//! Configuration through the binary: precedence flag > environment > file >
//! default, bad values rejected with the key and the source named.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::fixture::{Launch, TestServer, expect_json, herald_command};

async fn base_url_of(s: &TestServer) -> String {
    let cfg = expect_json(s.get("/v1/config").await, 200).await;
    cfg["base_url"].as_str().unwrap().to_string()
}

fn env(key: &str, value: &str) -> (String, String) {
    (key.to_string(), value.to_string())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn listen_address_from_environment() {
    let s = TestServer::launch(Launch {
        no_listen_flag: true,
        envs: vec![env("HERALD_LISTEN_HTTP", "127.0.0.1:0")],
        ..Launch::default()
    });
    assert!(s.base().starts_with("http://127.0.0.1:"), "{}", s.base());
    assert_eq!(s.get("/v1/health").await.status(), 200);
}

#[tokio::test]
async fn flag_beats_environment() {
    // The environment's value is invalid, but the flag wins and is the one used.
    let s = TestServer::launch(Launch {
        args: strings(&["--base-url", "https://flag.example"]),
        envs: vec![
            env("HERALD_LISTEN_HTTP", "not-an-address"),
            env("HERALD_BASE_URL", "https://env.example"),
        ],
        ..Launch::default()
    });
    assert_eq!(base_url_of(&s).await, "https://flag.example");
}

#[tokio::test]
async fn environment_beats_file_and_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yml");
    std::fs::write(
        &file,
        "# an ntfy-style server.yml\n\
         base-url: \"https://file.example\"\n\
         listen-http: \"127.0.0.1:0\"\n\
         keepalive-interval: 1s\n\
         auth-file: /var/lib/ntfy/user.db\n\
         behind-proxy: true\n",
    )
    .unwrap();
    let file = file.to_str().unwrap().to_string();

    // File only (listen address from the file too).
    let s = TestServer::launch(Launch {
        args: strings(&["--config", &file]),
        no_listen_flag: true,
        ..Launch::default()
    });
    assert_eq!(base_url_of(&s).await, "https://file.example");
    // keepalive-interval from the file: a keepalive arrives quickly.
    let mut sub = s.stream("/cfg/json").await;
    assert_eq!(sub.next_json().await["event"], "open");
    assert_eq!(sub.next_json().await["event"], "keepalive");
    drop(sub);
    drop(s);

    // Environment beats the file; the file may also be named by HERALD_CONFIG.
    let s = TestServer::launch(Launch {
        envs: vec![
            env("HERALD_CONFIG", &file),
            env("HERALD_BASE_URL", "https://env.example"),
        ],
        no_listen_flag: true,
        ..Launch::default()
    });
    assert_eq!(base_url_of(&s).await, "https://env.example");
}

/// Runs `herald serve <args>` expecting it to exit; returns (success, stderr).
fn run_to_exit(args: &[&str], envs: &[(String, String)]) -> (bool, String) {
    let data = tempfile::tempdir().unwrap();
    let mut child = herald_command()
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald {args:?} did not exit: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), reader.join().unwrap())
}

#[test]
fn bad_flag_value_names_key_and_source() {
    let (ok, stderr) = run_to_exit(
        &[
            "--listen-http",
            "127.0.0.1:0",
            "--keepalive-interval",
            "soon",
        ],
        &[],
    );
    assert!(!ok, "must fail; stderr: {stderr}");
    assert!(stderr.contains("keepalive-interval"), "{stderr}");
    assert!(stderr.contains("command-line flag"), "{stderr}");
    assert!(stderr.contains("soon"), "{stderr}");
}

#[test]
fn bad_env_value_names_key_and_variable() {
    let (ok, stderr) = run_to_exit(
        &["--listen-http", "127.0.0.1:0"],
        &[env("HERALD_CACHE_DURATION", "forever")],
    );
    assert!(!ok, "must fail; stderr: {stderr}");
    assert!(stderr.contains("cache-duration"), "{stderr}");
    assert!(stderr.contains("HERALD_CACHE_DURATION"), "{stderr}");
}

#[test]
fn bad_file_value_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yml");
    std::fs::write(&file, "message-size-limit: lots\n").unwrap();
    let (ok, stderr) = run_to_exit(
        &[
            "--listen-http",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok, "must fail; stderr: {stderr}");
    assert!(stderr.contains("message-size-limit"), "{stderr}");
    assert!(stderr.contains("config file"), "{stderr}");
    assert!(stderr.contains("server.yml"), "{stderr}");

    // A file that is not YAML at all, and one that does not exist.
    std::fs::write(&file, "- just\n- a list\n").unwrap();
    let (ok, stderr) = run_to_exit(&["--config", file.to_str().unwrap()], &[]);
    assert!(!ok && stderr.contains("server.yml"), "{stderr}");
    let missing = dir.path().join("missing.yml");
    let (ok, stderr) = run_to_exit(&["--config", missing.to_str().unwrap()], &[]);
    assert!(!ok && stderr.contains("missing.yml"), "{stderr}");
}

#[test]
fn bad_listen_address_fails() {
    let (ok, stderr) = run_to_exit(&["--listen-http", "nowhere"], &[]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("listen-http"), "{stderr}");
}

#[tokio::test]
async fn unknown_herald_variables_are_named_at_start() {
    // A typo in a cluster setting must not leave the node silently on its own store.
    let s = TestServer::launch(Launch {
        envs: vec![
            env("HERALD_REDIS_SENTINEL_ADRS", "127.0.0.1:26379"),
            env("HERALD_BASE_URL", "https://env.example"),
        ],
        ..Launch::default()
    });
    assert_eq!(base_url_of(&s).await, "https://env.example");
    let log = s.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("unknown environment variable"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("HERALD_REDIS_SENTINEL_ADRS"), "{log}");
    assert!(warned[0].contains("WARN"), "{log}");
}

/// Cluster settings that cannot work stop the start with the key named (from the
/// environment and YAML too, as every option): Sentinels without the master's name,
/// a client certificate without its key, an unreadable CA file, a bad address.
#[test]
fn bad_redis_settings_name_the_key() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("HERALD_REDIS_SENTINEL_ADDRS", "127.0.0.1:26379")],
            "redis-sentinel-master",
        ),
        (
            &[
                ("HERALD_REDIS_URL", "rediss://127.0.0.1:6380"),
                ("HERALD_REDIS_TLS_CERT_FILE", "/nonexistent/client.crt"),
            ],
            "redis-tls-key-file",
        ),
        (
            &[
                ("HERALD_REDIS_URL", "rediss://127.0.0.1:6380"),
                ("HERALD_REDIS_TLS_CA_FILE", "/nonexistent/ca.crt"),
            ],
            "redis-tls-ca-file",
        ),
        (
            &[
                ("HERALD_REDIS_SENTINEL_ADDRS", "127.0.0.1:notaport"),
                ("HERALD_REDIS_SENTINEL_MASTER", "m"),
            ],
            "redis-sentinel-addrs",
        ),
    ];
    for (vars, key) in cases {
        let envs: Vec<(String, String)> = vars.iter().map(|(k, v)| env(k, v)).collect();
        let (ok, stderr) = run_to_exit(&["--listen-http", "127.0.0.1:0"], &envs);
        assert!(!ok, "{vars:?} must fail; stderr: {stderr}");
        assert!(stderr.contains(key), "{vars:?}: {stderr}");
    }
}
