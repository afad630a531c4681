//! Resilience to a failing environment (issue #11, finding 2): a log destination
//! that cannot be written (a dead log shipper's pipe, a full disk) and a full disk
//! under the store must not take the server down, lose an acknowledged publish or
//! leave the probes lying; nor may a clock that went back make new messages sort
//! before stored ones. (SQLite store only: not in `.ci/run`'s pass on Redis, whose
//! stream assigns the IDs itself.)
//!
//! The full-disk test mounts a small tmpfs (the suite runs as root). Where `mount`
//! is not permitted it fails with a message saying so, rather than skip silently.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::{TestServer, eventually, expect_error, expect_json, herald_command, texts};

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
    // The access log is written in batches a few milliseconds after the requests.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut m = metrics(base).await;
    while sample(&m, "herald_log_write_errors_total") < 5.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = metrics(base).await;
    }
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

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop (declare
/// it before the server, so the server is stopped first).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with one file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        // The last partial page too, so not one byte is left.
        while file.write_all(&chunk[..64]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

async fn readyz(s: &TestServer) -> (u16, Value) {
    let resp = s.get("/readyz").await;
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("readyz JSON"))
}

#[tokio::test]
async fn a_full_disk_refuses_publishes_with_507_and_recovers_without_restart() {
    let disk = Tmpfs::mount("8m");
    let cache = disk.path().join("cache.db");
    let mut s = TestServer::start(&["--cache-file", cache.to_str().unwrap()]);
    let body = "x".repeat(2000);
    let mut acked = Vec::new();
    for _ in 0..3 {
        acked.push(s.publish("full", &body).await["id"].clone());
    }

    let filler = disk.fill();
    // Space the WAL already holds may take a few more; then every publish is refused
    // with 507, never acknowledged.
    let mut refused = None;
    for _ in 0..5_000 {
        let resp = s
            .client
            .put(s.url("/full"))
            .body(body.clone())
            .send()
            .await
            .expect("publish answered");
        if resp.status() == 200 {
            acked.push(resp.json::<Value>().await.unwrap()["id"].clone());
        } else {
            refused = Some(resp);
            break;
        }
    }
    let refused = refused.expect("publishes kept succeeding on a full disk");
    expect_error(refused, 507, 50702).await;
    let again = s.client.put(s.url("/full")).body(body.clone()).send().await;
    expect_error(again.expect("publish answered"), 507, 50702).await;

    let (status, ready) = readyz(&s).await;
    assert_eq!(status, 503, "/readyz on a full disk: {ready}");
    assert_eq!(ready["checks"]["store"], "fail", "{ready}");
    assert_eq!(s.get("/healthz").await.status(), 200, "still alive");
    let m = metrics(s.base()).await;
    assert_eq!(sample(&m, "herald_store_writes_failing"), 1.0);

    // Space returns: readiness comes back by itself (no publish needed), then
    // publishes succeed, all without a restart.
    std::fs::remove_file(filler).expect("remove filler");
    eventually(DEADLINE, "/readyz back to 200", || async {
        (readyz(&s).await.0 == 200).then_some(())
    })
    .await;
    acked.push(s.publish("full", "after").await["id"].clone());
    let m = metrics(s.base()).await;
    assert_eq!(sample(&m, "herald_store_writes_failing"), 0.0);

    // SIGTERM exits 0 (restart asserts it), and nothing acknowledged was lost.
    s.restart();
    let stored: Vec<Value> = s
        .poll("full", "since=all")
        .await
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(stored, acked, "exactly the acknowledged messages, in order");
    drop(s);
    drop(disk);
}

/// The clock stepped back while the server was down: the newest stored message has
/// an ID (a time) two minutes ahead of now. New messages must still get greater IDs,
/// or a client polling `since=<that id>` (as ntfy's apps do) would not see them; and
/// that ID, though ahead of the clock, is still taken as a marker (not as unknown,
/// which would replay everything).
#[tokio::test]
async fn ids_stay_above_stored_ones_after_the_clock_went_back() {
    // It edits messages.db: the SQLite store, whatever HERALD_TEST_STORE_ENGINE says.
    let mut s = TestServer::start(&["--store-engine", "sqlite"]);
    let old_id = s.publish("clock", "before").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = s.stop();
    assert!(status.success(), "graceful shutdown exited with {status}");

    // Move the stored message two minutes into the future, as a clock now two
    // minutes behind the one that wrote it would see it.
    let (ms, counter) = herald::model::id::parts(&old_id).unwrap();
    let ahead = herald::model::id::from_parts(ms + 120_000, counter).unwrap();
    let db = rusqlite::Connection::open(s.data_path().join("messages.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE messages SET id = ?1, json = replace(json, ?2, ?1) WHERE id = ?2",
            [&ahead, &old_id],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);

    s.start_again();
    let new_id = s.publish("clock", "after").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        new_id > ahead,
        "new ID {new_id} sorts before stored {ahead}"
    );
    assert_eq!(
        texts(&s.poll("clock", &format!("since={ahead}")).await),
        ["after"]
    );
    assert_eq!(
        texts(&s.poll("clock", "since=all").await),
        ["before", "after"]
    );
}

/// A data directory switched from the SQLite store to the log store
/// (`store-engine = log`) keeps every stored message, published and scheduled: the
/// log imports `messages.db` once. Then the log keeps every acknowledged publish
/// through a `kill -9`, in order, and `since=<id>` goes on working.
#[tokio::test]
async fn switching_to_the_log_store_keeps_every_message_and_survives_a_crash() {
    let mut s = TestServer::start(&["--store-engine", "sqlite"]);
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(s.publish("switch", &format!("m{i}")).await["id"].clone());
    }
    let scheduled = s
        .client
        .put(s.url("/switch"))
        .header("X-Delay", "1h")
        .body("later")
        .send()
        .await
        .unwrap();
    assert_eq!(scheduled.status(), 200);
    assert_eq!(s.stop().code(), Some(0));

    s.set_arg("--store-engine", "log");
    s.start_again();
    let ids = |events: &[Value]| events.iter().map(|m| m["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&s.poll("switch", "since=all").await), acked);
    let with_scheduled = s.poll("switch", "since=all&scheduled=1").await;
    assert_eq!(with_scheduled.len(), 6, "{with_scheduled:?}");
    assert_eq!(with_scheduled[5]["message"], "later");
    assert!(s.data_path().join("messages.log").is_dir());
    assert!(s.data_path().join("messages.db.imported").exists());
    assert!(!s.data_path().join("messages.db").exists());

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let (client, url, tx) = (s.client.clone(), s.url("/switch"), tx.clone());
            tokio::spawn(async move {
                for i in 0..25 {
                    let resp = client
                        .put(&url)
                        .body(format!("p{p}-{i}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    let id = resp.json::<Value>().await.unwrap()["id"].clone();
                    tx.send(id).unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    drop(tx);
    while let Some(id) = rx.recv().await {
        acked.push(id);
    }
    s.kill9();
    s.start_again();
    let stored = ids(&s.poll("switch", "since=all").await);
    let mut want = acked.clone();
    want.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    assert_eq!(stored, want, "every acknowledged publish, in ID order");
    let marker = want[50].as_str().unwrap().to_string();
    let after = ids(&s.poll("switch", &format!("since={marker}")).await);
    assert_eq!(after, want[51..].to_vec());
    // New IDs sort after the stored ones.
    let next = s.publish("switch", "after the crash").await["id"].clone();
    assert!(next.as_str() > want.last().unwrap().as_str());
}
