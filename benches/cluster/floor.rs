//! The floor: one-way 108-byte messages over one bare quinn stream and over loopback TCP in
//! this process, and over one bare quinn stream to another process (this binary started as
//! the floor's server), the hop a mesh frame takes between two nodes. Each round writes one
//! message and waits until the other side has read it in full; the latency is from before
//! the write to after the read. And the CPU floor: the CPU seconds a process spends to carry
//! the floods' payloads to as many other processes as node A has peers, over one bare quinn
//! stream each. quinn is set up as the mesh sets it up (its transport: windows,
//! acknowledgement frequency, keep-alives; its socket's receive buffer), so that the floor
//! differs from the mesh only in what the mesh adds.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, Stdout},
    sync::mpsc,
};

use crate::node::{BoxError, now_ns};
use crate::procs::{Node, cpu_seconds};
use socketioxide_cluster::mesh_floor;

/// Size of one message, as the issue of the figures fixed it.
pub const MESSAGE: usize = 108;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's quinn settings with a fresh self-signed certificate, and that certificate.
fn server_config() -> Result<(quinn::ServerConfig, CertificateDer<'static>), BoxError> {
    let key = rcgen::generate_simple_self_signed(vec!["floor".to_string()])?;
    let cert = CertificateDer::from(key.cert.der().to_vec());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], der)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(mesh_floor::transport()));
    Ok((config, cert))
}

/// A client's quinn settings that trust `cert` only.
fn client_config(cert: CertificateDer<'static>) -> Result<quinn::ClientConfig, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(mesh_floor::transport()));
    Ok(config)
}

/// An endpoint on loopback (a server with `server`), on a socket with the mesh's receive
/// buffer.
fn endpoint(server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint, BoxError> {
    let socket = mesh_floor::socket("127.0.0.1:0".parse()?)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    Ok(quinn::Endpoint::new(
        Default::default(),
        server,
        socket,
        runtime,
    )?)
}

/// Latencies (ns) of `rounds` one-way messages over one quinn unidirectional stream.
pub async fn quinn_hop(rounds: usize) -> Result<Vec<u64>, BoxError> {
    let (server_cfg, cert) = server_config()?;
    let client_cfg = client_config(cert)?;
    let server = endpoint(Some(server_cfg))?;
    let addr = server.local_addr()?;
    let client = endpoint(None)?;
    let connecting = client.connect_with(client_cfg, addr, "floor")?;
    let accepting = async {
        let incoming = server.accept().await.ok_or("no incoming connection")?;
        Ok::<_, BoxError>(incoming.await?)
    };
    let (conn, server_conn) = tokio::join!(connecting, accepting);
    let (conn, server_conn) = (conn?, server_conn?);
    let mut send = conn.open_uni().await?;
    // The stream is announced to the peer by its first bytes.
    send.write_all(&[0u8; MESSAGE]).await?;
    let mut recv = server_conn.accept_uni().await?;
    let mut buf = [0u8; MESSAGE];
    recv.read_exact(&mut buf).await?;

    let samples = one_way(&mut send, recv, rounds).await?;
    drop(send);
    conn.close(0u32.into(), b"done");
    server.close(0u32.into(), b"done");
    Ok(samples)
}

/// Latencies (ns) of `rounds` one-way messages over one loopback TCP connection.
pub async fn tcp_hop(rounds: usize) -> Result<Vec<u64>, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut send = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    send.set_nodelay(true)?;
    let (recv, _) = listener.accept().await?;
    one_way(&mut send, recv, rounds).await
}

/// Write `rounds` messages on `send`, each after the previous one was read in full from
/// `recv` by a task of its own; the time from each write to its read, in ns.
async fn one_way<W, R>(send: &mut W, mut recv: R, rounds: usize) -> Result<Vec<u64>, BoxError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin + Send + 'static,
{
    let (done_tx, mut done_rx) = mpsc::channel::<Instant>(1);
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; MESSAGE];
        while recv.read_exact(&mut buf).await.is_ok() {
            if done_tx.send(Instant::now()).await.is_err() {
                return;
            }
        }
    });
    let mut samples = Vec::with_capacity(rounds);
    let msg = [7u8; MESSAGE];
    for _ in 0..rounds {
        let t = Instant::now();
        send.write_all(&msg).await?;
        let got = done_rx.recv().await.ok_or("reader stopped")?;
        samples.push((got - t).as_nanos() as u64);
    }
    reader.abort();
    Ok(samples)
}

