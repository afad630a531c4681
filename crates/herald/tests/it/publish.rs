//! Publishing: methods and paths, parameters and their aliases, the publish
//! response, JSON publish, and publish errors (docs/COMPATIBILITY.md §2, §5).

use serde_json::{Value, json};

use crate::fixture::{
    TestServer, assert_keys_in_order, expect_error, expect_json, expect_json_raw, header,
};

fn is_message_id(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 12 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[tokio::test]
async fn publish_response_shape() {
    let s = TestServer::start(&[]);
    let resp = s
        .client
        .post(s.url("/mytopic"))
        .body("Backup done")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "content-type"), "application/json");
    assert_eq!(header(&resp, "access-control-allow-origin"), "*");
    let (m, raw) = expect_json_raw(resp, 200).await;
    // ntfy's key order and no `sequence_id` when it equals the id.
    assert_keys_in_order(
        &raw,
        &["id", "time", "expires", "event", "topic", "message"],
    );
    assert!(is_message_id(&m["id"]), "{m}");
    assert_eq!(m["event"], "message");
    assert_eq!(m["topic"], "mytopic");
    assert_eq!(m["message"], "Backup done");
    let now = chrono_now();
    let time = m["time"].as_i64().unwrap();
    assert!((time - now).abs() <= 5, "time {time} vs now {now}");
    // Default cache duration: 12 h.
    assert_eq!(m["expires"].as_i64().unwrap(), time + 12 * 3600);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn publish_methods_and_paths() {
    let s = TestServer::start(&[]);
    let c = &s.client;
    let put = expect_json(
        c.put(s.url("/t")).body("via put").send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(put["message"], "via put");
    let post = expect_json(
        c.post(s.url("/t")).body("via post").send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(post["message"], "via post");
    for verb in ["publish", "send", "trigger"] {
        let m = expect_json(
            c.get(s.url(&format!(
                "/t/{verb}?message=via+{verb}&title=T&p=4&tags=a,b"
            )))
            .send()
            .await
            .unwrap(),
            200,
        )
        .await;
        assert_eq!(m["message"], format!("via {verb}"));
        assert_eq!(m["title"], "T");
        assert_eq!(m["priority"], 4);
        assert_eq!(m["tags"], json!(["a", "b"]));
    }
    // Nothing at all: "triggered".
    let m = expect_json(c.get(s.url("/t/trigger")).send().await.unwrap(), 200).await;
    assert_eq!(m["message"], "triggered");
    let m = expect_json(c.post(s.url("/t")).send().await.unwrap(), 200).await;
    assert_eq!(m["message"], "triggered");

    let polled = s.poll("t", "").await;
    assert_eq!(
        crate::fixture::texts(&polled),
        [
            "via put",
            "via post",
            "via publish",
            "via send",
            "via trigger",
            "triggered",
            "triggered"
        ]
    );

    // Publish via GET takes a single topic only.
    expect_error(
        c.get(s.url("/t1,t2/publish?m=x")).send().await.unwrap(),
        404,
        40401,
    )
    .await;
    // POST /<topic>/json publishes with sequence ID "json" (GET /json subscribes).
    let m = expect_json(
        c.post(s.url("/t/json")).body("seq").send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(m["sequence_id"], "json");
    assert_eq!(m["message"], "seq");
}

#[tokio::test]
async fn body_wins_and_is_trimmed_and_message_param_used_when_empty() {
    let s = TestServer::start(&[]);
    let c = &s.client;
    let m = expect_json(
        c.put(s.url("/t?message=param"))
            .body("  body text \n")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["message"], "body text");
    let m = expect_json(
        c.put(s.url("/t"))
            .header("X-Message", "from header")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["message"], "from header");
    let m = expect_json(c.put(s.url("/t?m=short+alias")).send().await.unwrap(), 200).await;
    assert_eq!(m["message"], "short alias");
}

#[tokio::test]
async fn header_and_query_aliases() {
    let s = TestServer::start(&[]);
    let c = &s.client;
    // One representative header per field.
    let m = expect_json(
        c.put(s.url("/t"))
            .header("X-Title", "Hdr title")
            .header("X-Priority", "high")
            .header("X-Tags", "warning, skull ,,x")
            .header("X-Click", "https://example.com/click")
            .header("X-Icon", "https://example.com/icon.png")
            .header("X-Attach", "https://example.com/files/pic.jpg")
            .header("X-Markdown", "yes")
            .body("hi")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["title"], "Hdr title");
    assert_eq!(m["priority"], 4);
    assert_eq!(m["tags"], json!(["warning", "skull", "x"]));
    assert_eq!(m["click"], "https://example.com/click");
    assert_eq!(m["icon"], "https://example.com/icon.png");
    assert_eq!(m["attachment"]["name"], "pic.jpg");
    assert_eq!(m["attachment"]["url"], "https://example.com/files/pic.jpg");
    assert_eq!(m["content_type"], "text/markdown");
    assert_eq!(m["message"], "hi");

    // Short header aliases.
    let m = expect_json(
        c.put(s.url("/t"))
            .header("t", "short")
            .header("prio", "1")
            .header("ta", "one")
            .header("md", "1")
            .body("hi")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["title"], "short");
    assert_eq!(m["priority"], 1);
    assert_eq!(m["tags"], json!(["one"]));
    assert_eq!(m["content_type"], "text/markdown");

    // Query aliases.
    let m = expect_json(
        c.put(s.url(
            "/t?title=Q&priority=urgent&tag=a,b&click=https://x.org&icon=https://x.org/i.png&markdown=true&attach=https://x.org/",
        ))
        .body("hi")
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["title"], "Q");
    assert_eq!(m["priority"], 5);
    assert_eq!(m["tags"], json!(["a", "b"]));
    assert_eq!(m["click"], "https://x.org");
    assert_eq!(m["icon"], "https://x.org/i.png");
    assert_eq!(m["content_type"], "text/markdown");
    assert_eq!(m["attachment"]["name"], "attachment");

    // Content-Type: text/markdown also sets markdown.
    let m = expect_json(
        c.put(s.url("/t"))
            .header("Content-Type", "text/markdown")
            .body("**b**")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["content_type"], "text/markdown");

    // Attachment filename alias.
    let m = expect_json(
        c.put(s.url("/t?a=https://x.org/f.bin&f=report.pdf"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["attachment"]["name"], "report.pdf");
    assert_eq!(m["message"], "You received a file: report.pdf");
}

#[tokio::test]
async fn header_beats_query_and_query_names_are_lowercase_only() {
    let s = TestServer::start(&[]);
    let c = &s.client;
    let m = expect_json(
        c.put(s.url("/t?title=query"))
            .header("Title", "header")
            .body("x")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["title"], "header");
    let m = expect_json(
        c.put(s.url("/t?Title=upper"))
            .body("x")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert!(
        m.get("title").is_none(),
        "uppercase query name must be ignored: {m}"
    );
    // RFC 2047 encoded header value.
    let m = expect_json(
        c.put(s.url("/t"))
            .header("X-Title", "=?UTF-8?B?R3LDvMOfZQ==?=")
            .body("x")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["title"], "Grüße");
    // RFC 9218 `Priority: u=N, i` is ignored; the query parameter applies.
    let m = expect_json(
        c.put(s.url("/t?p=2"))
            .header("Priority", "u=3, i")
            .body("x")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["priority"], 2);
}

#[tokio::test]
async fn priorities_by_name_and_number() {
    let s = TestServer::start(&[]);
    let cases = [
        ("1", 1),
        ("min", 1),
        ("2", 2),
        ("low", 2),
        ("3", 3),
        ("default", 3),
        ("4", 4),
        ("HIGH", 4),
        ("5", 5),
        ("max", 5),
        ("Urgent", 5),
    ];
    for (value, want) in cases {
        let m = expect_json(
            s.client
                .put(s.url("/t"))
                .header("X-Priority", value)
                .body("x")
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        assert_eq!(m["priority"], want, "priority {value}");
    }
    // Unset: omitted.
    let m = s.publish("t", "x").await;
    assert!(m.get("priority").is_none(), "{m}");
    for bad in ["6", "0", "highest", "-1"] {
        expect_error(
            s.client
                .put(s.url("/t"))
                .header("X-Priority", bad)
                .body("x")
                .send()
                .await
                .unwrap(),
            400,
            40007,
        )
        .await;
    }
}

#[tokio::test]
async fn actions_simple_format() {
    let s = TestServer::start(&[]);
    let header_value = "view, Open portal, https://home.nest.com/, clear=true; \
                        http, Turn down, https://api.nest.com/, body='{\"temperature\": 65}'";
    let m = expect_json(
        s.client
            .put(s.url("/t"))
            .header("X-Actions", header_value)
            .body("x")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let actions = m["actions"].as_array().expect("actions array");
    assert_eq!(actions.len(), 2, "{m}");
    let view = &actions[0];
    assert_eq!(view["action"], "view");
    assert_eq!(view["label"], "Open portal");
    assert_eq!(view["url"], "https://home.nest.com/");
    assert_eq!(view["clear"], true);
    assert!(view["id"].as_str().is_some_and(|s| !s.is_empty()), "{view}");
    let http = &actions[1];
    assert_eq!(http["action"], "http");
    assert_eq!(http["label"], "Turn down");
    assert_eq!(http["url"], "https://api.nest.com/");
    assert_eq!(http["method"], "POST");
    assert_eq!(http["body"], "{\"temperature\": 65}");
    assert_eq!(http["clear"], false);
    assert_ne!(view["id"], http["id"]);

    // Query alias `action`.
    let m = expect_json(
        s.client
            .put(s.url("/t"))
            .query(&[("action", "view, Docs, https://docs.example.com")])
            .body("x")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["actions"][0]["url"], "https://docs.example.com");
}

#[tokio::test]
async fn actions_json_format() {
    let s = TestServer::start(&[]);
    let actions = json!([
        {"action": "broadcast", "label": "Take picture", "extras": {"cmd": "pic"}},
        {"action": "http", "label": "Reboot", "url": "https://x.org/reboot", "method": "put",
         "headers": {"Authorization": "Bearer z"}}
    ]);
    let m = expect_json(
        s.client
            .put(s.url("/t"))
            .header("Actions", actions.to_string())
            .body("x")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let a = m["actions"].as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["action"], "broadcast");
    assert_eq!(a[0]["intent"], "io.heckel.ntfy.USER_ACTION");
    assert_eq!(a[0]["extras"], json!({"cmd": "pic"}));
    assert_eq!(a[1]["method"], "PUT");
    assert_eq!(a[1]["headers"], json!({"Authorization": "Bearer z"}));
}

#[tokio::test]
async fn invalid_actions_are_40018() {
    let s = TestServer::start(&[]);
    let four = "view, a, https://a.org; view, b, https://b.org; view, c, https://c.org; view, d, https://d.org";
    for bad in [
        four,
        "explode, Boom, https://x.org",
        "view, No URL",
        r#"[{"action":"view"}"#,
    ] {
        let body = expect_error(
            s.client
                .put(s.url("/t"))
                .header("X-Actions", bad)
                .body("x")
                .send()
                .await
                .unwrap(),
            400,
            40018,
        )
        .await;
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid request: actions invalid"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn cache_no_is_delivered_but_not_stored() {
    let s = TestServer::start(&[]);
    let mut sub = s.stream("/nocache/json").await;
    assert_eq!(sub.next_json().await["event"], "open");
    for cache in ["no", "false", "0", "foo"] {
        let m = expect_json(
            s.client
                .put(s.url("/nocache"))
                .header("Cache", cache)
                .body(format!("uncached {cache}"))
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        assert!(
            m.get("expires").is_none(),
            "no expires with Cache: {cache}: {m}"
        );
        let live = sub.next_non_keepalive().await;
        assert_eq!(live["message"], format!("uncached {cache}"));
    }
    let m = expect_json(
        s.client
            .put(s.url("/nocache?cache=yes"))
            .body("cached")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert!(m.get("expires").is_some());
    assert_eq!(
        crate::fixture::texts(&s.poll("nocache", "since=all").await),
        ["cached"]
    );
    // Cannot combine with a delay.
    expect_error(
        s.client
            .put(s.url("/nocache"))
            .header("Cache", "no")
            .header("Delay", "1h")
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        40002,
    )
    .await;
}

#[tokio::test]
async fn json_publish_to_root() {
    let s = TestServer::start(&[]);
    let req = json!({
        "topic": "jsontopic",
        "message": "Look ma, **JSON**",
        "title": "JSON title",
        "priority": 4,
        "tags": ["tada", "x"],
        "click": "https://example.com",
        "icon": "https://example.com/i.png",
        "attach": "https://example.com/a/file.txt",
        "markdown": true,
        "actions": [{"action": "view", "label": "Open", "url": "https://example.com/o"}]
    });
    let m = expect_json(
        s.client.post(s.base()).json(&req).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(m["topic"], "jsontopic");
    assert_eq!(m["message"], "Look ma, **JSON**");
    assert_eq!(m["title"], "JSON title");
    assert_eq!(m["priority"], 4);
    assert_eq!(m["tags"], json!(["tada", "x"]));
    assert_eq!(m["click"], "https://example.com");
    assert_eq!(m["icon"], "https://example.com/i.png");
    assert_eq!(m["attachment"]["name"], "file.txt");
    assert_eq!(m["content_type"], "text/markdown");
    assert_eq!(m["actions"][0]["label"], "Open");
    assert_eq!(m["actions"][0]["url"], "https://example.com/o");

    let m = expect_json(
        s.client
            .put(s.url("/"))
            .json(&json!({"topic": "jsontopic"}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["message"], "triggered");
    let m = expect_json(
        s.client
            .put(s.url("/"))
            .json(&json!({"topic": "jsontopic", "message": "seq", "sequence_id": "abc", "cache": "no"}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["sequence_id"], "abc");
    assert!(m.get("expires").is_none());

    assert_eq!(
        crate::fixture::texts(&s.poll("jsontopic", "").await),
        ["Look ma, **JSON**", "triggered"]
    );

    // Errors: not JSON, no topic, invalid topic.
    expect_error(
        s.client.post(s.base()).body("{nope").send().await.unwrap(),
        400,
        40024,
    )
    .await;
    expect_error(
        s.client
            .post(s.base())
            .json(&json!({"message": "x"}))
            .send()
            .await
            .unwrap(),
        400,
        40009,
    )
    .await;
    expect_error(
        s.client
            .post(s.base())
            .json(&json!({"topic": "bad topic!"}))
            .send()
            .await
            .unwrap(),
        400,
        40009,
    )
    .await;
    expect_error(
        s.client
            .post(s.base())
            .json(&json!({"topic": "x".repeat(65)}))
            .send()
            .await
            .unwrap(),
        400,
        40009,
    )
    .await;
}

#[tokio::test]
async fn topic_errors() {
    let s = TestServer::start(&[]);
    for disallowed in [
        "docs", "static", "file", "app", "metrics", "account", "settings", "signup", "login",
    ] {
        expect_error(
            s.client
                .put(s.url(&format!("/{disallowed}")))
                .body("x")
                .send()
                .await
                .unwrap(),
            400,
            40010,
        )
        .await;
    }
    // Also for subscriptions.
    expect_error(s.get("/docs/json?poll=1").await, 400, 40010).await;
    // 64 characters are fine.
    let long = "a".repeat(64);
    assert_eq!(s.publish(&long, "x").await["topic"], long.as_str());
}

#[tokio::test]
async fn body_size_limit() {
    let s = TestServer::start(&[]);
    let ok = "a".repeat(4095);
    assert_eq!(s.publish("big", &ok).await["message"], ok.as_str());
    // Exactly 4096 bytes fills ntfy's peek buffer: an attachment, not allowed here.
    let body = expect_error(
        s.client
            .put(s.url("/big"))
            .body("a".repeat(4096))
            .send()
            .await
            .unwrap(),
        400,
        40014,
    )
    .await;
    assert_eq!(body["error"], "invalid request: attachments not allowed");
    // A small binary body is an attachment too.
    expect_error(
        s.client
            .put(s.url("/big"))
            .body(vec![0xffu8, 0xfe, 0x00, 0x80])
            .send()
            .await
            .unwrap(),
        400,
        40014,
    )
    .await;
}

#[tokio::test]
async fn url_validation_errors() {
    let s = TestServer::start(&[]);
    expect_error(
        s.client
            .put(s.url("/t"))
            .header("X-Icon", "ftp://x.org/i.png")
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        40021,
    )
    .await;
    expect_error(
        s.client
            .put(s.url("/t"))
            .header("X-Attach", "not a url")
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        40013,
    )
    .await;
    expect_error(
        s.client
            .put(s.url("/t"))
            .header("X-Sequence-ID", "bad id!")
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        40049,
    )
    .await;
}

#[tokio::test]
async fn non_utf8_body_with_external_attachment_is_40011() {
    let s = TestServer::start(&[]);
    expect_error(
        s.client
            .put(s.url("/t"))
            .header("X-Attach", "https://x.org/f.jpg")
            .body(vec![0xffu8, 0xfe, 0xfd])
            .send()
            .await
            .unwrap(),
        400,
        40011,
    )
    .await;
}

#[tokio::test]
async fn delay_errors() {
    let s = TestServer::start(&[]);
    for (value, code) in [("banana", 40004), ("5s", 40005), ("4d", 40006)] {
        let resp = s
            .client
            .put(s.url("/t"))
            .header("X-Delay", value)
            .body("x")
            .send()
            .await
            .unwrap();
        let body = expect_error(resp, 400, code).await;
        if code != 40004 {
            assert!(
                body["link"]
                    .as_str()
                    .unwrap_or("")
                    .contains("scheduled-delivery"),
                "{body}"
            );
        }
    }
    // Aliases: `in`, `at`.
    expect_error(
        s.client
            .put(s.url("/t?in=2s"))
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        40005,
    )
    .await;
    expect_error(
        s.client
            .put(s.url("/t?at=30d"))
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        40006,
    )
    .await;
}

/// A client that sends a body well over the limit must still get the JSON error.
/// ntfy (Go's net/http) reads and discards up to 256 KB of an unread request body
/// before closing, so `curl -d @big.txt` sees `400 40014`.
#[tokio::test]
async fn oversized_body_still_gets_the_error_response() {
    let s = TestServer::start(&[]);
    for _ in 0..10 {
        let resp = s
            .client
            .put(s.url("/big"))
            .body("a".repeat(200_000))
            .send()
            .await
            .expect("the server's 400 response, not a transport error");
        expect_error(resp, 400, 40014).await;
    }
}

#[tokio::test]
async fn json_publish_body_limit() {
    let s = TestServer::start(&[]);
    // Twice the message size limit (8192 bytes by default) for the whole JSON body.
    let big = json!({"topic": "t", "message": "a".repeat(9000)});
    expect_error(
        s.client.post(s.base()).json(&big).send().await.unwrap(),
        413,
        41303,
    )
    .await;
}

#[tokio::test]
async fn delay_forms_set_the_delivery_time() {
    let s = TestServer::start(&[]);
    let now = chrono_now();
    // Unix timestamp.
    let at = now + 3600;
    let m = expect_json(
        s.client
            .put(s.url(&format!("/later/ts?at={at}")))
            .body("x")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(m["time"], at);
    // Durations, Go-style and spelled out.
    for (value, secs) in [
        ("30m", 1800),
        ("1h30m", 5400),
        ("2 hours", 7200),
        ("1 day", 86400),
    ] {
        let m = expect_json(
            s.client
                .put(s.url("/later"))
                .header("X-In", value)
                .body("x")
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        let t = m["time"].as_i64().unwrap();
        assert!(
            (t - (now + secs)).abs() <= 5,
            "delay {value}: time {t}, expected about {}",
            now + secs
        );
    }
    // All pending, none delivered.
    assert!(s.poll("later", "").await.is_empty());
    assert_eq!(s.poll("later", "scheduled=1").await.len(), 5);
    // Cancel the timestamped one through its sequence ID.
    expect_json(
        s.client.delete(s.url("/later/ts")).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(
        s.poll("later", "scheduled=1").await.len(),
        4 + 1,
        "4 pending + the delete event"
    );
}
