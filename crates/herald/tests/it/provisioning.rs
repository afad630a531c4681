//! Provisioned access control (`auth-users`, `auth-access`, `auth-tokens`): applied
//! at start, ntfy's bcrypt hashes accepted, protected from the CLI and the API
//! (`40905`/`40906`), and following the configuration across restarts.

use base64::Engine;

use crate::auth::cli;
use crate::fixture::{Launch, TestServer, expect_error, expect_json, herald_command};

const TOKEN: &str = "tk_provisioned0123456789abcdefgh";

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

async fn publish(s: &TestServer, topic: &str, auth: Option<&str>) -> reqwest::Response {
    let mut req = s.client.post(s.url(&format!("/{topic}"))).body("hi");
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    req.send().await.unwrap()
}

/// A server on `auth_file` with `yaml` as its config file.
fn start(dir: &std::path::Path, yaml: &str) -> TestServer {
    let config = dir.join("server.yml");
    std::fs::write(&config, yaml).unwrap();
    TestServer::launch(Launch {
        args: vec![
            "--config".into(),
            config.display().to_string(),
            "--auth-file".into(),
            dir.join("auth.db").display().to_string(),
            "--auth-default-access".into(),
            "deny-all".into(),
        ],
        ..Launch::default()
    })
}

#[tokio::test]
async fn provisioned_users_access_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    // ntfy's bcrypt hashes carry over (cost 4 keeps the test quick).
    let hash = bcrypt::hash("phil-secret", 4).unwrap();
    let full = format!(
        "auth-users:\n  - \"phil:{hash}:user\"\n  - \"root:{hash}:admin\"\n\
         auth-access:\n  - \"phil:alerts:rw\"\n  - \"everyone:up*:wo\"\n\
         auth-tokens:\n  - \"phil:{TOKEN}:ci\"\n"
    );
    let s = start(dir.path(), &full);
    let phil = basic("phil", "phil-secret");
    let bearer = format!("Bearer {TOKEN}");
    expect_json(publish(&s, "alerts", Some(&phil)).await, 200).await;
    expect_json(publish(&s, "alerts", Some(&bearer)).await, 200).await;
    expect_json(publish(&s, "upAbc", None).await, 200).await;
    expect_error(publish(&s, "alerts", None).await, 403, 40301).await;
    expect_error(
        publish(&s, "alerts", Some(&basic("phil", "wrong"))).await,
        401,
        40101,
    )
    .await;

    // The API refuses to change them: 40905 for users, 40906 for tokens.
    let root = basic("root", "phil-secret");
    let resp = s
        .client
        .delete(s.url("/v1/users"))
        .header("Authorization", &root)
        .body(r#"{"username":"phil"}"#)
        .send()
        .await
        .unwrap();
    expect_error(resp, 409, 40905).await;
    let resp = s
        .client
        .delete(s.url("/v1/account/token"))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap();
    expect_error(resp, 409, 40906).await;
    // And so does the CLI.
    for args in [
        vec!["user", "del", "phil"],
        vec!["user", "change-role", "phil", "admin"],
        vec!["token", "remove", "phil", TOKEN],
    ] {
        let out = herald_command()
            .args(&args)
            .arg("--auth-file")
            .arg(dir.path().join("auth.db"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("provisioned"), "{err}");
    }
    // Users made with the CLI are not provisioned.
    let auth_file = dir.path().join("auth.db");
    let auth_file = auth_file.to_str().unwrap();
    cli(
        &s,
        &["user", "add", "ben", "--auth-file", auth_file],
        Some("ben-secret"),
    );
    drop(s);

    // Restarted without the token and the ACL entry: both are gone, users stay.
    let fewer = format!("auth-users:\n  - \"phil:{hash}:user\"\n  - \"root:{hash}:admin\"\n");
    let s = start(dir.path(), &fewer);
    expect_error(publish(&s, "alerts", Some(&bearer)).await, 401, 40101).await;
    expect_error(publish(&s, "alerts", Some(&phil)).await, 403, 40301).await;
    expect_error(publish(&s, "upAbc", None).await, 403, 40301).await;
    drop(s);

    // Without phil: removed. ben (made by the CLI) stays.
    let s = start(dir.path(), &format!("auth-users: \"root:{hash}:admin\"\n"));
    expect_error(publish(&s, "alerts", Some(&phil)).await, 401, 40101).await;
    let resp = s
        .client
        .get(s.url("/v1/users"))
        .header("Authorization", &root)
        .send()
        .await
        .unwrap();
    let users = expect_json(resp, 200).await.to_string();
    assert!(
        users.contains("\"ben\"") && !users.contains("\"phil\""),
        "{users}"
    );
}

#[test]
fn bad_entries_are_refused_at_start() {
    for (key, value) in [
        ("HERALD_AUTH_USERS", "phil:plaintext-password:user"),
        ("HERALD_AUTH_ACCESS", "phil:alerts:sometimes"),
        ("HERALD_AUTH_TOKENS", "phil:tk_tooshort"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = herald_command()
            .args([
                "serve",
                "--listen-http",
                "127.0.0.1:0",
                "--auth-default-access",
                "deny-all",
                "--data-dir",
            ])
            .arg(dir.path())
            .env(key, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}={value} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("auth-users"), "{err}");
        // Secrets are not echoed.
        assert!(!err.contains("plaintext-password"), "{err}");
    }
}
