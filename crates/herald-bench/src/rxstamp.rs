//! Kernel receive timestamps for subscriber sockets (`--rx-timestamps`).
//!
//! Why: by default an event's arrival is when this process's code reads it, so
//! the reported latency includes the generator's own scheduling and per-read cost
//! (~13 µs per WebSocket event). When the server is given every core of a small
//! machine the generator competes with it for CPU and that cost, not the server,
//! sets the tail. With `SO_TIMESTAMPNS` the kernel stamps each received segment
//! (`CLOCK_REALTIME`) and `recvmsg` returns the stamp of the last segment it
//! copied, so arrival no longer depends on when the generator gets to read.
//!
//! Where the stamp is taken (the kernel's `Documentation/networking/timestamping.rst`,
//! `SOF_TIMESTAMPING_RX_SOFTWARE`: when a device driver hands the packet to the
//! kernel's receive stack): on loopback the driver is `loopback_xmit`, which runs
//! inside the *sender's* `send`, so the stamp is the moment the server's write of
//! that subscriber's bytes reached the receiving side of the stack
//! (`net.core.netdev_tstamp_prequeue=1`, the default, stamps before the backlog
//! queue; with 0 it is stamped in the softirq that follows, normally still in the
//! sender's call). The unit test below checks the stamp is earlier than the read.
//!
//! An event completed by a read that also carried later bytes gets the later
//! segment's stamp (TCP keeps the newest stamp when it coalesces segments): a
//! bias towards higher latency, never lower.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Room for one `SCM_TIMESTAMPNS` control message (`CMSG_SPACE(16)` is 32 on
/// 64-bit Linux) with margin.
const CMSG_BUF: usize = 64;

/// A subscriber's TCP stream that can report the kernel receive time of the last
/// bytes it read. Without timestamps it reads exactly like the plain stream.
#[derive(Debug)]
pub(crate) struct RxStream {
    inner: TcpStream,
    stamped: bool,
    /// `CLOCK_REALTIME` ns of the last segment of the last non-empty read;
    /// `None` when that read carried no stamp (or timestamps are off).
    last_rx_ns: Option<u64>,
}

impl RxStream {
    /// Wraps `inner`; with `stamped`, asks the kernel to timestamp what it receives.
    pub(crate) fn new(inner: TcpStream, stamped: bool) -> io::Result<Self> {
        if stamped {
            enable(&inner)?;
        }
        Ok(RxStream {
            inner,
            stamped,
            last_rx_ns: None,
        })
    }

    /// `inner` read plainly, without timestamps.
    pub(crate) fn plain(inner: TcpStream) -> Self {
        RxStream {
            inner,
            stamped: false,
            last_rx_ns: None,
        }
    }

    /// Kernel receive time (`CLOCK_REALTIME` ns) of the last bytes read.
    pub(crate) fn last_rx_ns(&self) -> Option<u64> {
        self.last_rx_ns
    }
}

#[cfg(target_os = "linux")]
fn enable(stream: &TcpStream) -> io::Result<()> {
    nix::sys::socket::setsockopt(
        &stream.as_fd(),
        nix::sys::socket::sockopt::ReceiveTimestampns,
        &true,
    )
    .map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn enable(_stream: &TcpStream) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "kernel receive timestamps need Linux",
    ))
}

/// One `recvmsg` into `buf`: the byte count and the stamp of the last segment.
#[cfg(target_os = "linux")]
fn recv_stamped(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut cmsg = [0u8; CMSG_BUF];
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg[..]),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut stamp = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            stamp = timespec_ns(ts.tv_sec(), ts.tv_nsec());
        }
    }
    Ok((msg.bytes, stamp))
}

#[cfg(not(target_os = "linux"))]
fn recv_stamped(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    Ok((stream.try_read(buf)?, None))
}

/// A `timespec` as ns since the epoch; `None` for one before it (not a real stamp).
fn timespec_ns(sec: i64, nsec: i64) -> Option<u64> {
    let sec = u64::try_from(sec).ok()?;
    let nsec = u64::try_from(nsec).ok()?;
    sec.checked_mul(1_000_000_000)?.checked_add(nsec)
}

impl AsyncRead for RxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.stamped {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let inner = &this.inner;
            match inner.try_io(Interest::READABLE, || recv_stamped(inner, unfilled)) {
                Ok((n, stamp)) => {
                    if n > 0 {
                        this.last_rx_ns = stamp;
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: `try_io` cleared it, wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for RxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn realtime_ns() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    async fn pair(stamped: bool) -> (TcpStream, RxStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        // Each write its own segment, not held back by Nagle.
        server.set_nodelay(true).expect("nodelay");
        (server, RxStream::new(client, stamped).expect("enable"))
    }

    /// The stamp is the arrival of the bytes, not the read: bytes sent, then read
    /// only after a pause, carry a stamp between the send and the read. (An
    /// ordering of two clock readings around a sleep, not a timing.)
    #[tokio::test]
    async fn stamp_is_arrival_not_read() {
        let (mut server, mut client) = pair(true).await;
        let mut buf = [0u8; 256];
        // The first socket of the host that asks turns timestamping on through
        // deferred work in the kernel (`net_enable_timestamp`): segments received
        // before that carry none. Wait for a stamped one (the benchmark counts
        // such reads as `rx_unstamped`; its subscribers are open well before).
        let mut warm = false;
        for _ in 0..100 {
            server.write_all(b"w").await.expect("write");
            let n = client.read(&mut buf).await.expect("read");
            assert_eq!(&buf[..n], b"w");
            if client.last_rx_ns().is_some() {
                warm = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(warm, "no receive timestamp after 100 reads");
        for round in 0..3u8 {
            let before_send = realtime_ns();
            server.write_all(&[round; 64]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(30)).await;
            let before_read = realtime_ns();
            let n = client.read(&mut buf).await.expect("read");
            assert_eq!(&buf[..n], &[round; 64]);
            let stamp = client.last_rx_ns().expect("a receive timestamp");
            assert!(
                (before_send..=before_read).contains(&stamp),
                "stamp {stamp} outside {before_send}..={before_read}"
            );
        }
        // Two segments read at once: the stamp is the later one's.
        server.write_all(b"a").await.expect("write");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let between = realtime_ns();
        server.write_all(b"b").await.expect("write");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let n = client.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"ab");
        assert!(client.last_rx_ns().expect("stamp") >= between);
    }

    #[tokio::test]
    async fn unstamped_stream_reads_plainly() {
        let (mut server, mut client) = pair(false).await;
        server.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 16];
        let n = client.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(client.last_rx_ns(), None);
        client.write_all(b"back").await.expect("write");
        let n = server.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"back");
    }

    #[test]
    fn timespec_conversion() {
        assert_eq!(timespec_ns(1, 5), Some(1_000_000_005));
        assert_eq!(timespec_ns(-1, 0), None);
        assert_eq!(timespec_ns(i64::MAX, 0), None);
    }
}
