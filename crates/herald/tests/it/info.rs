//! Informational endpoints, CORS and unknown paths (docs/COMPATIBILITY.md §1, §8).

use crate::fixture::{TestServer, expect_error, expect_json, header, herald_command};

#[tokio::test]
async fn health() {
    let s = TestServer::start(&[]);
    let resp = s.get("/v1/health").await;
    assert_eq!(header(&resp, "content-type"), "application/json");
    assert_eq!(resp.text().await.unwrap(), "{\"healthy\":true}\n");
}

#[tokio::test]
async fn stats_count_messages() {
    let s = TestServer::start(&[]);
    let before = expect_json(s.get("/v1/stats").await, 200).await;
    assert!(before["messages"].is_u64(), "{before}");
    assert!(before["messages_rate"].is_number(), "{before}");
    let keys: Vec<&str> = before
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["messages", "messages_rate"]);
    s.publish("st", "a").await;
    s.publish("st", "b").await;
    let after = expect_json(s.get("/v1/stats").await, 200).await;
    assert_eq!(
        after["messages"].as_u64().unwrap(),
        before["messages"].as_u64().unwrap() + 2
    );
}

#[tokio::test]
async fn server_config() {
    let s = TestServer::start(&["--base-url", "https://ntfy.example.com/"]);
    let resp = s.get("/v1/config").await;
    assert_eq!(header(&resp, "cache-control"), "no-cache");
    let cfg = expect_json(resp, 200).await;
    assert_eq!(cfg["base_url"], "https://ntfy.example.com");
    for key in [
        "app_root",
        "enable_login",
        "require_login",
        "enable_signup",
        "enable_payments",
        "enable_calls",
        "enable_emails",
        "enable_reset_password",
        "enable_reservations",
        "enable_web_push",
        "billing_contact",
        "web_push_public_key",
        "disallowed_topics",
        "config_hash",
    ] {
        assert!(cfg.get(key).is_some(), "missing {key} in {cfg}");
    }
    let disallowed = cfg["disallowed_topics"].as_array().unwrap();
    for name in [
        "docs", "static", "file", "app", "metrics", "account", "settings", "signup", "login", "v1",
    ] {
        assert!(
            disallowed.iter().any(|v| v == name),
            "{name} not in {disallowed:?}"
        );
    }
}

#[tokio::test]
async fn topic_auth_and_unifiedpush_discovery() {
    let s = TestServer::start(&[]);
    let resp = s.get("/mytopic/auth").await;
    assert_eq!(resp.text().await.unwrap(), "{\"success\":true}\n");
    let resp = s.get("/a,b/auth").await;
    assert_eq!(expect_json(resp, 200).await["success"], true);
    expect_error(s.get("/docs/auth").await, 400, 40010).await;
    let up = expect_json(s.get("/uptopic?up=1").await, 200).await;
    assert_eq!(up, serde_json::json!({"unifiedpush": {"version": 1}}));
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let s = TestServer::start(&[]);
    for path in ["/mytopic", "/mytopic/json", "/", "/v1/health"] {
        let resp = s
            .client
            .request(reqwest::Method::OPTIONS, s.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "OPTIONS {path}");
        assert_eq!(header(&resp, "access-control-allow-origin"), "*");
        assert_eq!(
            header(&resp, "access-control-allow-methods"),
            "GET, PUT, POST, PATCH, DELETE"
        );
        assert_eq!(header(&resp, "access-control-allow-headers"), "*");
    }
    // CORS header on errors and streams too.
    let resp = s.get("/nope/nope/nope").await;
    assert_eq!(header(&resp, "access-control-allow-origin"), "*");
    let resp = s.get("/t/json?poll=1").await;
    assert_eq!(header(&resp, "access-control-allow-origin"), "*");
}

#[tokio::test]
async fn unknown_paths_are_40401() {
    let s = TestServer::start(&[]);
    for path in [
        "/foo/bar/baz",
        "/v1/nothing",
        "/t/unknown",
        "/bad%20topic/json",
        "/t/json/x",
    ] {
        let resp = s.get(path).await;
        assert_eq!(header(&resp, "content-type"), "application/json", "{path}");
        assert_eq!(
            resp.text().await.unwrap(),
            "{\"code\":40401,\"http\":404,\"error\":\"page not found\"}\n",
            "{path}"
        );
    }
    // Methods that have no route.
    expect_error(
        s.client.delete(s.url("/t")).send().await.unwrap(),
        404,
        40401,
    )
    .await;
    expect_error(
        s.client.patch(s.url("/t")).send().await.unwrap(),
        404,
        40401,
    )
    .await;
}

#[tokio::test]
async fn liveness_and_readiness_probes() {
    let s = TestServer::start(&[]);
    let live = expect_json(s.get("/healthz").await, 200).await;
    assert_eq!(live["status"], "ok");
    let ready = expect_json(s.get("/readyz").await, 200).await;
    assert_eq!(ready["status"], "ok", "{ready}");
    for check in ["store", "broker", "accepting"] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }
}

/// Runs `herald healthcheck --url URL` and returns what it did (exit status, output).
async fn healthcheck(url: String) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        herald_command()
            .args(["healthcheck", "--url", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn healthcheck_command_reports_health_by_exit_status() {
    let s = TestServer::start(&[]);
    let ok = healthcheck(s.url("/healthz")).await;
    assert!(ok.status.success(), "{ok:?}");

    // Nothing listens on a port that was just released: the probe must fail (exit 1).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = healthcheck(format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!(down.status.code(), Some(1), "{down:?}");

    // A server that answers, but not 200, is unhealthy too.
    let not_ok = healthcheck(s.url("/no/such/path/here")).await;
    assert_eq!(not_ok.status.code(), Some(1), "{not_ok:?}");
}
