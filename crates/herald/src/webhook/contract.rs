//! The contract every [`WebhookStore`] keeps, as test functions the SQLite and the
//! Redis store's tests both run (endpoints round-trip with and without a management
//! token digest).

use std::time::Duration;

use super::store::{Attempt, AttemptRecord, Delivery, NewDelivery, Settlement, WebhookStore};
use super::{Filter, Webhook};

pub fn webhook(id: &str) -> Webhook {
    Webhook {
        id: id.into(),
        topic: "t".into(),
        url: "http://x".into(),
        secret: super::sign::Secret::generate().as_str().into(),
        previous_secret: None,
        filter: Filter::default(),
        description: String::new(),
        ordered: false,
        owner: "1.2.3.4".into(),
        token_digest: None,
        created: 1,
        start_after: String::new(),
        disabled: None,
        failing_since: None,
    }
}

pub fn delivery(webhook: &str, message: &str, due_ms: i64) -> NewDelivery {
    NewDelivery {
        webhook_id: webhook.into(),
        message_id: message.into(),
        event: "message".into(),
        payload: "{}".into(),
        event_time: 1,
        due_ms,
    }
}

/// The record of an attempt on `d` by claimant `owner`.
pub fn record(d: &Delivery, owner: &str, time_ms: i64, settlement: Settlement) -> AttemptRecord {
    AttemptRecord {
        delivery: d.key,
        owner: owner.into(),
        webhook_id: d.webhook_id.clone(),
        attempt: Attempt {
            message_id: d.message_id.clone(),
            attempt: d.attempts + 1,
            time_ms,
            status: Some(500),
            latency_ms: 3,
            error: None,
            response: None,
            next_attempt_ms: None,
        },
        settlement,
    }
}

pub const LEASE: Duration = Duration::from_secs(30);

/// Claims are exclusive until their lease ends; then anyone takes them over.
pub async fn claims_are_exclusive_until_the_lease_ends(store: &dyn WebhookStore) {
    store.insert_webhook(&webhook("a")).await.unwrap();
    let n = store
        .enqueue(vec![delivery("a", "m1", 0), delivery("a", "m2", 0)], "m2")
        .await
        .unwrap();
    assert_eq!(n, 2);
    // A pair already queued is left alone.
    assert_eq!(
        store
            .enqueue(vec![delivery("a", "m1", 0)], "m2")
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.cursor().await.unwrap().as_deref(), Some("m2"));
    let first = store.claim("a", false, 1, 10, LEASE, "n1").await.unwrap();
    assert_eq!(first.len(), 1);
    let second = store.claim("a", false, 5, 10, LEASE, "n2").await.unwrap();
    assert_eq!(second.len(), 1);
    assert_ne!(first[0].message_id, second[0].message_id);
    assert!(
        store
            .claim("a", false, 5, 10, LEASE, "n2")
            .await
            .unwrap()
            .is_empty()
    );
    // An expired lease is taken over.
    let later = 10 + LEASE.as_millis() as i64 + 1;
    assert_eq!(
        store
            .claim("a", false, 5, later, LEASE, "n3")
            .await
            .unwrap()
            .len(),
        2
    );
}

/// Settlements, failure streaks, ordered claims, attempts, replay and deletion.
pub async fn settlements_and_ordered_claims(store: &dyn WebhookStore) {
    store.insert_webhook(&webhook("a")).await.unwrap();
    store
        .enqueue(vec![delivery("a", "m1", 0), delivery("a", "m2", 0)], "m2")
        .await
        .unwrap();
    let head = store.claim("a", true, 5, 10, LEASE, "n").await.unwrap();
    assert_eq!(head.len(), 1);
    assert_eq!(head[0].message_id, "m1");
    // The head is claimed: nothing else goes while it is out.
    assert!(
        store
            .claim("a", true, 5, 10, LEASE, "n")
            .await
            .unwrap()
            .is_empty()
    );
    let failing = store
        .finish_attempt(record(&head[0], "n", 10_000, Settlement::RetryAt(20_000)))
        .await
        .unwrap();
    assert_eq!(failing, Some(10));
    // Not due yet; and in order, m2 waits behind it.
    assert!(
        store
            .claim("a", true, 5, 15_000, LEASE, "n")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.next_due("a", true, 15_000).await.unwrap(),
        Some(20_000)
    );
    let head = store.claim("a", true, 5, 20_000, LEASE, "n").await.unwrap();
    assert_eq!(head[0].message_id, "m1");
    assert_eq!(head[0].attempts, 1);
    let failing = store
        .finish_attempt(record(&head[0], "n", 20_000, Settlement::Delivered))
        .await
        .unwrap();
    assert_eq!(failing, None);
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats.pending, 1);
    let attempts = store.attempts("a", 10).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].attempt, 2);
    // Replay makes a delivered pair pending again.
    assert_eq!(
        store
            .requeue(vec![delivery("a", "m1", 30_000)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.queue_stats().await.unwrap().pending, 2);
    assert!(store.delete_webhook("a").await.unwrap());
    assert_eq!(store.queue_stats().await.unwrap().pending, 0);
}

/// Endpoints come back as written, every field; updates need the endpoint.
pub async fn endpoints_round_trip(store: &dyn WebhookStore) {
    let mut w = webhook("b");
    w.previous_secret = Some((super::sign::Secret::generate().as_str().into(), 5));
    w.filter = Filter {
        priority: vec![4, 5],
        tags: vec!["db".into()],
    };
    w.description = "désc \"quoted\" / slash".into();
    w.ordered = true;
    w.disabled = Some(("410 Gone".into(), 6));
    w.failing_since = Some(7);
    w.token_digest = Some(crate::auth::token::digest("whm_round_trip"));
    store.insert_webhook(&w).await.unwrap();
    store.insert_webhook(&webhook("c")).await.unwrap();
    assert_eq!(store.webhook("b").await.unwrap(), Some(w.clone()));
    assert_eq!(store.webhooks().await.unwrap().len(), 2);
    assert_eq!(store.count_owned("1.2.3.4").await.unwrap(), 2);
    assert_eq!(store.count_owned("5.6.7.8").await.unwrap(), 0);
    // A webhook without a management token (registered before they existed).
    assert_eq!(
        store.webhook("c").await.unwrap().unwrap().token_digest,
        None
    );
    w.disabled = None;
    w.failing_since = None;
    assert!(store.update_webhook(&w).await.unwrap());
    assert_eq!(store.webhook("b").await.unwrap(), Some(w.clone()));
    assert_eq!(store.queue_stats().await.unwrap().disabled, 0);
    assert!(store.delete_webhook("b").await.unwrap());
    assert!(!store.delete_webhook("b").await.unwrap());
    assert!(
        !store.update_webhook(&w).await.unwrap(),
        "deleted stays deleted"
    );
    assert_eq!(store.webhook("b").await.unwrap(), None);
}
