//! The S3-compatible [`AttachmentStore`] (`attachment-cache-dir: s3://…`, as ntfy
//! v2.20 writes it: `s3://ACCESS_KEY:SECRET_KEY@BUCKET[/PREFIX]?region=…&endpoint=…`).
//!
//! `rusty-s3` builds each request and signs it (AWS SigV4, as a presigned URL: the
//! signature is in the query string, the payload unsigned); herald sends it with
//! reqwest on the rustls/ring stack and compiled-in roots it already has. With an
//! `endpoint` (MinIO, Garage, Ceph, R2, …) requests are path-style; without, AWS's
//! virtual-hosted style at `s3.REGION.amazonaws.com` (path-style for a bucket name
//! with dots). A small client of our own
//! rather than object_store: the latter brought 1.3 MB to the shipped binary
//! (docs/BENCHMARKS.md, "Binary size"), for the seven requests used here.
//!
//! An upload buffers one part ([`PART_SIZE`]); a file that fits in it is sent by one
//! `PUT` when complete. A larger one becomes an S3 multipart upload of the file's
//! key: parts are sent as they fill, one at a time, and the object appears only
//! when the upload completes, so a refused or aborted upload leaves nothing visible
//! (it is aborted; after a crash, S3 keeps the parts of an unfinished multipart
//! upload out of sight until a bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`) removes them). Memory per upload is one part.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::store::{
    AttachmentStore, Download, Listed, META_SUFFIX, StoreFailure, Upload, classify,
};

/// Bytes buffered per upload before a part is sent: S3's minimum part size, so
/// memory per upload is bounded by it.
pub(crate) const PART_SIZE: usize = 5 * 1024 * 1024;

/// A parsed `s3://` location. The secret never appears in `Debug` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Location {
    access_key: String,
    secret_key: String,
    bucket: String,
    prefix: String,
    region: String,
    endpoint: Option<String>,
}

impl std::fmt::Debug for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Location({})", self.describe())
    }
}

impl S3Location {
    /// Parses `s3://ACCESS:SECRET@BUCKET[/PREFIX]?region=…&endpoint=…` (keys
    /// percent-encoded if they hold reserved characters).
    pub fn parse(s: &str) -> Result<S3Location, String> {
        let url = url::Url::parse(s).map_err(|e| format!("not an s3:// URL: {e}"))?;
        let decode = |v: &str| {
            percent_decode(v)
                .ok_or_else(|| "invalid percent-encoding in the credentials".to_string())
        };
        let access_key = decode(url.username())?;
        let secret_key = decode(url.password().unwrap_or(""))?;
        if access_key.is_empty() || secret_key.is_empty() {
            return Err("expected s3://ACCESS_KEY:SECRET_KEY@BUCKET[/PREFIX]?region=...".into());
        }
        let bucket = url.host_str().unwrap_or("").to_string();
        if bucket.is_empty() {
            return Err("missing bucket: s3://ACCESS_KEY:SECRET_KEY@BUCKET".into());
        }
        let prefix = url.path().trim_matches('/').to_string();
        let mut region = None;
        let mut endpoint = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "region" => region = Some(v.into_owned()),
                "endpoint" => endpoint = Some(v.trim_end_matches('/').to_string()),
                other => {
                    return Err(format!(
                        "unknown s3:// parameter `{other}` (expected region, endpoint)"
                    ));
                }
            }
        }
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err("endpoint must be an http:// or https:// URL".into());
        }
        Ok(S3Location {
            access_key,
            secret_key,
            bucket,
            prefix,
            region: region.unwrap_or_else(|| "us-east-1".into()),
            endpoint,
        })
    }

    /// `s3://BUCKET/PREFIX (endpoint)`, without credentials.
    pub fn describe(&self) -> String {
        let mut s = format!("s3://{}/{}", self.bucket, self.prefix);
        if let Some(e) = &self.endpoint {
            s.push_str(&format!(" at {e}"));
        }
        s
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// How long a signed request stays valid: time to send one part, with margin.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// Tries per request when the connection fails or S3 answers 5xx/429 (S3 asks
/// clients to retry those); the waits between them double from [`RETRY_WAIT`].
const TRIES: u32 = 3;
const RETRY_WAIT: Duration = Duration::from_millis(200);
/// How much of an error answer's body is kept for the log line.
const ERROR_BODY_CAP: usize = 512;

/// Attachments in an S3 bucket (under a prefix).
pub(crate) struct S3Store {
    client: Arc<Client>,
    describe: String,
}

/// What every request needs; shared with uploads, whose abort may outlive a call.
struct Client {
    http: reqwest::Client,
    bucket: Bucket,
    credentials: Credentials,
    /// `""` or `a/b/` (segments without empty ones, as keys are joined).
    prefix: String,
}

/// One request to send: method, signed URL, optional range and body. The URL
/// carries a signature valid for [`SIGNED_FOR`]: errors drop it (`without_url`)
/// before they reach a log.
struct Call {
    method: Method,
    url: reqwest::Url,
    range: Option<(u64, u64)>,
    body: Option<Bytes>,
}

impl S3Store {
    pub(crate) fn open(loc: &S3Location) -> Result<S3Store, StoreFailure> {
        let (endpoint, style) = match &loc.endpoint {
            Some(e) => (e.clone(), UrlStyle::Path),
            // A dotted bucket name as a host name would not match AWS's wildcard
            // certificate: such buckets are addressed path-style, as AWS's SDKs do.
            None if loc.bucket.contains('.') => (
                format!("https://s3.{}.amazonaws.com", loc.region),
                UrlStyle::Path,
            ),
            None => (
                format!("https://s3.{}.amazonaws.com", loc.region),
                UrlStyle::VirtualHost,
            ),
        };
        let endpoint = reqwest::Url::parse(&endpoint)
            .map_err(|e| StoreFailure::Io(format!("invalid S3 endpoint {endpoint}: {e}")))?;
        let bucket = Bucket::new(endpoint, style, loc.bucket.clone(), loc.region.clone())
            .map_err(|e| StoreFailure::Io(format!("invalid S3 bucket {}: {e}", loc.bucket)))?;
        let tls = crate::webhook::client::tls_config().map_err(StoreFailure::io)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(5))
            // Per read, not per request: a large download may take long as a whole.
            .read_timeout(Duration::from_secs(30))
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(StoreFailure::io)?;
        let prefix: String = loc
            .prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| format!("{s}/"))
            .collect();
        Ok(S3Store {
            client: Arc::new(Client {
                http,
                bucket,
                credentials: Credentials::new(loc.access_key.clone(), loc.secret_key.clone()),
                prefix,
            }),
            describe: loc.describe(),
        })
    }
}

