//! The floor: one-way 108-byte messages over one bare quinn stream, and over loopback TCP,
//! in this process. Each round writes one message and waits until the other side has read it
//! in full; the latency is from before the write to after the read.

use std::{sync::Arc, time::Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use crate::node::BoxError;

/// Size of one message, as the issue of the figures fixed it.
pub const MESSAGE: usize = 108;

/// Latencies (ns) of `rounds` one-way messages over one quinn unidirectional stream.
pub async fn quinn_hop(rounds: usize) -> Result<Vec<u64>, BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::generate_simple_self_signed(vec!["floor".to_string()])?;
    let cert = CertificateDer::from(key.cert.der().to_vec());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], der)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_cfg =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
    let client_cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));

    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
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
