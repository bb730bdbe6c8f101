//! A minimal engine.io v4 long-polling client over raw HTTP/1.1 on 127.0.0.1.
//!
//! Dummy sockets never deliver volatile packets and cannot speak the msgpack parser (their
//! connect packet is always text), so the tests of those two features connect through the
//! real HTTP service instead. The client has the shape of a dummy socket: a sender of
//! engine.io packets to the server and a receiver of the packets the server sends. Pings are
//! answered and noops dropped.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use engineioxide::{Packet, ProtocolVersion};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

/// The engine.io handshake: the path and query of a long-polling session.
pub const PATH: &str = "/socket.io/?EIO=4&transport=polling";

/// One HTTP/1.1 request for `target` (path and query) with `Connection: close`; the status
/// and the body of the response.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let raw = String::from_utf8(raw).map_err(std::io::Error::other)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Open an engine.io session on the node serving `addr`, send `connect` (the socket.io
/// CONNECT packet, text or binary), and return the client's (sender, receiver).
pub async fn connect(
    addr: SocketAddr,
    connect: Packet,
) -> (mpsc::Sender<Packet>, mpsc::Receiver<Packet>) {
    let (status, open) = tokio::time::timeout(Duration::from_secs(5), http(addr, "GET", PATH, ""))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(status, 200, "handshake failed: {open}");
    let sid = open
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no sid in open packet {open}"))
        .to_string();
    let query = format!("{PATH}&sid={sid}");
    post(addr, &query, connect).await;

    let (in_tx, in_rx) = mpsc::channel::<Packet>(4096);
    let (out_tx, mut out_rx) = mpsc::channel::<Packet>(64);
    // Writer: every packet the test sends is one POST, in order.
    let q = query.clone();
    tokio::spawn(async move {
        while let Some(p) = out_rx.recv().await {
            post(addr, &q, p).await;
        }
    });
    // Reader: long-poll until the session ends; the receiver then yields `None`.
    tokio::spawn(async move {
        loop {
            let Ok((200, body)) = http(addr, "GET", &query, "").await else {
                return;
            };
            for part in body.split('\x1e').filter(|p| !p.is_empty()) {
                match Packet::parse(ProtocolVersion::V4, part.to_string()) {
                    Ok(Packet::Ping) => post(addr, &query, Packet::Pong).await,
                    Ok(Packet::Noop) => {}
                    Ok(Packet::Close) => return,
                    Ok(p) => {
                        if in_tx.send(p).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => panic!("bad engine.io packet {part:?}: {e}"),
                }
            }
        }
    });
    (out_tx, in_rx)
}

async fn post(addr: SocketAddr, target: &str, p: Packet) {
    let body = String::from(p);
    let res = tokio::time::timeout(Duration::from_secs(5), http(addr, "POST", target, &body)).await;
    match res {
        Ok(Ok((200, _))) => {}
        other => tracing::warn!("polling POST failed: {other:?}"),
    }
}
