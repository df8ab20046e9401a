//! What the notification tests share: endpoints that never accept or never answer.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cstagate::notify::{Notification, Notifier, Target, TenantStats};
use tokio::io::AsyncReadExt;

pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A listener that never accepts, its accept queue full: a connection to it is never set up.
/// Returns the address and what fills the queue (keep it alive).
pub async fn full_backlog() -> (SocketAddr, tokio::net::TcpListener, Vec<std::net::TcpStream>) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = s.listen(0).unwrap();
    let addr = l.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => fill.push(c),
            Err(_) => return (addr, l, fill),
        }
    }
    panic!("the accept queue never filled");
}

/// A server that accepts, reads what it is sent and never answers; it closes a connection when
/// the client does. Counts connections accepted, open now and open at most.
#[derive(Clone, Default)]
pub struct Silent {
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    pub most_open: Arc<AtomicUsize>,
    pub signed: Arc<AtomicUsize>,
}

impl Silent {
    pub async fn start() -> (SocketAddr, Silent) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = Silent::default();
        let me = s.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                me.accepted.fetch_add(1, Ordering::SeqCst);
                let open = me.open.fetch_add(1, Ordering::SeqCst) + 1;
                me.most_open.fetch_max(open, Ordering::SeqCst);
                let me = me.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    if String::from_utf8_lossy(&got).to_ascii_lowercase().contains("x-cstagate-signature: sha256=") {
                        me.signed.fetch_add(1, Ordering::SeqCst);
                    }
                    me.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, s)
    }
}

pub fn target(addr: SocketAddr) -> Target {
    Target { url: format!("http://{addr}/hook"), secret: "k".into(), ca: Vec::new() }
}

pub fn note(tenant: &str, i: usize) -> Notification {
    Notification { tenant: tenant.into(), account: format!("a{i}"), event: "cancelled".into(), association: format!("{i:032x}"), at: 0, code: None }
}

pub fn stats_of(n: &Notifier, tenant: &str) -> TenantStats {
    n.stats().into_iter().find(|s| s.tenant == tenant).unwrap()
}

/// Targets by tenant.
pub fn targets(t: &[(&str, SocketAddr)]) -> HashMap<String, Target> {
    t.iter().map(|(k, a)| ((*k).to_owned(), target(*a))).collect()
}
