//! WebSocket framing (RFC 6455 §5) for the direct path: the frames the server sends
//! ([`frame`], unmasked and unfragmented) and the few a subscriber sends us: pings,
//! pongs and close. ntfy's clients send nothing else; data frames are read and
//! ignored, but still checked as RFC 6455 requires (a continuation needs a message to
//! continue, text must be UTF-8, [`Messages`]), as are close frames (§5.5.1, §7.4), so
//! a broken peer is closed with the code the RFC names rather than served on.

use bytes::Bytes;

/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// An unmasked, final server frame with `opcode` (RFC 6455 §5.2).
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let header = frame_header(opcode, payload.len());
    let mut buf = Vec::with_capacity(payload.len() + header.len());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(payload);
    Bytes::from(buf)
}

/// The header of an unmasked, final frame with a payload of `len` bytes.
pub(crate) fn frame_header(opcode: u8, len: usize) -> FrameHeader {
    let mut bytes = [0u8; 10];
    bytes[0] = 0x80 | opcode;
    let len_bytes = match len {
        n if n < 126 => {
            bytes[1] = n as u8;
            2
        }
        n if n <= u16::MAX as usize => {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            4
        }
        n => {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(n as u64).to_be_bytes());
            10
        }
    };
    FrameHeader {
        bytes,
        len: len_bytes,
    }
}

/// A frame header (2, 4 or 10 bytes), without an allocation.
pub(crate) struct FrameHeader {
    bytes: [u8; 10],
    len: usize,
}

impl std::ops::Deref for FrameHeader {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A close frame carrying `code`.
pub fn close_frame(code: u16) -> Bytes {
    frame(OP_CLOSE, &code.to_be_bytes())
}

/// Largest client frame payload accepted (ntfy reads at most 64 bytes).
pub const MAX_PAYLOAD: usize = 4096;

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Text, binary or continuation data (its opcode, FIN bit and payload): checked
    /// by [`Messages`], otherwise ignored.
    Data {
        opcode: u8,
        fin: bool,
        payload: Vec<u8>,
    },
    Ping(Vec<u8>),
    Pong,
    /// Close, with the status code if one was sent.
    Close(Option<u16>),
}

/// Why the client's byte stream is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Frame larger than [`MAX_PAYLOAD`] (close code 1009).
    #[error("frame too large")]
    TooLarge,
    /// Unmasked client frame, reserved bits or opcode, a fragmented control frame,
    /// a continuation without a message or a new message inside one, a 1-byte or
    /// invalid close code (1002).
    #[error("protocol error")]
    Protocol,
    /// A text message or close reason that is not UTF-8 (1007).
    #[error("invalid UTF-8")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code to answer with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooLarge => 1009,
            FrameError::Protocol => 1002,
            FrameError::InvalidUtf8 => 1007,
        }
    }
}

/// Decodes one frame from the start of `buf`. Returns the frame and how many bytes it
/// used, or `Ok(None)` if more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(ClientFrame, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol);
    }
    let opcode = b0 & 0x0f;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol);
    }
    let (len, mut pos) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            (usize::try_from(len).unwrap_or(usize::MAX), 10)
        }
        n => (n as usize, 2),
    };
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge);
    }
    let is_control = opcode & 0x08 != 0;
    if is_control && (!fin || len > 125) {
        return Err(FrameError::Protocol);
    }
    if buf.len() < pos + 4 + len {
        return Ok(None);
    }
    let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
    pos += 4;
    let payload: Vec<u8> = buf[pos..pos + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    let frame = match opcode {
        0x0..=0x2 => ClientFrame::Data {
            opcode,
            fin,
            payload,
        },
        0x8 => ClientFrame::Close(close_code(&payload)?),
        0x9 => ClientFrame::Ping(payload),
        0xA => ClientFrame::Pong,
        _ => return Err(FrameError::Protocol),
    };
    Ok(Some((frame, pos + len)))
}

/// Whether a `Sec-WebSocket-Key` is what RFC 6455 §4.1 requires: the base64 of 16
/// bytes (a server must refuse a handshake with any other, §4.2.1).
pub fn websocket_key_is_valid(key: &[u8]) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

