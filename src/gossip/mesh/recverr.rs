//! The mesh's UDP socket on Linux: quinn's own socket with `IP_RECVERR` (and
//! `IPV6_RECVERR`) on and a receive buffer that holds a burst ([`RECEIVE_BUFFER`]), and a
//! reader of the socket's error queue.
//!
//! An unconnected UDP socket drops the ICMP errors its datagrams cause unless asked to keep
//! them. With the option on, the kernel queues each one with the destination of the datagram
//! that caused it and the start of that datagram: a *port unreachable* for a peer's exact
//! address that quotes a datagram this node sent there means no process listens there any
//! more (it crashed), which the mesh acts on at once ([`super::links`]). The socket keeps
//! the fingerprints of what it sends to peers for that check ([`super::sent`]).
//!
//! The option also makes the socket's next `recvmsg` or `sendmsg` fail once with the error
//! (`ECONNREFUSED`). quinn's socket logs and drops such a send and retries such a receive;
//! [`RecvErrSocket`] makes sure neither reaches quinn as an error (which would stop its
//! endpoint or connection), whatever runtime wraps the socket.

use std::{
    fmt,
    io::{self, IoSliceMut},
    mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
};

use quinn::{
    AsyncUdpSocket, Runtime, UdpPoller,
    udp::{RecvMeta, Transmit},
};
use tokio::io::{Interest, unix::AsyncFd};

use super::sent::{QUOTED, Sent};

/// Bytes of received datagrams the kernel may hold for the mesh socket until quinn reads
/// them. Linux's default (`net.core.rmem_default`, about 200 KiB) overflows in a burst of
/// broadcasts: the kernel drops what does not fit, and QUIC sends it again a round trip
/// later, with its congestion window halved. 4 MiB holds 3 ms at 10 Gbit/s. The kernel
/// grants no more than `net.core.rmem_max`.
pub(crate) const RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// Most errors read from the queue in one go, before other tasks get a turn.
const MAX_READ_AT_ONCE: usize = 64;

/// Errors a datagram's ICMP answer makes `recvmsg` or `sendmsg` return once.
fn is_icmp_errno(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENETDOWN
                | libc::EPROTO
                | libc::EOPNOTSUPP
        )
    )
}

/// What the kernel said about one datagram this socket sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    /// Where the datagram was going.
    pub(crate) dest: SocketAddr,
    /// What came back.
    pub(crate) kind: Kind,
    /// The start of the datagram it is about, as quoted by whoever sent the error; `None`
    /// when fewer than [`QUOTED`] bytes were.
    pub(crate) quoted: Option<[u8; QUOTED]>,
}

/// The kind of an error report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// ICMP (or ICMPv6) port unreachable: nothing listens at the destination port.
    PortUnreachable,
    /// Anything else: another ICMP message, or a local error.
    Other {
        /// `SO_EE_ORIGIN_*`.
        origin: u8,
        /// ICMP type.
        icmp_type: u8,
        /// ICMP code.
        code: u8,
    },
}

impl Kind {
    /// Classify an extended error: origin, ICMP type and code.
    pub(crate) fn of(origin: u8, icmp_type: u8, code: u8) -> Self {
        match (origin, icmp_type, code) {
            // ICMP destination unreachable / port unreachable (RFC 792).
            (libc::SO_EE_ORIGIN_ICMP, 3, 3)
            // ICMPv6 destination unreachable / port unreachable (RFC 4443).
            | (libc::SO_EE_ORIGIN_ICMP6, 1, 4) => Kind::PortUnreachable,
            _ => Kind::Other {
                origin,
                icmp_type,
                code,
            },
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::PortUnreachable => f.write_str("port unreachable"),
            Kind::Other {
                origin,
                icmp_type,
                code,
            } => write!(f, "origin {origin}, type {icmp_type}, code {code}"),
        }
    }
}

/// Bind the mesh socket at `addr` with error reports on: the socket for quinn, which
/// records what it sends in `sent`, the reader of its error queue, and the reader of the
/// count of datagrams the kernel dropped for it.
pub(crate) fn bind(
    addr: SocketAddr,
    runtime: &dyn Runtime,
    sent: Arc<Sent>,
) -> io::Result<(Arc<dyn AsyncUdpSocket>, ErrorQueue, SocketDrops)> {
    let socket = udp_socket(addr)?;
    let fd = socket.as_raw_fd();
    if addr.is_ipv6() {
        set_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR)?;
        // IPv4 peers of a dual-stack socket: their errors come through the IPv4 option.
        if let Err(e) = set_option(fd, libc::IPPROTO_IP, libc::IP_RECVERR) {
            tracing::debug!("IP_RECVERR on an IPv6 socket: {e}");
        }
    } else {
        set_option(fd, libc::IPPROTO_IP, libc::IP_RECVERR)?;
    }
    // A second descriptor of the same socket, registered for error readiness only: quinn's
    // socket is registered for reading and writing, and is not reachable from here.
    let errors = socket.try_clone()?;
    // SAFETY: the std socket owns its descriptor, which stays open and the same until the
    // `AsyncFd` drops it.
    let queue = ErrorQueue(unsafe { AsyncFd::register_with_interest(errors, Interest::ERROR) }?);
    let drops = SocketDrops::new(socket.try_clone()?)?;
    let inner = runtime.wrap_udp_socket(socket)?;
    Ok((Arc::new(RecvErrSocket { inner, sent }), queue, drops))
}

