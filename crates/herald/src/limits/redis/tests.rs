//! The charge script on the real Redis (127.0.0.1:6379), each test under its own
//! prefix; time is passed in (`charge_at`), so refills are exact and instant.

use super::*;

const URL: &str = "redis://127.0.0.1:6379";

/// A test's key prefix, and its keys deleted when dropped.
struct Prefix(String);

impl Prefix {
    fn new(test: &str) -> Prefix {
        Prefix(format!(
            "herald-test:limits:{test}:{}:{}:",
            std::process::id(),
            fastrand::u64(..)
        ))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(client) = ::redis::Client::open(URL) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        for key in keys {
            let _: Result<(), _> = ::redis::cmd("DEL").arg(key).query(&mut conn);
        }
    }
}

fn node(prefix: &Prefix, f: impl FnOnce(&mut LimitsConfig), streams: usize) -> RedisLimits {
    let mut config = LimitsConfig::defaults();
    f(&mut config);
    RedisLimits::new(
        &crate::cluster::connector::local(),
        &prefix.0,
        &config,
        streams,
        Counter::default(),
    )
    .unwrap()
}

const T0: u64 = 1_800_000_000_000;

fn request() -> SharedCharge {
    SharedCharge {
        request: true,
        ..SharedCharge::default()
    }
}

fn refused(limit: Limit, ms: u64) -> Verdict {
    Verdict::Refused {
        limit,
        retry_after: Duration::from_millis(ms),
    }
}

#[tokio::test]
async fn request_burst_then_one_per_replenish() {
    let prefix = Prefix::new("burst");
    let l = node(
        &prefix,
        |c| {
            c.request_burst = 3;
            c.request_replenish = Duration::from_secs(5);
        },
        30,
    );
    let at = |ms| l.charge_at("ip:1.2.3.4", request(), Some(T0 + ms));
    for _ in 0..3 {
        assert_eq!(at(0).await.unwrap(), Verdict::Admitted);
    }
    assert_eq!(at(0).await.unwrap(), refused(Limit::Requests, 5000));
    assert_eq!(at(2000).await.unwrap(), refused(Limit::Requests, 3000));
    assert_eq!(at(5000).await.unwrap(), Verdict::Admitted);
    assert_eq!(at(5000).await.unwrap(), refused(Limit::Requests, 5000));
    // Another visitor has its own bucket.
    let other = l
        .charge_at("user:phil", request(), Some(T0 + 5000))
        .await
        .unwrap();
    assert_eq!(other, Verdict::Admitted);
    // Idle long enough, the bucket is full again, never more than the burst.
    for _ in 0..3 {
        assert_eq!(at(3_600_000).await.unwrap(), Verdict::Admitted);
    }
    assert!(matches!(
        at(3_600_000).await.unwrap(),
        Verdict::Refused { .. }
    ));
}

#[tokio::test]
async fn two_nodes_share_one_bucket() {
    let prefix = Prefix::new("shared");
    let shape = |c: &mut LimitsConfig| {
        c.request_burst = 4;
        c.request_replenish = Duration::from_secs(60);
    };
    let (a, b) = (node(&prefix, shape, 30), node(&prefix, shape, 30));
    for i in 0..4 {
        let n = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            n.charge_at("ip:10.0.0.1", request(), Some(T0))
                .await
                .unwrap(),
            Verdict::Admitted
        );
    }
    for n in [&a, &b] {
        assert_eq!(
            n.charge_at("ip:10.0.0.1", request(), Some(T0))
                .await
                .unwrap(),
            refused(Limit::Requests, 60_000)
        );
    }
    // On Redis's own clock (no `now` passed), the same.
    for n in [&a, &b, &a, &b] {
        assert_eq!(
            n.charge("ip:10.0.0.2", request()).await.unwrap(),
            Verdict::Admitted
        );
    }
    match b.charge("ip:10.0.0.2", request()).await.unwrap() {
        Verdict::Refused { limit, retry_after } => {
            assert_eq!(limit, Limit::Requests);
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
        }
        v => panic!("{v:?}"),
    }
}

