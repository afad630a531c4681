use super::*;
use crate::error::ApiError;

fn limits_with(f: impl FnOnce(&mut LimitsConfig)) -> Limits {
    let mut config = LimitsConfig::defaults();
    f(&mut config);
    Limits::new(config, Family::default())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn refused_count(limits: &Limits, limit: Limit) -> u64 {
    limits
        .refusals
        .get_or_create(&LimitLabels {
            limit: limit.as_str(),
        })
        .get()
}

#[test]
fn keys_follow_the_prefixes() {
    let l = limits_with(|_| {});
    let v = |s: &str| l.visitor(ip(s), None).key;
    assert_eq!(v("1.2.3.4"), v("::ffff:1.2.3.4"));
    assert_ne!(v("1.2.3.4"), v("1.2.3.5"));
    // One IPv6 /64 is one visitor.
    assert_eq!(v("2001:db8:1:2::1"), v("2001:db8:1:2:ffff::9"));
    assert_ne!(v("2001:db8:1:2::1"), v("2001:db8:1:3::1"));
    let user = l.visitor(ip("1.2.3.4"), Some("phil")).key;
    assert_eq!(user, VisitorKey::User(Arc::from("phil")));
    assert_eq!(user, l.visitor(ip("9.9.9.9"), Some("phil")).key);

    let l = limits_with(|c| {
        c.prefix_bits_ipv4 = 24;
        c.prefix_bits_ipv6 = 48;
    });
    let v = |s: &str| l.visitor(ip(s), None).key;
    assert_eq!(v("1.2.3.4"), v("1.2.3.200"));
    assert_eq!(v("2001:db8:1:2::1"), v("2001:db8:1:3::1"));
}

#[tokio::test(start_paused = true)]
async fn requests_burst_then_replenish() {
    let l = limits_with(|c| c.request_burst = 60);
    let v = l.visitor(ip("1.2.3.4"), None);
    for _ in 0..60 {
        l.admit(&v, Charge::Request).unwrap();
    }
    let err = l.admit(&v, Charge::Publish).unwrap_err();
    assert_eq!(ApiError::from(err).code, 42901);
    assert_eq!(l.retry_after(err.limit, &v), Duration::from_secs(5));
    assert_eq!(l.retry_after_refusal(&err, &v), Duration::from_secs(5));
    let resp = crate::api::refusal_response(&l, err, &v);
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()[axum::http::header::RETRY_AFTER], "5");
    assert_eq!(refused_count(&l, Limit::Requests), 1);
    // Others are not affected; free routes are never charged.
    l.admit(&l.visitor(ip("1.2.3.5"), None), Charge::Request)
        .unwrap();
    l.admit(&v, Charge::Free).unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    l.admit(&v, Charge::Request).unwrap();
    assert!(l.admit(&v, Charge::Request).is_err());
}

#[tokio::test(start_paused = true)]
async fn exempt_hosts_skip_every_limit() {
    let l = limits_with(|c| {
        c.request_burst = 1;
        c.message_daily_limit = 1;
        c.topic_creation_burst = 1;
        c.exempt_hosts = net::parse_host_list("127.0.0.1,10.0.0.0/8").unwrap();
    });
    for addr in ["127.0.0.1", "10.9.8.7", "::ffff:10.1.1.1"] {
        let v = l.visitor(ip(addr), None);
        assert!(v.exempt, "{addr}");
        for _ in 0..10 {
            let admitted = l.admit(&v, Charge::Publish).unwrap();
            l.settle_message(&v, admitted, true).await;
            l.admit_subscription(&v, 5).unwrap();
            l.admit_new_topics(&v, 5).unwrap();
        }
    }
    assert!(!l.visitor(ip("11.0.0.1"), None).exempt);
    assert_eq!(l.visitor_count(), 0, "exempt visitors are not remembered");
}

/// A publish's message is counted when it is admitted, so publishes in flight at
/// once cannot overshoot the limit, and given back when the publish fails.
#[tokio::test]
async fn messages_count_on_admission_and_failures_give_them_back() {
    let l = limits_with(|c| {
        c.message_daily_limit = 2;
        c.request_burst = 1000;
    });
    let v = l.visitor(ip("1.2.3.4"), None);
    let first = l.admit(&v, Charge::Publish).unwrap();
    let second = l.admit(&v, Charge::Publish).unwrap();
    assert_eq!(l.messages_today(&v), 2);
    let err = l.admit(&v, Charge::Publish).unwrap_err();
    assert_eq!(ApiError::from(err).code, 42908);
    // A request that publishes nothing has nothing to give back.
    let request = l.admit(&v, Charge::Request).unwrap();
    assert_eq!(request, Admission::Uncharged);
    l.settle_message(&v, request, false).await;
    assert_eq!(l.messages_today(&v), 2);
    l.settle_message(&v, first, true).await;
    l.settle_message(&v, second, false).await;
    assert_eq!(l.messages_today(&v), 1);
    l.admit(&v, Charge::Publish).unwrap();
    assert!(l.admit(&v, Charge::Publish).is_err());
}

