//! File attachments (issue #14): ntfy's upload rules (https://docs.ntfy.sh/publish/#attachments,
//! docs/COMPATIBILITY.md §2.3), `GET|HEAD /file/<id>`, every limit and its code,
//! expiry, what a refusal, an abort or a `kill -9` leaves behind (nothing), odd
//! names, and cluster mode. Uploads are what `curl -T file` (PUT with
//! `Content-Length`) and `curl --data-binary @-` (chunked) send.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::fixture::{
    Launch, TestServer, eventually, expect_error, expect_json, expect_json_raw, header,
};

const BASE_URL: &str = "http://herald.test";

/// A server storing attachments in a directory of its own (returned), with `args`.
pub(crate) fn server(args: &[&str]) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![
        "--base-url",
        BASE_URL,
        "--attachment-cache-dir",
        dir.path().to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    (TestServer::start(&all), dir)
}

/// The names in `dir`, sorted.
pub(crate) fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `url`'s path (`/file/<id>.<ext>`), to fetch it from the test server.
pub(crate) fn file_path(url: &str) -> String {
    url.strip_prefix(BASE_URL)
        .unwrap_or_else(|| panic!("attachment URL {url} not under base-url"))
        .to_string()
}

/// A JPEG-looking body of `len` bytes.
pub(crate) fn jpeg(len: usize) -> Vec<u8> {
    let mut body = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00".to_vec();
    body.extend((0..len.saturating_sub(body.len())).map(|i| (i * 7 % 251) as u8));
    body.truncate(len);
    body
}

async fn upload(
    s: &TestServer,
    topic: &str,
    name: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = s.client.put(s.url(&format!("/{topic}"))).body(body);
    if let Some(name) = name {
        req = req.header("Filename", name);
    }
    req.send().await.unwrap()
}

/// Uploads `body` as `name` and expects ntfy's `413 41301`.
async fn expect_too_large(s: &TestServer, name: &str, body: Vec<u8>) {
    expect_error(upload(s, "t", Some(name), body).await, 413, 41301).await;
}

/// A body sent chunked (no `Content-Length`), as `curl --data-binary @-` does.
fn chunked(body: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn curl_t_upload_and_download() {
    let (s, dir) = server(&[]);
    let body = jpeg(100_000);
    let resp = upload(&s, "cam", Some("snapshot.jpg"), body.clone()).await;
    let (m, raw) = expect_json_raw(resp, 200).await;
    assert_eq!(m["message"], "You received a file: snapshot.jpg");
    let a = &m["attachment"];
    assert_eq!(a["name"], "snapshot.jpg");
    assert_eq!(a["type"], "image/jpeg");
    assert_eq!(a["size"], 100_000);
    let expires = a["expires"].as_i64().unwrap();
    let now = m["time"].as_i64().unwrap();
    assert!(
        (now + 3 * 3600 - 5..=now + 3 * 3600 + 5).contains(&expires),
        "{m}"
    );
    let url = a["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{BASE_URL}/file/")) && url.ends_with(".jpg"),
        "{url}"
    );
    // ntfy's key order in the attachment object.
    let from = raw.find("\"attachment\"").unwrap();
    let positions: Vec<usize> = ["name", "type", "size", "expires", "url"]
        .iter()
        .map(|k| from + raw[from..].find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{raw}");

    let resp = s.get(&file_path(url)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-length"), "100000");
    assert_eq!(header(&resp, "content-type"), "image/jpeg");
    assert_eq!(
        header(&resp, "content-disposition"),
        "attachment; filename=\"snapshot.jpg\"; filename*=UTF-8''snapshot.jpg"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), body.as_slice());
    // Without the extension too, as ntfy.
    let id_only = file_path(url).rsplit_once('.').unwrap().0.to_string();
    assert_eq!(s.get(&id_only).await.status(), 200);

    let head = s.client.head(s.url(&file_path(url))).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), "100000");
    assert!(head.bytes().await.unwrap().is_empty());

    // A range: the first ten bytes.
    let part = s
        .client
        .get(s.url(&file_path(url)))
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(header(&part, "content-range"), "bytes 0-9/100000");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &body[..10]);

    // The message in the history carries the same attachment.
    let polled = s.poll("cam", "").await;
    assert_eq!(polled[0]["attachment"], *a);
    // One file and its metadata, named by ID.
    let names = files_in(dir.path());
    assert_eq!(names.len(), 2, "{names:?}");
}

