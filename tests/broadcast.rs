//! Broadcasts across an in-process cluster.
mod common;
use common::*;
use socketioxide::extract::SocketRef;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_node() {
    let [a, b, c] = spawn_cluster::<3>().await;
    for n in [&a, &b, &c] {
        n.io.ns("/", async |_: SocketRef<Adapter>| {})
            .await
            .unwrap();
    }
    wait_for_namespace(&[&a, &b, &c], "/").await;
    let (_ta, mut ra) = a.io.new_dummy_sock("/", ()).await;
    let (_tb, mut rb) = b.io.new_dummy_sock("/", ()).await;
    let (_tc, mut rc) = c.io.new_dummy_sock("/", ()).await;
    for r in [&mut ra, &mut rb, &mut rc] {
        recv(r, 1000).await; // connect packet
    }
    a.io.emit("hello", &1).await.unwrap();
    for r in [&mut ra, &mut rb, &mut rc] {
        assert_eq!(recv(r, 2000).await, r#"42["hello",1]"#);
    }
    assert_eq!(a.io.sockets().len(), 1);
    let all = a.io.fetch_sockets().await.unwrap();
    assert_eq!(all.len(), 3);
}