impl Client {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn creds(&self) -> Option<&Credentials> {
        Some(&self.credentials)
    }

    /// Sends `call`; retries a failed connection or a 5xx/429 answer. Returns the
    /// response whatever its status, or the last error.
    async fn send(&self, what: &str, call: Call) -> Result<reqwest::Response, StoreFailure> {
        let mut wait = RETRY_WAIT;
        let mut attempt = 1;
        loop {
            let mut req = self.http.request(call.method.clone(), call.url.clone());
            if let Some((a, b)) = call.range {
                req = req.header(reqwest::header::RANGE, format!("bytes={a}-{b}"));
            }
            if let Some(body) = &call.body {
                req = req.body(body.clone());
            }
            let retry = match req.send().await {
                Ok(resp)
                    if resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    if attempt >= TRIES {
                        return Ok(resp);
                    }
                    format!("HTTP {}", resp.status())
                }
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    if attempt >= TRIES || !(e.is_connect() || e.is_timeout() || e.is_request()) {
                        let e = http_error(e);
                        return Err(StoreFailure::Io(format!("S3 {what}: {e}")));
                    }
                    http_error(e)
                }
            };
            tracing::debug!(what, attempt, error = %retry, "S3 request failed; retrying");
            tokio::time::sleep(wait).await;
            wait *= 2;
            attempt += 1;
        }
    }

    /// [`Self::send`], then anything but 2xx is a failure.
    async fn send_ok(&self, what: &str, call: Call) -> Result<reqwest::Response, StoreFailure> {
        let resp = self.send(what, call).await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(failure(what, resp).await)
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreFailure> {
        let url = self.bucket.put_object(self.creds(), key).sign(SIGNED_FOR);
        self.send_ok(
            &format!("PUT {key}"),
            Call {
                method: Method::PUT,
                url,
                range: None,
                body: Some(body),
            },
        )
        .await?;
        Ok(())
    }

    /// Deletes `key`; one that does not exist is no error.
    async fn delete(&self, key: &str) -> Result<(), StoreFailure> {
        let what = format!("DELETE {key}");
        let url = self
            .bucket
            .delete_object(self.creds(), key)
            .sign(SIGNED_FOR);
        self.send_delete(&what, url).await
    }

    /// `GET key` (a range of it); `None` if there is no such object.
    async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<reqwest::Response>, StoreFailure> {
        let what = format!("GET {key}");
        let url = self.bucket.get_object(self.creds(), key).sign(SIGNED_FOR);
        let mut call = Call::new(Method::GET, url);
        call.range = range;
        let resp = self.send(&what, call).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::PARTIAL_CONTENT if range.is_some() => Ok(Some(resp)),
            StatusCode::OK if range.is_none() => Ok(Some(resp)),
            // A server that ignored the range would hand out the wrong bytes.
            StatusCode::OK => Err(StoreFailure::Io(format!(
                "S3 {what}: the range request was answered with the whole object"
            ))),
            _ => Err(failure(&what, resp).await),
        }
    }

    /// Starts a multipart upload of `key`; its upload ID.
    async fn create_multipart(&self, key: &str) -> Result<String, StoreFailure> {
        let what = format!("create multipart upload {key}");
        let url = self
            .bucket
            .create_multipart_upload(self.creds(), key)
            .sign(SIGNED_FOR);
        let resp = self.send_ok(&what, Call::new(Method::POST, url)).await?;
        let text = text(&what, resp).await?;
        let parsed = CreateMultipartUpload::parse_response(&text)
            .map_err(|e| StoreFailure::Io(format!("S3 {what}: unexpected answer: {e}")))?;
        Ok(parsed.upload_id().to_string())
    }

    /// Sends part `number` (from 1); its ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: Bytes,
    ) -> Result<String, StoreFailure> {
        let what = format!("upload part {number} of {key}");
        let url = self
            .bucket
            .upload_part(self.creds(), key, number, upload_id)
            .sign(SIGNED_FOR);
        let mut call = Call::new(Method::PUT, url);
        call.body = Some(body);
        let resp = self.send_ok(&what, call).await?;
        resp.headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| StoreFailure::Io(format!("S3 {what}: no ETag in the answer")))
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<(), StoreFailure> {
        let what = format!("complete multipart upload {key}");
        let action = self.bucket.complete_multipart_upload(
            self.creds(),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let mut call = Call::new(Method::POST, url);
        call.body = Some(Bytes::from(action.body()));
        let resp = self.send_ok(&what, call).await?;
        // S3 may answer 200 and still fail: the error is then in the body.
        let text = text(&what, resp).await?;
        if text.contains("<Error>") {
            return Err(StoreFailure::Io(format!(
                "S3 {what}: {}",
                truncate(&text, ERROR_BODY_CAP)
            )));
        }
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreFailure> {
        let what = format!("abort multipart upload {key}");
        let url = self
            .bucket
            .abort_multipart_upload(self.creds(), key, upload_id)
            .sign(SIGNED_FOR);
        self.send_delete(&what, url).await
    }

    /// Sends a signed `DELETE`; what it deletes being gone already is no error.
    async fn send_delete(&self, what: &str, url: url::Url) -> Result<(), StoreFailure> {
        let resp = self.send(what, Call::new(Method::DELETE, url)).await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(failure(what, resp).await)
        }
    }
}

