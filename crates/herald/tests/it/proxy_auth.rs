//! Proxy authentication (`auth-user-header`): the user a trusted proxy names is
//! believed from `proxy-trusted-hosts` peers only; the spoofing matrix (the same
//! header from an untrusted peer, or without `behind-proxy`) changes nothing.

use std::process::Stdio;

use base64::Engine;
use serde_json::Value;

use crate::auth::cli;
use crate::fixture::{TestServer, expect_error, expect_json, herald_command};

const HEADER: &str = "X-Forwarded-User";

/// A deny-all server where `phil` may write `secret` and `ben` exists without
/// access; the test's own address (loopback) is or is not a trusted proxy.
fn server(trusted: &str) -> TestServer {
    let s = TestServer::start(&[
        "--auth-default-access",
        "deny-all",
        "--behind-proxy",
        "true",
        "--proxy-trusted-hosts",
        trusted,
        "--auth-user-header",
        HEADER,
        "--auth-logout-url",
        "https://auth.example.com/logout",
    ]);
    cli(&s, &["user", "add", "phil"], Some("phil-secret"));
    cli(&s, &["user", "add", "ben"], Some("ben-secret"));
    cli(&s, &["access", "phil", "secret", "rw"], None);
    s
}

async fn publish(s: &TestServer, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = s.client.post(s.url("/secret")).body("hi");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// `GET path` with the user header naming `user`.
async fn get_as(s: &TestServer, path: &str, user: &str) -> reqwest::Response {
    s.client
        .get(s.url(path))
        .header(HEADER, user)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn trusted_proxy_header_is_the_user() {
    let s = server("127.0.0.1/32");
    expect_json(publish(&s, &[(HEADER, "phil")]).await, 200).await;
    // Without the header the request is anonymous (and denied here).
    expect_error(publish(&s, &[]).await, 403, 40301).await;
    // A user without access, an unknown user, an invalid name.
    expect_error(publish(&s, &[(HEADER, "ben")]).await, 403, 40301).await;
    expect_error(publish(&s, &[(HEADER, "mallory")]).await, 401, 40101).await;
    expect_error(publish(&s, &[(HEADER, "bad name!")]).await, 401, 40101).await;
    // Credentials in the request win over the header.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ben:ben-secret")
    );
    expect_error(
        publish(&s, &[(HEADER, "phil"), ("Authorization", &basic)]).await,
        403,
        40301,
    )
    .await;
    // Streaming subscriptions (served by the listener itself) believe it too.
    assert_eq!(
        get_as(&s, "/secret/json?poll=1", "phil").await.status(),
        200
    );
    let mut sub = crate::fixture::EventStream::new(get_as(&s, "/secret/json", "phil").await);
    assert_eq!(sub.next_json().await["event"], "open");
    let resp = s.get("/secret/json?poll=1").await;
    expect_error(resp, 403, 40301).await;
    // The account endpoint sees the proxy's user.
    let account: Value = expect_json(get_as(&s, "/v1/account", "phil").await, 200).await;
    assert_eq!(account["username"], "phil");
    let config: Value = expect_json(s.get("/v1/config").await, 200).await;
    assert_eq!(config["auth_logout_url"], "https://auth.example.com/logout");
}

#[tokio::test]
async fn spoofed_header_from_an_untrusted_peer_is_ignored() {
    // The test connects from 127.0.0.1, which is not the trusted proxy here.
    let s = server("10.0.0.0/8");
    expect_error(publish(&s, &[(HEADER, "phil")]).await, 403, 40301).await;
    expect_error(publish(&s, &[(HEADER, "mallory")]).await, 403, 40301).await;
    expect_error(get_as(&s, "/secret/json?poll=1", "phil").await, 403, 40301).await;
    // Even a forwarded-for naming the trusted range does not make the peer trusted.
    expect_error(
        publish(&s, &[(HEADER, "phil"), ("X-Forwarded-For", "10.1.2.3")]).await,
        403,
        40301,
    )
    .await;
}

#[test]
fn refused_without_a_proxy_to_trust() {
    for (args, why) in [
        (
            vec![
                "--auth-default-access",
                "deny-all",
                "--proxy-trusted-hosts",
                "127.0.0.1",
            ],
            "behind-proxy",
        ),
        (
            vec![
                "--auth-default-access",
                "deny-all",
                "--behind-proxy",
                "true",
            ],
            "proxy-trusted-hosts",
        ),
        (
            vec![
                "--behind-proxy",
                "true",
                "--proxy-trusted-hosts",
                "127.0.0.1",
            ],
            "access control",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = herald_command()
            .arg("serve")
            .args(["--listen-http", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--auth-user-header", HEADER])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("auth-user-header") && err.contains(why),
            "{err}"
        );
    }
}