/// Reads, through a descriptor of its own, how many datagrams the kernel dropped for the
/// mesh socket: for want of room in its receive buffer, nearly always (`SO_MEMINFO`).
pub(crate) struct SocketDrops {
    socket: std::net::UdpSocket,
    /// The kernel's count when last read.
    seen: AtomicU32,
}

impl SocketDrops {
    fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        let seen = AtomicU32::new(kernel_drops(socket.as_raw_fd())?);
        Ok(Self { socket, seen })
    }

    /// Datagrams dropped since the last call (or since the socket was bound).
    pub(crate) fn since_last(&self) -> io::Result<u32> {
        let now = kernel_drops(self.socket.as_raw_fd())?;
        // The kernel's count is 32 bits wide, and wraps.
        Ok(now.wrapping_sub(self.seen.swap(now, Ordering::Relaxed)))
    }
}

/// The kernel's count of datagrams dropped for the socket `fd`.
fn kernel_drops(fd: RawFd) -> io::Result<u32> {
    const DROPS: usize = libc::SK_MEMINFO_DROPS as usize;
    let mut info = [0u32; DROPS + 1];
    let mut len = mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `fd` is an open socket; the kernel writes at most `len` bytes into `info`,
    // which is that long, and sets `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < mem::size_of_val(&info) {
        return Err(io::Error::other("SO_MEMINFO without the count of drops"));
    }
    Ok(info[DROPS])
}

/// A UDP socket bound to `addr` with a receive buffer of [`RECEIVE_BUFFER`] bytes: the
/// operating system's socket of the mesh (and of the benchmark's floor, see
/// [`super::floor`]).
pub(super) fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    enlarge_receive_buffer(&socket)?;
    Ok(socket)
}

/// Ask for a receive buffer of [`RECEIVE_BUFFER`] bytes, and warn when the kernel's cap
/// leaves it short.
fn enlarge_receive_buffer(socket: &std::net::UdpSocket) -> io::Result<()> {
    socket2::SockRef::from(socket).set_recv_buffer_size(RECEIVE_BUFFER)?;
    let granted = receive_buffer(socket)?;
    if granted < RECEIVE_BUFFER {
        tracing::warn!(
            "the kernel granted the mesh socket a receive buffer of {granted} bytes of the \
             {RECEIVE_BUFFER} asked for, as net.core.rmem_max caps it: a burst larger than \
             the buffer is dropped by the kernel and sent again by QUIC, late. Raise the \
             cap: sysctl -w net.core.rmem_max={RECEIVE_BUFFER}"
        );
    }
    Ok(())
}

/// The receive buffer the kernel granted `socket`, in bytes of datagrams: Linux reports
/// twice what it granted (the other half pays for its bookkeeping).
fn receive_buffer(socket: &std::net::UdpSocket) -> io::Result<usize> {
    Ok(socket2::SockRef::from(socket).recv_buffer_size()? / 2)
}

fn set_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket; the option value is a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// quinn's socket, with the errors an ICMP answer makes a send or receive return kept from
/// quinn, and what it sends to peers recorded.
struct RecvErrSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    sent: Arc<Sent>,
}

