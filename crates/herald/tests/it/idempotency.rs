//! Idempotent publishing (a herald extension, README "Idempotent publishing"):
//! `Idempotency-Key` on the real binary over HTTP. The cluster form (two nodes on
//! one Redis) is in `cluster.rs`.

use std::time::Duration;

use serde_json::Value;

use crate::fixture::{Launch, TestServer, expect_error, expect_json_raw, header};

/// `PUT /<topic>` with `body`, title `t` and an `Idempotency-Key`; returns status,
/// replay header and body text.
async fn put_keyed(
    server: &TestServer,
    topic: &str,
    body: &str,
    key: &str,
) -> (u16, String, String) {
    let resp = put(server, topic, ("Idempotency-Key", key), "t", body).await;
    let status = resp.status().as_u16();
    let replayed = header(&resp, "idempotent-replayed");
    (status, replayed, resp.text().await.expect("body"))
}

/// `PUT /<topic>` with `body`, `title` and the key header `(name, key)`.
async fn put(
    server: &TestServer,
    topic: &str,
    (name, key): (&str, &str),
    title: &str,
    body: &str,
) -> reqwest::Response {
    server
        .client
        .put(server.url(&format!("/{topic}")))
        .header(name, key)
        .header("Title", title)
        .body(body.to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("publish")
}

/// 100 identical requests at once make one message; all get its exact answer, and
/// all but one say they were replayed.
#[tokio::test]
async fn concurrent_duplicates_make_one_message() {
    let server = std::sync::Arc::new(TestServer::start(&[]));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            put_keyed(&server, "idem", "backup done", "job-42").await
        }));
    }
    let mut bodies = std::collections::HashSet::new();
    let mut fresh = 0;
    for task in tasks {
        let (status, replayed, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        fresh += usize::from(replayed.is_empty());
        bodies.insert(body);
    }
    assert_eq!(bodies.len(), 1, "one answer: {bodies:?}");
    assert_eq!(fresh, 1, "one publish, 99 replays");
    let events = server.poll("idem", "since=all").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let body: Value = serde_json::from_str(bodies.iter().next().unwrap()).unwrap();
    assert_eq!(events[0]["id"], body["id"]);
}

/// A different request with a used key is refused (422, as the IETF draft and
/// Stripe); a bad key is a 400; header aliases and the JSON field are one key.
#[tokio::test]
async fn different_requests_aliases_and_bad_keys() {
    let server = TestServer::start(&[]);
    let (status, _, first) = put_keyed(&server, "idem2", "one", "k").await;
    assert_eq!(status, 200);
    let resp = put(&server, "idem2", ("Idempotency-Key", "k"), "t", "two").await;
    expect_error(resp, 422, 42201).await;
    // Another title is another request too.
    let resp = put(&server, "idem2", ("Idempotency-Key", "k"), "other", "one").await;
    expect_error(resp, 422, 42201).await;
    // X-Idempotency-Key is the same key.
    let resp = put(&server, "idem2", ("X-Idempotency-Key", "k"), "t", "one").await;
    assert_eq!(header(&resp, "idempotent-replayed"), "true");
    let (_, again) = expect_json_raw(resp, 200).await;
    assert_eq!(again, first);
    for bad in ["", &"x".repeat(256), "caf\u{e9}"] {
        let resp = put(&server, "idem2", ("Idempotency-Key", bad), "t", "one").await;
        if bad.is_empty() {
            // An empty header is no key (as every empty ntfy parameter).
            assert_eq!(resp.status(), 200);
        } else {
            expect_error(resp, 400, 40000).await;
        }
    }
    // JSON publishing: `idempotency_key`.
    let json = r#"{"topic":"idem3","message":"j","idempotency_key":"jk"}"#;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp = server
            .client
            .post(server.base())
            .body(json)
            .send()
            .await
            .unwrap();
        let (v, _) = expect_json_raw(resp, 200).await;
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(server.poll("idem3", "since=all").await.len(), 1);
    // Without a key, the same request publishes every time.
    server.publish("idem2", "one").await;
    server.publish("idem2", "one").await;
    assert_eq!(server.poll("idem2", "since=all").await.len(), 4);
}

/// A key outlives a restart (SQLite `idempotency.db`), and is forgotten after
/// `idempotency-window`.
#[tokio::test]
async fn keys_survive_a_restart_and_expire_after_the_window() {
    let mut server = TestServer::start(&["--idempotency-window", "3s"]);
    let (_, _, first) = put_keyed(&server, "idem4", "x", "r").await;
    server.restart();
    let (status, replayed, again) = put_keyed(&server, "idem4", "x", "r").await;
    assert_eq!((status, replayed.as_str()), (200, "true"));
    assert_eq!(again, first, "the original answer after a restart");
    assert_eq!(server.poll("idem4", "since=all").await.len(), 1);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (status, replayed, later) = put_keyed(&server, "idem4", "x", "r").await;
    assert_eq!((status, replayed.as_str()), (200, ""));
    assert_ne!(later, first, "a new message after the window");
    assert_eq!(server.poll("idem4", "since=all").await.len(), 2);
}

/// `idempotency-window 0` turns keys off, as a flag, in the environment or in the
/// config file.
#[tokio::test]
async fn a_zero_window_ignores_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yml");
    std::fs::write(&file, "idempotency-window: 0\n").unwrap();
    let launches = [
        Launch {
            args: vec!["--idempotency-window".into(), "0".into()],
            ..Launch::default()
        },
        Launch {
            envs: vec![("HERALD_IDEMPOTENCY_WINDOW".into(), "0".into())],
            ..Launch::default()
        },
        Launch {
            args: vec!["--config".into(), file.display().to_string()],
            ..Launch::default()
        },
    ];
    for launch in launches {
        let server = TestServer::launch(launch.clone());
        put_keyed(&server, "idem5", "x", "r").await;
        put_keyed(&server, "idem5", "x", "r").await;
        assert_eq!(
            server.poll("idem5", "since=all").await.len(),
            2,
            "{launch:?}"
        );
    }
}

/// Keys are per visitor: the same key from a user and from an anonymous client
/// (same address) are two keys.
#[tokio::test]
async fn keys_are_per_visitor() {
    let server = TestServer::start(&["--auth-default-access", "read-write"]);
    crate::auth::cli(&server, &["user", "add", "phil"], Some("phil-secret"));
    let (_, _, anonymous) = put_keyed(&server, "idem6", "x", "shared").await;
    let resp = server
        .client
        .put(server.url("/idem6"))
        .basic_auth("phil", Some("phil-secret"))
        .header("Idempotency-Key", "shared")
        .header("Title", "t")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "idempotent-replayed"), "");
    let (_, phil) = expect_json_raw(resp, 200).await;
    assert_ne!(phil, anonymous);
    assert_eq!(server.poll("idem6", "since=all").await.len(), 2);
}
