//! Scheduled delivery (docs/COMPATIBILITY.md §2.5): hidden until due unless
//! `scheduled=1`, delivered to live subscribers when due, replaced or cancelled
//! through its sequence ID. The minimum delay is 10 s, so this test waits about 11 s.

use std::time::Duration;

use crate::fixture::{TestServer, expect_json, texts};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn scheduled_hidden_then_delivered_cancel_and_replace() {
    let s = TestServer::start(&[]);
    let c = &s.client;
    let mut sub = s.stream("/sch/json").await;
    assert_eq!(sub.next_json().await["event"], "open");

    let before = now();
    let cancelled = expect_json(
        c.put(s.url("/sch/cancel-me"))
            .header("X-Delay", "10s")
            .body("cancelled")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let due = expect_json(
        c.put(s.url("/sch"))
            .header("X-Delay", "10s")
            .body("due")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let due_time = due["time"].as_i64().unwrap();
    assert!(
        due_time >= before + 9 && due_time <= now() + 11,
        "time is the delivery time: {due}"
    );
    assert_eq!(due["expires"].as_i64().unwrap(), due_time + 12 * 3600);
    // `in=` alias; then the same sequence published again replaces it.
    let old = expect_json(
        c.put(s.url("/sch/replace-me?in=10s"))
            .body("old")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert!(old["time"].as_i64().unwrap() > now());
    expect_json(
        c.put(s.url("/sch/replace-me"))
            .header("Delay", "10 seconds")
            .body("new")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;

    // Hidden from polls unless scheduled=1.
    assert!(texts(&s.poll("sch", "since=all").await).is_empty());
    let mut pending = texts(&s.poll("sch", "since=all&scheduled=1").await);
    pending.sort();
    assert_eq!(pending, ["cancelled", "due", "new"]);

    // Deleting the sequence cancels its scheduled message (and emits message_delete).
    let del = expect_json(c.delete(s.url("/sch/cancel-me")).send().await.unwrap(), 200).await;
    assert_eq!(del["event"], "message_delete");
    let ev = sub.next_non_keepalive().await;
    assert_eq!(ev["event"], "message_delete");
    assert_eq!(ev["sequence_id"], "cancel-me");
    let mut pending = texts(&s.poll("sch", "sched=1").await);
    pending.sort();
    assert_eq!(pending, ["due", "new"]);

    // Live delivery when due: "due" and "new", never "cancelled" or "old".
    let mut got = Vec::new();
    while got.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(25), sub.next_non_keepalive())
            .await
            .expect("scheduled messages were not delivered");
        assert_eq!(ev["event"], "message", "{ev}");
        let arrived = now();
        let t = ev["time"].as_i64().unwrap();
        assert!(arrived >= t - 1, "delivered early: {ev} at {arrived}");
        assert!(arrived <= t + 5, "delivered late: {ev} at {arrived}");
        if ev["message"] == "due" {
            assert_eq!(ev["id"], due["id"]);
        }
        got.push(ev["message"].as_str().unwrap().to_string());
    }
    got.sort();
    assert_eq!(got, ["due", "new"]);
    assert_ne!(cancelled["id"], due["id"]);

    // Now visible to ordinary polls; the cancelled and replaced ones never appear.
    let mut delivered = texts(&s.poll("sch", "since=all").await);
    delivered.sort();
    assert_eq!(delivered, ["due", "new"]);
}