impl fmt::Debug for RecvErrSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl AsyncUdpSocket for RecvErrSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match self.inner.try_send(transmit) {
            Ok(()) => {
                let (dest, segment) = (transmit.destination, transmit.segment_size);
                self.sent.record(dest, transmit.contents, segment);
                Ok(())
            }
            // The datagram is lost, as any datagram may be: QUIC sends it again.
            Err(e) if is_icmp_errno(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Each such error is returned once per ICMP message: bounded, then another turn.
        for _ in 0..MAX_READ_AT_ONCE {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Err(e)) if is_icmp_errno(&e) => continue,
                other => return other,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The error queue of the mesh socket.
pub(crate) struct ErrorQueue(AsyncFd<std::net::UdpSocket>);

impl ErrorQueue {
    /// Wait for errors, then read what is queued (at most [`MAX_READ_AT_ONCE`]) into `out`.
    pub(crate) async fn next(&self, out: &mut Vec<Report>) -> io::Result<()> {
        loop {
            let mut guard = self.0.ready(Interest::ERROR).await?;
            let fd = self.0.as_raw_fd();
            match guard.try_io(|_| read_all(fd, out)) {
                // Empty now: readiness is cleared, and the next error sets it again.
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(Err(e)) => return Err(e),
                Ok(Ok(())) | Err(_) => {}
            }
            if !out.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Read reports until the queue is empty (`WouldBlock`) or [`MAX_READ_AT_ONCE`] were read.
fn read_all(fd: RawFd, out: &mut Vec<Report>) -> io::Result<()> {
    for _ in 0..MAX_READ_AT_ONCE {
        if let Some(report) = read_one(fd)? {
            out.push(report);
        }
    }
    Ok(())
}

/// Read one entry of the error queue: `Ok(None)` for an entry that is no ICMP report.
fn read_one(fd: RawFd) -> io::Result<Option<Report>> {
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    // The start of the datagram that caused the error, as quoted.
    let mut data = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Room for one extended error and its offender address, aligned for cmsghdr.
    let mut control = [0u64; 32];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control) as _;
    let read = loop {
        // SAFETY: every pointer in `msg` points to a live buffer of the length given.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let quoted = data
        .get(..read.min(data.len()))
        .and_then(|d| d.first_chunk::<QUOTED>())
        .copied();
    let Some(dest) = sockaddr(&name, msg.msg_namelen) else {
        return Ok(None);
    };
    // SAFETY: `msg` was filled by the kernel; the CMSG_* functions walk its control buffer
    // within `msg_controllen`, and the extended error is read unaligned from within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            let is_err = (level == libc::IPPROTO_IP && kind == libc::IP_RECVERR)
                || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_RECVERR);
            let len = (*cmsg).cmsg_len as usize;
            if is_err
                && len >= libc::CMSG_LEN(mem::size_of::<libc::sock_extended_err>() as u32) as usize
            {
                let ee = std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>(),
                );
                return Ok(Some(Report {
                    dest,
                    kind: Kind::of(ee.ee_origin, ee.ee_type, ee.ee_code),
                    quoted,
                }));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(None)
}

/// The socket address in `name`, if it is an IPv4 or IPv6 one.
fn sockaddr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in (family and length checked).
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family and length checked).
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_port_unreachable_counts() {
        assert_eq!(
            Kind::of(libc::SO_EE_ORIGIN_ICMP, 3, 3),
            Kind::PortUnreachable
        );
        assert_eq!(
            Kind::of(libc::SO_EE_ORIGIN_ICMP6, 1, 4),
            Kind::PortUnreachable
        );
        // Host and network unreachable, a v4 code read as v6 and the reverse, local errors.
        for (origin, t, c) in [
            (libc::SO_EE_ORIGIN_ICMP, 3, 1),
            (libc::SO_EE_ORIGIN_ICMP, 3, 0),
            (libc::SO_EE_ORIGIN_ICMP, 1, 4),
            (libc::SO_EE_ORIGIN_ICMP6, 3, 3),
            (libc::SO_EE_ORIGIN_ICMP6, 1, 3),
            (libc::SO_EE_ORIGIN_LOCAL, 3, 3),
        ] {
            assert!(
                matches!(Kind::of(origin, t, c), Kind::Other { .. }),
                "{origin} {t} {c}"
            );
        }
    }

    /// The kernel holds up to [`RECEIVE_BUFFER`] bytes of datagrams for the mesh socket, or
    /// as many as `net.core.rmem_max` lets a process ask for, not its default of about
    /// 200 KiB: a burst larger than the buffer is dropped by the kernel and sent again by
    /// QUIC, late, with its congestion window halved.
    #[tokio::test]
    async fn the_socket_asks_for_a_receive_buffer_that_holds_a_burst() {
        let (_socket, queue, _) = bind(
            "127.0.0.1:0".parse().unwrap(),
            &quinn::TokioRuntime,
            Arc::new(Sent::default()),
        )
        .unwrap();
        let granted = receive_buffer(queue.0.get_ref()).unwrap();
        let path = "/proc/sys/net/core/rmem_max";
        let max: usize = (std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")))
            .trim()
            .parse()
            .unwrap();
        let want = RECEIVE_BUFFER.min(max);
        assert!(
            granted >= want,
            "granted {granted} bytes, asked for {RECEIVE_BUFFER}, rmem_max {max}"
        );
    }

    /// A datagram to a closed port on 127.0.0.1 comes back as a report naming that port
    /// and quoting the datagram, and the error it leaves on the socket never reaches
    /// quinn's receive.
    #[tokio::test]
    async fn a_closed_port_is_reported_with_its_address_and_the_datagram() {
        let sent = Arc::new(Sent::default());
        let (socket, queue, _) = bind(
            "127.0.0.1:0".parse().unwrap(),
            &quinn::TokioRuntime,
            sent.clone(),
        )
        .unwrap();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dest = closed.local_addr().unwrap();
        drop(closed);
        sent.watch(dest);
        let payload: Vec<u8> = (0..32).collect();
        let mut poller = socket.clone().create_io_poller();
        std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
            .await
            .unwrap();
        socket
            .try_send(&Transmit {
                destination: dest,
                ecn: None,
                contents: &payload,
                segment_size: None,
                src_ip: None,
            })
            .unwrap();
        let mut reports = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), queue.next(&mut reports))
            .await
            .expect("a report in time")
            .unwrap();
        assert_eq!(
            reports,
            [Report {
                dest,
                kind: Kind::PortUnreachable,
                quoted: payload.first_chunk().copied(),
            }]
        );
        assert!(sent.quotes_one(dest, &payload), "the datagram was recorded");
    }
}
