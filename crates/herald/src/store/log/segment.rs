//! The files of the log: segments, and the records inside them.
//!
//! A segment is a file named by its number (`00000000000000000001.seg`), starting
//! with [`MAGIC`], then records back to back. A record is its body's length and CRC-32
//! (both `u32`, little-endian) and the body, whose first byte says what it is:
//!
//! | kind | body after the kind byte |
//! |---|---|
//! | `Put` (1) | flags (bit 0: published), `time` and `expires` (`i64`, `i64::MIN`: none), the ID (`u8` length), the topic and the sequence ID (`u16` length, `u16::MAX`: none), then the message's JSON |
//! | `Published` (2) | the ID of a scheduled message handed out by `take_due` |
//! | `Removed` (3) | the ID of a scheduled message cancelled |
//! | `Expired` (4) | an `i64`: every message whose `expires` is before it is gone (an expiry sweep) |
//! | `Noop` (0) | zeros: the probe a failing writer makes (`check_writable`), cut off again |
//!
//! The index fields sit before the JSON so that rebuilding the index at start reads
//! them without parsing any JSON. The checksum finds a record torn by a crash in the
//! middle of a write (the log's tail is cut there) and a damaged one.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// The first bytes of every segment (format version 1).
pub(super) const MAGIC: &[u8; 8] = b"HRLDLOG1";
/// Length and checksum before each body.
pub(super) const RECORD_HEADER: usize = 8;
/// Largest body accepted when reading: far above any message (the body limit is
/// kilobytes, the JSON at most a few times that), so a larger length is damage.
const MAX_BODY: u32 = 16 << 20;

const KIND_NOOP: u8 = 0;
const KIND_PUT: u8 = 1;
const KIND_PUBLISHED: u8 = 2;
const KIND_REMOVED: u8 = 3;
const KIND_EXPIRED: u8 = 4;
const NO_EXPIRY: i64 = i64::MIN;
const NO_SEQUENCE: u16 = u16::MAX;

/// The file name of segment `number`.
pub(super) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg"))
}

/// The numbers of the segments in `dir`, oldest first.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// A message as the index needs it, and where its JSON is in the body.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Put<'a> {
    pub(super) published: bool,
    pub(super) time: i64,
    pub(super) expires: Option<i64>,
    pub(super) id: &'a str,
    pub(super) topic: &'a str,
    pub(super) sequence_id: Option<&'a str>,
    pub(super) json: &'a [u8],
}

