//! A webhook receiver for the tests: an axum server on `127.0.0.1:0` that records
//! every request and verifies its signature with the Standard Webhooks reference
//! implementation (the `standardwebhooks` crate), answering as the test tells it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::fixture::eventually;

/// How the receiver answers request number `n` (0-based): status and extra headers.
pub type Answer = Arc<dyn Fn(usize) -> (u16, Vec<(&'static str, String)>) + Send + Sync>;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Value,
    /// Verified with the current secrets (`standardwebhooks::Webhook::verify`).
    pub verified: bool,
    /// The status the receiver answered.
    pub answered: u16,
}

struct Shared {
    secrets: Mutex<Vec<String>>,
    received: Mutex<Vec<Received>>,
    answer: Mutex<Answer>,
    count: AtomicUsize,
    /// How long each answer is held back (a slow endpoint).
    delay: Mutex<Duration>,
}

/// A running receiver.
pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers 200 to everything.
pub fn always_ok() -> Answer {
    Arc::new(|_| (200, vec![]))
}

/// Answers `status` to everything.
pub fn always(status: u16) -> Answer {
    Arc::new(move |_| (status, vec![]))
}

impl Receiver {
    /// Starts a receiver answering with `answer`.
    pub async fn start(answer: Answer) -> Receiver {
        let shared = Arc::new(Shared {
            secrets: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
            answer: Mutex::new(answer),
            count: AtomicUsize::new(0),
            delay: Mutex::new(Duration::ZERO),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            shared,
            task,
        }
    }

    /// Secrets signatures must verify with (each one on its own).
    pub fn set_secrets(&self, secrets: &[&str]) {
        *self.shared.secrets.lock().unwrap() = secrets.iter().map(|s| s.to_string()).collect();
    }

    /// Changes how the receiver answers from now on.
    pub fn answer_with(&self, answer: Answer) {
        *self.shared.answer.lock().unwrap() = answer;
    }

    /// Holds back every answer from now on by `delay` (a slow endpoint); the
    /// request is recorded when it arrives.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The distinct `webhook-id`s that were answered with a 2xx.
    pub fn delivered_ids(&self) -> std::collections::BTreeSet<String> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .map(|r| r.id)
            .collect()
    }

    /// Waits until `n` distinct messages were delivered (2xx).
    pub async fn wait_delivered(&self, n: usize, timeout: Duration) {
        eventually(
            timeout,
            &format!("{n} deliveries at {}", self.url),
            || async { (self.delivered_ids().len() >= n).then_some(()) },
        )
        .await;
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Received> {
        eventually(
            timeout,
            &format!("{n} requests at {}", self.url),
            || async {
                let r = self.received();
                (r.len() >= n).then_some(r)
            },
        )
        .await
    }
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = shared.count.fetch_add(1, Ordering::SeqCst);
    let answer = shared.answer.lock().unwrap().clone();
    let (status, extra) = answer(n);
    let secrets = shared.secrets.lock().unwrap().clone();
    let verified = !secrets.is_empty()
        && secrets.iter().all(|s| {
            standardwebhooks::Webhook::new(s)
                .map(|wh| wh.verify(&body, &headers).is_ok())
                .unwrap_or(false)
        });
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    shared.received.lock().unwrap().push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
        answered: status,
    });
    let delay = *shared.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "ok",
    )
        .into_response();
    for (name, value) in extra {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// An address that accepts connections and never answers (a hung endpoint).
pub async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (format!("http://{addr}/hook"), task)
}
