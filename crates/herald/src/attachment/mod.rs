//! File attachments as ntfy has them (https://docs.ntfy.sh/publish/#attachments):
//! a publish whose body is a file stores it here and the message carries
//! `attachment: {name, type, size, expires, url}`; `GET|HEAD /file/<id>` serves it.
//!
//! This module owns the rules; transports only decide "this body is an attachment"
//! and hand over its bytes ([`Attachments::upload`]):
//! - **Limits** while streaming: `attachment-file-size-limit`, the visitor's and the
//!   server's stored totals and the visitor's daily bandwidth (accounted in
//!   [`crate::limits::attachments`]); the upload stops reading one byte past the
//!   first limit it reaches and answers `413 41301`.
//! - **Atomicity**: bytes go to a temporary object, which becomes the file only
//!   when complete; the file's metadata is written next, and only a file with
//!   metadata is served. A refused or aborted publish deletes what it wrote
//!   ([`Pending`] does it on drop); a crash leaves temporary objects or files
//!   without metadata, which the orphan sweep ([`lifecycle`]) deletes.
//! - **Lifecycle**: an attachment expires after `attachment-expiry-duration` or
//!   with its message, whichever is first; the sweep runs every `manager-interval`.
//! - **Storage** behind [`store::AttachmentStore`]: a local directory
//!   ([`local`]) or S3-compatible object storage ([`s3`], `s3://…` as ntfy v2.20
//!   writes it).
//!
//! Files are named by an attachment ID of their own (12 random letters and digits),
//! not by the message ID as in ntfy: in cluster mode the message ID is only known
//! once Redis has committed the message, and the file must be stored before that.
//! Clients use `attachment.url`, which is all the wire shows.

pub(crate) mod lifecycle;
pub(crate) mod local;
#[cfg(feature = "s3")]
pub(crate) mod s3;
pub(crate) mod sniff;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::limits::attachments::{AttachmentLimits, AttachmentUsage, Exceeded};
use crate::model::Attachment;
use store::{AttachmentStore, Download, StoreFailure};

/// The attachment options (`attachment-*`, `visitor-attachment-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentConfig {
    /// `attachment-cache-dir`: where files go; `None`: uploads are refused (`40014`).
    pub location: Option<Location>,
    /// `attachment-cache-dir-shared`: the directory is shared by every node of a
    /// cluster (a network file system); required for a directory in cluster mode.
    pub shared_dir: bool,
    pub total_size_limit: u64,
    pub file_size_limit: u64,
    pub expiry: Duration,
    pub visitor_total_size_limit: u64,
    pub visitor_daily_bandwidth_limit: u64,
}

impl Default for AttachmentConfig {
    fn default() -> Self {
        AttachmentConfig {
            location: None,
            shared_dir: false,
            total_size_limit: 5 << 30,
            file_size_limit: 15 << 20,
            expiry: Duration::from_secs(3 * 3600),
            visitor_total_size_limit: 100 << 20,
            visitor_daily_bandwidth_limit: 500 << 20,
        }
    }
}

/// Where attachments are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    #[cfg(feature = "s3")]
    S3(s3::S3Location),
}

/// Parses `attachment-cache-dir`: empty (off), `s3://...` or a directory.
pub fn parse_location(s: &str) -> Result<Option<Location>, String> {
    if s.is_empty() {
        Ok(None)
    } else if s.starts_with("s3://") {
        #[cfg(feature = "s3")]
        return s3::S3Location::parse(s).map(|l| Some(Location::S3(l)));
        #[cfg(not(feature = "s3"))]
        return Err("this herald binary was built without S3 support (cargo feature `s3`): rebuild it with default features, or use a directory".into());
    } else {
        Ok(Some(Location::Dir(PathBuf::from(s))))
    }
}

/// Why an attachment operation failed; `crate::error` maps each to ntfy's answer.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// No `attachment-cache-dir` or no `base-url` (`400 40014`).
    #[error("attachments not allowed")]
    NotAllowed,
    /// A scheduled message would be delivered after its attachment expired (`40015`).
    #[error("attachment expires before the delayed delivery")]
    ExpiresBeforeDelivery,
    /// A size or bandwidth limit (`413 41301`).
    #[error("attachment too large: {0}")]
    TooLarge(&'static str),
    /// The uploader's daily bandwidth is used up: download refused (`429 42905`).
    #[error("attachment bandwidth limit reached")]
    Bandwidth,
    /// No such file, or expired (`404`).
    #[error("attachment not found")]
    NotFound,
    /// The requested range is outside the file (`416`).
    #[error("range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    /// The request body failed (client gone, `body-read-timeout`).
    #[error("reading the upload: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

/// What the store keeps next to each file (`<id>.json`): enough to serve it, expire
/// it and account for it without the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub name: String,
    #[serde(rename = "type")]
    pub mime: String,
    pub size: u64,
    pub expires: i64,
    /// Who uploaded it (`ip:…`/`user:…`): charged for its storage and downloads.
    pub visitor: String,
}

