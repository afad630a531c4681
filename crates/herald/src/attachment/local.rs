//! The local-directory [`AttachmentStore`] (`attachment-cache-dir: /path`).
//!
//! Files are `<dir>/<id>`, metadata `<dir>/<id>.json`, uploads in progress
//! `<dir>/tmp-<id>-<random>`, renamed to `<id>` when complete (same directory, so
//! the rename is atomic). The directory is created `0700`, files `0600`. Names come
//! only from generated IDs, never from a client's filename.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::store::{
    AttachmentStore, Download, Listed, META_SUFFIX, StoreFailure, Upload, classify, temp_name,
};

/// Attachments in a directory.
pub(crate) struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// Opens (creating, `0700`) `dir`.
    pub(crate) fn open(dir: &Path) -> std::io::Result<LocalStore> {
        crate::datafiles::private_dir(dir)?;
        Ok(LocalStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Read size of a download: large enough for few syscalls, small enough that 100
/// concurrent downloads hold little memory.
const READ_CHUNK: usize = 64 * 1024;

#[async_trait]
impl AttachmentStore for LocalStore {
    async fn create(&self, id: &str) -> Result<Box<dyn Upload>, StoreFailure> {
        let temp = self.path(&temp_name(id));
        let file = private_file(&temp).await?;
        Ok(Box::new(LocalUpload {
            file: Some(tokio::io::BufWriter::with_capacity(READ_CHUNK, file)),
            temp,
            target: self.path(id),
            done: false,
        }))
    }

    async fn put_meta(&self, id: &str, meta: Bytes) -> Result<(), StoreFailure> {
        // Written whole under a temporary name, then renamed: a reader never sees
        // half a metadata file.
        let temp = self.path(&temp_name(id));
        let result = async {
            let mut file = private_file(&temp).await?;
            file.write_all(&meta).await?;
            file.sync_all().await?;
            tokio::fs::rename(&temp, self.path(&format!("{id}{META_SUFFIX}"))).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        Ok(result?)
    }

    async fn get_meta(&self, id: &str) -> Result<Option<Bytes>, StoreFailure> {
        match tokio::fs::read(self.path(&format!("{id}{META_SUFFIX}"))).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn open(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<Download>, StoreFailure> {
        let mut file = match tokio::fs::File::open(self.path(id)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata().await?.len();
        let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
        if start > 0 {
            file.seek(SeekFrom::Start(start)).await?;
        }
        let remaining = if size == 0 { 0 } else { end + 1 - start };
        let body =
            futures_util::stream::unfold((file, remaining), |(mut file, remaining)| async move {
                if remaining == 0 {
                    return None;
                }
                let want = remaining.min(READ_CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), (file, remaining - n as u64)))
                    }
                    Err(e) => Some((Err(StoreFailure::from(e)), (file, 0))),
                }
            })
            .boxed();
        Ok(Some(Download { body }))
    }

    async fn remove(&self, id: &str) -> Result<(), StoreFailure> {
        // Metadata first: a file without metadata is never served and is swept.
        for name in [format!("{id}{META_SUFFIX}"), id.to_string()] {
            match tokio::fs::remove_file(self.path(&name)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn remove_temp(&self, name: &str) -> Result<(), StoreFailure> {
        match tokio::fs::remove_file(self.path(name)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<Listed>, StoreFailure> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.dir).await?;
        while let Some(item) = dir.next_entry().await? {
            let Ok(name) = item.file_name().into_string() else {
                continue;
            };
            let Ok(meta) = item.metadata().await else {
                continue; // removed meanwhile
            };
            if !meta.is_file() {
                continue;
            }
            if let Some(entry) = classify(&name, meta.len()) {
                out.push(Listed {
                    entry,
                    modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                });
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

async fn private_file(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
}

struct LocalUpload {
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    temp: PathBuf,
    target: PathBuf,
    done: bool,
}

#[async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreFailure> {
        match self.file.as_mut() {
            Some(file) => Ok(file.write_all(&chunk).await?),
            None => Err(StoreFailure::Io("upload already finished".into())),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StoreFailure> {
        let Some(mut file) = self.file.take() else {
            return Err(StoreFailure::Io("upload already finished".into()));
        };
        file.flush().await?;
        // Durable before it is visible: an acknowledged attachment survives a crash.
        file.get_mut().sync_all().await?;
        drop(file);
        tokio::fs::rename(&self.temp, &self.target).await?;
        self.done = true;
        Ok(())
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if !self.done {
            // Refused or aborted: nothing stays behind (a crash is the sweep's job).
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::store::Entry;

    async fn read_all(d: Download) -> Vec<u8> {
        let chunks: Vec<_> = d.body.collect().await;
        chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn finished_upload_is_visible_dropped_one_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let mut up = store.create("aaaaaaaaaaaa").await.unwrap();
        up.write(Bytes::from_static(b"hello ")).await.unwrap();
        up.write(Bytes::from_static(b"world")).await.unwrap();
        up.finish().await.unwrap();
        let d = store.open("aaaaaaaaaaaa", None).await.unwrap().unwrap();
        assert_eq!(read_all(d).await, b"hello world");
        let d = store
            .open("aaaaaaaaaaaa", Some((6, 9)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read_all(d).await, b"worl");

        let mut up = store.create("bbbbbbbbbbbb").await.unwrap();
        up.write(Bytes::from_static(b"partial")).await.unwrap();
        drop(up);
        let listed = store.list().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            listed[0].entry,
            Entry::File {
                id: "aaaaaaaaaaaa".into(),
                size: 11
            }
        );
        assert!(store.open("bbbbbbbbbbbb", None).await.unwrap().is_none());

        store
            .put_meta("aaaaaaaaaaaa", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(
            store.get_meta("aaaaaaaaaaaa").await.unwrap().unwrap(),
            Bytes::from_static(b"{}")
        );
        store.remove("aaaaaaaaaaaa").await.unwrap();
        store.remove("aaaaaaaaaaaa").await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
    }
}
