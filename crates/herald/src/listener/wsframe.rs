//! The few WebSocket frames a subscriber sends us (RFC 6455 §5): pings, pongs and
//! close. ntfy's clients send nothing else; data frames are read and ignored.
//! Server-to-client frames are built in `hub` ([`crate::hub::ws_frame`]).

/// Largest client frame payload accepted (ntfy reads at most 64 bytes).
pub const MAX_PAYLOAD: usize = 4096;

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Text, binary or continuation data: ignored by the server.
    Data,
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
    /// Unmasked client frame, reserved bits or opcode, or a fragmented control frame (1002).
    #[error("protocol error")]
    Protocol,
}

impl FrameError {
    /// The close code to answer with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooLarge => 1009,
            FrameError::Protocol => 1002,
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
        0x0..=0x2 => ClientFrame::Data,
        0x8 => ClientFrame::Close(
            (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
        ),
        0x9 => ClientFrame::Ping(payload),
        0xA => ClientFrame::Pong,
        _ => return Err(FrameError::Protocol),
    };
    Ok(Some((frame, pos + len)))
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
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn data_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let f = masked(0x1, &payload);
            prop_assert_eq!(parse(&f), Ok(Some((ClientFrame::Data, f.len()))));
        }
    }
}
