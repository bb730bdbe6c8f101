//! chitchat's own UDP socket as a codec: envelopes to bytes, and bytes to envelopes.
//!
//! chitchat keeps its envelope encoding to itself, but its public UDP socket encodes on
//! `send` and decodes on `recv`. So the transport runs two of them on 127.0.0.1: the
//! [`Encoder`] sends each outgoing envelope to a loopback tap of ours, and the [`Decoder`]
//! parses what an inject socket of ours sends it. chitchat's socket parses whatever reaches
//! its port, and any local process can send there: each codec socket is connected to our
//! own socket at the other end (found among this process's descriptors by its address), so
//! that the kernel drops every datagram from anyone else.
//!
//! Every envelope injected is followed by a marker (a Syn naming the marker's number as its
//! cluster id): the decoder's answer is known at once, its envelope or, if it dropped it,
//! the marker, with no wait for a timeout.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use chitchat::{
    ChitchatEnvelope, ChitchatMessage,
    transport::{Socket, UdpSocket as CodecSocket},
};
use tokio::net::UdpSocket;

/// How long a codec may take (it answers at once; this bounds a wait on a broken one).
const CODEC_WAIT: Duration = Duration::from_secs(1);
/// The cluster ids of markers start so; no cluster id of ours can (see [`marker`]).
const MARKER: &str = "\u{0}marker ";

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// Turns envelopes into bytes.
pub(crate) struct Encoder {
    socket: CodecSocket,
    tap: UdpSocket,
    buf: Box<[u8]>,
}

/// A codec socket, and our socket at its other end, each taking datagrams from the other
/// only.
async fn pair() -> io::Result<(CodecSocket, UdpSocket)> {
    let codec = CodecSocket::open(loopback())
        .await
        .map_err(io::Error::other)?;
    let ours = UdpSocket::bind(loopback()).await?;
    let codec_addr = codec.local_addr().map_err(io::Error::other)?;
    ours.connect(codec_addr).await?;
    only_from(codec_addr, ours.local_addr()?)?;
    Ok((codec, ours))
}

impl Encoder {
    pub(crate) async fn open() -> io::Result<Self> {
        let (socket, tap) = pair().await?;
        Ok(Self {
            socket,
            tap,
            buf: vec![0; super::seal::MAX_ENVELOPE + 1].into_boxed_slice(),
        })
    }

    /// The bytes of `envelope`.
    pub(crate) async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<&[u8]> {
        // Bytes an earlier, interrupted encoding left at the tap are not this envelope's.
        while self.tap.try_recv(&mut self.buf).is_ok() {}
        let tap_addr = self.tap.local_addr()?;
        let sent = self.socket.send(tap_addr, envelope).await?.num_bytes_sent;
        let len = tokio::time::timeout(CODEC_WAIT, self.tap.recv(&mut self.buf))
            .await
            .map_err(|_| anyhow::anyhow!("the gossip encoder did not answer"))??;
        if len != sent {
            anyhow::bail!("the gossip encoder answered {len} bytes for an envelope of {sent}");
        }
        Ok(&self.buf[..len])
    }
}

/// Why bytes did not become an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Undecoded {
    /// chitchat does not parse them (known at once, by the marker).
    #[error("chitchat does not parse it")]
    Refused,
    /// The decoder did not answer.
    #[error("the gossip decoder did not answer")]
    Broken,
}

/// Turns bytes into envelopes.
pub(crate) struct Decoder {
    socket: CodecSocket,
    inject: UdpSocket,
    /// Number of the last marker sent.
    marker: u64,
}

/// The bytes of marker `n`: a V0 Syn with an empty digest, naming it as its cluster id.
fn marker(n: u64) -> Vec<u8> {
    let id = format!("{MARKER}{n}");
    let mut out = 45_139u16.to_le_bytes().to_vec();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out
}

/// The number of the marker `envelope` is, if it is one.
fn marker_number(envelope: &ChitchatEnvelope) -> Option<u64> {
    match &envelope.message {
        ChitchatMessage::Syn { cluster_id, .. } => cluster_id.strip_prefix(MARKER)?.parse().ok(),
        _ => None,
    }
}