#[tokio::test]
async fn body_rules_decide_what_is_an_attachment() {
    let (s, _dir) = server(&[]);
    // A small binary body without a name: `attachment<ext>` from its sniffed type.
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR".to_vec();
    let m = expect_json(upload(&s, "t", None, png).await, 200).await;
    assert_eq!(m["attachment"]["name"], "attachment.png");
    assert_eq!(m["attachment"]["type"], "image/png");
    // Text over message-size-limit (exactly 4096 bytes fills ntfy's peek buffer).
    let m = expect_json(upload(&s, "t", None, vec![b'a'; 4096]).await, 200).await;
    assert_eq!(m["attachment"]["name"], "attachment.txt");
    assert_eq!(m["attachment"]["type"], "text/plain; charset=utf-8");
    assert_eq!(m["attachment"]["size"], 4096);
    // A short text with a filename is a file too, and `message=` is the text.
    let resp = s
        .client
        .put(s.url("/t?filename=notes.txt&message=see%20notes"))
        .body("short")
        .send()
        .await
        .unwrap();
    let m = expect_json(resp, 200).await;
    assert_eq!(m["message"], "see notes");
    assert_eq!(m["attachment"]["name"], "notes.txt");
    assert_eq!(m["attachment"]["size"], 5);
    // An unknown binary is application/octet-stream, `.bin`.
    let m = expect_json(upload(&s, "t", None, vec![0, 1, 2, 3, 0xff]).await, 200).await;
    assert_eq!(m["attachment"]["name"], "attachment.bin");
    assert_eq!(m["attachment"]["type"], "application/octet-stream");
    // `X-Attach` with a body keeps the body as the message.
    let resp = s
        .client
        .put(s.url("/t"))
        .header("X-Attach", "https://example.com/a/cat.jpg")
        .body("look")
        .send()
        .await
        .unwrap();
    let m = expect_json(resp, 200).await;
    assert_eq!(m["message"], "look");
    assert_eq!(m["attachment"]["url"], "https://example.com/a/cat.jpg");
    // An ordinary message is still a message.
    assert!(s.publish("t", "hello").await.get("attachment").is_none());
    // HTML is served as plain text (no script runs on the server's origin).
    let m = expect_json(
        upload(
            &s,
            "t",
            Some("x.html"),
            b"<html><script>1</script></html>".to_vec(),
        )
        .await,
        200,
    )
    .await;
    let resp = s
        .get(&file_path(m["attachment"]["url"].as_str().unwrap()))
        .await;
    assert_eq!(header(&resp, "content-type"), "text/plain; charset=utf-8");
    assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
}

#[tokio::test]
async fn json_publish_with_filename_stores_the_message_as_a_file() {
    let (s, _dir) = server(&[]);
    let resp = s
        .client
        .post(s.base())
        .json(&serde_json::json!({"topic": "j", "message": "file body", "filename": "a.txt"}))
        .send()
        .await
        .unwrap();
    let m = expect_json(resp, 200).await;
    assert_eq!(m["attachment"]["name"], "a.txt");
    assert_eq!(m["message"], "You received a file: a.txt");
    let got = s
        .get(&file_path(m["attachment"]["url"].as_str().unwrap()))
        .await;
    assert_eq!(got.text().await.unwrap(), "file body");
}

