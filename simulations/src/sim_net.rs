//! The cluster's two UDP sockets on turmoil's simulated network.
//!
//! QUIC datagrams travel as they are. Gossip envelopes cannot be turned into bytes from
//! outside chitchat, so each envelope waits in a table of the simulation and the datagram
//! turmoil carries (and may delay, drop or cut by a partition) holds its number.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    io::{self, IoSliceMut},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
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
        Box::pin(async move {
            let socket = turmoil::net::UdpSocket::bind(addr).await?;
            Ok(Arc::new(SimUdp {
                socket: Arc::new(socket),
                readable: Mutex::new(None),
            }) as Arc<dyn AsyncUdpSocket>)
        })
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

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
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
            let envelope = self.envelopes.lock().expect("envelope table").by_id.remove(&id);
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

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A turmoil UDP socket driving a quinn endpoint.
struct SimUdp {
    socket: Arc<turmoil::net::UdpSocket>,
    readable: Mutex<Option<Readable>>,
}

impl fmt::Debug for SimUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimUdp").field("socket", &self.socket).finish()
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

impl AsyncUdpSocket for SimUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match transmit.segment_size {
            Some(size) if size < transmit.contents.len() => {
                for chunk in transmit.contents.chunks(size) {
                    self.socket.try_send_to(chunk, transmit.destination)?;
                }
            }
            _ => {
                self.socket.try_send_to(transmit.contents, transmit.destination)?;
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
        loop {
            match self.socket.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *meta = RecvMeta::default();
                    meta.addr = addr;
                    meta.len = len;
                    meta.stride = len;
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut readable = self.readable.lock().expect("readable future");
                    let future = readable.get_or_insert_with(|| {
                        let socket = self.socket.clone();
                        Box::pin(async move { socket.readable().await })
                    });
                    match future.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(result) => {
                            *readable = None;
                            result?;
                        }
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}
