//! `herald bench`: the real binary run against a test server, checked through its
//! JSON report.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::fixture::{TestServer, herald_command};

/// Runs `herald bench --url <server> <args>`; asserts success.
fn bench(server: &TestServer, args: &[&str]) -> Output {
    let output = herald_command()
        .args(["bench", "--url", server.base()])
        .args(args)
        .output()
        .expect("run herald bench");
    assert!(
        output.status.success(),
        "herald bench failed: {}\nstderr:\n{}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        server.log_text()
    );
    output
}

/// Asserts every expected delivery arrived exactly once and in order.
fn assert_clean_delivery(report: &Value) {
    let d = &report["delivery"];
    assert!(d["expected"].as_u64().is_some_and(|n| n > 0), "{report:#}");
    assert_eq!(d["delivered"], d["expected"], "{report:#}");
    assert_eq!(d["lat_us"]["count"], d["expected"], "{report:#}");
    for key in ["duplicates", "out_of_order", "foreign", "protocol_errors"] {
        assert_eq!(d[key], 0, "{key} in {report:#}");
    }
    let c = &report["connections"];
    assert_eq!(c["failed"], 0, "{report:#}");
    assert_eq!(c["dropped"], 0, "{report:#}");
    assert_eq!(report["publish"]["errors"], 0, "{report:#}");
    assert_eq!(report["errors"]["count"], 0, "{report:#}");
}

