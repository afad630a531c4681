//! iOS upstream pokes (`upstream-base-url`): a local receiver stands in for ntfy.sh
//! and records each poll request (path = SHA-256 of base-url/topic, `X-Poll-ID`,
//! bearer token); retries, scheduled messages, and one poke per message in a cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use sha2::Digest;

use crate::fixture::{Launch, TestServer, eventually, expect_json};

const BASE: &str = "https://home.example.com";

#[derive(Debug, Clone)]
struct Poke {
    path: String,
    poll_id: String,
    auth: String,
}

/// Records pokes; answers 500 to the first `fail_first` requests.
struct Receiver {
    url: String,
    pokes: Arc<Mutex<Vec<Poke>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let pokes: Arc<Mutex<Vec<Poke>>> = Arc::default();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let record = pokes.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (record, seen) = (record.clone(), seen.clone());
            async move {
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n < fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let h = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                record.lock().unwrap().push(Poke {
                    path: uri.path().to_string(),
                    poll_id: h("x-poll-id"),
                    auth: h("authorization"),
                });
                StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            pokes,
            _server: server,
        }
    }

    fn pokes(&self) -> Vec<Poke> {
        self.pokes.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Poke> {
        eventually(Duration::from_secs(30), "upstream pokes", || async {
            let p = self.pokes();
            (p.len() >= n).then_some(p)
        })
        .await
    }
}

fn hash_path(topic: &str) -> String {
    let d = sha2::Sha256::digest(format!("{BASE}/{topic}").as_bytes());
    format!(
        "/{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

async fn publish(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = s.client.post(s.url(path)).body("secret content");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    expect_json(req.send().await.unwrap(), 200).await
}

#[tokio::test]
async fn each_message_pokes_the_upstream_once() {
    let rx = Receiver::start(1).await;
    let s = TestServer::start(&[
        "--base-url",
        BASE,
        "--upstream-base-url",
        &rx.url,
        "--upstream-access-token",
        "tk_upstreamtoken",
    ]);
    // The first answer is a 500: the poke is retried.
    let m = publish(&s, "/ios1", &[]).await;
    let pokes = rx.wait_for(1).await;
    assert_eq!(pokes[0].path, hash_path("ios1"));
    assert_eq!(pokes[0].poll_id, m["id"].as_str().unwrap());
    assert_eq!(pokes[0].auth, "Bearer tk_upstreamtoken");

    // UnifiedPush messages and poll requests are not forwarded.
    publish(&s, "/ios1?up=1", &[]).await;
    publish(&s, "/ios1", &[("X-Poll-ID", "abc")]).await;
    // A scheduled message is poked when it falls due, not when accepted.
    let scheduled = publish(&s, "/ios2", &[("X-Delay", "10s")]).await;
    let m3 = publish(&s, "/ios1", &[]).await;
    let pokes = rx.wait_for(2).await;
    assert_eq!(pokes[1].poll_id, m3["id"].as_str().unwrap(), "{pokes:?}");
    let pokes = rx.wait_for(3).await;
    assert_eq!(pokes[2].poll_id, scheduled["id"].as_str().unwrap());
    assert_eq!(pokes[2].path, hash_path("ios2"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.pokes().len(), 3, "{:?}", rx.pokes());

    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("herald_upstream_pokes_total{result=\"sent\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn cluster_nodes_poke_once_per_message() {
    let rx = Receiver::start(0).await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("herald-test:upstream:{nanos}:");
    let node = || {
        TestServer::launch(Launch {
            args: [
                "--base-url",
                BASE,
                "--upstream-base-url",
                &rx.url,
                "--redis-url",
                "redis://127.0.0.1:6379",
                "--redis-key-prefix",
                &prefix,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            ..Launch::default()
        })
    };
    let (a, b) = (node(), node());
    let m1 = publish(&a, "/clu", &[]).await;
    let m2 = publish(&b, "/clu", &[]).await;
    let scheduled = publish(&a, "/clu", &[("X-Delay", "10s")]).await;
    let pokes = rx.wait_for(3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: Vec<String> = rx.pokes().into_iter().map(|p| p.poll_id).collect();
    assert_eq!(ids.len(), 3, "{pokes:?}");
    for m in [&m1, &m2, &scheduled] {
        let id = m["id"].as_str().unwrap();
        assert_eq!(ids.iter().filter(|i| *i == id).count(), 1, "{ids:?}");
    }
    drop((a, b));
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli --scan --pattern '{prefix}*' | xargs -r redis-cli del >/dev/null"
        ))
        .status();
}

#[test]
fn needs_base_url() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::fixture::herald_command()
        .args(["serve", "--listen-http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--upstream-base-url", "https://ntfy.sh"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream-base-url") && err.contains("base-url"),
        "{err}"
    );
}