#[tokio::test]
async fn uploads_need_a_cache_dir_and_a_base_url() {
    // No attachment-cache-dir: ntfy's 40014 (publish.rs covers the body rules).
    let s = TestServer::start(&[]);
    expect_error(
        upload(&s, "t", Some("a.bin"), vec![1; 10]).await,
        400,
        40014,
    )
    .await;
    assert_eq!(s.get("/file/abcdefghijkl").await.status(), 404);
    // A cache dir but no base-url: 40014 too, as in ntfy.
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&["--attachment-cache-dir", dir.path().to_str().unwrap()]);
    expect_error(
        upload(&s, "t", Some("a.bin"), vec![1; 10]).await,
        400,
        40014,
    )
    .await;
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn file_size_limit_stops_the_upload_and_keeps_nothing() {
    let (s, dir) = server(&["--attachment-file-size-limit", "100k"]);
    let limit = 100 * 1024;
    // Exactly the limit is fine.
    expect_json(upload(&s, "t", Some("ok.bin"), vec![7; limit]).await, 200).await;
    // One byte more, announced by Content-Length: refused before reading.
    expect_too_large(&s, "big.bin", vec![7; limit + 1]).await;
    // Chunked (no Content-Length): refused while streaming.
    let resp = s
        .client
        .put(s.url("/t"))
        .header("Filename", "big.bin")
        .body(chunked(vec![7; 3 * limit]))
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, 41301).await;
    // Only the first file (and its metadata) is there.
    eventually(
        Duration::from_secs(5),
        "refused uploads deleted",
        || async { (files_in(dir.path()).len() == 2).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn visitor_total_and_server_total_limits() {
    let (s, dir) = server(&[
        "--visitor-attachment-total-size-limit",
        "300k",
        "--attachment-file-size-limit",
        "1M",
    ]);
    expect_json(upload(&s, "t", Some("a"), vec![1; 200 * 1024]).await, 200).await;
    // 200k + 200k > 300k: refused, nothing kept, and the 100k left still fit.
    let resp = s
        .client
        .put(s.url("/t"))
        .header("Filename", "b")
        .body(chunked(vec![1; 200 * 1024]))
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, 41301).await;
    expect_json(upload(&s, "t", Some("c"), vec![1; 100 * 1024]).await, 200).await;
    expect_too_large(&s, "d", vec![1; 1]).await;
    assert_eq!(files_in(dir.path()).len(), 4);
    // `/v1/account` reports the usage as ntfy does.
    let account = expect_json(s.get("/v1/account").await, 200).await;
    assert_eq!(account["limits"]["attachment_total_size"], 300 * 1024);
    assert_eq!(account["limits"]["attachment_file_size"], 1024 * 1024);
    assert_eq!(account["limits"]["attachment_expiry_duration"], 3 * 3600);
    assert_eq!(account["limits"]["attachment_bandwidth"], 500 * 1024 * 1024);
    assert_eq!(account["stats"]["attachment_total_size"], 300 * 1024);
    assert_eq!(account["stats"]["attachment_total_size_remaining"], 0);

    // The server's total applies across visitors.
    let (s, _dir) = server(&["--attachment-total-size-limit", "150k"]);
    expect_json(upload(&s, "t", Some("a"), vec![1; 100 * 1024]).await, 200).await;
    expect_too_large(&s, "b", vec![1; 100 * 1024]).await;
}

#[tokio::test]
async fn concurrent_uploads_cannot_pass_the_visitor_total_together() {
    let (s, dir) = server(&["--visitor-attachment-total-size-limit", "1M"]);
    // Ten 300k uploads at once: at most three fit into 1M.
    let uploads = (0..10).map(|i| {
        s.client
            .put(s.url("/t"))
            .header("Filename", format!("f{i}"))
            .body(chunked(vec![1; 300 * 1024]))
            .send()
    });
    let results = futures_util::future::join_all(uploads).await;
    let ok = results
        .into_iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
        .count();
    assert!((1..=3).contains(&ok), "{ok} uploads succeeded");
    eventually(
        Duration::from_secs(5),
        "refused uploads deleted",
        || async { (files_in(dir.path()).len() == ok * 2).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn daily_bandwidth_covers_uploads_and_downloads() {
    let (s, _dir) = server(&["--visitor-attachment-daily-bandwidth-limit", "500k"]);
    let m = expect_json(upload(&s, "t", Some("a"), vec![1; 200 * 1024]).await, 200).await;
    let path = file_path(m["attachment"]["url"].as_str().unwrap());
    // 200k uploaded + 200k downloaded = 400k; HEAD costs nothing.
    assert_eq!(s.get(&path).await.status(), 200);
    assert_eq!(
        s.client.head(s.url(&path)).send().await.unwrap().status(),
        200
    );
    // Another 200k would pass 500k: ntfy's 429 42905.
    expect_error(s.get(&path).await, 429, 42905).await;
    // And an upload of more than the 100k left is refused with 41301.
    expect_too_large(&s, "b", vec![1; 101 * 1024]).await;
}

#[tokio::test]
async fn attachments_expire_and_their_files_go() {
    let (s, dir) = server(&[
        "--attachment-expiry-duration",
        "2s",
        "--manager-interval",
        "1s",
    ]);
    let m = expect_json(upload(&s, "t", Some("a.bin"), vec![1; 1000]).await, 200).await;
    let a = &m["attachment"];
    assert_eq!(
        a["expires"].as_i64().unwrap(),
        m["time"].as_i64().unwrap() + 2
    );
    let path = file_path(a["url"].as_str().unwrap());
    assert_eq!(s.get(&path).await.status(), 200);
    eventually(
        Duration::from_secs(10),
        "expired attachment gone",
        || async {
            (s.get(&path).await.status() == 404 && files_in(dir.path()).is_empty()).then_some(())
        },
    )
    .await;
    // The message stays (its own expiry is cache-duration).
    assert_eq!(s.poll("t", "").await.len(), 1);

    // An attachment never outlives its message.
    let (s, _dir) = server(&["--cache-duration", "1m"]);
    let m = expect_json(upload(&s, "t", Some("a.bin"), vec![1; 10]).await, 200).await;
    // The file's expiry is fixed when its upload starts, the message's time when the
    // upload has ended: a second may tick in between (it did on a loaded host).
    let (file, message) = (
        m["attachment"]["expires"].as_i64().unwrap(),
        m["expires"].as_i64().unwrap(),
    );
    assert!(
        file <= message && file >= message - 1,
        "{file} vs {message}"
    );
}

#[tokio::test]
async fn delayed_delivery_after_the_attachment_expires_is_refused() {
    let (s, dir) = server(&[]);
    let delayed = |delay: &'static str| {
        s.client
            .put(s.url("/t"))
            .header("Filename", "a.bin")
            .header("X-Delay", delay)
            .body(vec![1u8; 100])
            .send()
    };
    expect_error(delayed("4h").await.unwrap(), 400, 40015).await;
    // Within the expiry it is fine.
    expect_json(delayed("1h").await.unwrap(), 200).await;
    assert_eq!(files_in(dir.path()).len(), 2);
}

#[tokio::test]
async fn totals_and_files_survive_a_restart() {
    let (mut s, dir) = server(&["--visitor-attachment-total-size-limit", "300k"]);
    let m = expect_json(upload(&s, "t", Some("a"), vec![5; 200 * 1024]).await, 200).await;
    let path = file_path(m["attachment"]["url"].as_str().unwrap());
    s.restart();
    let got = s.get(&path).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().len(), 200 * 1024);
    expect_too_large(&s, "b", vec![1; 200 * 1024]).await;
    assert_eq!(files_in(dir.path()).len(), 2);
}

/// Writes a request head and part of its body on a raw socket, then leaves the
/// connection hanging (or closes it).
fn partial_upload(base: &str, topic: &str, announced: usize, sent: usize) -> std::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    write!(
        sock,
        "PUT /{topic} HTTP/1.1\r\nHost: {addr}\r\nFilename: big.bin\r\nContent-Length: {announced}\r\n\r\n"
    )
    .unwrap();
    sock.write_all(&vec![9u8; sent]).unwrap();
    sock.flush().unwrap();
    sock
}

#[tokio::test]
async fn aborted_upload_leaves_nothing_and_gives_its_quota_back() {
    let (s, dir) = server(&["--visitor-attachment-total-size-limit", "1M"]);
    let sock = partial_upload(s.base(), "t", 900 * 1024, 600 * 1024);
    std::thread::sleep(Duration::from_millis(300));
    drop(sock);
    eventually(Duration::from_secs(5), "aborted upload deleted", || async {
        files_in(dir.path()).is_empty().then_some(())
    })
    .await;
    // The 600k it had charged are free again.
    expect_json(upload(&s, "t", Some("a"), vec![1; 900 * 1024]).await, 200).await;
}

#[tokio::test]
async fn kill_9_mid_upload_leaves_nothing_and_loses_no_message() {
    let (mut s, dir) = server(&[]);
    let before = s.publish("t", "before the crash").await;
    let kept = expect_json(
        upload(&s, "t", Some("kept.bin"), vec![3; 50_000]).await,
        200,
    )
    .await;
    let sock = partial_upload(s.base(), "t", 5_000_000, 2_000_000);
    eventually(Duration::from_secs(5), "upload in progress", || async {
        files_in(dir.path())
            .iter()
            .any(|n| n.starts_with("tmp-"))
            .then_some(())
    })
    .await;
    s.kill9();
    drop(sock);
    assert!(files_in(dir.path()).iter().any(|n| n.starts_with("tmp-")));
    s.start_again();
    // The leftover is gone at start; the acknowledged message and file are not.
    assert_eq!(files_in(dir.path()).len(), 2, "{:?}", files_in(dir.path()));
    let polled = s.poll("t", "").await;
    let ids: Vec<&Value> = polled.iter().map(|m| &m["id"]).collect();
    assert!(
        ids.contains(&&before["id"]) && ids.contains(&&kept["id"]),
        "{polled:?}"
    );
    let got = s
        .get(&file_path(kept["attachment"]["url"].as_str().unwrap()))
        .await;
    assert_eq!(got.bytes().await.unwrap().len(), 50_000);
}

/// Sends `request` on a raw socket and returns the status line.
fn raw_status(base: &str, request: &[u8]) -> String {
    let mut sock = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(request).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn odd_names_and_paths_never_escape_the_store() {
    let (s, dir) = server(&[]);
    let outside = dir.path().parent().unwrap().join("escaped");
    let long = "x".repeat(3000);
    let names: Vec<String> = vec![
        "../../escaped".into(),
        "/etc/passwd".into(),
        "a/../../b".into(),
        long.clone(),
        "quote\"and\\back.txt".into(),
        "ünïcödé.txt".into(),
    ];
    for name in &names {
        let resp = s
            .client
            .put(s.url("/t"))
            .query(&[("filename", name.as_str())])
            .body(vec![1u8, 2, 3])
            .send()
            .await
            .unwrap();
        let m = expect_json(resp, 200).await;
        assert_eq!(m["attachment"]["name"], name.as_str());
        let got = s
            .get(&file_path(m["attachment"]["url"].as_str().unwrap()))
            .await;
        assert_eq!(got.status(), 200);
        assert!(header(&got, "content-disposition").starts_with("attachment; filename=\""));
    }
    // A NUL (query) and a non-UTF-8 header value.
    let resp = s
        .client
        .put(s.url("/t?filename=a%00b"))
        .body(vec![1u8])
        .send()
        .await
        .unwrap();
    expect_json(resp, 200).await;
    let status = raw_status(
        s.base(),
        b"PUT /t HTTP/1.1\r\nHost: x\r\nFilename: \xff\xfe.bin\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert!(status.contains(" 200 "), "{status}");
    assert!(!outside.exists());
    // Every name in the store is an ID (plus `.json`): 8 files, 8 metadata.
    let names_in_dir = files_in(dir.path());
    assert_eq!(names_in_dir.len(), 16, "{names_in_dir:?}");
    assert!(names_in_dir.iter().all(|n| {
        let id = n.strip_suffix(".json").unwrap_or(n);
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_alphanumeric())
    }));
    // Traversal in the download path is a 404 (raw, so no client normalises it).
    for path in [
        "/file/../../etc/passwd",
        "/file/..%2F..%2Fetc%2Fpasswd",
        "/file/%2e%2e",
        "/file/abc.json",
        "/file/abcdefghijkl.json.x",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let status = raw_status(s.base(), req.as_bytes());
        assert!(status.contains(" 404 "), "{path}: {status}");
    }
    // `/file/<id>.json` is the file with a `.json` extension, never its metadata.
    let meta = names_in_dir.iter().find(|n| n.ends_with(".json")).unwrap();
    let got = s.get(&format!("/file/{meta}")).await;
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap().len() <= 3);
}

#[tokio::test]
async fn leftovers_from_before_a_start_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    // A crashed upload's temporary file and a file whose metadata was never written.
    std::fs::write(dir.path().join("tmp-AAAAAAAAAAAA-1"), b"partial").unwrap();
    std::fs::write(dir.path().join("BBBBBBBBBBBB"), b"orphan").unwrap();
    // Something herald did not write stays.
    std::fs::write(dir.path().join("README"), b"mine").unwrap();
    let s = TestServer::start(&[
        "--base-url",
        BASE_URL,
        "--attachment-cache-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(files_in(dir.path()), vec!["README".to_string()]);
    assert_eq!(s.get("/file/BBBBBBBBBBBB").await.status(), 404);
}

#[tokio::test]
async fn options_work_as_flag_env_and_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let config: PathBuf = dir.path().join("server.yml");
    let files = dir.path().join("files");
    std::fs::write(
        &config,
        format!(
            "base-url: {BASE_URL}\nattachment-cache-dir: {}\nattachment-file-size-limit: 1k\n",
            files.display()
        ),
    )
    .unwrap();
    let s = TestServer::launch(Launch {
        args: vec!["--config".into(), config.display().to_string()],
        envs: vec![(
            "HERALD_VISITOR_ATTACHMENT_TOTAL_SIZE_LIMIT".into(),
            "1500".into(),
        )],
        ..Launch::default()
    });
    expect_too_large(&s, "a", vec![1; 1025]).await;
    expect_json(upload(&s, "t", Some("a"), vec![1; 1000]).await, 200).await;
    expect_too_large(&s, "b", vec![1; 1000]).await;
    assert_eq!(files_in(&files).len(), 2);
}

/// Nodes of a test cluster; their Redis keys are deleted when dropped.
struct Nodes {
    nodes: Vec<TestServer>,
    prefix: String,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
        let script =
            "for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do redis.call('DEL', k) end";
        let _ = std::process::Command::new("redis-cli")
            .args(["EVAL", script, "0", &self.prefix])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Two cluster nodes (the machine's Redis, a key prefix of their own) sharing one
/// attachment directory, with `args`.
async fn cluster(test: &str, args: &[&str]) -> (Nodes, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("herald-test:{test}:{}:{nanos}:", std::process::id());
    let mut launch_args: Vec<String> = [
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--redis-key-prefix",
        &prefix,
        "--base-url",
        BASE_URL,
        "--attachment-cache-dir",
        dir.path().to_str().unwrap(),
        "--attachment-cache-dir-shared",
        "true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    launch_args.extend(args.iter().map(|s| s.to_string()));
    let nodes: Vec<TestServer> = (0..2)
        .map(|_| {
            TestServer::launch(Launch {
                args: launch_args.clone(),
                ..Launch::default()
            })
        })
        .collect();
    for node in &nodes {
        eventually(Duration::from_secs(30), "node ready", || async {
            (node.get("/readyz").await.status() == 200).then_some(())
        })
        .await;
    }
    (Nodes { nodes, prefix }, dir)
}

#[tokio::test]
async fn cluster_upload_on_one_node_download_on_the_other() {
    let (nodes, _dir) = cluster(
        "attachments",
        &[
            "--visitor-attachment-total-size-limit",
            "300k",
            "--manager-interval",
            "1s",
        ],
    )
    .await;
    let (a, b) = (&nodes.nodes[0], &nodes.nodes[1]);
    let body = jpeg(200 * 1024);
    let m = expect_json(upload(a, "t", Some("cam.jpg"), body.clone()).await, 200).await;
    let path = file_path(m["attachment"]["url"].as_str().unwrap());
    let got = b.get(&path).await;
    assert_eq!(got.status(), 200);
    assert_eq!(header(&got, "content-type"), "image/jpeg");
    assert_eq!(got.bytes().await.unwrap().as_ref(), body.as_slice());
    // The message, with its attachment, is in the shared history.
    let polled = b.poll("t", "").await;
    assert_eq!(polled[0]["attachment"], m["attachment"]);
    // Node B counts the file uploaded through A against the visitor's total once
    // its sweep has seen it (every manager-interval).
    eventually(Duration::from_secs(10), "B counts A's upload", || async {
        let account = expect_json(b.get("/v1/account").await, 200).await;
        (account["stats"]["attachment_total_size"] == 200 * 1024).then_some(())
    })
    .await;
    expect_too_large(b, "more", vec![1; 200 * 1024]).await;
}

#[tokio::test]
async fn cluster_mode_refuses_a_node_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::fixture::herald_command()
        .args(["serve", "--listen-http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args([
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--attachment-cache-dir",
        ])
        .arg(dir.path().join("files"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("attachment-cache-dir") && stderr.contains("attachment-cache-dir-shared"),
        "{stderr}"
    );
}

// ---- S3-compatible storage ----
//
// Against moto's S3 server (PyPI `moto[server]`, a Python implementation of S3's
// REST protocol: multipart uploads, ranged GETs, ListObjectsV2), installed by
// `.ci/run` (`ensure_moto`) into `.venv-s3`, started by each test on a port of its own.
// It does not check SigV4 signatures; the signing is rusty-s3's (tested there).

/// A moto S3 server on a free loopback port, stopped when dropped.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> PathBuf {
    match std::env::var_os("HERALD_TEST_MOTO_SERVER") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-s3/bin/moto_server"),
    }
}

impl S3Server {
    /// Starts moto and creates `bucket`.
    async fn start(bucket: &str) -> S3Server {
        herald::webhook::client::install_tls_provider();
        let binary = moto_binary();
        assert!(
            binary.exists(),
            "{} missing: run `.ci/run` (ensure_moto) or `python3 -m venv .venv-s3 && .venv-s3/bin/pip install 'moto[server]'`",
            binary.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        eventually(Duration::from_secs(30), "moto S3 server up", || async {
            client
                .put(format!("{}/{bucket}", server.endpoint))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
        server
    }

    /// `attachment-cache-dir` for `bucket/prefix` on this server.
    fn url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://AKIDHERALDTEST:secret%2Fkey@{bucket}/{prefix}?region=us-east-1&endpoint={}",
            self.endpoint
        )
    }

    /// The keys in `bucket` under `prefix`.
    async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!(
                "{}/{bucket}?list-type=2&prefix={prefix}/",
                self.endpoint
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test]
async fn s3_upload_download_limits_and_expiry() {
    let s3 = S3Server::start("herald").await;
    let s = TestServer::start(&[
        "--base-url",
        BASE_URL,
        "--attachment-cache-dir",
        &s3.url("herald", "att"),
        "--attachment-file-size-limit",
        "8M",
        "--attachment-expiry-duration",
        "3s",
        "--manager-interval",
        "1s",
    ]);
    // Larger than one multipart part (5 MiB), sent chunked.
    let body = jpeg(7 * 1024 * 1024);
    let resp = s
        .client
        .put(s.url("/cam"))
        .header("Filename", "big.jpg")
        .body(chunked(body.clone()))
        .send()
        .await
        .unwrap();
    let m = expect_json(resp, 200).await;
    assert_eq!(m["attachment"]["size"], body.len());
    assert_eq!(m["attachment"]["type"], "image/jpeg");
    let path = file_path(m["attachment"]["url"].as_str().unwrap());
    let got = s.get(&path).await;
    assert_eq!(header(&got, "content-length"), body.len().to_string());
    assert_eq!(got.bytes().await.unwrap().as_ref(), body.as_slice());
    let part = s
        .client
        .get(s.url(&path))
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &body[100..200]);
    let mut keys = s3.keys("herald", "att").await;
    keys.sort();
    assert_eq!(keys.len(), 2, "{keys:?}");

    // Over the file limit, chunked: refused while streaming, nothing stays.
    let resp = s
        .client
        .put(s.url("/cam"))
        .header("Filename", "huge.bin")
        .body(chunked(vec![0u8; 9 * 1024 * 1024]))
        .send()
        .await;
    if let Ok(resp) = resp {
        expect_error(resp, 413, 41301).await;
    }
    // An aborted upload (client gone mid-body) leaves nothing either.
    let sock = partial_upload(s.base(), "cam", 6_000_000, 3_000_000);
    std::thread::sleep(Duration::from_millis(300));
    drop(sock);
    // Neither left an object (the first file may have expired meanwhile).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = s3.keys("herald", "att").await;
    assert!(
        after.iter().all(|k| keys.contains(k)),
        "{after:?} vs {keys:?}"
    );

    // Everything expires: the objects go.
    eventually(
        Duration::from_secs(15),
        "expired objects deleted",
        || async {
            let keys = s3.keys("herald", "att").await;
            (keys.is_empty() && s.get(&path).await.status() == 404).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn s3_cluster_upload_on_one_node_download_on_the_other() {
    let s3 = S3Server::start("shared").await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("herald-test:attachments-s3:{}:{nanos}:", std::process::id());
    let dir_url = s3.url("shared", "files");
    let args: Vec<String> = [
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--redis-key-prefix",
        &prefix,
        "--base-url",
        BASE_URL,
        "--attachment-cache-dir",
        &dir_url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let nodes = Nodes {
        nodes: (0..2)
            .map(|_| {
                TestServer::launch(Launch {
                    args: args.clone(),
                    ..Launch::default()
                })
            })
            .collect(),
        prefix,
    };
    let (a, b) = (&nodes.nodes[0], &nodes.nodes[1]);
    for node in [a, b] {
        eventually(Duration::from_secs(30), "node ready", || async {
            (node.get("/readyz").await.status() == 200).then_some(())
        })
        .await;
    }
    let body = jpeg(300_000);
    let m = expect_json(upload(a, "t", Some("x.jpg"), body.clone()).await, 200).await;
    let got = b
        .get(&file_path(m["attachment"]["url"].as_str().unwrap()))
        .await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), body.as_slice());
}
