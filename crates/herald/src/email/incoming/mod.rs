//! Publishing by mail: a small SMTP server (RFC 5321, the part a mail client or
//! relay needs to deliver to us) on `smtp-server-listen`.
//!
//! A mail to `<prefix><topic>@<domain>` or `<prefix><topic>+<token>@<domain>` is
//! published on `<topic>` through the core (`Herald::publish`), like an HTTP
//! publish: write access is checked for the token's user (without one: anonymous,
//! so `auth-default-access` decides), the sending address is charged as a visitor
//! (request token and daily message count, shared in cluster mode), and [`content`]
//! turns the mail into title and text.
//!
//! Bounded against slow or hostile clients: at most [`MAX_CONNECTIONS`] sessions,
//! command lines up to [`MAX_LINE`] bytes, each command within [`COMMAND_TIMEOUT`],
//! a whole mail within [`DATA_TIMEOUT`] and [`MAX_MAIL`] bytes (larger ones are
//! read to their end and refused), one recipient per mail, a session at most
//! [`MAX_COMMANDS`] commands. Refusals are SMTP reply codes with enhanced status
//! codes (RFC 3463); nothing a client sends ends the server.

mod address;
mod content;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ServerConfig;
use super::outgoing::EmailMetrics;
use crate::auth::{Authorizer, Permission, Principal};
use crate::core::Herald;
use crate::core::publish::{MessageDraft, PublishKind, PublishRequest};
use crate::limits::{Charge, Limits};
use address::{AddressError, Recipient, parse_recipient};

/// Sessions at once; more are answered `421` and closed.
const MAX_CONNECTIONS: usize = 50;
/// Longest command line (RFC 5321 §4.5.3.1.4 says 512; extensions make it longer).
const MAX_LINE: usize = 2048;
/// Longest mail (`SIZE`), headers and attachments included.
pub(crate) const MAX_MAIL: usize = 1024 * 1024;
/// Each command (and each line of a mail) must arrive within this time.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// A whole mail must arrive within this time.
const DATA_TIMEOUT: Duration = Duration::from_secs(300);
/// Commands per session (a client looping on `NOOP` or `RSET` is cut off).
const MAX_COMMANDS: usize = 1000;

/// What a session needs of the server.
pub struct Deps {
    pub config: ServerConfig,
    pub herald: Arc<Herald>,
    pub auth: Arc<Authorizer>,
    pub limits: Arc<Limits>,
    pub metrics: EmailMetrics,
}

/// Binds `smtp-server-listen` (`:25` means every interface).
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let addr = match listen.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => listen.to_string(),
    };
    TcpListener::bind(addr).await
}

/// Accepts sessions on `listener` until `stop`; sessions run on `tracker`.
pub fn start(
    listener: TcpListener,
    deps: Arc<Deps>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    let sessions = tracker.clone();
    tracker.spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "smtp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let deps = deps.clone();
            let stop = stop.clone();
            match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    sessions.spawn(async move {
                        let _permit = permit;
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = serve(stream, peer, &deps) => {}
                        }
                    });
                }
                Err(_) => {
                    sessions.spawn(async move {
                        let mut stream = stream;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            stream
                                .write_all(b"421 4.3.2 Too many connections, try again later\r\n"),
                        )
                        .await;
                    });
                }
            }
        }
    });
}

async fn serve(stream: TcpStream, peer: SocketAddr, deps: &Deps) {
    let (read, write) = stream.into_split();
    let mut session = Session::new(BufReader::new(read), write, peer.ip(), deps);
    if let Err(e) = session.run().await {
        tracing::debug!(peer = %peer, error = %e, "smtp session ended");
    }
}

/// A reply: code and text (one line).
type Reply = (u16, String);

fn reply(code: u16, text: impl Into<String>) -> Reply {
    (code, text.into())
}

/// The state of one SMTP session.
struct Session<'a, R, W> {
    reader: R,
    writer: W,
    peer: IpAddr,
    deps: &'a Deps,
    greeted: bool,
    /// `MAIL FROM` given.
    sender: Option<String>,
    recipient: Option<(Recipient, Principal)>,
}