#[tokio::test(start_paused = true)]
async fn daily_messages_reset_at_midnight() {
    let l = limits_with(|c| {
        c.message_daily_limit = 3;
        c.request_burst = 1000;
    });
    let v = l.visitor(ip("1.2.3.4"), None);
    for _ in 0..3 {
        let admitted = l.admit(&v, Charge::Publish).unwrap();
        l.settle_message(&v, admitted, true).await;
    }
    assert_eq!(l.messages_today(&v), 3);
    let err = l.admit(&v, Charge::Publish).unwrap_err();
    assert_eq!(ApiError::from(err).code, 42908);
    // Subscribing is not a message.
    l.admit(&v, Charge::Request).unwrap();
    let wait = l.retry_after(err.limit, &v);
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(86_400));
    tokio::time::advance(wait).await;
    l.admit(&v, Charge::Publish).unwrap();
}

#[test]
fn daily_default_follows_the_request_rate() {
    assert_eq!(
        LimitsConfig::defaults().effective_message_daily_limit(),
        17_280
    );
}

#[tokio::test(start_paused = true)]
async fn subscriptions_take_request_and_topic_tokens_together() {
    let l = limits_with(|c| {
        c.request_burst = 2;
        c.topic_creation_burst = 3;
        c.topic_creation_replenish = Duration::from_secs(60);
    });
    let v = l.visitor(ip("1.2.3.4"), None);
    l.admit_subscription(&v, 2).unwrap();
    // Two more new topics than the bucket holds: refused, and the request token
    // is not taken either.
    assert_eq!(
        l.admit_subscription(&v, 2).unwrap_err().limit,
        Limit::TopicCreation
    );
    l.admit_subscription(&v, 1).unwrap();
    assert_eq!(
        l.admit_subscription(&v, 0).unwrap_err().limit,
        Limit::Requests
    );
    let err = l.admit_new_topics(&v, 1).unwrap_err();
    assert_eq!(ApiError::from(err).code, 42911);
    assert_eq!(l.retry_after(err.limit, &v), Duration::from_secs(60));
    tokio::time::advance(Duration::from_secs(60)).await;
    l.admit_new_topics(&v, 1).unwrap();

    let off = limits_with(|c| c.topic_creation_burst = 0);
    let v = off.visitor(ip("1.2.3.4"), None);
    off.admit_new_topics(&v, 10_000).unwrap();
    off.admit_subscription(&v, 10_000).unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_visitors_are_forgotten_and_memory_is_bounded() {
    let l = limits_with(|c| c.visitor_table_size = 160);
    // A flood of distinct addresses, each using a token (so none is at rest).
    for i in 0..10_000u32 {
        let v = l.visitor(IpAddr::from(i.to_be_bytes()), None);
        l.admit(&v, Charge::Request).unwrap();
        assert!(l.visitor_count() <= 160 + SHARDS);
    }
    // A visitor seen recently keeps its state through the flood of others.
    let busy = l.visitor(ip("200.0.0.1"), None);
    for _ in 0..60 {
        l.admit(&busy, Charge::Request).unwrap();
    }
    assert!(l.admit(&busy, Charge::Request).is_err());
    // Once their buckets are full again, the sweep forgets everyone at rest.
    tokio::time::advance(Duration::from_secs(3600)).await;
    l.admit(&busy, Charge::Request).unwrap();
    for shard in l.shards.iter() {
        shard.lock().unwrap().next_sweep = Instant::now();
    }
    for i in 0..10_000u32 {
        let v = l.visitor(IpAddr::from((i + 2_000_000).to_be_bytes()), None);
        l.admit(&v, Charge::Request).unwrap();
        if l.visitor_count() < 100 {
            break;
        }
    }
    assert!(l.visitor_count() < 100, "{}", l.visitor_count());
}

#[test]
fn proxy_header_is_honoured_only_behind_a_proxy() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("9.9.9.9, 10.0.0.5"),
    );
    let peer = ip("10.0.0.5");
    let direct = limits_with(|_| {});
    assert_eq!(direct.client_ip(peer, &headers), peer);
    let proxied = limits_with(|c| {
        c.behind_proxy = true;
        c.proxy_trusted_hosts = net::parse_host_list("10.0.0.0/8").unwrap();
    });
    assert_eq!(proxied.client_ip(peer, &headers), ip("9.9.9.9"));
    assert_eq!(proxied.client_ip(peer, &HeaderMap::new()), peer);
    let real_ip = limits_with(|c| {
        c.behind_proxy = true;
        c.proxy_forwarded_header = HeaderName::from_static("x-real-ip");
    });
    headers.insert("x-real-ip", HeaderValue::from_static("8.8.4.4"));
    assert_eq!(real_ip.client_ip(peer, &headers), ip("8.8.4.4"));
}