impl Call {
    fn new(method: Method, url: reqwest::Url) -> Call {
        Call {
            method,
            url,
            range: None,
            body: None,
        }
    }
}

/// A non-2xx answer as a failure, with the start of its body (S3's XML error).
async fn failure(what: &str, resp: reqwest::Response) -> StoreFailure {
    let status = resp.status();
    let body = text(what, resp).await.unwrap_or_default();
    StoreFailure::Io(format!(
        "S3 {what}: HTTP {status}: {}",
        truncate(body.trim(), ERROR_BODY_CAP)
    ))
}

async fn text(what: &str, resp: reqwest::Response) -> Result<String, StoreFailure> {
    resp.text().await.map_err(|e| {
        let e = http_error(e);
        StoreFailure::Io(format!("S3 {what}: reading the answer: {e}"))
    })
}

/// A reqwest error with its causes (reqwest's own text names only the kind), without
/// the request's URL and the signature in it.
fn http_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// S3's `LastModified` (`2026-12-04T13:00:00.000Z`). One that cannot be read counts
/// as now: the orphan sweep then leaves the object alone rather than deleting a
/// file it cannot date.
fn modified(last_modified: Option<&str>) -> SystemTime {
    last_modified
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap_or_else(SystemTime::now)
}

#[async_trait]
impl AttachmentStore for S3Store {
    async fn create(&self, id: &str) -> Result<Box<dyn Upload>, StoreFailure> {
        Ok(Box::new(S3Upload {
            client: self.client.clone(),
            key: self.client.key(id),
            buf: BytesMut::new(),
            multipart: None,
            finished: false,
        }))
    }