impl<'a, R: AsyncBufReadExt + AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<'a, R, W> {
    fn new(reader: R, writer: W, peer: IpAddr, deps: &'a Deps) -> Self {
        Session {
            reader,
            writer,
            peer,
            deps,
            greeted: false,
            sender: None,
            recipient: None,
        }
    }

    async fn send(&mut self, (code, text): Reply) -> std::io::Result<()> {
        let line = format!("{code} {text}\r\n");
        tokio::time::timeout(COMMAND_TIMEOUT, self.writer.write_all(line.as_bytes()))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let domain = self.deps.config.domain.clone();
        self.send(reply(220, format!("{domain} ESMTP herald")))
            .await?;
        for _ in 0..MAX_COMMANDS {
            let line = match read_line(&mut self.reader, MAX_LINE, COMMAND_TIMEOUT).await? {
                Line::Text(l) => l,
                Line::TooLong => {
                    self.send(reply(500, "5.5.2 Line too long")).await?;
                    continue;
                }
                Line::Eof => return Ok(()),
                Line::TimedOut => {
                    let _ = self
                        .send(reply(421, "4.4.2 Timeout, closing connection"))
                        .await;
                    return Ok(());
                }
            };
            let (verb, arg) = match line.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
                None => (line.trim().to_ascii_uppercase(), String::new()),
            };
            let answer = match verb.as_str() {
                "EHLO" => {
                    self.reset();
                    self.greeted = true;
                    let text = format!(
                        "{domain}\r\n250-SIZE {MAX_MAIL}\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES"
                    );
                    // Multi-line: the first line's code is written with `-`.
                    let line = format!("250-{text}\r\n");
                    tokio::time::timeout(COMMAND_TIMEOUT, self.writer.write_all(line.as_bytes()))
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                    continue;
                }
                "HELO" => {
                    self.reset();
                    self.greeted = true;
                    reply(250, domain.clone())
                }
                "MAIL" => self.mail_from(&arg),
                "RCPT" => self.rcpt_to(&arg).await,
                "DATA" => {
                    self.data().await?;
                    continue;
                }
                "RSET" => {
                    self.reset();
                    reply(250, "2.0.0 OK")
                }
                "NOOP" => reply(250, "2.0.0 OK"),
                "VRFY" => reply(252, "2.5.0 Cannot verify, but will accept"),
                "QUIT" => {
                    self.send(reply(221, "2.0.0 Bye")).await?;
                    return Ok(());
                }
                "STARTTLS" | "AUTH" | "BDAT" | "ETRN" | "EXPN" | "TURN" => {
                    reply(502, "5.5.1 Command not implemented")
                }
                _ => reply(500, "5.5.2 Command not recognized"),
            };
            self.send(answer).await?;
        }
        self.send(reply(421, "4.7.0 Too many commands, closing connection"))
            .await
    }

    fn reset(&mut self) {
        self.sender = None;
        self.recipient = None;
    }

    fn mail_from(&mut self, arg: &str) -> Reply {
        if !self.greeted {
            return reply(503, "5.5.1 Say EHLO first");
        }
        if self.sender.is_some() {
            return reply(503, "5.5.1 Sender already given");
        }
        let Some(path) = strip_keyword(arg, "FROM:") else {
            return reply(501, "5.5.4 Syntax: MAIL FROM:<address>");
        };
        let (address, params) = split_path(path);
        for p in params.split_whitespace() {
            if let Some(size) = p.strip_prefix("SIZE=").or_else(|| p.strip_prefix("size="))
                && size.parse::<usize>().is_ok_and(|n| n > MAX_MAIL)
            {
                return reply(552, "5.3.4 Message size exceeds fixed limit");
            }
        }
        self.sender = Some(address.to_string());
        reply(250, "2.1.0 OK")
    }

    async fn rcpt_to(&mut self, arg: &str) -> Reply {
        if self.sender.is_none() {
            return reply(503, "5.5.1 Need MAIL first");
        }
        let Some(path) = strip_keyword(arg, "TO:") else {
            return reply(501, "5.5.4 Syntax: RCPT TO:<address>");
        };
        if self.recipient.is_some() {
            return reply(452, "4.5.3 Too many recipients, one topic per mail");
        }
        let config = &self.deps.config;
        let recipient = match parse_recipient(path, &config.domain, &config.addr_prefix) {
            Ok(r) => r,
            Err(AddressError::Malformed) => {
                return reply(501, "5.1.3 Bad recipient address syntax");
            }
            Err(AddressError::OtherDomain) => return reply(550, "5.7.1 Relaying denied"),
            Err(AddressError::NoTopic) => return reply(550, "5.1.1 No such topic address"),
        };
        let principal = match &recipient.token {
            None => Principal::anonymous(),
            Some(token) => {
                let mut headers = axum::http::HeaderMap::new();
                let Ok(value) = axum::http::HeaderValue::from_str(&format!("Bearer {token}"))
                else {
                    return reply(535, "5.7.8 Authentication credentials invalid");
                };
                headers.insert(axum::http::header::AUTHORIZATION, value);
                match self.deps.auth.authenticate(&headers, None, self.peer).await {
                    Ok(p) => p,
                    Err(crate::auth::AuthError::TooManyFailures) => {
                        return reply(
                            450,
                            "4.7.1 Too many authentication failures, try again later",
                        );
                    }
                    Err(_) => return reply(535, "5.7.8 Authentication credentials invalid"),
                }
            }
        };
        if self
            .deps
            .auth
            .authorize(&principal, &recipient.topic, Permission::Write)
            .is_err()
        {
            return reply(550, "5.7.1 Not allowed to publish to this topic");
        }
        self.recipient = Some((recipient, principal));
        reply(250, "2.1.5 OK")
    }

    async fn data(&mut self) -> std::io::Result<()> {
        let answer = if self.sender.is_none() {
            reply(503, "5.5.1 Need MAIL first")
        } else if self.recipient.is_none() {
            reply(503, "5.5.1 Need RCPT first")
        } else {
            self.send(reply(354, "End data with <CR><LF>.<CR><LF>"))
                .await?;
            let body =
                tokio::time::timeout(DATA_TIMEOUT, read_data(&mut self.reader, MAX_MAIL)).await;
            match body {
                Err(_) => {
                    let _ = self
                        .send(reply(421, "4.4.2 Timeout, closing connection"))
                        .await;
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(None)) => {
                    self.deps.metrics.received_failed();
                    reply(552, "5.3.4 Message size exceeds fixed limit")
                }
                Ok(Ok(Some(raw))) => self.publish(&raw).await,
            }
        };
        self.reset();
        self.send(answer).await
    }

    /// Publishes a received mail; the reply says how it went.
    async fn publish(&self, raw: &[u8]) -> Reply {
        let Some((recipient, principal)) = &self.recipient else {
            return reply(503, "5.5.1 Need RCPT first");
        };
        let fail = |r: Reply| {
            self.deps.metrics.received_failed();
            r
        };
        let limit = self.deps.herald.config().message_size_limit;
        let Some(content) = content::content(raw, limit) else {
            return fail(reply(554, "5.6.0 Message could not be parsed"));
        };
        let limits = &self.deps.limits;
        let visitor = limits.visitor(self.peer, principal.user_name());
        let admission = match limits.admit_any(&visitor, Charge::Publish).await {
            Ok(a) => a,
            Err(refusal) => {
                limits.refused(refusal.limit);
                return fail(reply(451, "4.7.1 Rate limit reached, try again later"));
            }
        };
        let draft = MessageDraft {
            title: content.title,
            text: content.text,
            ..MessageDraft::default()
        };
        let request = PublishRequest {
            topic: recipient.topic.clone(),
            kind: PublishKind::Message(Box::new(draft)),
        };
        let result = self.deps.herald.publish(request).await;
        limits
            .settle_message(&visitor, admission, result.is_ok())
            .await;
        match result {
            Ok(m) => {
                tracing::debug!(topic = %m.topic, id = %m.id, peer = %self.peer, "published by mail");
                self.deps.metrics.received();
                reply(250, format!("2.0.0 OK, published as {}", m.id))
            }
            Err(e) => {
                tracing::warn!(error = %e, topic = %recipient.topic, "mail not published");
                fail(reply(451, "4.3.0 Temporary failure, try again later"))
            }
        }
    }
}

