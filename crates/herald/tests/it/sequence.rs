//! Sequence IDs: updating, clearing and deleting notifications
//! (docs/COMPATIBILITY.md §2.9).

use serde_json::Value;

use crate::fixture::{TestServer, assert_keys_in_order, expect_json, expect_json_raw};

fn events(list: &[Value]) -> Vec<(String, String)> {
    list.iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["sequence_id"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn update_clear_delete_via_paths_and_headers() {
    let s = TestServer::start(&[]);
    let c = &s.client;
    let mut sub = s.stream("/sq/json").await;
    assert_eq!(sub.next_json().await["event"], "open");
    let mut ws = s.ws("/sq/ws").await;
    assert_eq!(ws.next_json().await["event"], "open");

    // Publish into a sequence by path; the response carries the sequence ID.
    let (v1, raw) = expect_json_raw(
        c.put(s.url("/sq/job-1")).body("v1").send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(v1["sequence_id"], "job-1");
    assert_ne!(v1["id"], "job-1");
    assert_keys_in_order(
        &raw,
        &[
            "id",
            "sequence_id",
            "time",
            "expires",
            "event",
            "topic",
            "message",
        ],
    );
    // Update by header and by query alias.
    let v2 = expect_json(
        c.post(s.url("/sq"))
            .header("X-Sequence-ID", "job-1")
            .body("v2")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(v2["sequence_id"], "job-1");
    let v3 = expect_json(
        c.put(s.url("/sq?sid=job-1"))
            .body("v3")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(v3["sequence_id"], "job-1");
    assert_ne!(v2["id"], v3["id"], "each update is a new message");

    // Clear (PUT /clear, GET /read) and delete (DELETE, GET /delete).
    let clear = expect_json(c.put(s.url("/sq/job-1/clear")).send().await.unwrap(), 200).await;
    assert_eq!(clear["event"], "message_clear");
    assert_eq!(clear["sequence_id"], "job-1");
    assert_eq!(clear["topic"], "sq");
    assert!(clear.get("message").is_none(), "{clear}");
    assert!(clear.get("expires").is_some(), "{clear}");
    let read = expect_json(c.get(s.url("/sq/job-1/read")).send().await.unwrap(), 200).await;
    assert_eq!(read["event"], "message_clear");
    let delete = expect_json(c.delete(s.url("/sq/job-1")).send().await.unwrap(), 200).await;
    assert_eq!(delete["event"], "message_delete");
    assert_eq!(delete["sequence_id"], "job-1");
    let delete2 = expect_json(c.get(s.url("/sq/job-1/delete")).send().await.unwrap(), 200).await;
    assert_eq!(delete2["event"], "message_delete");

    let want = [
        ("message", "job-1"),
        ("message", "job-1"),
        ("message", "job-1"),
        ("message_clear", "job-1"),
        ("message_clear", "job-1"),
        ("message_delete", "job-1"),
        ("message_delete", "job-1"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    // Live JSON subscriber.
    let mut live = Vec::new();
    while live.len() < want.len() {
        live.push(sub.next_non_keepalive().await);
    }
    assert_eq!(events(&live), want);
    assert_eq!(live[5], delete, "stream carries the response object");
    // Live WebSocket subscriber.
    let mut live_ws = Vec::new();
    while live_ws.len() < want.len() {
        live_ws.push(ws.next_json().await);
    }
    assert_eq!(events(&live_ws), want);
    // Stored and replayed by since=.
    assert_eq!(events(&s.poll("sq", "since=all").await), want);
    // Filters apply to delete/clear events too (by id).
    let by_id = s
        .poll("sq", &format!("id={}", delete["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        events(&by_id),
        [("message_delete".to_string(), "job-1".to_string())]
    );
}

#[tokio::test]
async fn sequence_id_equal_to_id_is_omitted_and_reusable() {
    let s = TestServer::start(&[]);
    let first = s.publish("ro", "first").await;
    assert!(first.get("sequence_id").is_none());
    let id = first["id"].as_str().unwrap();
    // Reusing a message's id as the sequence ID updates it.
    let update = expect_json(
        s.client
            .put(s.url(&format!("/ro/{id}")))
            .body("second")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(update["sequence_id"], id);
    let polled = s.poll("ro", "").await;
    assert!(polled[0].get("sequence_id").is_none(), "{}", polled[0]);
    assert_eq!(polled[1]["sequence_id"], id);
    // SSE framing also drops sequence_id equal to id.
    let sse = s.get("/ro/sse?poll=1").await.text().await.unwrap();
    let first_frame = sse.split("\n\n").next().unwrap();
    assert!(!first_frame.contains("sequence_id"), "{first_frame}");
}
