//! The S3-compatible [`AttachmentStore`] (`attachment-cache-dir: s3://…`, as ntfy
//! v2.20 writes it: `s3://ACCESS_KEY:SECRET_KEY@BUCKET[/PREFIX]?region=…&endpoint=…`).
//!
//! Requests are signed (AWS SigV4) and sent by `object_store`'s S3 client, on the
//! reqwest and rustls/ring stack herald already has. With an `endpoint` (MinIO,
//! Garage, Ceph, R2, …) requests are path-style; without, AWS's virtual-hosted
//! style.
//!
//! An upload is an S3 multipart upload of the file's key: parts of
//! [`PART_SIZE`] are sent as they fill, and the object appears only when the upload
//! completes, so a refused or aborted upload leaves nothing visible (it is aborted;
//! after a crash, S3 keeps the parts of an unfinished multipart upload out of sight
//! until a bucket lifecycle rule (`AbortIncompleteMultipartUpload`) removes them).
//! Memory per upload is one part.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

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

/// Attachments in an S3 bucket (under a prefix).
pub(crate) struct S3Store {
    s3: Arc<AmazonS3>,
    prefix: Path,
    describe: String,
}

impl S3Store {
    pub(crate) fn open(loc: &S3Location) -> Result<S3Store, StoreFailure> {
        let mut builder = AmazonS3Builder::new()
            .with_access_key_id(&loc.access_key)
            .with_secret_access_key(&loc.secret_key)
            .with_bucket_name(&loc.bucket)
            .with_region(&loc.region);
        if let Some(endpoint) = &loc.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let s3 = builder.build().map_err(StoreFailure::io)?;
        Ok(S3Store {
            s3: Arc::new(s3),
            prefix: Path::from(loc.prefix.as_str()),
            describe: loc.describe(),
        })
    }

    fn key(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[async_trait]
impl AttachmentStore for S3Store {
    async fn create(&self, id: &str) -> Result<Box<dyn Upload>, StoreFailure> {
        let upload = self
            .s3
            .put_multipart(&self.key(id))
            .await
            .map_err(StoreFailure::io)?;
        Ok(Box::new(S3Upload {
            writer: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
        }))
    }

    async fn put_meta(&self, id: &str, meta: Bytes) -> Result<(), StoreFailure> {
        self.s3
            .put(
                &self.key(&format!("{id}{META_SUFFIX}")),
                PutPayload::from(meta),
            )
            .await
            .map_err(StoreFailure::io)?;
        Ok(())
    }

    async fn get_meta(&self, id: &str) -> Result<Option<Bytes>, StoreFailure> {
        match self.s3.get(&self.key(&format!("{id}{META_SUFFIX}"))).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(StoreFailure::io)?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(StoreFailure::io(e)),
        }
    }

    async fn open(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<Download>, StoreFailure> {
        let options = GetOptions {
            range: range.map(|(a, b)| GetRange::Bounded(a..b + 1)),
            ..GetOptions::default()
        };
        match self.s3.get_opts(&self.key(id), options).await {
            Ok(r) => Ok(Some(Download {
                body: r.into_stream().map_err(StoreFailure::io).boxed(),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(StoreFailure::io(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), StoreFailure> {
        for name in [format!("{id}{META_SUFFIX}"), id.to_string()] {
            match self.s3.delete(&self.key(&name)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(StoreFailure::io(e)),
            }
        }
        Ok(())
    }

    async fn remove_temp(&self, name: &str) -> Result<(), StoreFailure> {
        match self.s3.delete(&self.key(name)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(StoreFailure::io(e)),
        }
    }

    async fn list(&self) -> Result<Vec<Listed>, StoreFailure> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut stream = self.s3.list(prefix);
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(StoreFailure::io)?;
            // Only objects directly under the prefix.
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if meta.location != self.key(name) {
                continue;
            }
            if let Some(entry) = classify(name, meta.size) {
                let modified = std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(
                        meta.last_modified.timestamp_millis().max(0) as u64,
                    );
                out.push(Listed { entry, modified });
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

struct S3Upload {
    writer: Option<WriteMultipart>,
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreFailure> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(StoreFailure::Io("upload already finished".into()));
        };
        // At most two parts in flight: memory per upload stays about two parts.
        writer
            .wait_for_capacity(1)
            .await
            .map_err(StoreFailure::io)?;
        writer.put(chunk);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StoreFailure> {
        let Some(writer) = self.writer.take() else {
            return Err(StoreFailure::Io("upload already finished".into()));
        };
        writer.finish().await.map_err(StoreFailure::io)?;
        Ok(())
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // Refused or aborted: the parts sent so far are discarded.
            rt.spawn(async move {
                if let Err(e) = writer.abort().await {
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
}
