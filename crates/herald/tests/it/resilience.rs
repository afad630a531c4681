//! Resilience to a failing environment (issue #11, finding 2): a log destination
//! that cannot be written (a dead log shipper's pipe, a full disk) must not take the
//! server down or leave the probes lying.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::fixture::{expect_json, herald_command};

/// How long a server may take to start answering, or to stop.
const DEADLINE: Duration = Duration::from_secs(20);

fn client() -> reqwest::Client {
    herald::webhook::client::install_tls_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A port free right now (the server is told to listen on it: with its stderr
/// unwritable it cannot tell which port it got).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// `herald serve` on its own data directory with `stderr` as its stderr.
fn spawn(data_dir: &Path, port: u16, stderr: Stdio) -> Child {
    herald_command()
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-http", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn herald")
}

/// Waits until `base` answers `/healthz` with 200, failing early if the process exits.
async fn wait_healthy(child: &mut Child, base: &str) {
    let deadline = Instant::now() + DEADLINE;
    let http = client();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("herald exited at start-up with {status}");
        }
        if let Ok(resp) = http.get(format!("{base}/healthz")).send().await
            && resp.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "herald never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then the exit status (the process is killed after the deadline).
fn terminate(child: &mut Child) -> ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM failed");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
        .trim()
        .parse()
        .expect("numeric sample")
}

async fn metrics(base: &str) -> String {
    let resp = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("metrics body")
}

/// Publishes `n` messages (each one access-logged), all acknowledged.
async fn publish_some(base: &str, n: usize) {
    let http = client();
    for i in 0..n {
        let resp = http
            .put(format!("{base}/logless"))
            .body(format!("m{i}"))
            .send()
            .await
            .expect("publish answered (not a closed connection)");
        expect_json(resp, 200).await;
    }
}

/// The checks after the log destination failed: requests are answered, the
/// failures are counted, the probes are green, SIGTERM exits 0.
async fn serves_despite_the_log(child: &mut Child, base: &str) {
    publish_some(base, 5).await;
    let http = client();
    for probe in ["/healthz", "/readyz", "/v1/health"] {
        let resp = http.get(format!("{base}{probe}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{probe}");
    }
    let m = metrics(base).await;
    assert!(
        sample(&m, "herald_log_write_errors_total") >= 5.0,
        "each publish's access-log line is counted as lost:\n{m}"
    );
    let status = terminate(child);
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
}

#[tokio::test]
async fn a_log_pipe_closed_by_its_reader_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn(dir.path(), port, Stdio::piped());
    // The log shipper reads the start-up lines, then dies.
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let started = lines.any(|l| l.is_ok_and(|l| l.contains("herald listening on")));
    assert!(started, "no listening line");
    drop(lines);
    serves_despite_the_log(&mut child, &format!("http://127.0.0.1:{port}")).await;
}

#[tokio::test]
async fn a_log_unwritable_from_the_start_does_not_stop_the_server() {
    // A full disk under a redirected log (`/dev/full`: every write is ENOSPC), and a
    // pipe whose reader is gone before the server starts (EPIPE).
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    for (what, stderr) in [
        ("/dev/full", Stdio::from(full)),
        ("closed pipe", Stdio::from(writer)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = spawn(dir.path(), port, stderr);
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&mut child, &base).await;
        eprintln!("stderr is {what}");
        serves_despite_the_log(&mut child, &base).await;
    }
}