#[test]
fn connection_permits_are_counted() {
    let l = limits_with(|c| c.connection_limit = 2);
    let a = l.try_connection().unwrap();
    let _b = l.try_connection().unwrap();
    assert!(l.try_connection().is_none());
    assert_eq!(refused_count(&l, Limit::Connections), 1);
    drop(a);
    assert!(l.try_connection().is_some());
}

#[test]
fn charges_follow_ntfys_routes() {
    let c = |m: Method, p: &str| {
        let segs: Vec<&str> = p.strip_prefix('/').unwrap().split('/').collect();
        Charge::of(&m, &segs)
    };
    assert_eq!(c(Method::PUT, "/mytopic"), Charge::Publish);
    assert_eq!(c(Method::POST, "/"), Charge::Publish);
    assert_eq!(c(Method::POST, "/mytopic/seq1"), Charge::Publish);
    assert_eq!(c(Method::DELETE, "/mytopic/seq1"), Charge::Publish);
    assert_eq!(c(Method::GET, "/mytopic/publish"), Charge::Publish);
    assert_eq!(c(Method::GET, "/mytopic/seq1/clear"), Charge::Publish);
    assert_eq!(c(Method::GET, "/a,b/json"), Charge::Request);
    assert_eq!(c(Method::GET, "/a/ws"), Charge::Request);
    assert_eq!(c(Method::GET, "/a/auth"), Charge::Request);
    assert_eq!(c(Method::OPTIONS, "/a"), Charge::Request);
    assert_eq!(c(Method::GET, "/v1/health"), Charge::Free);
    assert_eq!(c(Method::GET, "/v1/stats"), Charge::Free);
    assert_eq!(c(Method::GET, "/healthz"), Charge::Free);
    assert_eq!(c(Method::GET, "/metrics"), Charge::Free);
    assert_eq!(c(Method::GET, "/"), Charge::Free);
    assert_eq!(c(Method::GET, "/mytopic"), Charge::Free);
}

#[test]
fn retry_after_rounds_up() {
    assert_eq!(retry_secs(Duration::from_millis(1)), 1);
    assert_eq!(retry_secs(Duration::from_millis(4001)), 5);
    assert_eq!(retry_secs(Duration::from_secs(5)), 5);
    assert_eq!(retry_secs(Duration::ZERO), 1);
    assert_eq!(retry_secs(Duration::MAX), u64::MAX);
}

/// Addresses (consecutive ones, and /64 prefixes that differ only in their upper
/// bits) and users spread over every shard, none holding much more than its share.
#[test]
fn visitors_spread_over_the_shards() {
    let l = limits_with(|_| {});
    let keys: Vec<Vec<VisitorKey>> = vec![
        (0..1600u32)
            .map(|i| VisitorKey::V4(0x0a00_0000 + i))
            .collect(),
        (0..1600u128)
            .map(|i| VisitorKey::V6((0x2001_0db8 << 96) | (i << 64)))
            .collect(),
        (0..1600)
            .map(|i| VisitorKey::User(format!("u{i}").into()))
            .collect(),
    ];
    for keys in keys {
        let mut counts = [0usize; SHARDS];
        for key in &keys {
            let shard = l.shard(key) as *const _;
            let index = l
                .shards
                .iter()
                .position(|s| std::ptr::eq(s, shard))
                .unwrap();
            counts[index] += 1;
        }
        let share = keys.len() / SHARDS;
        assert!(
            counts.iter().all(|&c| c > share / 2 && c < share * 2),
            "{counts:?}"
        );
    }
}