impl Decoder {
    pub(crate) async fn open() -> io::Result<Self> {
        let (socket, inject) = pair().await?;
        Ok(Self {
            socket,
            inject,
            marker: 0,
        })
    }

    /// The envelope of `bytes`.
    pub(crate) async fn decode(&mut self, bytes: &[u8]) -> Result<ChitchatEnvelope, Undecoded> {
        self.marker += 1;
        let n = self.marker;
        let broken = |_| Undecoded::Broken;
        self.inject.send(bytes).await.map_err(broken)?;
        self.inject.send(&marker(n)).await.map_err(broken)?;
        let deadline = tokio::time::Instant::now() + CODEC_WAIT;
        let mut ours = None;
        // Bounded: each turn takes one datagram, and the deadline ends the wait.
        for _ in 0..64 {
            let got = tokio::time::timeout_at(deadline, self.socket.recv())
                .await
                .map_err(|_| Undecoded::Broken)?
                .map_err(|_| Undecoded::Broken)?;
            match marker_number(&got.envelope) {
                Some(m) if m == n => return ours.ok_or(Undecoded::Refused),
                // What came before an older marker is older too.
                Some(_) => ours = None,
                None => ours = (got.num_bytes_received == bytes.len()).then_some(got.envelope),
            }
        }
        Err(Undecoded::Broken)
    }
}

/// Have the kernel drop every datagram to our socket at `local` that does not come from
/// `peer`: connect it to `peer`. The socket is chitchat's, which does not give its
/// descriptor away, so it is found among this process's descriptors by its address.
#[cfg(target_os = "linux")]
fn only_from(local: SocketAddr, peer: SocketAddr) -> io::Result<()> {
    use std::os::fd::BorrowedFd;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for the calls below. Another thread may
        // close it meanwhile; then the calls fail, or they ask about whatever took its
        // number, which is harmless: only the socket bound to `local` is acted on, and that
        // one stays open, owned by the codec being built.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let bound = socket.local_addr().ok().and_then(|a| a.as_socket());
        if bound == Some(local) && socket.r#type().ok() == Some(socket2::Type::DGRAM) {
            socket.connect(&peer.into())?;
            return Ok(());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("the gossip codec socket {local} is not among this process's descriptors"),
    ))
}

/// Elsewhere, the codec sockets stay open to any local process: said once.
#[cfg(not(target_os = "linux"))]
fn only_from(_local: SocketAddr, _peer: SocketAddr) -> io::Result<()> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            "on this platform the gossip codec sockets (127.0.0.1) take datagrams from any \
             local process: chitchat parses them"
        );
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn(cluster_id: &str) -> Vec<u8> {
        super::super::envelope::craft::syn(cluster_id, &[])
    }

    #[tokio::test]
    async fn round_trips_and_tells_by_the_marker_what_it_cannot_parse() {
        let mut decoder = Decoder::open().await.unwrap();
        let mut encoder = Encoder::open().await.unwrap();
        let bytes = syn("chat");
        let env = decoder.decode(&bytes).await.expect("a Syn decodes");
        assert_eq!(encoder.encode(env).await.unwrap(), &bytes[..]);
        for junk in [&b"junk"[..], &[0x53, 0xb0, 0, 9], &bytes[..bytes.len() - 1]] {
            // Refused (the marker came first), not Broken (which is the timeout).
            assert_eq!(decoder.decode(junk).await.unwrap_err(), Undecoded::Refused);
        }
        assert!(decoder.decode(&bytes).await.is_ok(), "still in step");
    }

    #[tokio::test]
    async fn the_codec_sockets_hear_only_our_own() {
        let mut decoder = Decoder::open().await.unwrap();
        let codec = decoder.socket.local_addr().unwrap();
        let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // A Syn a stranger sends straight to the codec is dropped by the kernel: what the
        // decoder parses next is ours.
        stranger.send_to(&syn("stranger"), codec).unwrap();
        let env = decoder.decode(&syn("ours")).await.expect("ours decodes");
        assert!(
            matches!(env.message, ChitchatMessage::Syn { ref cluster_id, .. } if cluster_id == "ours")
        );
    }
}