/// The node backend that makes this binary the floor's server in another process.
pub const BETWEEN_PROCESSES: &str = "quinn-floor";

/// Latencies (ns) of `rounds` one-way messages over one quinn stream to another process:
/// `exe` started as the floor's server. Each message carries the wall clock at its write;
/// the server answers each with the wall clock at its read less that.
pub async fn quinn_hop_between_processes(exe: &Path, rounds: usize) -> Result<Vec<u64>, BoxError> {
    let server = Node::start(exe, BETWEEN_PROCESSES, "", "floor", 0).await?;
    let cert = server
        .extra
        .as_deref()
        .ok_or("the floor's server gave no certificate")?;
    let cert = data_encoding::HEXLOWER.decode(cert.as_bytes())?;
    let client = endpoint(None)?;
    let addr = format!("127.0.0.1:{}", server.port).parse()?;
    let conn = client
        .connect_with(client_config(CertificateDer::from(cert))?, addr, "floor")?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut msg = [7u8; MESSAGE];
    let mut answer = [0u8; 8];
    let mut samples = Vec::with_capacity(rounds);
    // One round more than measured: the stream is announced to the server by its first bytes.
    for round in 0..=rounds {
        msg[..8].copy_from_slice(&now_ns().to_le_bytes());
        send.write_all(&msg).await?;
        recv.read_exact(&mut answer).await?;
        if round > 0 {
            samples.push(u64::from_le_bytes(answer));
        }
    }
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    Ok(samples)
}

/// The floor's server, in a process of its own: answers each message of the one stream it
/// is opened with by how long it took to arrive, by the wall clock (see
/// [`quinn_hop_between_processes`]). Announces its port and certificate (hex) on stdout.
pub async fn serve_between_processes() -> Result<(), BoxError> {
    let (config, cert) = server_config()?;
    let server = endpoint(Some(config))?;
    let hex = data_encoding::HEXLOWER.encode(&cert);
    // It takes no commands: it answers the one stream it is opened with.
    let _ = announce(server.local_addr()?.port(), &hex).await?;
    let conn = server.accept().await.ok_or("no connection")?.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut msg = [0u8; MESSAGE];
    while recv.read_exact(&mut msg).await.is_ok() {
        let read = now_ns();
        let sent = u64::from_le_bytes(msg[..8].try_into()?);
        send.write_all(&read.saturating_sub(sent).to_le_bytes())
            .await?;
    }
    Ok(())
}

/// The node backend that makes this binary a sink of the CPU floor: a quinn server that
/// reads every stream it is opened with and counts the bytes.
pub const SINK: &str = "quinn-sink";
/// The node backend that makes this binary the source of the CPU floor: it connects to
/// sinks and writes the floods' payloads to each of them.
pub const SOURCE: &str = "quinn-source";

/// Largest buffer the source hands quinn in one write, as the mesh's writer coalesces.
pub const CHUNK: usize = 64 * 1024;

/// CPU seconds of the processes of [`quinn_cpu`].
pub struct QuinnCpu {
    /// The sender's: what quinn itself costs node A to send the floods to its peers.
    pub source: f64,
    /// The receivers', together: what quinn itself costs the peers to receive them.
    pub sinks: f64,
}

/// CPU seconds a process spends carrying the payloads of `floods` (`n` messages of `size`
/// bytes each), `rounds` times, to `peers` other processes, over one bare quinn stream
/// each, in writes of [`CHUNK`] bytes, and those the receiving processes spend: what quinn
/// itself costs a cluster's nodes to carry the floods from node A to its peers, with no
/// framing and nothing per message. The CPU is read once every sink has read every byte.
pub async fn quinn_cpu(
    exe: &Path,
    floods: &[(usize, u64)],
    rounds: u64,
    peers: usize,
) -> Result<QuinnCpu, BoxError> {
    let mut source = Node::start(exe, SOURCE, "", "floor", 0).await?;
    let mut sinks = Vec::with_capacity(peers);
    for _ in 0..peers {
        let sink = Node::start(exe, SINK, "", "floor", 0).await?;
        let cert = sink.extra.as_deref().ok_or("a sink gave no certificate")?;
        source.cmd(&format!("connect {} {cert}", sink.port)).await?;
        sinks.push(sink);
    }
    let sinks_cpu = |sinks: &[Node]| sinks.iter().map(|s| cpu_seconds(s.pid)).sum::<f64>();
    let before = (cpu_seconds(source.pid), sinks_cpu(&sinks));
    let mut total = 0;
    for (size, n) in (0..rounds).flat_map(|_| floods) {
        source.cmd(&format!("flood {n} {size}")).await?;
        total += *size as u64 * n;
        for sink in &mut sinks {
            sink.cmd(&format!("wait {total}")).await?;
        }
    }
    let cpu = QuinnCpu {
        source: cpu_seconds(source.pid) - before.0,
        sinks: sinks_cpu(&sinks) - before.1,
    };
    source.stop().await;
    for sink in sinks {
        sink.stop().await;
    }
    Ok(cpu)
}

