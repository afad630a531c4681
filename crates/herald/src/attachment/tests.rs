use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;

use super::*;

fn attachments(dir: &std::path::Path, config: AttachmentConfig) -> Arc<Attachments> {
    let store = Arc::new(local::LocalStore::open(dir).unwrap());
    Arc::new(Attachments::with_store(config, "http://h", store))
}

fn request(visitor: &str) -> UploadRequest {
    UploadRequest {
        visitor: visitor.into(),
        name: Some("f.bin".into()),
        content_length: None,
        delivery: crate::model::now_unix(),
        message_expires: None,
    }
}

type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, Infallible>>>;

fn chunks(n: usize, size: usize) -> Chunks {
    futures_util::stream::iter(vec![Ok(Bytes::from(vec![1u8; size])); n])
}

#[test]
fn ranges() {
    assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
    assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
    assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
    assert_eq!(parse_range("bytes=50-500", 100).unwrap(), Some((50, 99)));
    // Served whole: several ranges, other units, nonsense.
    assert_eq!(parse_range("bytes=0-1,5-6", 100).unwrap(), None);
    assert_eq!(parse_range("items=0-1", 100).unwrap(), None);
    assert_eq!(parse_range("bytes=9-1", 100).unwrap(), None);
    assert!(matches!(
        parse_range("bytes=100-", 100),
        Err(AttachmentError::RangeNotSatisfiable { size: 100 })
    ));
}

#[tokio::test]
async fn a_dropped_pending_upload_deletes_its_file_and_gives_back_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = attachments(dir.path(), AttachmentConfig::default());
    let mut rest = chunks(4, 1000);
    let pending = a
        .upload(request("ip:1.2.3.4"), Bytes::new(), Some(&mut rest))
        .await
        .unwrap();
    assert_eq!(pending.attachment().size, 4000);
    assert_eq!(a.visitor_usage("ip:1.2.3.4").0, 4000);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    drop(pending);
    for _ in 0..100 {
        if std::fs::read_dir(dir.path()).unwrap().count() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(a.visitor_usage("ip:1.2.3.4").0, 0);
    assert_eq!(a.total_size(), 0);

    // A kept one stays, and is found again by a fresh start's sweep.
    let mut rest = chunks(1, 10);
    a.upload(request("ip:1.2.3.4"), Bytes::new(), Some(&mut rest))
        .await
        .unwrap()
        .keep();
    let again = attachments(dir.path(), AttachmentConfig::default());
    let report = again.sweep(true).await;
    assert_eq!(report.learned, 1);
    assert_eq!(again.visitor_usage("ip:1.2.3.4").0, 10);
}

#[tokio::test]
async fn the_file_limit_stops_reading_one_chunk_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = attachments(
        dir.path(),
        AttachmentConfig {
            file_size_limit: 2500,
            ..AttachmentConfig::default()
        },
    );
    let mut rest = chunks(10, 1000);
    let err = a
        .upload(request("v"), Bytes::new(), Some(&mut rest))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, AttachmentError::TooLarge(_)), "{err}");
    // Three chunks were read (the third passes the limit), seven are left unread.
    assert_eq!(futures_util::StreamExt::count(rest).await, 7);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(a.total_size(), 0);
}
