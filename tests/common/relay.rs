//! Fixture: a UDP relay on 127.0.0.1, a tiny NAT in front of one socket. Datagrams to the
//! relay's address are forwarded to the target from a port of their own per sender, and
//! the target's answers go back to that sender from the relay's address. A node that
//! advertises the relay's address is reachable only through what it advertises.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::net::UdpSocket;

/// The first datagrams a relay forwards to its target, with their senders.
type Captured = Arc<std::sync::Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// How many datagrams a relay keeps a copy of.
const CAPTURED: usize = 64;

/// A running relay; it stops when dropped.
pub struct Relay {
    /// The address senders use.
    pub addr: SocketAddr,
    forwarded: Arc<AtomicU64>,
    captured: Captured,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    /// A relay on a free loopback port forwarding to `target`, for at most 64 senders.
    pub async fn start(target: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = front.local_addr().unwrap();
        let forwarded = Arc::new(AtomicU64::new(0));
        let count = forwarded.clone();
        let captured = Captured::default();
        let capture = captured.clone();
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer_tasks = tasks.clone();
        let task = tokio::spawn(async move {
            let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    return;
                };
                let back = match backs.get(&from) {
                    Some(b) => b.clone(),
                    None if backs.len() < 64 => {
                        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        back.connect(target).await.unwrap();
                        backs.insert(from, back.clone());
                        // Answers of the target to this sender go back through the front.
                        let (front, back2) = (front.clone(), back.clone());
                        let answers = tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = back2.recv(&mut buf).await {
                                let _ = front.send_to(&buf[..n], from).await;
                            }
                        });
                        answer_tasks.lock().unwrap().push(answers);
                        back
                    }
                    None => continue,
                };
                if back.send(&buf[..n]).await.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                    let mut capture = capture.lock().unwrap();
                    if capture.len() < CAPTURED {
                        capture.push((from, buf[..n].to_vec()));
                    }
                }
            }
        });
        tasks.lock().unwrap().push(task);
        Self {
            addr,
            forwarded,
            captured,
            tasks,
        }
    }

    /// Copies of the first datagrams forwarded to the target, with their senders.
    pub fn captured(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.captured.lock().unwrap().clone()
    }

    /// Datagrams forwarded to the target so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}
