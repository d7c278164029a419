//! UDP balancing: a session per client address, sent to the backend `pick` chooses (for
//! `source-hash`, the same backend for every port of a client) through a socket connected
//! to it; answers go back from the group's own address. A session with no datagram either
//! way for `idle_timeout` ends; an ICMP error from the backend (port unreachable) counts
//! against it and ends the session, whose next datagram picks again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use portwarden_core::balance::NoBackend;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::check;
use super::forward::Activity;
use super::{Admitted, Group, Node, Open, Slot, admit};

/// Sessions one group holds at most (each is a socket).
pub const MAX_SESSIONS: usize = 8192;

struct Session {
    up: Arc<UdpSocket>,
    node: Arc<Node>,
    act: Arc<Activity>,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Session>>>;

thread_local! {
    static ANSWER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 65536]);
}

pub(super) async fn serve(g: Arc<Group>, sock: Arc<UdpSocket>, mut stop: watch::Receiver<bool>) {
    let sessions: Sessions = Arc::new(Mutex::new(HashMap::new()));
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = super::set(&mut stop) => return,
        };
        let known = sessions.lock().ok().and_then(|m| {
            m.get(&client)
                .map(|s| (s.up.clone(), s.node.clone(), s.act.clone()))
        });
        let (up, node, act) = match known {
            Some(x) => x,
            None => match open(&g, &sock, &sessions, client).await {
                Some(x) => x,
                None => continue,
            },
        };
        // A full send buffer drops the datagram, as the network would. (Sent on the
        // socket itself: tokio's `try_send` refuses until the reactor has seen the new
        // socket writable, which would drop every session's first datagram.)
        if socket2::SockRef::from(up.as_ref()).send(&buf[..n]).is_ok() {
            node.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            act.touch();
        }
    }
}

async fn open(
    g: &Arc<Group>,
    sock: &Arc<UdpSocket>,
    sessions: &Sessions,
    client: SocketAddr,
) -> Option<(Arc<UdpSocket>, Arc<Node>, Arc<Activity>)> {
    if sessions.lock().map_or(true, |m| m.len() >= MAX_SESSIONS) {
        // This host's limit, not the backends' state.
        g.c.local_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let admitted = admit(g, client.ip())?;
    let cfg = g.cfg();
    let node = match g.choose(&cfg, client.ip(), &[], 0) {
        Ok(n) => n,
        Err(NoBackend::Down | NoBackend::Full) => {
            g.c.no_backend.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let slot = Slot(g.clone(), node.clone());
    let up = match check::udp_socket_for(node.addr).await {
        Ok(s) => s,
        Err(_) => {
            g.c.local_errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    if let Err(e) = up.connect(node.addr).await {
        drop(slot);
        node.failed_connects.fetch_add(1, Ordering::Relaxed);
        g.observe(&node, false, &format!("connect: {e}"));
        return None;
    }
    g.c.accepted.fetch_add(1, Ordering::Relaxed);
    node.total.fetch_add(1, Ordering::Relaxed);
    let up = Arc::new(up);
    let act = Arc::new(Activity::new());
    act.touch();
    if let Ok(mut m) = sessions.lock() {
        m.insert(
            client,
            Session {
                up: up.clone(),
                node: node.clone(),
                act: act.clone(),
            },
        );
    }
    let open = Open::new(g);
    tokio::spawn(answers(
        g.clone(),
        sock.clone(),
        sessions.clone(),
        client,
        (up.clone(), act.clone()),
        (open, admitted, slot),
    ));
    Some((up, node, act))
}

async fn answers(
    g: Arc<Group>,
    sock: Arc<UdpSocket>,
    sessions: Sessions,
    client: SocketAddr,
    (up, act): (Arc<UdpSocket>, Arc<Activity>),
    held: (Open, Admitted, Slot),
) {
    let node = held.2.1.clone();
    let idle = g.cfg().idle_timeout.get();
    let mut hard = g.hard.subscribe();
    let to = socket2::SockAddr::from(client);
    loop {
        tokio::select! {
            r = up.readable() => {
                if r.is_err() {
                    break;
                }
                // One buffer per thread, not per session: 8192 idle sessions hold no
                // 64 KiB each. Nothing awaits while it is borrowed.
                let got = ANSWER.with(|b| {
                    let mut b = b.borrow_mut();
                    up.try_recv(&mut b).map(|n| {
                        // A full send buffer drops the answer, as the network would.
                        let sent = socket2::SockRef::from(sock.as_ref()).send_to(&b[..n], &to).is_ok();
                        (n, sent)
                    })
                });
                match got {
                    Ok((n, sent)) => {
                        if sent {
                            node.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        act.touch();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        node.failed_connects.fetch_add(1, Ordering::Relaxed);
                        g.observe(&node, false, &format!("recv: {e}"));
                        break;
                    }
                }
            }
            _ = act.idle_for(idle) => {
                g.c.idle_closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            _ = super::set(&mut hard) => break,
        }
    }
    if let Ok(mut m) = sessions.lock() {
        m.remove(&client);
    }
    drop(held);
}