/// A file this node knows about (uploaded here, found at start or by a sweep).
#[derive(Debug, Clone)]
struct Known {
    visitor: String,
    size: u64,
    expires: i64,
    since: Instant,
}

/// When `draft` is delivered (unix seconds) and when it expires if it is stored
/// (`core::publish`'s rule, which caps its file's expiry): an upload's timing.
pub(crate) fn delivery_and_expiry(
    draft: &crate::core::publish::MessageDraft,
    cache_duration: std::time::Duration,
    now: i64,
) -> (i64, Option<i64>) {
    let delivery = draft.due.unwrap_or(now);
    let cache_secs = cache_duration.as_secs() as i64;
    let expires = (draft.cache && (draft.due.is_some() || cache_secs > 0))
        .then(|| delivery.saturating_add(cache_secs));
    (delivery, expires)
}

/// A publish's attachment upload as the transport describes it.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    /// The visitor charged (`limits::shared::visitor_name`).
    pub visitor: String,
    /// `Filename`/`X-Filename`, if given.
    pub name: Option<String>,
    /// The request's `Content-Length`, if any: checked before reading, as ntfy does.
    pub content_length: Option<u64>,
    /// When the message is delivered (unix seconds; later than now if scheduled).
    pub delivery: i64,
    /// When the message expires, if it is stored.
    pub message_expires: Option<i64>,
}

/// Attachments: the store, the accounting and the rules.
pub struct Attachments {
    config: AttachmentConfig,
    base_url: String,
    store: Arc<dyn AttachmentStore>,
    usage: AttachmentUsage,
    known: Mutex<HashMap<String, Known>>,
    /// Start of this process: temporary objects and files without metadata older
    /// than this are a previous run's leftovers (single-node local store).
    started: SystemTime,
}

impl std::fmt::Debug for Attachments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachments")
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

/// `[A-Za-z0-9]{12}`: the shape of every attachment ID herald generates.
pub(crate) fn is_valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

const ID_LEN: usize = 12;

/// A new attachment ID from the OS's randomness: the URL is the only capability
/// needed to download a file, as in ntfy.
fn new_id() -> Result<String, StoreFailure> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = [0u8; ID_LEN];
    getrandom::fill(&mut raw).map_err(StoreFailure::io)?;
    // 62 does not divide 256: the bias (a few percent on some letters) costs well
    // under a bit of the ID's ~71.
    Ok(raw
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect())
}

/// Bytes sniffed for the MIME type (Go's `http.DetectContentType` reads 512).
const SNIFF_LEN: usize = 512;

impl Attachments {
    /// Opens the configured store; `None` when `attachment-cache-dir` is not set.
    pub async fn open(
        config: &AttachmentConfig,
        base_url: &str,
    ) -> Result<Option<Arc<Attachments>>, anyhow::Error> {
        let store: Arc<dyn AttachmentStore> = match &config.location {
            None => return Ok(None),
            Some(Location::Dir(dir)) => Arc::new(local::LocalStore::open(dir).map_err(|e| {
                anyhow::anyhow!("cannot open attachment-cache-dir {}: {e}", dir.display())
            })?),
            #[cfg(feature = "s3")]
            Some(Location::S3(loc)) => Arc::new(s3::S3Store::open(loc).map_err(|e| {
                anyhow::anyhow!("cannot open attachment-cache-dir {}: {e}", loc.describe())
            })?),
        };
        Ok(Some(Arc::new(Attachments::with_store(
            config.clone(),
            base_url,
            store,
        ))))
    }

    pub(crate) fn with_store(
        config: AttachmentConfig,
        base_url: &str,
        store: Arc<dyn AttachmentStore>,
    ) -> Attachments {
        let usage = AttachmentUsage::new(AttachmentLimits {
            total: config.total_size_limit,
            visitor_total: config.visitor_total_size_limit,
            visitor_daily_bandwidth: config.visitor_daily_bandwidth_limit,
        });
        Attachments {
            config,
            base_url: base_url.to_string(),
            store,
            usage,
            known: Mutex::new(HashMap::new()),
            started: SystemTime::now(),
        }
    }

    pub fn config(&self) -> &AttachmentConfig {
        &self.config
    }