    async fn put_meta(&self, id: &str, meta: Bytes) -> Result<(), StoreFailure> {
        self.client
            .put(&self.client.key(&format!("{id}{META_SUFFIX}")), meta)
            .await
    }

    async fn get_meta(&self, id: &str) -> Result<Option<Bytes>, StoreFailure> {
        let key = self.client.key(&format!("{id}{META_SUFFIX}"));
        match self.client.get(&key, None).await? {
            Some(resp) => Ok(Some(resp.bytes().await.map_err(|e| {
                StoreFailure::Io(format!(
                    "S3 GET {key}: reading the answer: {}",
                    http_error(e)
                ))
            })?)),
            None => Ok(None),
        }
    }

    async fn open(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<Download>, StoreFailure> {
        let Some(resp) = self.client.get(&self.client.key(id), range).await? else {
            return Ok(None);
        };
        // reqwest without its `stream` feature: read the body chunk by chunk.
        let body = futures_util::stream::unfold(Some(resp), |resp| async move {
            let mut resp = resp?;
            match resp.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(resp))),
                Ok(None) => None,
                Err(e) => {
                    let e = StoreFailure::Io(format!("S3 GET: {}", http_error(e)));
                    Some((Err(e), None))
                }
            }
        });
        Ok(Some(Download { body: body.boxed() }))
    }

    async fn remove(&self, id: &str) -> Result<(), StoreFailure> {
        for name in [format!("{id}{META_SUFFIX}"), id.to_string()] {
            self.client.delete(&self.client.key(&name)).await?;
        }
        Ok(())
    }

    async fn remove_temp(&self, name: &str) -> Result<(), StoreFailure> {
        self.client.delete(&self.client.key(name)).await
    }

    async fn list(&self) -> Result<Vec<Listed>, StoreFailure> {
        let c = &self.client;
        let what = format!("list {}", c.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = c.bucket.list_objects_v2(c.creds());
            // Only objects directly under the prefix.
            action.with_delimiter("/");
            if !c.prefix.is_empty() {
                action.with_prefix(c.prefix.as_str());
            }
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGNED_FOR);
            let resp = c.send_ok(&what, Call::new(Method::GET, url)).await?;
            let page = ListObjectsV2::parse_response(&text(&what, resp).await?)
                .map_err(|e| StoreFailure::Io(format!("S3 {what}: unexpected answer: {e}")))?;
            for object in &page.contents {
                let Some(name) = object.key.strip_prefix(c.prefix.as_str()) else {
                    continue;
                };
                if let Some(entry) = classify(name, object.size.unwrap_or(0)) {
                    out.push(Listed {
                        entry,
                        modified: modified(object.last_modified.as_deref()),
                    });
                }
            }
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// An upload: one part buffered; a multipart upload once more than a part came.
struct S3Upload {
    client: Arc<Client>,
    key: String,
    buf: BytesMut,
    multipart: Option<Multipart>,
    finished: bool,
}

struct Multipart {
    upload_id: String,
    etags: Vec<String>,
}

impl S3Upload {
    /// Sends the buffer as the next part (starting the multipart upload first).
    async fn send_part(&mut self) -> Result<(), StoreFailure> {
        let body = self.buf.split().freeze();
        if self.multipart.is_none() {
            let upload_id = self.client.create_multipart(&self.key).await?;
            self.multipart = Some(Multipart {
                upload_id,
                etags: Vec::new(),
            });
        }
        let Some(mp) = self.multipart.as_mut() else {
            return Err(StoreFailure::Io("multipart upload not started".into()));
        };
        let number = u16::try_from(mp.etags.len() + 1)
            .ok()
            .filter(|n| *n <= 10_000)
            .ok_or_else(|| StoreFailure::Io("S3 allows at most 10,000 parts".into()))?;
        let etag = self
            .client
            .upload_part(&self.key, &mp.upload_id, number, body)
            .await?;
        mp.etags.push(etag);
        Ok(())
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreFailure> {
        if self.finished {
            return Err(StoreFailure::Io("upload already finished".into()));
        }
        self.buf.extend_from_slice(&chunk);
        if self.buf.len() >= PART_SIZE {
            self.send_part().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StoreFailure> {
        if self.finished {
            return Err(StoreFailure::Io("upload already finished".into()));
        }
        if self.multipart.is_none() {
            // It fits in one part: one PUT, visible only once it is all there.
            let body = self.buf.split().freeze();
            self.client.put(&self.key, body).await?;
        } else {
            if !self.buf.is_empty() {
                self.send_part().await?;
            }
            if let Some(mp) = &self.multipart {
                self.client
                    .complete_multipart(&self.key, &mp.upload_id, &mp.etags)
                    .await?;
            }
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(mp) = self.multipart.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // Refused or aborted: the parts sent so far are discarded.
            let client = self.client.clone();
            let key = std::mem::take(&mut self.key);
            rt.spawn(async move {
                if let Err(e) = client.abort_multipart(&key, &mp.upload_id).await {
                    tracing::debug!(error = %e, "aborting an S3 multipart upload");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntfy_s3_urls() {
        let l = S3Location::parse(
            "s3://AKID:se%2Fcret@my-bucket/attachments/herald?region=eu-west-1&endpoint=http://127.0.0.1:9000/",
        )
        .unwrap();
        assert_eq!(l.access_key, "AKID");
        assert_eq!(l.secret_key, "se/cret");
        assert_eq!(l.bucket, "my-bucket");
        assert_eq!(l.prefix, "attachments/herald");
        assert_eq!(l.region, "eu-west-1");
        assert_eq!(l.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(!format!("{l:?}").contains("se/cret"));
        let l = S3Location::parse("s3://a:b@bucket").unwrap();
        assert_eq!((l.prefix.as_str(), l.region.as_str()), ("", "us-east-1"));
        assert!(S3Location::parse("s3://bucket").is_err());
        assert!(S3Location::parse("s3://a:b@bucket?colour=red").is_err());
        assert!(S3Location::parse("s3://a:b@bucket?endpoint=ftp://x").is_err());
    }

    /// A moto S3 server (PyPI `moto[server]`, installed into `.venv-s3` by
    /// scripts/test-deps.sh) on a free loopback port, killed when dropped.
    struct Moto(std::process::Child, String);

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn moto(bucket: &str) -> Moto {
        crate::webhook::client::install_tls_provider();
        let binary = std::env::var_os("HERALD_TEST_MOTO_SERVER")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../.venv-s3/bin/moto_server")
            });
        assert!(
            binary.exists(),
            "{} missing: run scripts/test-deps.sh's ensure_moto",
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
        let server = Moto(child, format!("http://127.0.0.1:{port}"));
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        for _ in 0..300 {
            let created = client
                .put(format!("{}/{bucket}", server.1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if created {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto did not start at {}", server.1);
    }

    async fn read_all(d: Download) -> Vec<u8> {
        let chunks: Vec<Bytes> = d.body.map(|c| c.unwrap()).collect().await;
        chunks.concat()
    }

    fn files(listed: &[Listed]) -> Vec<String> {
        let mut names: Vec<String> = listed
            .iter()
            .map(|l| match &l.entry {
                super::super::store::Entry::File { id, size } => format!("{id}:{size}"),
                super::super::store::Entry::Meta { id } => format!("{id}.json"),
                super::super::store::Entry::Temp { name } => name.clone(),
            })
            .collect();
        names.sort();
        names
    }

    /// The store's requests against moto's S3: one-PUT and multipart uploads, meta,
    /// ranged reads, listing (with its dates), deletes, aborts. moto does
    /// not check signatures: rusty-s3's signing is tested upstream.
    #[tokio::test]
    async fn store_against_moto() {
        let m = moto("bkt").await;
        let url = format!(
            "s3://AK:se%2Fcret@bkt/pre/fix?region=eu-west-1&endpoint={}",
            m.1
        );
        let store = S3Store::open(&S3Location::parse(&url).unwrap()).unwrap();
        let other = S3Store::open(
            &S3Location::parse(&format!("s3://AK:S@bkt/pre?endpoint={}", m.1)).unwrap(),
        )
        .unwrap();
        assert!(store.list().await.unwrap().is_empty());
        assert!(store.get_meta("aaaaaaaaaaaa").await.unwrap().is_none());
        assert!(store.open("aaaaaaaaaaaa", None).await.unwrap().is_none());

        // Small: one PUT at finish, nothing visible before.
        let mut up = store.create("aaaaaaaaaaaa").await.unwrap();
        up.write(Bytes::from_static(b"hello ")).await.unwrap();
        up.write(Bytes::from_static(b"world")).await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
        up.finish().await.unwrap();
        store
            .put_meta("aaaaaaaaaaaa", Bytes::from_static(b"{}"))
            .await
            .unwrap();

        // Larger than a part: multipart, parts sent while writing.
        let big: Vec<u8> = (0..PART_SIZE * 2 + 1000).map(|i| (i % 251) as u8).collect();
        let mut up = store.create("bbbbbbbbbbbb").await.unwrap();
        for c in big.chunks(64 * 1024) {
            up.write(Bytes::copy_from_slice(c)).await.unwrap();
        }
        assert!(store.open("bbbbbbbbbbbb", None).await.unwrap().is_none());
        up.finish().await.unwrap();

        // Dropped after a part was sent: aborted, nothing appears.
        let mut up = store.create("cccccccccccc").await.unwrap();
        up.write(Bytes::from(vec![7u8; PART_SIZE + 1]))
            .await
            .unwrap();
        drop(up);
        tokio::time::sleep(Duration::from_millis(500)).await;

        let listed = store.list().await.unwrap();
        assert_eq!(
            files(&listed),
            [
                "aaaaaaaaaaaa.json".to_string(),
                "aaaaaaaaaaaa:11".into(),
                format!("bbbbbbbbbbbb:{}", big.len()),
            ]
        );
        for l in &listed {
            let age = SystemTime::now()
                .duration_since(l.modified)
                .unwrap_or_default();
            assert!(age < Duration::from_secs(120), "{l:?}");
        }
        // Only objects directly under the prefix: `pre/` sees none of `pre/fix/…`.
        assert!(other.list().await.unwrap().is_empty());

        assert_eq!(
            store
                .get_meta("aaaaaaaaaaaa")
                .await
                .unwrap()
                .unwrap()
                .as_ref(),
            b"{}"
        );
        let whole = store.open("bbbbbbbbbbbb", None).await.unwrap().unwrap();
        assert!(read_all(whole).await == big);
        let part = store
            .open(
                "bbbbbbbbbbbb",
                Some((PART_SIZE as u64 - 3, PART_SIZE as u64 + 3)),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read_all(part).await, &big[PART_SIZE - 3..PART_SIZE + 4]);

        store.remove("aaaaaaaaaaaa").await.unwrap();
        store.remove("aaaaaaaaaaaa").await.unwrap();
        store.remove_temp("tmp-none").await.unwrap();
        assert_eq!(
            files(&store.list().await.unwrap()),
            [format!("bbbbbbbbbbbb:{}", big.len())]
        );
    }

    #[test]
    fn request_urls() {
        let base = |url: &str| {
            let store = S3Store::open(&S3Location::parse(url).unwrap()).unwrap();
            store.client.bucket.base_url().to_string()
        };
        assert_eq!(
            base("s3://a:b@my-bucket/p?region=eu-west-1"),
            "https://my-bucket.s3.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            base("s3://a:b@my.bucket"),
            "https://s3.us-east-1.amazonaws.com/my.bucket/"
        );
        assert_eq!(
            base("s3://a:b@bkt/p?endpoint=https://minio.example:9000"),
            "https://minio.example:9000/bkt/"
        );
    }

    /// A failed request's error names it and its cause, never the presigned URL.
    #[tokio::test]
    async fn errors_hold_no_signed_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("s3://AK:SECRET@bkt/p?endpoint=http://127.0.0.1:{port}");
        let store = S3Store::open(&S3Location::parse(&url).unwrap()).unwrap();
        let e = store.list().await.unwrap_err().to_string();
        assert!(e.contains("S3 list p/") && e.contains("onnect"), "{e}");
        assert!(!e.contains("X-Amz") && !e.contains("SECRET"), "{e}");
    }

    #[test]
    fn last_modified() {
        assert_eq!(
            modified(Some("2026-12-04T13:00:00.250Z")),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_389_200_250)
        );
        // Unreadable: now, so the sweep leaves the object alone.
        let t = modified(Some("yesterday"));
        assert!(SystemTime::now().duration_since(t).unwrap_or_default() < Duration::from_secs(5));
        assert!(modified(None) > SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    }
}