#[tokio::test]
async fn daily_messages_are_counted_up_front_and_refunded() {
    let prefix = Prefix::new("daily");
    let l = node(&prefix, |c| c.message_daily_limit = 2, 30);
    let publish = SharedCharge {
        request: true,
        message: true,
        ..SharedCharge::default()
    };
    // 10 s before midnight UTC.
    let now = (T0 / 86_400_000 + 1) * 86_400_000 - 10_000;
    let v = "ip:192.0.2.1";
    assert_eq!(
        l.charge_at(v, publish, Some(now)).await.unwrap(),
        Verdict::Admitted
    );
    assert_eq!(
        l.charge_at(v, publish, Some(now)).await.unwrap(),
        Verdict::Admitted
    );
    assert_eq!(l.messages_today(v).await.unwrap(), 2);
    assert_eq!(
        l.charge_at(v, publish, Some(now)).await.unwrap(),
        refused(Limit::Messages, 10_000)
    );
    // A failed publish gives its message back.
    l.refund_message(v).await.unwrap();
    assert_eq!(l.messages_today(v).await.unwrap(), 1);
    assert_eq!(
        l.charge_at(v, publish, Some(now)).await.unwrap(),
        Verdict::Admitted
    );
    // Requests that are not publishes are not messages.
    assert_eq!(
        l.charge_at(v, request(), Some(now)).await.unwrap(),
        Verdict::Admitted
    );
    assert_eq!(l.messages_today(v).await.unwrap(), 2);
    // The count expires at midnight (by the TTL the script set from `now`).
    let mut conn = l.conn.clone();
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(l.key("rl:messages:", v))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 10_000, "PTTL {ttl}");
}

#[tokio::test]
async fn new_topics_are_all_or_nothing() {
    let prefix = Prefix::new("topics");
    let l = node(
        &prefix,
        |c| {
            c.request_burst = 2;
            c.topic_creation_burst = 2;
            c.topic_creation_replenish = Duration::from_secs(60);
        },
        30,
    );
    let topics = |n, request| SharedCharge {
        request,
        new_topics: n,
        ..SharedCharge::default()
    };
    let v = "ip:198.51.100.7";
    assert_eq!(
        l.charge_at(v, topics(3, true), Some(T0)).await.unwrap(),
        refused(Limit::TopicCreation, 60_000)
    );
    // Neither the request token nor any topic token was taken.
    assert_eq!(
        l.charge_at(v, topics(2, true), Some(T0)).await.unwrap(),
        Verdict::Admitted
    );
    assert_eq!(
        l.charge_at(v, topics(0, true), Some(T0)).await.unwrap(),
        Verdict::Admitted
    );
    assert_eq!(
        l.charge_at(v, topics(0, true), Some(T0)).await.unwrap(),
        refused(Limit::Requests, 5000)
    );
    assert_eq!(
        l.charge_at(v, topics(1, false), Some(T0 + 30_000))
            .await
            .unwrap(),
        refused(Limit::TopicCreation, 30_000)
    );
}