/// `FROM:<a@b> SIZE=1` → `<a@b> SIZE=1` (keyword in any case, spaces allowed).
fn strip_keyword<'s>(arg: &'s str, keyword: &str) -> Option<&'s str> {
    let head = arg.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| arg[keyword.len()..].trim_start())
}

/// `<a@b> SIZE=1` → (`a@b`, `SIZE=1`).
fn split_path(path: &str) -> (&str, &str) {
    match path.strip_prefix('<').and_then(|r| r.split_once('>')) {
        Some((addr, rest)) => (addr, rest.trim()),
        None => path.split_once(' ').unwrap_or((path, "")),
    }
}

enum Line {
    Text(String),
    TooLong,
    Eof,
    TimedOut,
}

/// One line (without CRLF) of at most `max` bytes; a longer one is read to its
/// end and reported as [`Line::TooLong`].
async fn read_line<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    max: usize,
    timeout: Duration,
) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    let read = async {
        loop {
            let available = reader.fill_buf().await?;
            if available.is_empty() {
                return Ok::<bool, std::io::Error>(false);
            }
            let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (&available[..=i], true),
                None => (available, false),
            };
            let n = chunk.len();
            if buf.len() + n <= max + 2 {
                buf.extend_from_slice(chunk);
            } else {
                too_long = true;
            }
            reader.consume(n);
            if done {
                return Ok(true);
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Ok(Line::TimedOut),
        Ok(Err(e)) => Err(e),
        Ok(Ok(false)) => Ok(Line::Eof),
        Ok(Ok(true)) if too_long => Ok(Line::TooLong),
        Ok(Ok(true)) => {
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            Ok(Line::Text(String::from_utf8_lossy(&buf).into_owned()))
        }
    }
}