/// One decoded record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Record<'a> {
    Noop,
    Put(Put<'a>),
    Published(&'a str),
    Removed(&'a str),
    Expired(i64),
}

/// Why a record could not be encoded (a field longer than its length prefix).
#[derive(Debug, thiserror::Error)]
#[error("{0} is too long for the log")]
pub(super) struct TooLong(&'static str);

/// Appends records to a buffer that one write puts in a segment.
#[derive(Default)]
pub(super) struct Encoder {
    pub(super) buf: Vec<u8>,
}

impl Encoder {
    /// Appends a `Put`; returns the offset of its JSON from the start of the buffer.
    pub(super) fn put(&mut self, put: &Put<'_>) -> Result<usize, TooLong> {
        let id = u8::try_from(put.id.len()).map_err(|_| TooLong("the message ID"))?;
        let topic = u16::try_from(put.topic.len())
            .ok()
            .filter(|&n| n != NO_SEQUENCE)
            .ok_or(TooLong("the topic"))?;
        let sequence = match put.sequence_id {
            Some(s) => u16::try_from(s.len())
                .ok()
                .filter(|&n| n != NO_SEQUENCE)
                .ok_or(TooLong("the sequence ID"))?,
            None => NO_SEQUENCE,
        };
        let start = self.begin();
        let buf = &mut self.buf;
        buf.push(KIND_PUT);
        buf.push(u8::from(put.published));
        buf.extend_from_slice(&put.time.to_le_bytes());
        buf.extend_from_slice(&put.expires.unwrap_or(NO_EXPIRY).to_le_bytes());
        buf.push(id);
        buf.extend_from_slice(put.id.as_bytes());
        buf.extend_from_slice(&topic.to_le_bytes());
        buf.extend_from_slice(put.topic.as_bytes());
        buf.extend_from_slice(&sequence.to_le_bytes());
        buf.extend_from_slice(put.sequence_id.unwrap_or_default().as_bytes());
        let json_at = buf.len();
        buf.extend_from_slice(put.json);
        self.finish(start)?;
        Ok(json_at)
    }

    /// Appends a `Published` (`removed: false`) or `Removed` mark for `id`.
    pub(super) fn mark(&mut self, id: &str, removed: bool) -> Result<(), TooLong> {
        let len = u8::try_from(id.len()).map_err(|_| TooLong("the message ID"))?;
        let start = self.begin();
        self.buf.push(if removed {
            KIND_REMOVED
        } else {
            KIND_PUBLISHED
        });
        self.buf.push(len);
        self.buf.extend_from_slice(id.as_bytes());
        self.finish(start)
    }

    /// Appends an `Expired` mark: messages whose `expires` is before `now` are gone.
    pub(super) fn expired(&mut self, now: i64) {
        let start = self.begin();
        self.buf.push(KIND_EXPIRED);
        self.buf.extend_from_slice(&now.to_le_bytes());
        // Nine bytes cannot be too long.
        let _ = self.finish(start);
    }

    /// Appends a `Noop` whose body is `len` bytes (at least the kind byte).
    pub(super) fn noop(&mut self, len: usize) {
        let start = self.begin();
        self.buf.push(KIND_NOOP);
        self.buf.resize(self.buf.len() + len.saturating_sub(1), 0);
        // The probe's page is far below the longest body.
        let _ = self.finish(start);
    }

    fn begin(&mut self) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; RECORD_HEADER]);
        start
    }

    /// Fills in the header of the record that starts at `start`.
    fn finish(&mut self, start: usize) -> Result<(), TooLong> {
        let body = &self.buf[start + RECORD_HEADER..];
        let Some(len) = u32::try_from(body.len()).ok().filter(|&n| n <= MAX_BODY) else {
            self.buf.truncate(start);
            return Err(TooLong("the message"));
        };
        let crc = crc32fast::hash(body);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

/// Decodes a record's body (its checksum already checked).
pub(super) fn decode(body: &[u8]) -> Option<Record<'_>> {
    let mut r = Bytes(body);
    match r.u8()? {
        KIND_NOOP => Some(Record::Noop),
        KIND_PUT => {
            let published = r.u8()? & 1 == 1;
            let time = r.i64()?;
            let expires = Some(r.i64()?).filter(|&e| e != NO_EXPIRY);
            let id_len = r.u8()? as usize;
            let id = r.str(id_len)?;
            let topic_len = r.u16()? as usize;
            let topic = r.str(topic_len)?;
            let sequence_id = match r.u16()? {
                NO_SEQUENCE => None,
                n => Some(r.str(n as usize)?),
            };
            Some(Record::Put(Put {
                published,
                time,
                expires,
                id,
                topic,
                sequence_id,
                json: r.0,
            }))
        }
        KIND_EXPIRED => Some(Record::Expired(r.i64()?)),
        KIND_PUBLISHED | KIND_REMOVED => {
            let removed = body[0] == KIND_REMOVED;
            let len = r.u8()? as usize;
            let id = r.str(len)?;
            Some(if removed {
                Record::Removed(id)
            } else {
                Record::Published(id)
            })
        }
        _ => None,
    }
}

/// A cursor over a body.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_le_bytes)
    }
    fn str(&mut self, n: usize) -> Option<&'a str> {
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// How reading a segment ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Every byte was a whole, intact record.
    Clean,
    /// From this offset on the file holds no intact record: a write cut short by a
    /// crash (at the log's tail), or damage.
    Damaged { at: u64, why: &'static str },
}

