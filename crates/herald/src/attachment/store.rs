//! Where attachment files live: the [`AttachmentStore`] trait and its vocabulary.
//!
//! A store knows nothing about visitors, limits or messages; it keeps two objects
//! per attachment: the file (`<id>`) and its metadata (`<id>.json`, written only
//! once the message that references the file is committed). A file without
//! metadata is therefore never served, and once it is older than the orphan grace
//! it is swept (see [`super::lifecycle`]). Uploads are written under a temporary
//! name and become visible under `<id>` only when complete ([`Upload::finish`]),
//! so a refused, aborted or crashed upload never leaves a partial file behind a
//! valid ID.

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

/// A storage backend failed (I/O error, S3 error). The text is for logs only.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailure {
    /// The disk (or bucket quota) is full.
    #[error("attachment storage full: {0}")]
    Full(String),
    #[error("attachment storage: {0}")]
    Io(String),
}

impl StoreFailure {
    pub(crate) fn io(e: impl std::fmt::Display) -> Self {
        StoreFailure::Io(e.to_string())
    }
}

impl From<std::io::Error> for StoreFailure {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC / EDQUOT
        match e.raw_os_error() {
            Some(28) | Some(122) => StoreFailure::Full(e.to_string()),
            _ => StoreFailure::Io(e.to_string()),
        }
    }
}

/// What a listing found under the store's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A complete file `<id>`.
    File { id: String, size: u64 },
    /// The metadata `<id>.json`.
    Meta { id: String },
    /// An upload's temporary object (deleted by the orphan sweep once stale).
    Temp { name: String },
}

/// One listed object with its last modification time.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub entry: Entry,
    pub modified: SystemTime,
}

/// A file's bytes as they are read.
pub(crate) type ByteStream = BoxStream<'static, Result<Bytes, StoreFailure>>;

/// An open file's requested bytes.
pub(crate) struct Download {
    pub body: ByteStream,
}

/// Storage for attachment files and their metadata. IDs are checked by the caller
/// (`[A-Za-z0-9]{12}`), so implementations may use them as names directly.
#[async_trait]
pub(crate) trait AttachmentStore: Send + Sync + 'static {
    /// Starts writing file `id` under a temporary name.
    async fn create(&self, id: &str) -> Result<Box<dyn Upload>, StoreFailure>;

    /// Writes (or replaces) the metadata of `id`.
    async fn put_meta(&self, id: &str, meta: Bytes) -> Result<(), StoreFailure>;

    /// The metadata of `id`, if any.
    async fn get_meta(&self, id: &str) -> Result<Option<Bytes>, StoreFailure>;

    /// The bytes `range` (start, inclusive end) of file `id`, or all of it; `None`
    /// if there is no such file.
    async fn open(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<Download>, StoreFailure>;

    /// Deletes file `id` and its metadata; deleting what does not exist is no error.
    async fn remove(&self, id: &str) -> Result<(), StoreFailure>;

    /// Deletes a stale temporary object found by [`Self::list`].
    async fn remove_temp(&self, name: &str) -> Result<(), StoreFailure>;

    /// Everything under the store's root.
    async fn list(&self) -> Result<Vec<Listed>, StoreFailure>;

    /// Where the files are, for logs (no credentials).
    fn describe(&self) -> String;
}

/// An upload in progress. Dropping it without [`Upload::finish`] discards what was
/// written (best effort; a crash leaves a temporary object for the orphan sweep).
#[async_trait]
pub(crate) trait Upload: Send {
    /// Appends `chunk`.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreFailure>;

    /// Makes the written bytes visible as file `id`.
    async fn finish(self: Box<Self>) -> Result<(), StoreFailure>;
}

/// A temporary object's name: `tmp-<id>-<random>`, unique per upload.
pub(crate) fn temp_name(id: &str) -> String {
    format!("{TEMP_PREFIX}{id}-{:016x}", fastrand::u64(..))
}

pub(crate) const TEMP_PREFIX: &str = "tmp-";
pub(crate) const META_SUFFIX: &str = ".json";

/// Classifies an object name found under the store's root; `None` for anything
/// herald did not write.
pub(crate) fn classify(name: &str, size: u64) -> Option<Entry> {
    if name.starts_with(TEMP_PREFIX) {
        return Some(Entry::Temp {
            name: name.to_string(),
        });
    }
    if let Some(id) = name.strip_suffix(META_SUFFIX) {
        return super::is_valid_id(id).then(|| Entry::Meta { id: id.to_string() });
    }
    super::is_valid_id(name).then(|| Entry::File {
        id: name.to_string(),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        assert_eq!(
            classify("abcDEF123456", 5),
            Some(Entry::File {
                id: "abcDEF123456".into(),
                size: 5
            })
        );
        assert_eq!(
            classify("abcDEF123456.json", 5),
            Some(Entry::Meta {
                id: "abcDEF123456".into()
            })
        );
        assert!(matches!(
            classify(&temp_name("abcDEF123456"), 0),
            Some(Entry::Temp { .. })
        ));
        assert_eq!(classify("../etc", 0), None);
        assert_eq!(classify("notes.txt", 0), None);
    }
}