#[tokio::test]
async fn open_streams_count_on_every_node_until_a_node_dies() {
    let prefix = Prefix::new("streams");
    let (a, b) = (node(&prefix, |_| {}, 2), node(&prefix, |_| {}, 2));
    a.heartbeat(false).await.unwrap();
    b.heartbeat(false).await.unwrap();
    let stream = SharedCharge {
        open_stream: true,
        ..SharedCharge::default()
    };
    let v = "user:phil";
    assert_eq!(a.charge(v, stream).await.unwrap(), Verdict::Admitted);
    assert_eq!(b.charge(v, stream).await.unwrap(), Verdict::Admitted);
    assert_eq!(
        a.charge(v, stream).await.unwrap(),
        refused(Limit::Subscriptions, 0)
    );
    assert_eq!(
        b.charge(v, stream).await.unwrap(),
        refused(Limit::Subscriptions, 0)
    );
    // A stream that ends frees its slot (released in the background).
    a.close_stream(v);
    let mut admitted = false;
    for _ in 0..100 {
        if b.charge(v, stream).await.unwrap() == Verdict::Admitted {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "the closed stream's slot was not freed");
    assert_eq!(
        a.charge(v, stream).await.unwrap(),
        refused(Limit::Subscriptions, 0)
    );
    // Node b's heartbeat expires (it died): its two streams stop counting.
    let mut conn = a.conn.clone();
    let _: () = ::redis::cmd("DEL")
        .arg(b.node_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(a.charge(v, stream).await.unwrap(), Verdict::Admitted);
    assert_eq!(a.charge(v, stream).await.unwrap(), Verdict::Admitted);
    assert_eq!(
        a.charge(v, stream).await.unwrap(),
        refused(Limit::Subscriptions, 0)
    );
    // A resync writes this node's counts again (e.g. after Redis lost them).
    let _: () = ::redis::cmd("DEL")
        .arg(a.key("conn:", v))
        .query_async(&mut conn)
        .await
        .unwrap();
    a.heartbeat(true).await.unwrap();
    assert_eq!(
        a.charge(v, stream).await.unwrap(),
        refused(Limit::Subscriptions, 0)
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_quickly() {
    let unavailable = Counter::default();
    let l = RedisLimits::new(
        &crate::cluster::connector::RedisConnector::from_url("redis://127.0.0.1:1").unwrap(),
        "herald-test:limits:unreachable:",
        &LimitsConfig::defaults(),
        30,
        unavailable.clone(),
    )
    .unwrap();
    assert!(l.charge("ip:1.1.1.1", request()).await.is_err());
    // Within the back-off, no attempt is made at all.
    assert!(l.charge("ip:1.1.1.1", request()).await.is_err());
    assert_eq!(unavailable.get(), 2);
}

/// With the shared limits unreachable, a node limits on its own (fails open to its
/// registry, not to no limits at all).
#[tokio::test]
async fn unreachable_shared_limits_fall_back_to_the_nodes_own() {
    let mut config = LimitsConfig::defaults();
    config.request_burst = 2;
    config.message_daily_limit = 1;
    let shared = RedisLimits::new(
        &crate::cluster::connector::RedisConnector::from_url("redis://127.0.0.1:1").unwrap(),
        "herald-test:limits:fallback:",
        &config,
        30,
        Counter::default(),
    )
    .unwrap();
    let limits =
        super::super::Limits::new(config, Default::default()).with_shared(Arc::new(shared));
    let v = limits.visitor("192.0.2.9".parse().unwrap(), None);
    use super::super::{Admission, Charge};
    let admission = limits.admit_any(&v, Charge::Publish).await;
    assert!(
        matches!(admission, Ok(Admission::Local(_))),
        "{admission:?}"
    );
    limits.settle_message(&v, admission.unwrap(), true).await;
    let refused = limits.admit_any(&v, Charge::Publish).await.unwrap_err();
    assert_eq!(refused.limit, Limit::Messages);
    let refused = limits.admit_any(&v, Charge::Request).await.unwrap_err();
    assert_eq!(refused.limit, Limit::Requests);
    assert!(limits.open_stream_shared(&v, true, 1).await.is_none());
}

/// A node whose heartbeat could not be written yet (Redis was away at start-up) still
/// has its streams counted: opening one renews its heartbeat.
#[tokio::test]
async fn opening_a_stream_renews_the_nodes_heartbeat() {
    let prefix = Prefix::new("beat");
    let (a, b) = (node(&prefix, |_| {}, 1), node(&prefix, |_| {}, 1));
    let stream = SharedCharge {
        open_stream: true,
        ..SharedCharge::default()
    };
    assert_eq!(
        a.charge("ip:1.2.3.4", stream).await.unwrap(),
        Verdict::Admitted
    );
    assert_eq!(
        b.charge("ip:1.2.3.4", stream).await.unwrap(),
        refused(Limit::Subscriptions, 0)
    );
}