    /// Where the files are, for the start-up log.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes `visitor` has stored, and how many more it may store (`/v1/account`).
    pub fn visitor_usage(&self, visitor: &str) -> (u64, u64) {
        let stored = self.usage.visitor_stored(visitor);
        (
            stored,
            self.config.visitor_total_size_limit.saturating_sub(stored),
        )
    }

    /// Bytes stored on the server (`/v1/stats`, metrics).
    pub fn total_size(&self) -> u64 {
        self.usage.total()
    }

    /// Stores the body of a publish (`head`, the bytes already read, then `rest`)
    /// as an attachment, under ntfy's rules and limits. A refusal stops reading
    /// `rest` (the caller decides what to do with what is left). The file is servable when
    /// this returns; the caller publishes the message and then calls
    /// [`Pending::keep`], or drops the [`Pending`] to delete the file.
    pub async fn upload<S, E>(
        self: &Arc<Self>,
        req: UploadRequest,
        head: Bytes,
        rest: Option<&mut S>,
    ) -> Result<Pending, AttachmentError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let now = crate::model::now_unix();
        if self.base_url.is_empty() {
            return Err(AttachmentError::NotAllowed);
        }
        let mut expires = now.saturating_add(self.config.expiry.as_secs() as i64);
        if req.delivery > expires {
            return Err(AttachmentError::ExpiresBeforeDelivery);
        }
        if let Some(message_expires) = req.message_expires {
            expires = expires.min(message_expires);
        }
        let room = self.usage.upload_room(&req.visitor, now);
        // ntfy's early "do-not-trust" check; the hard limit is enforced while reading.
        if let Some(length) = req.content_length
            && (length > self.config.file_size_limit || length > room)
        {
            return Err(AttachmentError::TooLarge("Content-Length over the limit"));
        }

        let id = new_id()?;
        let mut pending = Pending {
            attachments: self.clone(),
            id: id.clone(),
            visitor: req.visitor.clone(),
            charged: 0,
            stored: false,
            kept: false,
            attachment: Attachment::default(),
        };
        let mut upload = self.store.create(&id).await?;
        let mut sniffed = BytesMut::new();
        let mut size: u64 = 0;
        let mut chunks = futures_util::stream::iter([Ok::<Bytes, E>(head)])
            .chain(futures_util::stream::iter(rest).flatten());
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| AttachmentError::Body(e.into()))?;
            if chunk.is_empty() {
                continue;
            }
            let n = chunk.len() as u64;
            if size.saturating_add(n) > self.config.file_size_limit {
                return Err(AttachmentError::TooLarge("attachment-file-size-limit"));
            }
            self.usage
                .charge_upload(&req.visitor, n, now)
                .map_err(|e| AttachmentError::TooLarge(exceeded_name(e)))?;
            pending.charged += n;
            size += n;
            if sniffed.len() < SNIFF_LEN {
                let take = (SNIFF_LEN - sniffed.len()).min(chunk.len());
                sniffed.extend_from_slice(&chunk[..take]);
            }
            upload.write(chunk).await?;
        }
        upload.finish().await?;
        pending.stored = true;

        let (mime, ext) = sniff::detect(&sniffed, req.name.as_deref().unwrap_or(""));
        let name = match req.name {
            Some(name) if !name.is_empty() => name,
            _ => format!("attachment{ext}"),
        };
        let meta = Meta {
            name: name.clone(),
            mime: mime.to_string(),
            size,
            expires,
            visitor: req.visitor.clone(),
        };
        let json = serde_json::to_vec(&meta).map_err(StoreFailure::io)?;
        self.store.put_meta(&id, Bytes::from(json)).await?;
        self.known().insert(
            id.clone(),
            Known {
                visitor: req.visitor,
                size,
                expires,
                since: Instant::now(),
            },
        );
        pending.attachment = Attachment {
            name,
            mime_type: mime.to_string(),
            size: size as i64,
            expires,
            url: format!("{}/file/{id}{ext}", self.base_url),
        };
        Ok(pending)
    }

    /// Opens file `id` for `GET` (`head: false`, charging the uploader's bandwidth
    /// for the bytes sent) or `HEAD`. `range` is the `Range` header, if any.
    pub async fn download(
        &self,
        id: &str,
        range: Option<&str>,
        head: bool,
    ) -> Result<FileAnswer, AttachmentError> {
        let now = crate::model::now_unix();
        if !is_valid_id(id) {
            return Err(AttachmentError::NotFound);
        }
        let meta = self.meta(id).await?.ok_or(AttachmentError::NotFound)?;
        if meta.expires <= now {
            return Err(AttachmentError::NotFound);
        }
        let range = match range {
            Some(r) => parse_range(r, meta.size)?,
            None => None,
        };
        if head {
            return Ok(FileAnswer {
                meta,
                range,
                body: None,
            });
        }
        let sent = range.map_or(meta.size, |(a, b)| b + 1 - a);
        self.usage
            .charge_download(&meta.visitor, sent, now)
            .map_err(|_| AttachmentError::Bandwidth)?;
        let body = self
            .store
            .open(id, range)
            .await?
            .ok_or(AttachmentError::NotFound)?;
        Ok(FileAnswer {
            meta,
            range,
            body: Some(body),
        })
    }

    async fn meta(&self, id: &str) -> Result<Option<Meta>, StoreFailure> {
        let Some(bytes) = self.store.get_meta(id).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) => {
                tracing::warn!(id, error = %e, "unreadable attachment metadata");
                Ok(None)
            }
        }
    }

    /// Deletes file `id` and gives its bytes back to its uploader's total.
    async fn delete(&self, id: &str) {
        match self.store.remove(id).await {
            Ok(()) => {
                if let Some(known) = self.known().remove(id) {
                    self.usage.release(&known.visitor, known.size);
                }
            }
            Err(e) => tracing::warn!(id, error = %e, "cannot delete attachment"),
        }
    }
}