/// Reads the segment at `path` record by record, calling `each` with each record's
/// offset (of its header), its length in the file and its body. Memory is one record.
pub(super) fn scan(path: &Path, mut each: impl FnMut(u64, u32, &[u8])) -> io::Result<End> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let mut magic = [0u8; MAGIC.len()];
    if size < MAGIC.len() as u64 {
        return Ok(End::Damaged {
            at: 0,
            why: "shorter than the segment header",
        });
    }
    reader.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Ok(End::Damaged {
            at: 0,
            why: "not a herald log segment (or a newer format)",
        });
    }
    let mut at = MAGIC.len() as u64;
    let mut body = Vec::new();
    while at < size {
        if size - at < RECORD_HEADER as u64 {
            return Ok(End::Damaged {
                at,
                why: "a record header cut short",
            });
        }
        let mut header = [0u8; RECORD_HEADER];
        reader.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_BODY {
            return Ok(End::Damaged {
                at,
                why: "an impossible record length",
            });
        }
        if size - at - (RECORD_HEADER as u64) < u64::from(len) {
            return Ok(End::Damaged {
                at,
                why: "a record cut short",
            });
        }
        body.resize(len as usize, 0);
        reader.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            return Ok(End::Damaged {
                at,
                why: "a record whose checksum does not match",
            });
        }
        each(at, RECORD_HEADER as u32 + len, &body);
        at += RECORD_HEADER as u64 + u64::from(len);
    }
    Ok(End::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put<'a>(id: &'a str, json: &'a [u8]) -> Put<'a> {
        Put {
            published: true,
            time: 1_700_000_000,
            expires: Some(1_700_003_600),
            id,
            topic: "alerts",
            sequence_id: None,
            json,
        }
    }

    fn bodies(bytes: &[u8]) -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.seg");
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(bytes);
        std::fs::write(&path, file).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            scan(&path, |_, _, body| out.push(body.to_vec())).unwrap(),
            End::Clean
        );
        out
    }

    #[test]
    fn records_round_trip() {
        let mut enc = Encoder::default();
        let json_at = enc.put(&put("AAAAAAAAAAAA", b"{\"a\":1}")).unwrap();
        assert_eq!(&enc.buf[json_at..], b"{\"a\":1}");
        let scheduled = Put {
            published: false,
            expires: None,
            sequence_id: Some("seq-1"),
            ..put("BBBBBBBBBBBB", b"{}")
        };
        enc.put(&scheduled).unwrap();
        enc.mark("BBBBBBBBBBBB", false).unwrap();
        enc.mark("CCCCCCCCCCCC", true).unwrap();
        enc.expired(-5);
        enc.noop(1);
        let bodies = bodies(&enc.buf);
        let decoded: Vec<_> = bodies.iter().map(|b| decode(b).unwrap()).collect();
        assert_eq!(
            decoded,
            vec![
                Record::Put(put("AAAAAAAAAAAA", b"{\"a\":1}")),
                Record::Put(scheduled),
                Record::Published("BBBBBBBBBBBB"),
                Record::Removed("CCCCCCCCCCCC"),
                Record::Expired(-5),
                Record::Noop,
            ]
        );
    }

    #[test]
    fn a_torn_or_damaged_tail_is_found_where_it_starts() {
        let mut enc = Encoder::default();
        enc.put(&put("AAAAAAAAAAAA", b"{}")).unwrap();
        let first = enc.buf.len() as u64 + MAGIC.len() as u64;
        enc.put(&put("BBBBBBBBBBBB", b"{}")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.seg");
        for cut in [1, 7, 9, enc.buf.len() - first as usize + MAGIC.len() - 1] {
            let mut file = MAGIC.to_vec();
            file.extend_from_slice(&enc.buf[..enc.buf.len() - cut]);
            std::fs::write(&path, &file).unwrap();
            let mut n = 0;
            let end = scan(&path, |_, _, _| n += 1).unwrap();
            assert_eq!(n, 1, "cut {cut}");
            assert!(
                matches!(end, End::Damaged { at, .. } if at == first),
                "cut {cut}: {end:?}"
            );
        }
        // A flipped bit in the second record's JSON.
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&enc.buf);
        let last = file.len() - 2;
        file[last] ^= 0x20;
        std::fs::write(&path, &file).unwrap();
        let end = scan(&path, |_, _, _| {}).unwrap();
        assert!(matches!(end, End::Damaged { at, why } if at == first && why.contains("checksum")));
        // Not a segment at all.
        std::fs::write(&path, b"SQLite format 3\0").unwrap();
        assert!(matches!(
            scan(&path, |_, _, _| {}).unwrap(),
            End::Damaged { at: 0, .. }
        ));
    }

    #[test]
    fn fields_longer_than_their_prefix_are_refused_and_leave_nothing() {
        let mut enc = Encoder::default();
        let long = "x".repeat(300);
        assert!(enc.put(&put(&long, b"{}")).is_err());
        assert!(enc.mark(&long, true).is_err());
        assert!(enc.buf.is_empty());
    }

    #[test]
    fn segments_are_listed_in_number_order() {
        let dir = tempfile::tempdir().unwrap();
        for n in [10, 2, 1] {
            std::fs::write(segment_path(dir.path(), n), MAGIC).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        assert_eq!(list_segments(dir.path()).unwrap(), vec![1, 2, 10]);
    }
}