#[test]
fn open_loop_over_all_transports_delivers_everything_in_order() {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("report.json");
    let path_arg = path.to_str().expect("UTF-8 temp path");
    let output = bench(
        &server,
        &[
            "--subscribers",
            "20",
            "--transport",
            "ws,sse,json",
            "--topics",
            "2",
            "--publishers",
            "2",
            "--rate",
            "50",
            "--duration",
            "1",
            "--size",
            "100",
            "--json",
            path_arg,
            "--quiet",
        ],
    );
    assert!(output.stdout.is_empty(), "--json FILE leaves stdout empty");
    assert!(
        output.stderr.is_empty(),
        "--quiet: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&path).expect("report written"))
        .expect("JSON report");
    assert_eq!(report["connections"]["established"], 20, "{report:#}");
    assert_eq!(report["publish"]["published"], 50, "{report:#}");
    // 50 messages over 2 topics with 10 subscribers each.
    assert_eq!(report["delivery"]["expected"], 500, "{report:#}");
    assert_clean_delivery(&report);
    assert_eq!(
        report["config"]["transports"],
        serde_json::json!(["ws", "sse", "json"])
    );
}

#[test]
fn closed_loop_reports_on_stdout_with_summary() {
    let server = TestServer::start(&[]);
    let output = bench(
        &server,
        &[
            "--subscribers",
            "3",
            "--transport",
            "sse",
            "--publishers",
            "2",
            "--rate",
            "0",
            "--duration",
            "0.5",
        ],
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report on stdout");
    assert_eq!(report["config"]["mode"], "closed-loop");
    assert!(
        report["publish"]["published"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{report:#}"
    );
    assert_clean_delivery(&report);
    assert_eq!(report["delivery"]["latency_to"], "read", "{report:#}");
    assert!(
        report["delivery"].get("rx_unstamped").is_none(),
        "{report:#}"
    );
    let summary = String::from_utf8_lossy(&output.stderr);
    for needle in ["connections  3 open", "delivery ", "latency    p50", "<= "] {
        assert!(
            summary.contains(needle),
            "{needle:?} in summary:\n{summary}"
        );
    }
}

/// `--rx-timestamps`: latencies end at the kernel's receive timestamp, and every
/// delivery still arrives exactly once and in order over all three transports.
#[test]
fn rx_timestamps_time_deliveries_by_the_kernel() {
    let server = TestServer::start(&[]);
    let output = bench(
        &server,
        &[
            "--subscribers",
            "6",
            "--transport",
            "ws,sse,json",
            "--rate",
            "20",
            "--duration",
            "1",
            "--rx-timestamps",
        ],
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report on stdout");
    assert_clean_delivery(&report);
    let d = &report["delivery"];
    assert_eq!(d["latency_to"], "kernel receive timestamp", "{report:#}");
    // Stamps can be missing only right after the host's first socket asked for
    // them (the kernel turns them on through deferred work): not for all.
    let unstamped = d["rx_unstamped"].as_u64().expect("rx_unstamped counted");
    assert!(
        unstamped < d["delivered"].as_u64().unwrap_or(0),
        "{report:#}"
    );
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(
        summary.contains("to the kernel receive timestamp"),
        "summary:\n{summary}"
    );
}

/// The NATS server the NATS runs use: the machine's (CI starts it, `.ci/run`).
const LOCAL_NATS: &str = "127.0.0.1:4222";

/// Runs `herald bench <args>` (no `--url` added); asserts success.
fn bench_nats(args: &[&str]) -> Value {
    let output = herald_command()
        .arg("bench")
        .args(args)
        .args(["--quiet", "--topic-prefix", &unique_prefix()])
        .output()
        .expect("run herald bench");
    assert!(
        output.status.success(),
        "herald bench failed: {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
    );
    serde_json::from_slice(&output.stdout).expect("JSON report on stdout")
}

/// Subjects no other run uses, so parallel runs on the shared server stay apart.
fn unique_prefix() -> String {
    format!("herald-it-{:016x}-", fastrand::u64(..))
}

/// Fails (never skips) when the local nats-server is down.
fn require_local_nats() {
    let addr = LOCAL_NATS.parse().expect("address");
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        panic!(
            "the local nats-server on {LOCAL_NATS} is down ({e}); start it as .ci/run does: \
             start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
             -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
        );
    }
}

#[test]
fn nats_open_and_closed_loop_over_tcp_deliver_everything_in_order() {
    require_local_nats();
    let url = format!("nats://{LOCAL_NATS}");
    let report = bench_nats(&[
        "--url",
        &url,
        "--transport",
        "tcp",
        "--subscribers",
        "6",
        "--topics",
        "2",
        "--publishers",
        "2",
        "--rate",
        "40",
        "--duration",
        "1",
    ]);
    assert_eq!(report["config"]["protocol"], "nats", "{report:#}");
    assert_eq!(report["connections"]["established"], 6, "{report:#}");
    assert_eq!(report["publish"]["published"], 40, "{report:#}");
    // 40 messages over 2 subjects with 3 subscribers each.
    assert_eq!(report["delivery"]["expected"], 120, "{report:#}");
    assert_clean_delivery(&report);

    let report = bench_nats(&[
        "--url",
        &url,
        "--transport",
        "tcp",
        "--subscribers",
        "4",
        "--topics",
        "4",
        "--publishers",
        "3",
        "--rate",
        "0",
        "--duration",
        "0.5",
    ]);
    assert_eq!(report["config"]["mode"], "closed-loop", "{report:#}");
    assert!(
        report["publish"]["published"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{report:#}"
    );
    assert_clean_delivery(&report);
}

/// A nats-server of our own with a WebSocket listener (the machine's binary; the
/// local server on 4222 has none): `ws` and `tcp` subscribers in one run.
#[test]
fn nats_websocket_subscribers() {
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    let (client, ws) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{client}\nwebsocket {{ host: 127.0.0.1, port: {ws}, no_tls: true }}\n"
        ),
    )
    .expect("write config");
    let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
    let mut server = std::process::Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary} (install Debian's nats-server): {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", ws)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = server.id().to_string();
    let report = bench_nats(&[
        "--url",
        &format!("nats://127.0.0.1:{client}"),
        "--nats-ws-url",
        &format!("ws://127.0.0.1:{ws}"),
        "--transport",
        "ws,tcp",
        "--subscribers",
        "6",
        "--publishers",
        "2",
        "--rate",
        "40",
        "--duration",
        "1",
        "--server-pid",
        &pid,
    ]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        report["config"]["transports"],
        serde_json::json!(["ws", "tcp"])
    );
    assert_eq!(report["delivery"]["expected"], 240, "{report:#}");
    assert_clean_delivery(&report);
    assert!(
        report["server"]["rss_kib"]["connected"]
            .as_u64()
            .is_some_and(|kib| kib > 0),
        "{report:#}"
    );
}

#[test]
fn idle_run_publishes_nothing() {
    let server = TestServer::start(&[]);
    let output = bench(
        &server,
        &[
            "--subscribers",
            "4",
            "--publishers",
            "0",
            "--duration",
            "0.3",
            "--quiet",
        ],
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["config"]["mode"], "idle", "{report:#}");
    assert_eq!(report["connections"]["established"], 4, "{report:#}");
    assert_eq!(report["publish"]["published"], 0, "{report:#}");
    assert_eq!(report["delivery"]["expected"], 0, "{report:#}");
    assert_eq!(report["errors"]["count"], 0, "{report:#}");
}