fn exceeded_name(e: Exceeded) -> &'static str {
    match e {
        Exceeded::Total => "attachment-total-size-limit",
        Exceeded::VisitorTotal => "visitor-attachment-total-size-limit",
        Exceeded::Bandwidth => "visitor-attachment-daily-bandwidth-limit",
    }
}

/// A single `bytes=` range (RFC 9110 §14.1.2) as (first, last) byte positions;
/// `None` (send everything) for what this server does not serve as a range
/// (several ranges, other units, garbage).
fn parse_range(header: &str, size: u64) -> Result<Option<(u64, u64)>, AttachmentError> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let Ok(suffix) = b.parse::<u64>() else {
            return Ok(None);
        };
        if suffix == 0 || size == 0 {
            return Err(AttachmentError::RangeNotSatisfiable { size });
        }
        (size.saturating_sub(suffix), size - 1)
    } else {
        let Ok(first) = a.parse::<u64>() else {
            return Ok(None);
        };
        let last = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(last) if last >= first => last.min(size.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if first >= size {
            return Err(AttachmentError::RangeNotSatisfiable { size });
        }
        (first, last)
    };
    Ok(Some(range))
}

/// What `GET|HEAD /file/<id>` answers.
pub struct FileAnswer {
    meta: Meta,
    /// The range served, if the request asked for one.
    pub range: Option<(u64, u64)>,
    body: Option<Download>,
}

impl FileAnswer {
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    pub fn size(&self) -> u64 {
        self.meta.size
    }

    /// The `Content-Type` to answer: the sniffed type, except active content
    /// (HTML, SVG, XML, scripts), which is served as plain text.
    pub fn content_type(&self) -> &str {
        if sniff::is_active_content(&self.meta.mime) {
            "text/plain; charset=utf-8"
        } else {
            &self.meta.mime
        }
    }

    /// The bytes, for a `GET`.
    pub fn into_body(
        self,
    ) -> Option<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static> {
        self.body
            .map(|d| d.body.map(|r| r.map_err(std::io::Error::other)))
    }
}

/// An uploaded attachment whose message is not yet committed. Dropped without
/// [`Pending::keep`] (the publish failed, or its task was cancelled), it deletes
/// the file and gives back what it charged.
pub struct Pending {
    attachments: Arc<Attachments>,
    id: String,
    visitor: String,
    /// Stored bytes charged to the visitor so far.
    charged: u64,
    /// Whether the file (and maybe its metadata) exists.
    stored: bool,
    kept: bool,
    attachment: Attachment,
}

impl Pending {
    /// The message's `attachment` object.
    pub fn attachment(&self) -> &Attachment {
        &self.attachment
    }

    /// The message is committed: the file stays until it expires.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if !self.stored {
            // The upload never completed: its temporary object is gone with it.
            self.attachments.usage.release(&self.visitor, self.charged);
            return;
        }
        let attachments = self.attachments.clone();
        let (id, visitor, charged) = (self.id.clone(), self.visitor.clone(), self.charged);
        let forget = async move {
            attachments.known().remove(&id);
            if let Err(e) = attachments.store.remove(&id).await {
                tracing::warn!(id, error = %e, "cannot delete the attachment of a failed publish");
            }
            attachments.usage.release(&visitor, charged);
        };
        // Without a runtime (only at exit) the orphan sweep deletes the file later.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(forget);
        }
    }
}

#[cfg(test)]
mod tests;
