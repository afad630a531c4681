//! Cluster mode (docs/SCALING.md): several real `herald` nodes on one real Redis.
//!
//! Each test uses the machine's Redis (127.0.0.1:6379, `.ci/run` starts it) under its
//! own key prefix, so tests run in parallel and never see each other's keys; the
//! keys are deleted when the test's `Cluster` is dropped. The Redis-restart test runs
//! its own private `redis-server` on an ephemeral port instead, so that the shared
//! one is never restarted.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;

use crate::failover::{data_node, free_port};
use crate::fixture::{
    EXEMPT_HOSTS_ENV, EventStream, Launch, TestServer, eventually, expect_json, texts,
};
use crate::limits::expect_429;

const SHARED_REDIS_PORT: u16 = 6379;
/// Waits that cover a node start, a Redis reconnect or a scheduled message's delay.
const LONG: Duration = Duration::from_secs(30);

/// Nodes on one Redis under a key prefix unique to this test.
struct Cluster {
    nodes: Vec<TestServer>,
    prefix: String,
    redis_port: u16,
    /// More arguments and environment for every node.
    extra: Launch,
}

impl Cluster {
    /// `n` nodes on the machine's Redis.
    async fn start(test: &str, n: usize) -> Cluster {
        Cluster::start_on(test, n, SHARED_REDIS_PORT).await
    }

    /// `n` nodes on the Redis at `127.0.0.1:<port>`, each ready (reached Redis).
    async fn start_on(test: &str, n: usize, port: u16) -> Cluster {
        Cluster::start_with(test, n, port, Launch::default()).await
    }

    /// `n` nodes on the machine's Redis with `args` and loopback *not* exempt from
    /// the visitor limits (as `tests/it/limits.rs` does).
    async fn start_limited(test: &str, n: usize, args: &[&str]) -> Cluster {
        let extra = Launch {
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: vec![(EXEMPT_HOSTS_ENV.to_string(), String::new())],
            ..Launch::default()
        };
        Cluster::start_with(test, n, SHARED_REDIS_PORT, extra).await
    }

