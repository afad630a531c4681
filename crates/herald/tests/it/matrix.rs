//! The Matrix push gateway (`/_matrix/push/v1/notify`, docs/COMPATIBILITY.md §1):
//! a homeserver's Push Gateway API request (the spec's sample body) published to
//! the pushkey's topic, UnifiedPush discovery, rejections and errors.

use serde_json::{Value, json};

use crate::fixture::{TestServer, expect_error, expect_json};

/// The Push Gateway API's sample notification
/// (https://spec.matrix.org/v1.10/push-gateway-api/#post_matrixpushv1notify),
/// with `pushkey` pointing at `push_key`.
fn sample(push_key: &str) -> Value {
    json!({
      "notification": {
        "content": {
          "body": "I'm floating in a most peculiar way.",
          "msgtype": "m.text"
        },
        "counts": {"missed_calls": 1, "unread": 2},
        "devices": [
          {
            "app_id": "org.matrix.matrixConsole.ios",
            "data": {},
            "pushkey": push_key,
            "pushkey_ts": 12345678,
            "tweaks": {"sound": "bing"}
          }
        ],
        "event_id": "$3957tyerfgewrf384",
        "prio": "high",
        "room_alias": "#exampleroom:matrix.org",
        "room_id": "!slw48wfj34rtnrf:example.com",
        "room_name": "Mission Control",
        "sender": "@exampleuser:matrix.org",
        "sender_display_name": "Major Tom",
        "type": "m.room.message"
      }
    })
}

const BASE: &str = "https://push.example.com";

#[tokio::test]
async fn homeserver_push_is_published_to_the_pushkey_topic() {
    let s = TestServer::start(&["--base-url", BASE]);
    let body = sample(&format!("{BASE}/upAbc123?up=1"));
    let resp = s
        .client
        .post(s.url("/_matrix/push/v1/notify"))
        .header(
            "X-Title",
            "ignored: the homeserver's headers are not parameters",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    let answer = expect_json(resp, 200).await;
    assert_eq!(answer, json!({"rejected": []}));
    let msgs = s.poll("upAbc123", "").await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    // UnifiedPush: the body verbatim, for the app to decode.
    let published: Value = serde_json::from_str(m["message"].as_str().unwrap()).unwrap();
    assert_eq!(published, body);
    assert!(m.get("title").is_none(), "{m}");

    // A pushkey of another server is rejected, so the homeserver drops it.
    let other = "https://other.example.com/upAbc123?up=1";
    let resp = s
        .client
        .post(s.url("/_matrix/push/v1/notify"))
        .json(&sample(other))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_json(resp, 200).await, json!({"rejected": [other]}));
    assert_eq!(s.poll("upAbc123", "").await.len(), 1);
}

#[tokio::test]
async fn discovery_and_errors() {
    let s = TestServer::start(&["--base-url", BASE]);
    let resp = s.get("/_matrix/push/v1/notify").await;
    assert_eq!(
        expect_json(resp, 200).await,
        json!({"unifiedpush": {"gateway": "matrix"}})
    );
    let post = |body: String| {
        s.client
            .post(s.url("/_matrix/push/v1/notify"))
            .body(body)
            .send()
    };
    expect_error(post("not json".into()).await.unwrap(), 400, 40019).await;
    expect_error(
        post(r#"{"notification":{"devices":[]}}"#.into())
            .await
            .unwrap(),
        400,
        40019,
    )
    .await;
    expect_error(
        post(r#"{"notification":{}}"#.into()).await.unwrap(),
        400,
        40019,
    )
    .await;
    let big = sample(&format!("{BASE}/upBig?up=1"));
    let mut big_text = big.to_string();
    big_text.insert_str(1, &format!("\"pad\":\"{}\",", "x".repeat(5000)));
    expect_error(post(big_text).await.unwrap(), 413, 41302).await;

    // Without base-url neither answer can be given.
    let bare = TestServer::start(&[]);
    expect_error(bare.get("/_matrix/push/v1/notify").await, 500, 50003).await;
}

#[tokio::test]
async fn gateway_needs_write_access() {
    let s = TestServer::start(&["--base-url", BASE, "--auth-default-access", "read-only"]);
    let resp = s
        .client
        .post(s.url("/_matrix/push/v1/notify"))
        .json(&sample(&format!("{BASE}/upLocked?up=1")))
        .send()
        .await
        .unwrap();
    expect_error(resp, 403, 40301).await;
    assert!(s.poll("upLocked", "").await.is_empty());
}
