//! Durability: what a publish acknowledged survives a graceful restart and a
//! `kill -9`; scheduled messages survive a restart and still fire.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;

use crate::fixture::{TestServer, expect_json, texts};

#[tokio::test]
async fn graceful_restart_keeps_history_in_order() {
    const N: usize = 50;
    let mut s = TestServer::start(&[]);
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(s.publish("dur", &format!("m{i}")).await["id"].clone());
    }
    // A stream open during shutdown is ended, not left hanging.
    let mut sub = s.stream("/dur/json").await;
    assert_eq!(sub.next_json().await["event"], "open");
    s.restart();
    assert!(
        sub.ends_within(Duration::from_secs(10)).await,
        "stream not closed on shutdown"
    );

    let polled = s.poll("dur", "since=all").await;
    let got: Vec<_> = polled.iter().map(|m| m["id"].clone()).collect();
    assert_eq!(got, ids);
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&polled), want);
    // New messages after the restart follow the old ones, and since=<id> still works.
    s.publish("dur", "after").await;
    let last_before = ids.last().unwrap().as_str().unwrap();
    assert_eq!(
        texts(&s.poll("dur", &format!("since={last_before}")).await),
        ["after"]
    );
}

#[tokio::test]
async fn scheduled_message_survives_restart_and_fires() {
    let mut s = TestServer::start(&[]);
    let m = expect_json(
        s.client
            .put(s.url("/dursched"))
            .header("X-Delay", "10s")
            .body("later")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    s.restart();
    assert!(
        texts(&s.poll("dursched", "").await).is_empty(),
        "not due yet"
    );
    assert_eq!(texts(&s.poll("dursched", "scheduled=1").await), ["later"]);
    let mut sub = s.stream("/dursched/json").await;
    assert_eq!(sub.next_json().await["event"], "open");
    let ev = tokio::time::timeout(Duration::from_secs(25), sub.next_non_keepalive())
        .await
        .expect("scheduled message did not fire after restart");
    assert_eq!(ev["id"], m["id"]);
    assert_eq!(ev["message"], "later");
    assert_eq!(texts(&s.poll("dursched", "").await), ["later"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loses_no_acknowledged_publish() {
    const PUBLISHERS: usize = 6;
    let mut s = TestServer::start(&[]);
    let base = s.base().to_string();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let client = s.client.clone();
        let base = base.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let resp = client
                    .put(format!("{base}/crash"))
                    .body(format!("p{p}-{i}"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                i += 1;
                let Ok(resp) = resp else { continue };
                if resp.status() != 200 {
                    continue;
                }
                // Only a complete 200 response counts as acknowledged.
                if let Ok(body) = resp.json::<serde_json::Value>().await {
                    acked
                        .lock()
                        .await
                        .push(body["id"].as_str().unwrap().to_string());
                }
            }
        }));
    }
    // Let the publishers get going, then pull the plug mid-stream.
    let acked_ref = acked.clone();
    crate::fixture::eventually(Duration::from_secs(20), "publishes acknowledged", || {
        let acked = acked_ref.clone();
        async move { (acked.lock().await.len() >= 300).then_some(()) }
    })
    .await;
    s.kill9();
    // Requests after the kill fail; give the publishers a moment to notice, then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().await.clone();

    s.start_again();
    let stored: std::collections::HashSet<String> = s
        .poll("crash", "since=all")
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost after kill -9: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
}
