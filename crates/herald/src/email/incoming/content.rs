//! A received mail as a notification: subject → title, the text/plain part (or the
//! HTML part as text) → message, every charset and transfer encoding decoded by
//! `mail-parser`.

use mail_parser::MessageParser;

/// Title and text of a notification from a mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Content {
    pub title: String,
    pub text: String,
}

/// The notification of `raw` (the mail as received, after dot-unstuffing), the text
/// cut to `max_text` bytes (at a character boundary); `None` if it is no mail.
pub(crate) fn content(raw: &[u8], max_text: usize) -> Option<Content> {
    let mail = MessageParser::default().parse(raw)?;
    // A blob without any header is no mail (mail-parser takes it as a body).
    if mail.headers().is_empty() {
        return None;
    }
    let title = mail
        .subject()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let text = mail
        .body_text(0)
        .map(|t| t.trim().replace("\r\n", "\n"))
        .unwrap_or_default();
    Some(Content {
        title,
        text: truncate(text, max_text),
    })
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_multipart_html_charsets() {
        let plain = b"From: a@b.c\r\nSubject: Disk\r\n full\r\n\r\nHello\r\nworld\r\n";
        assert_eq!(
            content(plain, 4096),
            Some(Content {
                title: "Disk full".into(),
                text: "Hello\nworld".into()
            })
        );
        let multipart = b"Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=XX\r\n\r\n--XX\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
Sch=F6n\r\n--XX\r\nContent-Type: text/html\r\n\r\n<p>ignored</p>\r\n--XX--\r\n";
        assert_eq!(
            content(multipart, 4096),
            Some(Content {
                title: "Grüße".into(),
                text: "Schön".into()
            })
        );
        let html = b"Subject: h\r\nContent-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: base64\r\n\r\nPHA+SGkgPGI+dGhlcmU8L2I+PC9wPg==\r\n";
        assert_eq!(content(html, 4096).unwrap().text, "Hi there");
        let long = format!("Subject: x\r\n\r\n{}\r\n", "é".repeat(10));
        assert_eq!(content(long.as_bytes(), 5).unwrap().text, "éé");
        assert_eq!(content(b"", 10), None);
    }
}