    async fn start_with(test: &str, n: usize, port: u16, extra: Launch) -> Cluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("herald-test:{test}:{}:{nanos}:", std::process::id());
        let mut cluster = Cluster {
            nodes: Vec::new(),
            prefix,
            redis_port: port,
            extra,
        };
        for _ in 0..n {
            let node = cluster.launch_node();
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            wait_ready(node).await;
        }
        cluster
    }

    fn launch_node(&self) -> TestServer {
        let mut args = vec![
            "--redis-url".into(),
            format!("redis://127.0.0.1:{}", self.redis_port),
            "--redis-key-prefix".into(),
            self.prefix.clone(),
        ];
        args.extend(self.extra.args.iter().cloned());
        TestServer::launch(Launch {
            args,
            envs: self.extra.envs.clone(),
            ..Launch::default()
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
        // This test's keys only (its prefix), best effort.
        let script =
            "for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do redis.call('DEL', k) end";
        let _ = Command::new("redis-cli")
            .args(["-p", &self.redis_port.to_string()])
            .args(["EVAL", script, "0", &self.prefix])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `/readyz`'s status, `None` when the node does not answer.
pub(crate) async fn readyz(node: &TestServer) -> Option<u16> {
    let resp = node
        .client
        .get(node.url("/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    Some(resp.status().as_u16())
}

async fn wait_ready(node: &TestServer) {
    eventually(LONG, "node ready", || async {
        (readyz(node).await == Some(200)).then_some(())
    })
    .await;
}

/// Opens `/<topic>/json<query>` and reads the `open` event.
async fn subscribe(node: &TestServer, topic: &str, query: &str) -> EventStream {
    let mut sub = node.stream(&format!("/{topic}/json{query}")).await;
    assert_eq!(sub.next_json().await["event"], "open");
    sub
}

/// The next `n` messages of a stream.
async fn next_messages(sub: &mut EventStream, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(sub.next_non_keepalive().await);
    }
    out
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_increasing(ids: &[String]) {
    for pair in ids.windows(2) {
        assert!(
            pair[0] < pair[1],
            "IDs out of order: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

/// A message published to any node reaches the subscribers of every node, all in the
/// same order, which is ID order; concurrent publishers on different nodes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_delivers_every_message_in_one_order() {
    const PER_NODE: usize = 40;
    let cluster = Cluster::start("order", 3).await;
    let mut subs = Vec::new();
    for node in &cluster.nodes {
        subs.push(subscribe(node, "co", "").await);
    }
    let mut publishers = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        let (client, url) = (node.client.clone(), node.url("/co"));
        publishers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_NODE {
                let resp = client
                    .put(&url)
                    .body(format!("n{n}-{i}"))
                    .send()
                    .await
                    .unwrap();
                acked.push(
                    expect_json(resp, 200).await["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for p in publishers {
        let from_node = p.await.unwrap();
        // One publisher's messages are acknowledged one after another: in order.
        assert_increasing(&from_node);
        acked.extend(from_node);
    }
    acked.sort();
    let mut first: Option<Vec<String>> = None;
    for sub in &mut subs {
        let got = ids(&next_messages(sub, 3 * PER_NODE).await);
        assert_increasing(&got);
        assert_eq!(got, acked, "a node delivered a different set");
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f, "two nodes delivered different orders"),
        }
    }
    // History agrees with live delivery on every node.
    for node in &cluster.nodes {
        assert_eq!(ids(&node.poll("co", "since=all").await), acked);
    }
}

/// `since=`/`poll=1` give the same answer on every node: all, after an ID, latest,
/// several topics merged, and scheduled messages with `scheduled=1`.
#[tokio::test]
async fn history_is_the_same_on_every_node() {
    let cluster = Cluster::start("history", 3).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let a1 = a.publish("ha", "a1").await;
    let b1 = b.publish("hb", "b1").await;
    let a2 = c.publish("ha", "a2").await;
    let b2 = a.publish("hb", "b2").await;
    let scheduled = expect_json(
        b.client
            .put(b.url("/ha"))
            .header("X-Delay", "1h")
            .body("later")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let marker = b1["id"].as_str().unwrap();
    for node in &cluster.nodes {
        // A node answers up to what its log reader has delivered live (within
        // milliseconds of the commit on another node).
        eventually(LONG, "the last publish visible on every node", || async {
            (node.poll("ha,hb", "since=all").await.len() == 4).then_some(())
        })
        .await;
        assert_eq!(
            texts(&node.poll("ha,hb", "since=all").await),
            ["a1", "b1", "a2", "b2"]
        );
        assert_eq!(
            texts(&node.poll("ha,hb", &format!("since={marker}")).await),
            ["a2", "b2"]
        );
        assert_eq!(
            texts(&node.poll("ha,hb", "since=latest").await),
            ["a2", "b2"]
        );
        assert_eq!(texts(&node.poll("hb", "").await), ["b1", "b2"]);
        assert_eq!(
            texts(&node.poll("ha", "scheduled=1").await),
            ["a1", "a2", "later"]
        );
        let all = node.poll("ha,hb", "since=all").await;
        assert_eq!(
            ids(&all),
            [&a1, &b1, &a2, &b2].map(|m| m["id"].as_str().unwrap().to_string())
        );
    }
    // Cancelling the scheduled message on one node cancels it for the cluster.
    let seq = scheduled["id"].as_str().unwrap();
    let resp = c
        .client
        .delete(c.url(&format!("/ha/{seq}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for node in &cluster.nodes {
        assert!(!texts(&node.poll("ha", "scheduled=1").await).contains(&"later".to_string()));
    }
}

/// Every node runs a scheduler; each scheduled message still fires exactly once, and
/// reaches the subscribers of every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_fire_exactly_once_cluster_wide() {
    const N: usize = 6;
    let cluster = Cluster::start("sched", 3).await;
    let mut subs = Vec::new();
    for node in &cluster.nodes {
        subs.push(subscribe(node, "cs", "").await);
    }
    let mut want = Vec::new();
    for i in 0..N {
        let node = &cluster.nodes[i % 3];
        let m = expect_json(
            node.client
                .put(node.url("/cs"))
                .header("X-Delay", "10s")
                .body(format!("s{i}"))
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        want.push(m["id"].as_str().unwrap().to_string());
    }
    want.sort();
    for sub in &mut subs {
        let got = tokio::time::timeout(LONG, next_messages(sub, N))
            .await
            .expect("scheduled messages did not fire");
        let mut got = ids(&got);
        got.sort();
        assert_eq!(got, want);
    }
    // Fired once: once in history, and nothing more arrives on any stream (a second
    // firing would be delivered, it is not deduplicated).
    let history = cluster.nodes[0].poll("cs", "since=all").await;
    let mut hist = ids(&history);
    hist.sort();
    assert_eq!(hist, want);
    let extra = cluster.nodes[1].publish("cs", "after").await;
    for sub in &mut subs {
        assert_eq!(sub.next_non_keepalive().await["id"], extra["id"]);
    }
}

/// `kill -9` one of three nodes while messages are published: its subscriber
/// reconnects to another node with `since=<last id>` and misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_of_a_killed_node_resume_on_another() {
    let mut cluster = Cluster::start("kill", 3).await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut sub = subscribe(&cluster.nodes[2], "ck", "").await;
    let mut publishers = Vec::new();
    for node in &cluster.nodes[..2] {
        let (client, url) = (node.client.clone(), node.url("/ck"));
        let (acked, stop) = (acked.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let resp = client.put(&url).body(format!("m{i}")).send().await.unwrap();
                let id = expect_json(resp, 200).await["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                acked.lock().await.push(id);
                i += 1;
            }
        }));
    }
    let mut seen = ids(&next_messages(&mut sub, 30).await);
    cluster.nodes[2].kill9();
    // Whatever was still in flight on the dead node's socket is read, then it ends.
    while let Some(line) = sub.next_frame(b"\n", Duration::from_secs(10)).await {
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["event"] == "message"
        {
            seen.push(v["id"].as_str().unwrap().to_string());
        }
    }
    let last = seen.last().unwrap().clone();
    let mut resumed = subscribe(&cluster.nodes[0], "ck", &format!("?since={last}")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    let mut acked = acked.lock().await.clone();
    acked.sort();
    let missing = acked.iter().filter(|id| **id > last).count();
    seen.extend(ids(&next_messages(&mut resumed, missing).await));
    assert_increasing(&seen);
    let seen_set: HashSet<&String> = seen.iter().collect();
    assert_eq!(seen_set.len(), seen.len(), "a message was delivered twice");
    assert_eq!(seen, acked, "the resumed subscriber missed a message");
}

/// Redis goes away: `/readyz` is 503 and publishes are answered 503 (never
/// acknowledged); when it is back, every node recovers by itself and live delivery
/// continues on the streams that stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived() {
    let mut redis = data_node(free_port(), &[]);
    let cluster = Cluster::start_on("restart", 2, redis.port).await;
    let [a, b] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut sub = subscribe(b, "cr", "").await;
    a.publish("cr", "before").await;
    assert_eq!(sub.next_non_keepalive().await["message"], "before");

    redis.kill9();
    for node in &cluster.nodes {
        eventually(LONG, "readyz 503 without Redis", || async {
            (readyz(node).await == Some(503)).then_some(())
        })
        .await;
    }
    let resp = a
        .client
        .put(a.url("/cr"))
        .body("lost?")
        .timeout(LONG)
        .send()
        .await
        .unwrap();
    let err = expect_json(resp, 503).await;
    assert_eq!(err["code"], 50301);

    redis.start_again();
    for node in &cluster.nodes {
        wait_ready(node).await;
    }
    eventually(LONG, "publish accepted again", || async {
        let resp = a.client.put(a.url("/cr")).body("after").send().await.ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    let ev = sub.next_non_keepalive().await;
    assert_eq!(ev["message"], "after", "the open stream missed the message");
    // This Redis keeps nothing across a restart: history starts again, and the
    // refused publish is not in it.
    let history = texts(&b.poll("cr", "since=all").await);
    assert!(
        !history.is_empty() && history.iter().all(|t| t == "after"),
        "{history:?}"
    );
}

/// A node that has just printed its listening line already delivers: a subscriber
/// that connects at once gets the next message (the log reader's start position is
/// fixed before the node serves, not at its first read).
#[tokio::test]
async fn a_node_delivers_from_the_moment_it_listens() {
    let cluster = Cluster::start_on("startup", 0, SHARED_REDIS_PORT).await;
    for round in 0..3 {
        let node = cluster.launch_node();
        let mut sub = subscribe(&node, "su", "").await;
        let published = node.publish("su", &format!("round {round}")).await;
        assert_eq!(sub.next_non_keepalive().await["id"], published["id"]);
    }
}

// Access control shared through Redis (auth::redis): users, tokens and ACL entries
// made anywhere apply on every node.

/// Nodes with access control on (`auth-default-access` alone turns it on; the store
/// is the cluster's Redis).
async fn deny_all_cluster(test: &str, n: usize) -> Cluster {
    let extra = Launch {
        args: vec!["--auth-default-access".into(), "deny-all".into()],
        ..Launch::default()
    };
    Cluster::start_with(test, n, SHARED_REDIS_PORT, extra).await
}

/// `args` for every node of a cluster.
fn with_args(args: &[&str]) -> Launch {
    Launch {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Launch::default()
    }
}

impl Cluster {
    /// Runs `herald <args>` as an operator on another machine would: only the Redis
    /// URL (a flag) and the prefix (the environment), with an empty data dir of its
    /// own that must stay empty. Asserts success; returns stdout.
    fn cli(&self, args: &[&str], password: Option<&str>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = crate::fixture::herald_command();
        cmd.args(args)
            .arg("--redis-url")
            .arg(format!("redis://127.0.0.1:{}", self.redis_port))
            .arg("--data-dir")
            .arg(dir.path())
            .env("HERALD_REDIS_KEY_PREFIX", &self.prefix)
            .stdin(Stdio::null());
        if let Some(p) = password {
            cmd.env("HERALD_PASSWORD", p);
        }
        let out = cmd.output().expect("run herald");
        assert!(
            out.status.success(),
            "herald {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "the CLI wrote a local file with redis-url set"
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// ntfy's `?auth=` query carrying `authorization`.
fn auth_query(authorization: &str) -> String {
    use base64::Engine;
    let v = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(authorization);
    format!("?auth={v}")
}

/// The status of publishing `body` to `topic` on `node` as `authorization`.
async fn publish_status(node: &TestServer, topic: &str, body: &str, authorization: &str) -> u16 {
    let mut req = node
        .client
        .put(node.url(&format!("/{topic}")))
        .body(body.to_string());
    if !authorization.is_empty() {
        req = req.header("Authorization", authorization);
    }
    req.timeout(Duration::from_secs(10))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// The status of polling `topic` on `node` as `authorization`.
async fn poll_status(node: &TestServer, topic: &str, authorization: &str) -> u16 {
    node.client
        .get(node.url(&format!("/{topic}/json?poll=1")))
        .header("Authorization", authorization)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Waits until every node answers `want` to polling `topic` as `authorization`.
async fn every_node_polls(cluster: &Cluster, topic: &str, authorization: &str, want: u16) {
    for (n, node) in cluster.nodes.iter().enumerate() {
        eventually(LONG, &format!("node {n} answers {want}"), || async {
            (poll_status(node, topic, authorization).await == want).then_some(())
        })
        .await;
    }
}

/// A user made with the CLI against Redis publishes on node 1 and subscribes on
/// node 2; anonymous requests stay refused (deny-all) on every node.
#[tokio::test]
async fn a_user_made_with_the_cli_works_on_every_node() {
    let cluster = deny_all_cluster("auth-cli", 2).await;
    let out = cluster.cli(&["user", "add", "phil"], Some("phil-secret"));
    assert!(out.contains("user phil added"), "{out}");
    cluster.cli(&["access", "phil", "alerts*", "rw"], None);
    let phil = basic("phil", "phil-secret");
    every_node_polls(&cluster, "alerts", &phil, 200).await;

    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut sub = subscribe(two, "alerts", &auth_query(&phil)).await;
    assert_eq!(
        publish_status(one, "alerts", "from node 1", &phil).await,
        200
    );
    assert_eq!(texts(&next_messages(&mut sub, 1).await), ["from node 1"]);

    for node in &cluster.nodes {
        assert_eq!(publish_status(node, "alerts", "anon", "").await, 403);
        assert_eq!(publish_status(node, "other", "x", &phil).await, 403);
        assert_eq!(
            publish_status(node, "alerts", "x", &basic("phil", "wrong")).await,
            401
        );
    }
    let listed = cluster.cli(&["user", "list"], None);
    assert!(
        listed.contains("phil") && listed.contains("alerts*"),
        "{listed}"
    );

    // The same through a config file naming the Redis and the prefix.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.yml");
    std::fs::write(
        &config,
        format!(
            "redis-url: redis://127.0.0.1:{}\nredis-key-prefix: \"{}\"\n",
            cluster.redis_port, cluster.prefix
        ),
    )
    .unwrap();
    let out = crate::fixture::herald_command()
        .args(["user", "list", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("alerts*"),
        "{listed}"
    );
    assert!(!dir.path().join("data").exists(), "no local auth file");
}

/// A token made through `/v1/account/token` on node 1 authenticates on node 3, and
/// is listed on node 2.
#[tokio::test]
async fn a_token_made_on_one_node_works_on_another() {
    let cluster = deny_all_cluster("auth-token", 3).await;
    cluster.cli(&["user", "add", "phil"], Some("phil-secret"));
    cluster.cli(&["access", "phil", "news", "rw"], None);
    let phil = basic("phil", "phil-secret");
    every_node_polls(&cluster, "news", &phil, 200).await;

    let resp = cluster.nodes[0]
        .client
        .post(cluster.nodes[0].url("/v1/account/token"))
        .header("Authorization", &phil)
        .json(&serde_json::json!({"label": "ci"}))
        .send()
        .await
        .unwrap();
    let made = expect_json(resp, 200).await;
    let token = made["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("tk_"), "{made}");

    let bearer = format!("Bearer {token}");
    let three = &cluster.nodes[2];
    eventually(LONG, "the token works on node 3", || async {
        (publish_status(three, "news", "by token", &bearer).await == 200).then_some(())
    })
    .await;
    let resp = cluster.nodes[1]
        .client
        .get(cluster.nodes[1].url("/v1/account/token"))
        .header("Authorization", &phil)
        .send()
        .await
        .unwrap();
    let listed = expect_json(resp, 200).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["label"], "ci");
    // The CLI sees it too.
    let out = cluster.cli(&["token", "list", "phil"], None);
    assert!(out.contains(&token[..11]), "{out}");
}

/// An ACL change made on one node's API applies on every node; deleting the user
/// with the CLI locks them out everywhere, password and token alike.
#[tokio::test]
async fn acl_changes_and_removals_reach_every_node() {
    let cluster = deny_all_cluster("auth-acl", 3).await;
    cluster.cli(
        &["user", "add", "--role", "admin", "ben"],
        Some("ben-secret"),
    );
    cluster.cli(&["user", "add", "phil"], Some("phil-secret"));
    let out = cluster.cli(&["token", "add", "phil"], None);
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("tk_"))
        .unwrap_or_else(|| panic!("no token in {out:?}"))
        .to_string();
    let (phil, bearer) = (basic("phil", "phil-secret"), format!("Bearer {token}"));
    every_node_polls(&cluster, "ops", &phil, 403).await;

    // ben (admin) grants phil read on node 2's admin API.
    let resp = cluster.nodes[1]
        .client
        .put(cluster.nodes[1].url("/v1/users/access"))
        .header("Authorization", basic("ben", "ben-secret"))
        .json(&serde_json::json!({"username": "phil", "topic": "ops", "permission": "read-only"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    every_node_polls(&cluster, "ops", &phil, 200).await;
    every_node_polls(&cluster, "ops", &bearer, 200).await;
    for node in &cluster.nodes {
        assert_eq!(
            publish_status(node, "ops", "x", &phil).await,
            403,
            "read only"
        );
    }

    // Changed back with the CLI: refused everywhere.
    cluster.cli(&["access", "phil", "ops", "deny"], None);
    every_node_polls(&cluster, "ops", &bearer, 403).await;
    cluster.cli(&["access", "phil", "ops", "read"], None);
    every_node_polls(&cluster, "ops", &bearer, 200).await;

    cluster.cli(&["user", "del", "phil"], None);
    every_node_polls(&cluster, "ops", &phil, 401).await;
    every_node_polls(&cluster, "ops", &bearer, 401).await;
    // Gone from Redis, not only from the nodes' views.
    let out = cluster.cli(&["user", "list"], None);
    assert!(!out.contains("phil"), "{out}");
}

async fn put(node: &TestServer, topic: &str) -> reqwest::Response {
    node.client
        .put(node.url(&format!("/{topic}")))
        .body("hi")
        .timeout(LONG)
        .send()
        .await
        .unwrap()
}

/// Rate limits hold cluster-wide (#7): a burst spread over three nodes is refused
/// after the burst, on every node, with `Retry-After`; so is the daily message count.
#[tokio::test]
async fn a_burst_over_three_nodes_is_limited_once() {
    let cluster = Cluster::start_limited(
        "rl-burst",
        3,
        &[
            "--visitor-request-limit-burst",
            "6",
            "--visitor-request-limit-replenish",
            "1h",
        ],
    )
    .await;
    for i in 0..6 {
        let resp = put(&cluster.nodes[i % 3], "burst").await;
        assert_eq!(resp.status(), 200, "publish {i}");
    }
    for node in &cluster.nodes {
        let secs = expect_429(put(node, "burst").await, 42901).await;
        assert!(secs <= 3600, "Retry-After {secs}");
        // Subscriptions are requests too, on the direct path and through the API.
        expect_429(node.get("/burst/json").await, 42901).await;
        expect_429(node.get("/burst/json?poll=1").await, 42901).await;
    }

    let daily =
        Cluster::start_limited("rl-daily", 3, &["--visitor-message-daily-limit", "4"]).await;
    for i in 0..4 {
        assert_eq!(put(&daily.nodes[i % 3], "daily").await.status(), 200);
    }
    for node in &daily.nodes {
        let secs = expect_429(put(node, "daily").await, 42908).await;
        assert!(secs <= 86_400, "Retry-After {secs}");
        // `/v1/account` reports the cluster's count on every node.
        let account: Value = node.get("/v1/account").await.json().await.unwrap();
        assert_eq!(account["stats"]["messages"], 4, "{account}");
        assert_eq!(account["stats"]["messages_remaining"], 0, "{account}");
    }
}

/// `visitor-subscription-limit` counts the visitor's streams on every node, whichever
/// path (direct, API, WebSocket) serves them; an ended stream frees its slot.
#[tokio::test]
async fn the_subscription_limit_counts_streams_on_every_node() {
    let cluster =
        Cluster::start_limited("rl-subs", 3, &["--visitor-subscription-limit", "3"]).await;
    let first = cluster.nodes[0].stream("/s1/json").await;
    let _second = cluster.nodes[1].stream("/s2/sse").await;
    let _third = cluster.nodes[2].ws("/s3/ws").await;
    for node in &cluster.nodes {
        expect_429(node.get("/s4/json").await, 42903).await;
        expect_429(node.get("/s4/raw?since=all").await, 42903).await;
        // Polls hold no subscription.
        assert_eq!(node.get("/s4/json?poll=1").await.status(), 200);
    }
    drop(first);
    eventually(LONG, "the ended stream's slot is free", || async {
        let resp = cluster.nodes[1].get("/s4/json").await;
        (resp.status() == 200).then_some(resp)
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Webhooks in cluster mode (crate::webhook::redis)

/// The cluster's `webhook-admin-token`.
const WEBHOOK_ADMIN: &str = "cluster-webhook-admin-0123456789";

/// Cluster nodes that may deliver to the test's receivers, retrying fast.
const WEBHOOK_ARGS: [&str; 6] = [
    "--webhook-allow-private",
    "true",
    "--webhook-retry-schedule",
    "0s,200ms,200ms,200ms,200ms,200ms,200ms,200ms",
    "--webhook-admin-token",
    WEBHOOK_ADMIN,
];

/// Registers `receiver` for `topic` on `node`; the webhook's ID and management token.
async fn register_webhook(
    node: &TestServer,
    topic: &str,
    receiver: &crate::webhook_receiver::Receiver,
) -> (String, String) {
    let resp = node
        .client
        .post(node.url("/v1/webhooks"))
        .body(serde_json::json!({"topic": topic, "url": receiver.url}).to_string())
        .send()
        .await
        .unwrap();
    let w = expect_json(resp, 201).await;
    receiver.set_secrets(&[w["secret"].as_str().unwrap()]);
    (
        w["id"].as_str().unwrap().to_string(),
        w["token"].as_str().unwrap().to_string(),
    )
}

/// How many requests answered 2xx each `webhook-id` got.
fn successes_per_id(
    receiver: &crate::webhook_receiver::Receiver,
) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in receiver.received() {
        if (200..300).contains(&r.answered) {
            *out.entry(r.id).or_default() += 1;
        }
    }
    out
}

/// A webhook registered on node 1 is listed by node 2, and messages published on any
/// of three nodes (a scheduled one, a deletion) reach it exactly once: no
/// `webhook-id` twice, although every node runs a feed and a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_each_message_once_cluster_wide() {
    use crate::webhook_receiver::{Receiver, always_ok};
    let cluster =
        Cluster::start_with("whonce", 3, SHARED_REDIS_PORT, with_args(&WEBHOOK_ARGS)).await;
    let receiver = Receiver::start(always_ok()).await;
    let (id, token) = register_webhook(&cluster.nodes[0], "wh", &receiver).await;
    // Node 2 lists it for the admin (and for the management token: see below).
    let listed = cluster.nodes[1]
        .client
        .get(cluster.nodes[1].url("/v1/webhooks"))
        .bearer_auth(WEBHOOK_ADMIN)
        .send()
        .await
        .unwrap();
    let listed = expect_json(listed, 200).await;
    assert!(
        listed.to_string().contains(&id),
        "node 2 does not list {id}: {listed}"
    );
    // Other nodes pick up the new endpoint within a housekeeping period; until then
    // their feed still queues for it (the endpoint is in Redis), only their workers
    // are not running yet.
    let mut want = std::collections::BTreeSet::new();
    let scheduled = expect_json(
        cluster.nodes[2]
            .client
            .put(cluster.nodes[2].url("/wh"))
            .header("X-Delay", "10s")
            .body("later")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    want.insert(scheduled["id"].as_str().unwrap().to_string());
    for i in 0..30 {
        let m = cluster.nodes[i % 3].publish("wh", &format!("m{i}")).await;
        want.insert(m["id"].as_str().unwrap().to_string());
    }
    let first = cluster.nodes[0].publish("wh", "to delete").await;
    let first_id = first["id"].as_str().unwrap().to_string();
    want.insert(first_id.clone());
    let deleted = cluster.nodes[1]
        .client
        .delete(cluster.nodes[1].url(&format!("/wh/{first_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let delete_event = expect_json(deleted, 200).await;
    want.insert(delete_event["id"].as_str().unwrap().to_string());
    receiver.wait_delivered(want.len(), LONG).await;
    // A moment for any duplicate to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = successes_per_id(&receiver);
    assert_eq!(
        got.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        want
    );
    assert!(
        got.values().all(|n| *n == 1),
        "some webhook-id was delivered twice: {got:?}"
    );
    assert_eq!(receiver.received().len(), want.len());
    assert!(receiver.received().iter().all(|r| r.verified));
    let types: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.body["type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(types.contains(&"message_delete".to_string()), "{types:?}");
    // The attempts are shared too: node 3 lists node 1's and node 2's, to the
    // holder of the management token node 1 answered.
    let attempts = expect_json(
        cluster.nodes[2]
            .client
            .get(cluster.nodes[2].url(&format!("/v1/webhooks/{id}/attempts")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert!(attempts.to_string().contains(&first_id), "{attempts}");
    // Replay reads the cluster log: from the deleted message on, it and the delete
    // event go again (the scheduled message fired after them is in the log too).
    let before = receiver.received().len();
    let replay = cluster.nodes[1]
        .client
        .post(cluster.nodes[1].url(&format!("/v1/webhooks/{id}/replay")))
        .bearer_auth(WEBHOOK_ADMIN)
        .body(serde_json::json!({ "since": first_id }).to_string())
        .send()
        .await
        .unwrap();
    let queued = expect_json(replay, 202).await["queued"].as_u64().unwrap();
    assert!(queued >= 1, "{queued}");
    eventually(LONG, "replayed deliveries", || async {
        (receiver.received().len() >= before + queued as usize).then_some(())
    })
    .await;
}

/// One node (with `--webhook-timeout <timeout>`) holding the claims of 3 messages:
/// their first attempts hang on a slow, failing endpoint. The cluster, the receiver,
/// the message IDs and the held requests.
async fn node_holding_claims(
    test: &str,
    timeout: &str,
) -> (
    Cluster,
    crate::webhook_receiver::Receiver,
    std::collections::BTreeSet<String>,
    Vec<crate::webhook_receiver::Received>,
) {
    use crate::webhook_receiver::{Receiver, always};
    let mut args = WEBHOOK_ARGS.to_vec();
    args.extend(["--webhook-timeout", timeout]);
    let cluster = Cluster::start_with(test, 1, SHARED_REDIS_PORT, with_args(&args)).await;
    let receiver = Receiver::start(always(503)).await;
    receiver.set_delay(Duration::from_secs(120));
    register_webhook(&cluster.nodes[0], test, &receiver).await;
    let mut want = std::collections::BTreeSet::new();
    for i in 0..3 {
        let m = cluster.nodes[0].publish(test, &format!("m{i}")).await;
        want.insert(m["id"].as_str().unwrap().to_string());
    }
    let held = receiver.wait_requests(3, LONG).await;
    (cluster, receiver, want, held)
}

/// Webhook takeover: node 1 holds claims (its attempts are in flight to a slow,
/// failing endpoint) and a burst it may not have fed yet, then is `kill -9`ed. The
/// two nodes started after it feed the rest and, when node 1's leases end, retry
/// its deliveries with the same `webhook-id`: every message arrives, each 2xx once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_takeover_after_kill_9() {
    use crate::webhook_receiver::always_ok;
    // Leases last the timeout plus 30 s.
    let (mut cluster, receiver, mut want, held) = node_holding_claims("whtakeover", "3s").await;
    for i in 0..20 {
        let m = cluster.nodes[0]
            .publish("whtakeover", &format!("burst{i}"))
            .await;
        want.insert(m["id"].as_str().unwrap().to_string());
    }
    cluster.nodes[0].kill9();
    receiver.set_delay(Duration::ZERO);
    receiver.answer_with(always_ok());
    for _ in 0..2 {
        let node = cluster.launch_node();
        cluster.nodes.push(node);
    }
    for node in &cluster.nodes[1..] {
        wait_ready(node).await;
    }
    // Until node 1's leases end, its deliveries are pending in Redis, and the queue
    // metrics of the new nodes (which created none of them) count them.
    eventually(
        LONG,
        "node 1's deliveries in node 2's queue depth",
        || async {
            let text = cluster.nodes[1].get("/metrics").await.text().await.ok()?;
            text.lines()
                .filter_map(|l| l.strip_prefix("herald_webhook_queue_depth "))
                .any(|v| v.parse::<f64>().is_ok_and(|v| v >= 3.0))
                .then_some(())
        },
    )
    .await;
    let after = cluster.nodes[1].publish("whtakeover", "after").await;
    want.insert(after["id"].as_str().unwrap().to_string());
    receiver
        .wait_delivered(want.len(), Duration::from_secs(90))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = successes_per_id(&receiver);
    assert_eq!(
        got.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        want
    );
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    // The deliveries node 1 held were retried under their webhook-id.
    for r in held.iter().take(3) {
        assert_eq!(got.get(&r.id), Some(&1), "{} not retried", r.id);
    }
}

/// An `ordered` endpoint gets one request at a time, in publish order, from three
/// nodes that all run a worker for it, although every third request fails; the
/// queue metrics on any node come from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_webhooks_stay_in_order_across_nodes() {
    use crate::webhook_receiver::Receiver;
    let cluster =
        Cluster::start_with("whordered", 3, SHARED_REDIS_PORT, with_args(&WEBHOOK_ARGS)).await;
    let receiver = Receiver::start(Arc::new(|n| {
        if n % 3 == 0 {
            (503, vec![])
        } else {
            (200, vec![])
        }
    }))
    .await;
    let resp = cluster.nodes[0]
        .client
        .post(cluster.nodes[0].url("/v1/webhooks"))
        .body(serde_json::json!({"topic": "ord", "url": receiver.url, "ordered": true}).to_string())
        .send()
        .await
        .unwrap();
    let w = expect_json(resp, 201).await;
    receiver.set_secrets(&[w["secret"].as_str().unwrap()]);
    // Every node's worker runs before the first message.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut want = Vec::new();
    for i in 0..12 {
        let m = cluster.nodes[i % 3].publish("ord", &format!("m{i}")).await;
        want.push(m["id"].as_str().unwrap().to_string());
    }
    receiver.wait_delivered(want.len(), LONG).await;
    // In order, and nothing overtook a failed attempt: the requests are each message's
    // failures then its success, message after message.
    let requests: Vec<String> = receiver.received().into_iter().map(|r| r.id).collect();
    let mut deduped = requests.clone();
    deduped.dedup();
    assert_eq!(deduped, want, "requests: {requests:?}");
    let delivered: Vec<String> = receiver
        .received()
        .into_iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.id)
        .collect();
    assert_eq!(delivered, want);
    // Node 3 reports the cluster's queue (it drains to 0 within a metrics period).
    eventually(LONG, "queue depth 0 on node 3", || async {
        let text = cluster.nodes[2].get("/metrics").await.text().await.ok()?;
        text.lines()
            .any(|l| l == "herald_webhook_queue_depth 0")
            .then_some(())
    })
    .await;
}

/// The streams of a killed node stop counting within the heartbeat bound, so its
/// clients are not refused when they reconnect to another node.
#[tokio::test]
async fn a_killed_nodes_streams_stop_counting() {
    let mut cluster =
        Cluster::start_limited("rl-kill", 2, &["--visitor-subscription-limit", "2"]).await;
    let a = cluster.nodes[1].stream("/k1/json").await;
    let b = cluster.nodes[1].stream("/k2/json").await;
    expect_429(cluster.nodes[0].get("/k3/json").await, 42903).await;
    cluster.nodes[1].kill9();
    drop((a, b));
    eventually(LONG, "the killed node's slots are free", || async {
        let resp = cluster.nodes[0].get("/k3/json").await;
        (resp.status() == 200).then_some(resp)
    })
    .await;
}

/// A node stopped gracefully (a rolling update) while its attempts are in flight to
/// a slow endpoint gives up its claims: another node delivers them at once, not when
/// the leases (here over 5 minutes) end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_hands_its_webhook_claims_over() {
    use crate::webhook_receiver::always_ok;
    let (mut cluster, receiver, want, _) = node_holding_claims("whhandover", "300s").await;
    let node = cluster.launch_node();
    cluster.nodes.push(node);
    wait_ready(&cluster.nodes[1]).await;
    receiver.set_delay(Duration::ZERO);
    receiver.answer_with(always_ok());
    let status = cluster.nodes[0].stop();
    assert!(status.success(), "{status}");
    receiver.wait_delivered(want.len(), LONG).await;
    assert_eq!(receiver.delivered_ids(), want);
}

/// Idempotent publishing cluster-wide: 100 identical requests spread over two
/// nodes make one message, and every answer is that message.
#[tokio::test]
async fn an_idempotency_key_publishes_once_across_nodes() {
    let cluster = Arc::new(Cluster::start("idempotency", 2).await);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            let node = &cluster.nodes[i % 2];
            let resp = node
                .client
                .put(node.url("/idem"))
                .header("Idempotency-Key", "deploy-7")
                .body("deployed")
                .timeout(LONG)
                .send()
                .await
                .expect("publish");
            expect_json(resp, 200).await["id"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    for node in &cluster.nodes {
        let events = node.poll("idem", "since=all").await;
        assert_eq!(texts(&events), ["deployed"], "on every node");
    }
}
