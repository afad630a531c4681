//! `herald bench`: the real binary run against a test server, checked through its
//! JSON report.

use std::process::Output;

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
    let summary = String::from_utf8_lossy(&output.stderr);
    for needle in ["connections  3 open", "delivery ", "latency    p50", "<= "] {
        assert!(
            summary.contains(needle),
            "{needle:?} in summary:\n{summary}"
        );
    }
}