/// The mail after `DATA`, up to the line with a single `.`, dot-unstuffed; `None`
/// when it exceeded `max` bytes (it is still read to its end, so the session can
/// go on).
async fn read_data<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut mail = Vec::new();
    let mut too_big = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        // Lines are read whole, but never more than `max` of one is kept.
        let mut limited = (&mut *reader).take(u64::try_from(max).unwrap_or(u64::MAX) + 2);
        let n = limited.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content == b"." {
            return Ok((!too_big).then_some(mail));
        }
        let content = content.strip_prefix(b".").unwrap_or(content);
        if !too_big {
            if mail.len() + content.len() + 2 > max {
                too_big = true;
                mail = Vec::new();
            } else {
                mail.extend_from_slice(content);
                mail.extend_from_slice(b"\r\n");
            }
        }
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_and_data() {
        let mut r = BufReader::new(&b"EHLO x\r\nlong-line-here\r\nlast"[..]);
        assert!(
            matches!(read_line(&mut r, 100, COMMAND_TIMEOUT).await.unwrap(), Line::Text(l) if l == "EHLO x")
        );
        assert!(matches!(
            read_line(&mut r, 5, COMMAND_TIMEOUT).await.unwrap(),
            Line::TooLong
        ));
        assert!(matches!(
            read_line(&mut r, 100, COMMAND_TIMEOUT).await.unwrap(),
            Line::Eof
        ));
        let mut r = BufReader::new(&b"Subject: a\r\n\r\n..dot\r\nend\n.\r\nQUIT\r\n"[..]);
        assert_eq!(
            read_data(&mut r, 1000).await.unwrap().unwrap(),
            b"Subject: a\r\n\r\n.dot\r\nend\r\n".to_vec()
        );
        assert!(
            matches!(read_line(&mut r, 100, COMMAND_TIMEOUT).await.unwrap(), Line::Text(l) if l == "QUIT")
        );
        let mut r = BufReader::new(&b"0123456789\r\n0123456789\r\n.\r\n"[..]);
        assert_eq!(read_data(&mut r, 15).await.unwrap(), None);
    }

    #[test]
    fn paths() {
        assert_eq!(strip_keyword("from: <a@b>", "FROM:"), Some("<a@b>"));
        assert_eq!(strip_keyword("TO<a@b>", "TO:"), None);
        assert_eq!(split_path("<a@b> SIZE=10"), ("a@b", "SIZE=10"));
        assert_eq!(split_path("<>"), ("", ""));
    }
}
