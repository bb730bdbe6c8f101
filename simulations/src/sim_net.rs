//! The cluster's two UDP sockets on turmoil's simulated network.
//!
//! QUIC datagrams travel as they are. Gossip envelopes cannot be turned into bytes from
//! outside chitchat, so each envelope waits in a table of the simulation and the datagram
//! turmoil carries (and may delay, drop or cut by a partition) holds its number.

use std::{
    collections::HashMap,
    fmt,
    io::{self, IoSliceMut},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use socketioxide_cluster::network::{
    BindMesh, Network,
    chitchat::{
        ChitchatEnvelope,
        transport::{RecvOutcome, SendOutcome, Socket, Transport},
    },
    quinn::{
        AsyncUdpSocket, UdpPoller,
        udp::{RecvMeta, Transmit},
    },
};
use tokio::sync::mpsc;

/// Envelopes in flight, by number; bounded, the oldest dropped first (a lost datagram).
#[derive(Default)]
struct Envelopes {
    next: u64,
    by_id: HashMap<u64, ChitchatEnvelope>,
}

const MAX_ENVELOPES_IN_FLIGHT: usize = 100_000;

/// One simulated host's network: gossip and mesh sockets on turmoil.
#[derive(Clone)]
pub struct SimNetwork {
    envelopes: Arc<Mutex<Envelopes>>,
    seed: u64,
}

impl SimNetwork {
    /// A network whose envelope table is shared by every host of one simulation; `seed`
    /// makes each host's QUIC randomness repeatable.
    pub fn new(shared: &SimNetwork, seed: u64) -> Self {
        Self {
            envelopes: shared.envelopes.clone(),
            seed,
        }
    }

    /// The first network of a simulation.
    pub fn root(seed: u64) -> Self {
        Self {
            envelopes: Arc::default(),
            seed,
        }
    }
}

impl Network for SimNetwork {
    fn gossip(&self) -> &dyn Transport {
        self
    }

    fn bind_mesh(&self, addr: SocketAddr) -> BindMesh<'_> {
        Box::pin(async move { Ok(Arc::new(SimUdp::bind(addr).await?) as Arc<dyn AsyncUdpSocket>) })
    }

    fn rng_seed(&self) -> Option<[u8; 32]> {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        Some(seed)
    }

    fn wall_clock(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + turmoil::since_epoch().unwrap_or(Duration::ZERO)
    }
}

#[async_trait]
impl Transport for SimNetwork {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = turmoil::net::UdpSocket::bind(listen_addr).await?;
        Ok(Box::new(GossipSocket {
            socket,
            envelopes: self.envelopes.clone(),
        }))
    }
}

struct GossipSocket {
    socket: turmoil::net::UdpSocket,
    envelopes: Arc<Mutex<Envelopes>>,
}

#[async_trait]
impl Socket for GossipSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let id = {
            let mut table = self.envelopes.lock().expect("envelope table");
            if table.by_id.len() >= MAX_ENVELOPES_IN_FLIGHT {
                let oldest = table.next - table.by_id.len() as u64;
                table.by_id.retain(|&id, _| id > oldest);
            }
            table.next += 1;
            let id = table.next;
            table.by_id.insert(id, envelope);
            id
        };
        let num_bytes_sent = self.socket.send_to(&id.to_le_bytes(), to).await?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let mut buf = [0u8; 8];
        loop {
            let (len, from_addr) = self.socket.recv_from(&mut buf).await?;
            if len != 8 {
                continue;
            }
            let id = u64::from_le_bytes(buf);
            let envelope = self
                .envelopes
                .lock()
                .expect("envelope table")
                .by_id
                .remove(&id);
            if let Some(envelope) = envelope {
                return Ok(RecvOutcome {
                    from_addr,
                    envelope,
                    num_bytes_received: len,
                });
            }
        }
    }
}

/// A turmoil UDP socket driving a quinn endpoint.
///
/// The socket itself belongs to a task on the host's runtime, which passes datagrams on: when
/// turmoil drops the runtime (a crash), the socket goes with it and its port is free for the
/// restarted host, even if something outside the runtime still holds the endpoint.
struct SimUdp {
    socket: Weak<turmoil::net::UdpSocket>,
    local_addr: SocketAddr,
    incoming: Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
}

/// Datagrams received but not yet read by quinn, like a kernel's socket buffer.
const RECEIVE_QUEUE: usize = 1024;

impl SimUdp {
    async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = Arc::new(turmoil::net::UdpSocket::bind(addr).await?);
        let local_addr = socket.local_addr()?;
        let (tx, incoming) = mpsc::channel(RECEIVE_QUEUE);
        let weak = Arc::downgrade(&socket);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                if tx.send((buf[..len].to_vec(), from)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            socket: weak,
            local_addr,
            incoming: Mutex::new(incoming),
        })
    }
}

impl fmt::Debug for SimUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimUdp")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
        // turmoil queues a datagram or drops it, as a full socket buffer would; it never
        // makes a sender wait.
        Poll::Ready(Ok(()))
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the simulated host is down")
}

impl AsyncUdpSocket for SimUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let socket = self.socket.upgrade().ok_or_else(gone)?;
        match transmit.segment_size {
            Some(size) if size < transmit.contents.len() => {
                for chunk in transmit.contents.chunks(size) {
                    socket.try_send_to(chunk, transmit.destination)?;
                }
            }
            _ => {
                socket.try_send_to(transmit.contents, transmit.destination)?;
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(meta)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut incoming = self.incoming.lock().expect("receive queue");
        match incoming.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(Err(gone())),
            Poll::Ready(Some((datagram, from))) => {
                let len = datagram.len().min(buf.len());
                buf[..len].copy_from_slice(&datagram[..len]);
                *meta = RecvMeta::default();
                meta.addr = from;
                meta.len = len;
                meta.stride = len;
                Poll::Ready(Ok(1))
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}