/// Announce this process on stdout (`READY <port> <extra>`): the command lines of stdin,
/// and stdout to [`answer`] them on.
async fn announce(port: u16, extra: &str) -> Result<(Commands, Stdout), BoxError> {
    let mut out = tokio::io::stdout();
    out.write_all(format!("READY {port} {extra}\n").as_bytes())
        .await?;
    out.flush().await?;
    Ok((BufReader::new(tokio::io::stdin()).lines(), out))
}

type Commands = tokio::io::Lines<BufReader<tokio::io::Stdin>>;

/// Answer a command: `ok`, or `err` and why.
async fn answer(out: &mut Stdout, done: Result<(), BoxError>) -> Result<(), BoxError> {
    let reply = match done {
        Ok(()) => "ok\n".to_string(),
        Err(e) => format!("err {e}\n"),
    };
    out.write_all(reply.as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// A sink of the CPU floor, in a process of its own (see [`quinn_cpu`]). Command
/// `wait <bytes>` answers once that many bytes were read in all (within 60 s).
pub async fn serve_sink() -> Result<(), BoxError> {
    let (config, cert) = server_config()?;
    let server = endpoint(Some(config))?;
    let port = server.local_addr()?.port();
    // Bytes read in all, over every connection.
    let (count, mut read) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok(mut recv) = conn.accept_uni().await {
                    while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                        count.send_modify(|n| *n += chunk.bytes.len() as u64);
                    }
                }
            });
        }
    });
    let (mut lines, mut out) = announce(port, &data_encoding::HEXLOWER.encode(&cert)).await?;
    while let Some(line) = lines.next_line().await? {
        let waited = async {
            let want: u64 = line.strip_prefix("wait ").ok_or("not a wait")?.parse()?;
            let all_read = read.wait_for(|&n| n >= want);
            let in_time = tokio::time::timeout(Duration::from_secs(60), all_read)
                .await
                .map(|done| done.is_ok());
            match in_time {
                Ok(true) => Ok(()),
                Ok(false) => Err("the sink's server stopped".into()),
                Err(_) => Err(format!("{} of {want} bytes read", *read.borrow()).into()),
            }
        };
        answer(&mut out, waited.await).await?;
    }
    Ok(())
}

/// The source of the CPU floor, in a process of its own (see [`quinn_cpu`]). Commands:
/// `connect <port> <certificate>` opens a stream to a sink; `flood <n> <size>` writes `n`
/// times `size` bytes to each sink, all of them at once, and answers once quinn took them.
pub async fn serve_source() -> Result<(), BoxError> {
    let client = endpoint(None)?;
    let mut streams = Vec::new();
    let (mut lines, mut out) = announce(0, "-").await?;
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let done = match words[..] {
            ["connect", port, cert] => {
                async {
                    let cert =
                        CertificateDer::from(data_encoding::HEXLOWER.decode(cert.as_bytes())?);
                    let addr = format!("127.0.0.1:{port}").parse()?;
                    let conn = client
                        .connect_with(client_config(cert)?, addr, "floor")?
                        .await?;
                    streams.push(conn.open_uni().await?);
                    Ok(())
                }
                .await
            }
            ["flood", n, size] => {
                async {
                    let total = n.parse::<usize>()? * size.parse::<usize>()?;
                    let chunk = Bytes::from(vec![7u8; CHUNK]);
                    let writes = streams.iter_mut().map(|stream| {
                        let chunk = chunk.clone();
                        async move {
                            let mut left = total;
                            while left > 0 {
                                let len = left.min(CHUNK);
                                stream.write_chunk(chunk.slice(..len)).await?;
                                left -= len;
                            }
                            Ok::<_, BoxError>(())
                        }
                    });
                    futures_util::future::try_join_all(writes).await.map(drop)
                }
                .await
            }
            _ => Err(format!("unknown command {line:?}").into()),
        };
        answer(&mut out, done).await?;
    }
    Ok(())
}
