//! An attachment's MIME type and extension, sniffed from its first bytes as ntfy
//! does (`util.DetectContentType`: magic numbers; `.bin` when unknown; a name
//! ending in `.apk` is an Android package whatever its bytes).
//!
//! The table covers what notification senders attach in practice (camera
//! snapshots, documents, archives, audio/video clips, text); anything else is
//! `application/octet-stream`.

/// (MIME type, extension with its dot).
pub(crate) type Detected = (&'static str, &'static str);

const OCTET_STREAM: Detected = ("application/octet-stream", ".bin");

/// The type of a file starting with `head`, named `name` (may be empty).
pub(crate) fn detect(head: &[u8], name: &str) -> Detected {
    if name.to_ascii_lowercase().ends_with(".apk") {
        return ("application/vnd.android.package-archive", ".apk");
    }
    let starts = |magic: &[u8]| head.starts_with(magic);
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if starts(b"\x89PNG\r\n\x1a\n") {
        ("image/png", ".png")
    } else if starts(b"\xff\xd8\xff") {
        ("image/jpeg", ".jpg")
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        ("image/gif", ".gif")
    } else if starts(b"RIFF") && at(8, b"WEBP") {
        ("image/webp", ".webp")
    } else if starts(b"RIFF") && at(8, b"WAVE") {
        ("audio/wav", ".wav")
    } else if starts(b"RIFF") && at(8, b"AVI ") {
        ("video/x-msvideo", ".avi")
    } else if starts(b"BM") && head.len() > 14 {
        ("image/bmp", ".bmp")
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        ("image/tiff", ".tiff")
    } else if starts(b"\0\0\x01\0") {
        ("image/x-icon", ".ico")
    } else if at(4, b"ftyp") {
        match head.get(8..12) {
            Some(b"heic" | b"heix" | b"mif1") => ("image/heic", ".heic"),
            Some(b"avif") => ("image/avif", ".avif"),
            Some(b"qt  ") => ("video/quicktime", ".mov"),
            Some(b"M4A ") => ("audio/x-m4a", ".m4a"),
            _ => ("video/mp4", ".mp4"),
        }
    } else if starts(b"\x1aE\xdf\xa3") {
        ("video/webm", ".webm")
    } else if starts(b"%PDF-") {
        ("application/pdf", ".pdf")
    } else if starts(b"PK\x03\x04") {
        ("application/zip", ".zip")
    } else if starts(b"\x1f\x8b") {
        ("application/gzip", ".gz")
    } else if starts(b"7z\xbc\xaf\x27\x1c") {
        ("application/x-7z-compressed", ".7z")
    } else if starts(b"BZh") {
        ("application/x-bzip2", ".bz2")
    } else if starts(b"\xfd7zXZ\0") {
        ("application/x-xz", ".xz")
    } else if starts(b"\x28\xb5\x2f\xfd") {
        ("application/zstd", ".zst")
    } else if starts(b"ID3") || starts(b"\xff\xfb") || starts(b"\xff\xf3") {
        ("audio/mpeg", ".mp3")
    } else if starts(b"OggS") {
        ("audio/ogg", ".ogg")
    } else if starts(b"fLaC") {
        ("audio/flac", ".flac")
    } else if starts(b"\x7fELF") {
        ("application/x-elf", ".elf")
    } else if is_text(head) {
        text_type(head)
    } else {
        OCTET_STREAM
    }
}

/// Valid UTF-8 without control characters other than whitespace (the last
/// character may be cut off by the end of `head`).
fn is_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&head[..e.valid_up_to()]) {
            Ok(s) => s,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    !valid.is_empty()
        && valid
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\x0c'))
}

fn text_type(head: &[u8]) -> Detected {
    let trimmed = head.trim_ascii_start();
    let lower: Vec<u8> = trimmed
        .iter()
        .take(64)
        .map(u8::to_ascii_lowercase)
        .collect();
    if lower.starts_with(b"<!doctype html") || lower.starts_with(b"<html") {
        ("text/html; charset=utf-8", ".html")
    } else if lower.starts_with(b"<svg") {
        ("image/svg+xml", ".svg")
    } else if lower.starts_with(b"<?xml") {
        ("text/xml; charset=utf-8", ".xml")
    } else if trimmed.first().is_some_and(|b| *b == b'{' || *b == b'[')
        && serde_json::from_slice::<serde::de::IgnoredAny>(head).is_ok()
    {
        ("application/json", ".json")
    } else {
        ("text/plain; charset=utf-8", ".txt")
    }
}

/// Whether a browser would run or render `mime` as active content: served as
/// plain text instead (ntfy's `ContentTypeWriter` does the same), so an uploaded
/// page cannot script the server's origin.
pub(crate) fn is_active_content(mime: &str) -> bool {
    let m = mime.to_ascii_lowercase();
    [
        "text/html",
        "image/svg",
        "text/xml",
        "application/xhtml",
        "application/xml",
        "text/javascript",
        "application/javascript",
    ]
    .iter()
    .any(|p| m.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_types() {
        assert_eq!(detect(b"\x89PNG\r\n\x1a\n....", ""), ("image/png", ".png"));
        assert_eq!(
            detect(b"\xff\xd8\xff\xe0..JFIF", ""),
            ("image/jpeg", ".jpg")
        );
        assert_eq!(detect(b"%PDF-1.7\n", ""), ("application/pdf", ".pdf"));
        assert_eq!(detect(b"\0\0\0\x18ftypmp42", ""), ("video/mp4", ".mp4"));
        assert_eq!(
            detect(b"hello\nworld", ""),
            ("text/plain; charset=utf-8", ".txt")
        );
        assert_eq!(detect(b"{\"a\":1}", ""), ("application/json", ".json"));
        assert_eq!(detect(b"\0\x01\x02\x03garbage", ""), OCTET_STREAM);
        assert_eq!(detect(b"", ""), OCTET_STREAM);
        assert_eq!(detect(b"PK\x03\x04", "app.APK").1, ".apk");
        // A multi-byte character cut by the end of the sniffed prefix is still text.
        assert_eq!(detect("héllo".as_bytes()[..2].as_ref(), "").1, ".txt");
    }

    #[test]
    fn active_content_is_recognised() {
        assert!(is_active_content("text/html; charset=utf-8"));
        assert!(is_active_content("image/svg+xml"));
        assert!(!is_active_content("image/png"));
    }
}
