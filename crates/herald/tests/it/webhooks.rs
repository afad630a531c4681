//! Outgoing webhooks through the real binary: the API, Standard Webhooks bodies and
//! signatures (verified by the reference crate in the receiver fixture), retries
//! with the same `webhook-id`, disabling, rotation, replay, `kill -9` durability,
//! isolation of a hung endpoint, and the SSRF guard.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fixture::{TestServer, eventually, expect_error, expect_json, herald_command};
use crate::webhook_receiver::{Receiver, always, always_ok, black_hole};

/// Generous waits: the suite runs on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(30);

/// The servers' `webhook-admin-token`.
const ADMIN: &str = "test-webhook-admin-0123456789";

/// Receivers listen on 127.0.0.1, so these servers allow private destinations, and
/// retry fast; the tests manage webhooks as admin ([`ADMIN`]) unless they test who
/// may.
fn start(extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--webhook-allow-private",
        "true",
        "--webhook-retry-schedule",
        "0s,200ms,200ms,200ms,200ms,200ms,200ms,200ms",
        "--webhook-admin-token",
        ADMIN,
    ];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// Registers anonymously (exact topics: anyone may); the answer, with its `token`.
async fn register(s: &TestServer, body: Value) -> Value {
    let resp = s
        .client
        .post(s.url("/v1/webhooks"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let w = expect_json(resp, 201).await;
    assert!(w["token"].as_str().unwrap().starts_with("whm_"), "{w}");
    w
}

/// Registers as webhook admin (patterns need it).
async fn register_as_admin(s: &TestServer, body: Value) -> Value {
    let resp = s
        .client
        .post(s.url("/v1/webhooks"))
        .bearer_auth(ADMIN)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    expect_json(resp, 201).await
}

/// A request to `path` with `Authorization: Bearer <token>` (none: anonymous).
fn request(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    let req = s.client.request(method, s.url(path));
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// An anonymous registration that must fail with `http` and ntfy-style `code`; the
/// error JSON.
async fn register_fails(s: &TestServer, body: Value, http: u16, code: u64) -> Value {
    let resp = request(s, reqwest::Method::POST, "/v1/webhooks", None)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    expect_error(resp, http, code).await
}

/// Publishes `prefix0`, `prefix1`, ... to `topic`; their IDs in order.
async fn publish_many(s: &TestServer, topic: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let m = s.publish(topic, &format!("{prefix}{i}")).await;
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    ids
}

/// Registers `receiver` for `topic` and tells it the secret to verify with.
async fn hook(s: &TestServer, topic: &str, receiver: &Receiver) -> String {
    let w = register(s, json!({"topic": topic, "url": receiver.url})).await;
    receiver.set_secrets(&[w["secret"].as_str().unwrap()]);
    w["id"].as_str().unwrap().to_string()
}

/// `GET path` as webhook admin; the JSON of its 200.
async fn get_json(s: &TestServer, path: &str) -> Value {
    let resp = request(s, reqwest::Method::GET, path, Some(ADMIN))
        .send()
        .await
        .unwrap();
    expect_json(resp, 200).await
}

/// `POST path` with a JSON body as webhook admin.
async fn post_json(s: &TestServer, path: &str, body: Value) -> reqwest::Response {
    request(s, reqwest::Method::POST, path, Some(ADMIN))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn metric(s: &TestServer, line_prefix: &str) -> Option<f64> {
    let text = s.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn delivers_signed_standard_webhooks_to_matching_endpoints() {
    let s = start(&[]);
    let all = Receiver::start(always_ok()).await;
    let urgent = Receiver::start(always_ok()).await;
    let created = register(
        &s,
        json!({"topic": "alerts", "url": all.url, "description": "ops"}),
    )
    .await;
    assert!(created["id"].as_str().unwrap().starts_with("wh_"));
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    all.set_secrets(&[secret]);
    // A pattern with a priority filter, and a secret of our own.
    let own = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let w2 = register_as_admin(
        &s,
        json!({"topic": "al*", "url": urgent.url, "secret": own, "filter": {"priority": [5]}}),
    )
    .await;
    assert_eq!(w2["secret"], own);
    urgent.set_secrets(&[own]);

    // `Cache: no` messages are not kept, so not delivered to webhooks (documented).
    let uncached = s
        .client
        .put(s.url("/alerts"))
        .header("Cache", "no")
        .body("fleeting")
        .send()
        .await
        .unwrap();
    assert_eq!(uncached.status(), 200);
    let m1 = s.publish("alerts", "disk full").await;
    s.publish("other", "not for webhooks").await;
    let m2 = expect_json(
        s.client
            .put(s.url("/alerts"))
            .header("Priority", "5")
            .header("Tags", "fire")
            .body("on fire")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    // A delete event of the sequence goes to both (filters apply to messages only).
    let deleted = expect_json(
        s.client
            .delete(s.url(&format!("/alerts/{}", m1["id"].as_str().unwrap())))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;

    all.wait_delivered(3, WAIT).await;
    urgent.wait_delivered(2, WAIT).await;
    // Without `ordered`, attempts run concurrently: arrival order is not promised.
    let expected = [
        m1["id"].as_str().unwrap(),
        m2["id"].as_str().unwrap(),
        deleted["id"].as_str().unwrap(),
    ];
    let in_publish_order = |mut got: Vec<crate::webhook_receiver::Received>| {
        got.sort_by_key(|r| expected.iter().position(|e| *e == r.id));
        got
    };
    let got = in_publish_order(all.received());
    assert!(
        got.iter().all(|r| r.verified),
        "signature check failed: {got:?}"
    );
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, expected);
    let first = &got[0];
    assert_eq!(first.body["type"], "message");
    assert_eq!(first.body["data"]["message"], "disk full");
    assert_eq!(first.body["data"]["topic"], "alerts");
    assert_eq!(first.body["data"]["id"], m1["id"]);
    assert!(
        chrono::DateTime::parse_from_rfc3339(first.body["timestamp"].as_str().unwrap()).is_ok()
    );
    assert!(first.signature.starts_with("v1,"));
    assert!(first.timestamp.parse::<i64>().is_ok());
    assert_eq!(got[2].body["type"], "message_delete");
    let urgent_got = in_publish_order(urgent.received());
    assert!(urgent_got.iter().all(|r| r.verified));
    assert_eq!(urgent_got[0].body["data"]["message"], "on fire");
    assert_eq!(urgent_got[0].body["data"]["tags"], json!(["fire"]));

    // The admin lists both; with its management token: list, get (no secret),
    // secret, attempts, delete.
    let list = get_json(&s, "/v1/webhooks").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let id = created["id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    let as_owner =
        |method: reqwest::Method, path: String| request(&s, method, &path, Some(token)).send();
    let get = |path: String| async {
        expect_json(as_owner(reqwest::Method::GET, path).await.unwrap(), 200).await
    };
    let mine = get("/v1/webhooks".into()).await;
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["id"], id);
    let one = get(format!("/v1/webhooks/{id}")).await;
    assert_eq!(one["status"], "enabled");
    assert_eq!(one["description"], "ops");
    assert!(one.get("secret").is_none() && one.get("token").is_none());
    assert_eq!(
        get(format!("/v1/webhooks/{id}/secret")).await["secret"],
        secret
    );
    let attempts = get(format!("/v1/webhooks/{id}/attempts")).await;
    let attempts = attempts.as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a["status"] == 200));
    let resp = as_owner(reqwest::Method::DELETE, format!("/v1/webhooks/{id}"))
        .await
        .unwrap();
    expect_json(resp, 200).await;
    let gone = request(
        &s,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{id}"),
        Some(ADMIN),
    )
    .send()
    .await
    .unwrap();
    expect_error(gone, 404, 40401).await;
}

#[tokio::test]
async fn bad_registrations_get_clear_errors() {
    let s = start(&["--webhook-visitor-limit", "2"]);
    for body in [
        json!({"url": "http://127.0.0.1:9/"}),
        json!({"topic": "a/b", "url": "http://127.0.0.1:9/"}),
        json!({"topic": "t", "url": "ftp://x/"}),
        json!({"topic": "t", "url": "http://127.0.0.1:9/", "secret": "nope"}),
        json!({"topic": "t", "url": "http://127.0.0.1:9/", "filter": {"priority": [9]}}),
    ] {
        register_fails(&s, body, 400, 40000).await;
    }
    register_fails(&s, json!({"topic": "t", "bogus": 1}), 400, 40024).await;
    for _ in 0..2 {
        register(&s, json!({"topic": "t", "url": "http://127.0.0.1:9/"})).await;
    }
    let err = register_fails(
        &s,
        json!({"topic": "t", "url": "http://127.0.0.1:9/"}),
        429,
        42920,
    )
    .await;
    assert!(err["error"].as_str().unwrap().contains("webhooks"));
}

#[tokio::test]
async fn retries_keep_the_webhook_id_and_attempts_are_listed() {
    let s = start(&[]);
    // Fails twice (500, then 429 with Retry-After), then succeeds.
    let r = Receiver::start(Arc::new(|n| match n {
        0 => (500, vec![]),
        1 => (429, vec![("retry-after", "0".to_string())]),
        _ => (200, vec![]),
    }))
    .await;
    let id = hook(&s, "retry", &r).await;
    let m = s.publish("retry", "again and again").await;
    r.wait_delivered(1, WAIT).await;
    let got = r.received();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|g| g.id == m["id"].as_str().unwrap()));
    assert!(got.iter().all(|g| g.verified));
    assert_eq!(
        got.iter().map(|g| g.answered).collect::<Vec<_>>(),
        [500, 429, 200]
    );

    let attempts = get_json(&s, &format!("/v1/webhooks/{id}/attempts")).await;
    let attempts = attempts.as_array().unwrap();
    // Newest first.
    let statuses: Vec<_> = attempts.iter().map(|a| a["status"].clone()).collect();
    assert_eq!(statuses, [json!(200), json!(429), json!(500)]);
    assert_eq!(attempts[2]["attempt"], 1);
    assert_eq!(attempts[2]["error"], "HTTP 500");
    assert!(attempts[2]["next_attempt_ms"].is_i64());
    assert!(attempts[0]["next_attempt_ms"].is_null());
    assert!(attempts[0]["latency_ms"].is_i64());
    assert_eq!(
        metric(&s, "herald_webhook_attempts_total{outcome=\"http_error\"}").await,
        Some(2.0)
    );
    assert_eq!(
        metric(&s, "herald_webhook_attempts_total{outcome=\"success\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&s, "herald_webhook_delivery_latency_seconds_count").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn updates_take_effect_for_the_next_message() {
    let s = start(&[]);
    let before = Receiver::start(always_ok()).await;
    let after = Receiver::start(always_ok()).await;
    let w = register(&s, json!({"topic": "upd", "url": before.url})).await;
    let id = w["id"].as_str().unwrap();
    before.set_secrets(&[w["secret"].as_str().unwrap()]);
    after.set_secrets(&[w["secret"].as_str().unwrap()]);
    s.publish("upd", "first").await;
    before.wait_delivered(1, WAIT).await;
    let patch = |body: Value| {
        request(
            &s,
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(ADMIN),
        )
        .body(body.to_string())
        .send()
    };
    let updated = expect_json(
        patch(json!({"topic": "upd2", "url": after.url, "description": "moved"}))
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(updated["topic"], "upd2");
    assert_eq!(updated["description"], "moved");
    // The secret changes only by rotation.
    expect_error(
        patch(json!({"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}))
            .await
            .unwrap(),
        400,
        40000,
    )
    .await;
    s.publish("upd", "old topic").await;
    s.publish("upd2", "second").await;
    after.wait_delivered(1, WAIT).await;
    let got = after.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["data"]["message"], "second");
    assert!(got[0].verified);
    assert_eq!(before.received().len(), 1);
}

#[tokio::test]
async fn gone_disables_the_endpoint_until_enabled() {
    let s = start(&[]);
    let r = Receiver::start(always(410)).await;
    let id = hook(&s, "gone", &r).await;
    s.publish("gone", "one").await;
    let w = eventually(WAIT, "endpoint disabled", || async {
        let w = get_json(&s, &format!("/v1/webhooks/{id}")).await;
        (w["status"] == "disabled").then_some(w)
    })
    .await;
    assert!(
        w["disabled_reason"].as_str().unwrap().contains("410"),
        "{w}"
    );
    eventually(WAIT, "disabled endpoints metric", || async {
        (metric(&s, "herald_webhook_endpoints_disabled ").await == Some(1.0)).then_some(())
    })
    .await;
    // Disabled: a new message is not sent there.
    s.publish("gone", "two").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(r.received().len(), 1);
    // Enabled again, the pending first message is retried and succeeds.
    r.answer_with(always_ok());
    let resp = post_json(&s, &format!("/v1/webhooks/{id}/enable"), json!({})).await;
    assert_eq!(expect_json(resp, 200).await["status"], "enabled");
    r.wait_delivered(1, WAIT).await;
    assert_eq!(r.received().last().unwrap().body["data"]["message"], "one");
}

#[tokio::test]
async fn an_endpoint_failing_longer_than_disable_after_is_disabled() {
    // Attempts for about 5 s: well past `webhook-disable-after` (whole seconds).
    let s = TestServer::start(&[
        "--webhook-admin-token",
        ADMIN,
        "--webhook-allow-private",
        "true",
        "--webhook-disable-after",
        "1s",
        "--webhook-retry-schedule",
        "0s,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms",
    ]);
    let r = Receiver::start(always(500)).await;
    let id = hook(&s, "failing", &r).await;
    s.publish("failing", "x").await;
    let w = eventually(WAIT, "endpoint disabled", || async {
        let w = get_json(&s, &format!("/v1/webhooks/{id}")).await;
        (w["status"] == "disabled").then_some(w)
    })
    .await;
    assert!(
        w["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("webhook-disable-after"),
        "{w}"
    );
    assert!(w["failing_since"].is_string());
}

#[tokio::test]
async fn rotated_secrets_both_sign_during_the_grace_period() {
    let s = start(&[]);
    let r = Receiver::start(always_ok()).await;
    let w = register(&s, json!({"topic": "rot", "url": r.url})).await;
    let old = w["secret"].as_str().unwrap().to_string();
    let id = w["id"].as_str().unwrap();
    let rotated = expect_json(
        post_json(&s, &format!("/v1/webhooks/{id}/rotate"), json!({})).await,
        200,
    )
    .await;
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(rotated["previous_secret_expires"].is_string());
    // Every signature must verify with each secret on its own.
    r.set_secrets(&[&old, &new]);
    s.publish("rot", "after rotation").await;
    let got = r.wait_requests(1, WAIT).await;
    assert_eq!(got[0].signature.split(' ').count(), 2, "{:?}", got[0]);
    assert!(got[0].verified);
}

#[tokio::test]
async fn replay_queues_messages_again() {
    let s = start(&[]);
    let r = Receiver::start(always_ok()).await;
    // Published before the webhook existed: not delivered until replayed.
    let early = s.publish("replay", "early").await;
    s.publish("replay", "early 2").await;
    let id = hook(&s, "replay", &r).await;
    s.publish("replay", "live").await;
    r.wait_delivered(1, WAIT).await;
    let resp = post_json(
        &s,
        &format!("/v1/webhooks/{id}/replay"),
        json!({"since": "1h"}),
    )
    .await;
    assert_eq!(expect_json(resp, 202).await["queued"], 3);
    r.wait_delivered(3, WAIT).await;
    // Every delivery settled: "live" reached the receiver twice (live and replayed),
    // and a replay leaves a pair whose delivery is still pending as it is, counting
    // one less (seen flaking on a loaded host). An attempt is recorded in the
    // transaction that settles its delivery.
    let attempts = format!("/v1/webhooks/{id}/attempts");
    eventually(WAIT, "4 settled attempts", || async {
        let listed = get_json(&s, &attempts).await;
        (listed.as_array().map_or(0, Vec::len) >= 4).then_some(())
    })
    .await;
    let resp = post_json(
        &s,
        &format!("/v1/webhooks/{id}/replay"),
        json!({"since": early["id"]}),
    )
    .await;
    assert_eq!(expect_json(resp, 202).await["queued"], 2);
    r.wait_requests(6, WAIT).await;
    expect_error(
        post_json(&s, &format!("/v1/webhooks/{id}/replay"), json!({})).await,
        400,
        40000,
    )
    .await;
}

#[tokio::test]
async fn ordered_endpoints_get_messages_in_order_despite_failures() {
    let s = start(&[]);
    // The first request fails: with ordering, nothing overtakes it.
    let r = Receiver::start(Arc::new(
        |n| if n < 2 { (503, vec![]) } else { (200, vec![]) },
    ))
    .await;
    let w = register(&s, json!({"topic": "ord", "url": r.url, "ordered": true})).await;
    r.set_secrets(&[w["secret"].as_str().unwrap()]);
    let ids = publish_many(&s, "ord", "m", 10).await;
    r.wait_delivered(10, WAIT).await;
    let delivered: Vec<String> = r
        .received()
        .into_iter()
        .filter(|g| g.answered == 200)
        .map(|g| g.id)
        .collect();
    assert_eq!(delivered, ids);
}

/// `kill -9` while deliveries are pending (endpoints failing, and a burst that the
/// feed may not even have read yet): after a restart every message reaches every
/// endpoint, with its `webhook-id`.
#[tokio::test]
async fn kill_9_with_pending_deliveries_loses_nothing() {
    // Retries far enough apart that no delivery runs out of attempts between the
    // first failures and the kill, however slow the machine (with `start`'s 200 ms
    // steps a loaded machine exhausted some before the burst was published), and
    // near enough that the restarted node retries well within `WAIT`.
    let mut s = TestServer::start(&[
        "--webhook-allow-private",
        "true",
        "--webhook-retry-schedule",
        "0s,200ms,2s,2s,2s,2s,2s,2s",
        "--webhook-admin-token",
        ADMIN,
    ]);
    let a = Receiver::start(always(503)).await;
    let b = Receiver::start(always(503)).await;
    hook(&s, "crash", &a).await;
    hook(&s, "crash", &b).await;
    let mut ids: BTreeSet<String> = publish_many(&s, "crash", "m", 30)
        .await
        .into_iter()
        .collect();
    // Some attempts have failed, so deliveries are queued and pending.
    a.wait_requests(5, WAIT).await;
    b.wait_requests(5, WAIT).await;
    // A burst, then kill -9 at once.
    ids.extend(publish_many(&s, "crash", "burst", 100).await);
    s.kill9();
    a.answer_with(always_ok());
    b.answer_with(always_ok());
    s.start_again();
    a.wait_delivered(ids.len(), WAIT).await;
    b.wait_delivered(ids.len(), WAIT).await;
    assert_eq!(a.delivered_ids(), ids);
    assert_eq!(b.delivered_ids(), ids);
    assert!(a.received().iter().all(|r| r.verified));
    assert!(b.received().iter().all(|r| r.verified));
}

/// 1,000 messages to 10 endpoints, one of which accepts connections and never
/// answers: the nine others get all of them, long before the hung one's first
/// attempt could even time out.
#[tokio::test]
async fn a_hung_endpoint_does_not_hold_up_the_other_nine() {
    const N: usize = 1000;
    let s = start(&["--webhook-timeout", "300s"]);
    let (hung_url, _hole) = black_hole().await;
    register(&s, json!({"topic": "fan", "url": hung_url})).await;
    let mut receivers = Vec::new();
    for _ in 0..9 {
        let r = Receiver::start(always_ok()).await;
        hook(&s, "fan", &r).await;
        receivers.push(r);
    }
    let mut publishes = Vec::new();
    for p in 0..4 {
        let client = s.client.clone();
        let url = s.url("/fan");
        publishes.push(tokio::spawn(async move {
            for i in 0..N / 4 {
                let resp = client
                    .put(&url)
                    .body(format!("{p}-{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for p in publishes {
        p.await.unwrap();
    }
    for r in &receivers {
        r.wait_delivered(N, Duration::from_secs(120)).await;
        assert!(r.received().iter().all(|g| g.verified));
    }
    // Metrics saw the queue (the hung endpoint's 1,000 are still pending).
    eventually(WAIT, "queue depth and oldest pending age", || async {
        let depth = metric(&s, "herald_webhook_queue_depth ").await?;
        let age = metric(&s, "herald_webhook_oldest_pending_seconds ").await?;
        (depth >= 1.0 && age > 0.0).then_some(())
    })
    .await;
}

/// Without `webhook-allow-private`, loopback and private destinations are refused:
/// literal addresses at registration, names when connecting (so DNS cannot be used
/// to sneak past the check); an allow-list opens exactly the listed networks.
#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let s = TestServer::start(&[
        "--webhook-admin-token",
        ADMIN,
        "--webhook-retry-schedule",
        "0s,100ms",
    ]);
    let r = Receiver::start(always_ok()).await;
    for url in [
        r.url.clone(),
        "http://[::1]:9/".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://10.0.0.1/".into(),
        "http://[::ffff:127.0.0.1]/".into(),
    ] {
        let err = register_fails(&s, json!({"topic": "ssrf", "url": url}), 400, 40000).await;
        assert!(err["error"].as_str().unwrap().contains("public"), "{err}");
    }
    // A name that resolves to loopback passes registration but never connects.
    let port = r.url.split(':').nth(2).unwrap().split('/').next().unwrap();
    let w = register(
        &s,
        json!({"topic": "ssrf", "url": format!("http://localhost:{port}/hook")}),
    )
    .await;
    s.publish("ssrf", "probe").await;
    let id = w["id"].as_str().unwrap();
    let attempts = eventually(WAIT, "two refused attempts", || async {
        let a = get_json(&s, &format!("/v1/webhooks/{id}/attempts")).await;
        (a.as_array().unwrap().len() >= 2).then_some(a)
    })
    .await;
    for a in attempts.as_array().unwrap() {
        assert!(a["status"].is_null(), "{a}");
        assert!(a["error"].as_str().unwrap().contains("non-public"), "{a}");
    }
    assert!(r.received().is_empty(), "a refused destination was reached");
    assert_eq!(
        metric(&s, "herald_webhook_attempts_total{outcome=\"refused\"}").await,
        Some(2.0)
    );

    // The allow-list opens 127.0.0.0/8 only.
    let allowed = TestServer::start(&["--webhook-allow-cidrs", "127.0.0.0/8"]);
    hook(&allowed, "ssrf", &r).await;
    register_fails(
        &allowed,
        json!({"topic": "t", "url": "http://10.0.0.1/"}),
        400,
        40000,
    )
    .await;
    allowed.publish("ssrf", "allowed").await;
    r.wait_delivered(1, WAIT).await;
}

/// Redirects are not followed: a 3xx is a failed attempt, and the redirect target
/// is never called.
#[tokio::test]
async fn redirects_are_not_followed() {
    let s = TestServer::start(&[
        "--webhook-admin-token",
        ADMIN,
        "--webhook-allow-private",
        "true",
        "--webhook-retry-schedule",
        "0s",
    ]);
    let target = Receiver::start(always_ok()).await;
    let target_url = target.url.clone();
    let r = Receiver::start(Arc::new(move |_| {
        (307, vec![("location", target_url.clone())])
    }))
    .await;
    let id = hook(&s, "redir", &r).await;
    s.publish("redir", "x").await;
    let attempts = eventually(WAIT, "one attempt", || async {
        let a = get_json(&s, &format!("/v1/webhooks/{id}/attempts")).await;
        (!a.as_array().unwrap().is_empty()).then_some(a)
    })
    .await;
    assert_eq!(attempts[0]["status"], 307);
    assert!(
        attempts[0]["next_attempt_ms"].is_null(),
        "schedule exhausted"
    );
    assert!(target.received().is_empty());
}

#[tokio::test]
async fn cli_adds_lists_and_removes_webhooks() {
    let s = start(&[]);
    // As admin: the server's own environment variable names the token.
    let run = |args: &[&str]| {
        let out = herald_command()
            .arg("webhook")
            .args(args)
            .args(["--server", s.base()])
            .env("HERALD_WEBHOOK_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let added: Value = serde_json::from_str(&run(&[
        "add",
        "cli-topic",
        "http://127.0.0.1:9/hook",
        "--priority",
        "4,5",
        "--tags",
        "db",
    ]))
    .unwrap();
    let id = added["id"].as_str().unwrap();
    assert!(added["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(added["filter"], json!({"priority": [4, 5], "tags": ["db"]}));
    let listed = run(&["list"]);
    assert!(listed.contains(id), "{listed}");
    run(&["remove", id]);
    assert!(!run(&["list"]).contains(id));
}

/// A scheduled message is queued when stored and delivered when due, not before.
#[tokio::test]
async fn scheduled_messages_are_delivered_when_due() {
    let s = start(&[]);
    let r = Receiver::start(always_ok()).await;
    hook(&s, "later", &r).await;
    let m = expect_json(
        s.client
            .put(s.url("/later"))
            .header("X-Delay", "10s")
            .body("in ten seconds")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let due = m["time"].as_i64().unwrap();
    r.wait_delivered(1, WAIT).await;
    let arrived = chrono::Utc::now().timestamp();
    assert!(arrived >= due, "delivered at {arrived}, due at {due}");
    let got = r.received();
    assert_eq!(got[0].id, m["id"].as_str().unwrap());
    assert_eq!(got[0].body["data"]["message"], "in ten seconds");
    assert!(got[0].verified);
}

/// Issue #11, finding 1: on an open server (access control off) an anonymous
/// client registered `*` (or `vic*`) and replayed 12 h of every topic, and anyone
/// could list, read the secret of, change and delete anyone's webhooks. Now patterns
/// and replay need a webhook admin, a webhook is managed only with its management
/// token (or as admin), and to anyone else it does not exist.
#[tokio::test]
async fn open_server_webhooks_do_not_read_every_topic() {
    use reqwest::Method;
    let s = start(&[]);
    s.publish("victim-topic", "published before any webhook")
        .await;
    let url = "http://127.0.0.1:9/hook";
    let send = |method: Method, path: String, token: Option<String>, body: Option<Value>| {
        let req = request(&s, method, &path, token.as_deref());
        let req = match body {
            Some(b) => req.body(b.to_string()),
            None => req,
        };
        req.send()
    };

    // The attack: patterns are refused to anonymous clients, whatever the pattern.
    for topic in ["*", "vic*", "*topic", "a*b"] {
        let err = register_fails(&s, json!({"topic": topic, "url": url}), 403, 40301).await;
        assert!(!err["error"].as_str().unwrap().contains("victim"), "{err}");
    }

    // Two anonymous clients (same address, as behind one NAT) each register a topic.
    let a = register(&s, json!({"topic": "mine-a", "url": url})).await;
    let b = register(&s, json!({"topic": "mine-b", "url": url})).await;
    assert_eq!(a["topic"], "mine-a");
    let (a_id, a_token) = (a["id"].as_str().unwrap(), a["token"].as_str().unwrap());
    let b_token = b["token"].as_str().unwrap().to_string();

    // Replay is refused to the token holder (it reads history), and to others the
    // webhook does not exist.
    let replay = json!({"since": "12h"});
    let resp = send(
        Method::POST,
        format!("/v1/webhooks/{a_id}/replay"),
        Some(a_token.into()),
        Some(replay.clone()),
    );
    expect_error(resp.await.unwrap(), 403, 40301).await;
    let resp = send(
        Method::POST,
        format!("/v1/webhooks/{a_id}/replay"),
        None,
        Some(replay.clone()),
    );
    expect_error(resp.await.unwrap(), 404, 40401).await;

    // Listing: nothing without a token, only one's own with one.
    let list = |token: Option<String>| async {
        expect_json(
            send(Method::GET, "/v1/webhooks".into(), token, None)
                .await
                .unwrap(),
            200,
        )
        .await
    };
    assert_eq!(list(None).await, json!([]));
    let of_b = list(Some(b_token.clone())).await;
    assert_eq!(of_b.as_array().unwrap().len(), 1, "{of_b}");
    assert_eq!(of_b[0]["topic"], "mine-b");
    assert_eq!(
        list(Some("whm_aaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into())).await,
        json!([])
    );

    // Anyone else (no token, b's token, a made-up one): every operation on a's
    // webhook answers exactly what an unknown ID answers.
    let unknown = send(
        Method::GET,
        "/v1/webhooks/wh_doesnotexist".into(),
        None,
        None,
    )
    .await
    .unwrap();
    let unknown = expect_error(unknown, 404, 40401).await;
    for token in [None, Some(b_token.clone()), Some(format!("{a_token}x"))] {
        for (method, tail, body) in [
            (Method::GET, "", None),
            (Method::GET, "/secret", None),
            (Method::GET, "/attempts", None),
            (
                Method::PATCH,
                "",
                Some(json!({"url": "http://127.0.0.1:9/stolen"})),
            ),
            (Method::PUT, "", Some(json!({"topic": "mine-b"}))),
            (Method::POST, "/rotate", Some(json!({}))),
            (Method::POST, "/enable", Some(json!({}))),
            (Method::DELETE, "", None),
        ] {
            let resp = send(
                method.clone(),
                format!("/v1/webhooks/{a_id}{tail}"),
                token.clone(),
                body,
            )
            .await
            .unwrap();
            let err = expect_error(resp, 404, 40401).await;
            assert_eq!(err, unknown, "{method} {tail} with {token:?}");
        }
    }

    // The token holder manages it, but may not widen it to a pattern.
    let mine = Some(a_token.to_string());
    let resp = send(
        Method::PATCH,
        format!("/v1/webhooks/{a_id}"),
        mine.clone(),
        Some(json!({"topic": "vic*"})),
    );
    expect_error(resp.await.unwrap(), 403, 40301).await;
    let resp = send(
        Method::PATCH,
        format!("/v1/webhooks/{a_id}"),
        mine.clone(),
        Some(json!({"description": "still mine"})),
    );
    let changed = expect_json(resp.await.unwrap(), 200).await;
    assert_eq!(
        (changed["topic"].as_str(), changed["description"].as_str()),
        (Some("mine-a"), Some("still mine"))
    );
    let resp = send(
        Method::GET,
        format!("/v1/webhooks/{a_id}/secret"),
        mine.clone(),
        None,
    );
    assert_eq!(
        expect_json(resp.await.unwrap(), 200).await["secret"],
        a["secret"]
    );

    // The webhook admin sees and manages everything, and may replay and use patterns.
    assert_eq!(
        get_json(&s, "/v1/webhooks").await.as_array().unwrap().len(),
        2
    );
    let resp = post_json(&s, &format!("/v1/webhooks/{a_id}/replay"), replay).await;
    expect_json(resp, 202).await;
    let all = register_as_admin(&s, json!({"topic": "*", "url": url})).await;
    assert_eq!(all["topic"], "*");
    let resp = send(Method::DELETE, format!("/v1/webhooks/{a_id}"), mine, None);
    expect_json(resp.await.unwrap(), 200).await;
}

/// Without `webhook-admin-token` (and without access control) nobody is a webhook
/// admin, whatever bearer they send; and a management token is no credential on
/// topics: publishing and polling with it are what they are without it.
#[tokio::test]
async fn without_an_admin_token_nobody_is_a_webhook_admin() {
    let s = TestServer::start(&["--webhook-allow-private", "true"]);
    let url = "http://127.0.0.1:9/";
    let w = register(&s, json!({"topic": "tok", "url": url})).await;
    let (id, token) = (w["id"].as_str().unwrap(), w["token"].as_str().unwrap());
    for bearer in [Some(ADMIN), Some(""), None] {
        let resp = request(&s, reqwest::Method::POST, "/v1/webhooks", bearer)
            .body(json!({"topic": "*", "url": url}).to_string())
            .send()
            .await
            .unwrap();
        expect_error(resp, 403, 40301).await;
        let resp = request(&s, reqwest::Method::GET, "/v1/webhooks", bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(expect_json(resp, 200).await, json!([]));
        let resp = request(
            &s,
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/replay"),
            bearer,
        )
        .body(json!({"since": "1h"}).to_string())
        .send()
        .await
        .unwrap();
        expect_error(resp, 404, 40401).await;
    }
    for bearer in [token, ADMIN] {
        let resp = s
            .client
            .put(s.url("/tok"))
            .bearer_auth(bearer)
            .body("hi")
            .send()
            .await
            .unwrap();
        expect_json(resp, 200).await;
        let resp = request(&s, reqwest::Method::GET, "/tok/json?poll=1", Some(bearer))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}