/// The status code of a close frame's payload (RFC 6455 §5.5.1): none, or two bytes
/// of code, valid per §7.4, then a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_is_valid(code) {
                return Err(FrameError::Protocol);
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Whether a peer may send `code` (RFC 6455 §7.4.1 and IANA's registry): the
/// defined codes except those only for reporting (1005, 1006, 1015) and the
/// reserved 1004, or a code for libraries or applications (3000–4999).
fn close_code_is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Where the client's data messages stand: what RFC 6455 requires of fragments
/// (§5.4) and text (§8.1), checked without keeping the data (a few bytes at most:
/// the start of a UTF-8 character split between two frames).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Messages {
    state: MessageState,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum MessageState {
    /// Between messages.
    #[default]
    Idle,
    /// Inside a fragmented binary message.
    Binary,
    /// Inside a fragmented text message, with the bytes of an incomplete character
    /// at the end of the last fragment.
    Text { pending: [u8; 3], len: u8 },
}

impl Messages {
    /// Checks one data frame (as [`ClientFrame::Data`] has it).
    pub fn check(&mut self, opcode: u8, fin: bool, payload: &[u8]) -> Result<(), FrameError> {
        let pending = match (opcode, &self.state) {
            (0x0, MessageState::Idle) => return Err(FrameError::Protocol),
            (0x1 | 0x2, MessageState::Binary | MessageState::Text { .. }) => {
                return Err(FrameError::Protocol);
            }
            (0x0, MessageState::Binary) | (0x2, MessageState::Idle) => None,
            (0x0, MessageState::Text { pending, len }) => Some(pending[..*len as usize].to_vec()),
            (0x1, MessageState::Idle) => Some(Vec::new()),
            _ => return Err(FrameError::Protocol),
        };
        let Some(mut text) = pending else {
            self.state = if fin {
                MessageState::Idle
            } else {
                MessageState::Binary
            };
            return Ok(());
        };
        text.extend_from_slice(payload);
        let incomplete = match std::str::from_utf8(&text) {
            Ok(_) => &text[text.len()..],
            // The last character may continue in the next fragment.
            Err(e) if e.error_len().is_none() && !fin => &text[e.valid_up_to()..],
            Err(_) => return Err(FrameError::InvalidUtf8),
        };
        self.state = if fin {
            MessageState::Idle
        } else {
            let mut pending = [0u8; 3];
            pending[..incomplete.len()].copy_from_slice(incomplete);
            MessageState::Text {
                pending,
                len: incomplete.len() as u8,
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x80 | opcode];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn control_frames() {
        let ping = masked(0x9, b"hi");
        assert_eq!(
            parse(&ping),
            Ok(Some((ClientFrame::Ping(b"hi".to_vec()), ping.len())))
        );
        let close = masked(0x8, &1000u16.to_be_bytes());
        assert_eq!(
            parse(&close),
            Ok(Some((ClientFrame::Close(Some(1000)), close.len())))
        );
        assert_eq!(parse(&masked(0xA, b"")), Ok(Some((ClientFrame::Pong, 6))));
        assert_eq!(parse(&ping[..3]), Ok(None));
    }

    #[test]
    fn bad_frames() {
        assert_eq!(parse(&[0x89, 0x00]), Err(FrameError::Protocol), "unmasked");
        assert_eq!(
            parse(&masked(0x3, b"")),
            Err(FrameError::Protocol),
            "reserved opcode"
        );
        assert_eq!(parse(&masked(0x1, &[0; 5000])), Err(FrameError::TooLarge));
        assert_eq!(
            parse(&masked(0x8, &[3])),
            Err(FrameError::Protocol),
            "1-byte close"
        );
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(
                parse(&masked(0x8, &code.to_be_bytes())),
                Err(FrameError::Protocol),
                "close code {code}"
            );
        }
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let f = masked(0x8, &code.to_be_bytes());
            assert_eq!(
                parse(&f),
                Ok(Some((ClientFrame::Close(Some(code)), f.len())))
            );
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        assert_eq!(
            parse(&masked(0x8, &bad_reason)),
            Err(FrameError::InvalidUtf8)
        );
    }

    #[test]
    fn websocket_keys_are_base64_of_16_bytes() {
        assert!(websocket_key_is_valid(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!websocket_key_is_valid(b"not-a-key"));
        assert!(!websocket_key_is_valid(b"dGhlIHNhbXBsZSBub25jZQ"));
        // 24 characters, but 17 bytes' worth with different padding is refused.
        assert!(!websocket_key_is_valid(b"dGhlIHNhbXBsZSBub25jZSE="));
        assert!(!websocket_key_is_valid(b""));
    }

    #[test]
    fn messages_follow_rfc6455() {
        let mut m = Messages::default();
        assert_eq!(
            m.check(0x0, true, b"x"),
            Err(FrameError::Protocol),
            "continuation first"
        );
        let mut m = Messages::default();
        assert_eq!(
            m.check(0x1, true, &[0xc3, 0x28]),
            Err(FrameError::InvalidUtf8)
        );
        // "é" (c3 a9) split between two fragments is fine; a new message inside
        // one is not.
        let mut m = Messages::default();
        assert_eq!(m.check(0x1, false, &[b'a', 0xc3]), Ok(()));
        assert_eq!(m.check(0x2, true, b""), Err(FrameError::Protocol));
        assert_eq!(m.check(0x0, true, &[0xa9, b'b']), Ok(()));
        assert_eq!(
            m.check(0x0, true, b""),
            Err(FrameError::Protocol),
            "after the end"
        );
        // An incomplete character at the end of the message is invalid.
        let mut m = Messages::default();
        assert_eq!(m.check(0x1, false, b"ok"), Ok(()));
        assert_eq!(m.check(0x0, true, &[0xc3]), Err(FrameError::InvalidUtf8));
        // Binary data is not checked.
        let mut m = Messages::default();
        assert_eq!(m.check(0x2, false, &[0xff]), Ok(()));
        assert_eq!(m.check(0x0, true, &[0xff]), Ok(()));
        assert_eq!(m.check(0x1, true, "ü".as_bytes()), Ok(()));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn data_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let f = masked(0x1, &payload);
            let frame = ClientFrame::Data { opcode: 0x1, fin: true, payload };
            prop_assert_eq!(parse(&f), Ok(Some((frame, f.len()))));
        }
    }
}
