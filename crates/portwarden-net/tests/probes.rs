//! The probes against small fake servers on loopback (ports from port 0), and a real TLS
//! listener (rustls with a generated certificate).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portwarden_net::probe::{CLIENT_SSL, ProbeKind, TlsVerdict, probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_millis(800);

/// Serves every connection with `f` until the test ends.
async fn serve<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let f = Arc::new(f);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let f = f.clone();
            tokio::spawn(async move { f(s).await });
        }
    });
    addr
}

fn mysql_greeting(ssl: bool) -> Vec<u8> {
    let mut p = vec![10u8];
    p.extend_from_slice(b"8.0.36\0");
    p.extend_from_slice(&[7, 0, 0, 0]);
    p.extend_from_slice(b"12345678");
    p.push(0);
    let caps: u16 = 0xf7ff & !CLIENT_SSL | if ssl { CLIENT_SSL } else { 0 };
    p.extend_from_slice(&caps.to_le_bytes());
    p.extend_from_slice(&[0x21, 0x02, 0x00, 0xff, 0xc1, 0x15]);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"abcdefghijkl\0mysql_native_password\0");
    let mut pkt = vec![p.len() as u8, (p.len() >> 8) as u8, 0, 0];
    pkt.extend_from_slice(&p);
    pkt
}

#[tokio::test]
async fn mysql_greeting_with_and_without_client_ssl() {
    for ssl in [true, false] {
        let addr = serve(move |mut s| async move {
            let _ = s.write_all(&mysql_greeting(ssl)).await;
            // Real time: a fake server holding its connection open while the probe reads.
            tokio::time::sleep(Duration::from_millis(300)).await;
        })
        .await;
        let r = probe(addr, ProbeKind::Mysql, T).await;
        assert_eq!(r.identified.as_deref(), Some("mysql"));
        assert_eq!(
            r.tls,
            if ssl {
                TlsVerdict::Offered
            } else {
                TlsVerdict::None
            }
        );
        assert_eq!(r.banner.as_deref(), Some("8.0.36"));
    }
}

#[tokio::test]
async fn postgres_ssl_request_answered_s_and_n() {
    for answer in [b'S', b'N'] {
        let addr = serve(move |mut s| async move {
            let mut req = [0u8; 8];
            if s.read_exact(&mut req).await.is_ok() && req == [0, 0, 0, 8, 4, 210, 22, 47] {
                let _ = s.write_all(&[answer]).await;
            }
        })
        .await;
        let r = probe(addr, ProbeKind::Postgres, T).await;
        assert_eq!(r.identified.as_deref(), Some("postgresql"));
        let want = if answer == b'S' {
            TlsVerdict::Offered
        } else {
            TlsVerdict::None
        };
        assert_eq!(r.tls, want);
    }
}

#[tokio::test]
async fn a_real_tls_listener_answers_the_client_hello() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
        ck.signing_key.serialize_der().into(),
    );
    let cfg = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let addr = serve(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let _ = acceptor.accept(s).await;
        }
    })
    .await;
    let r = probe(addr, ProbeKind::Tls, T).await;
    assert_eq!(r.tls, TlsVerdict::Required, "{r:?}");
    // The banner grab on a silent TLS port falls back to a ClientHello.
    let r = probe(addr, ProbeKind::Banner, Duration::from_millis(300)).await;
    assert_eq!(r.tls, TlsVerdict::Required, "{r:?}");
    // The certificate's subject and expiry, read through a full handshake.
    let c = portwarden_net::cert::certificate(addr, T)
        .await
        .expect("certificate");
    assert_eq!(c.subject, "CN=rcgen self signed cert");
    assert_eq!(c.names, ["localhost"], "the subject alternative names");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(c.not_after > now, "{c:?}");
}

#[tokio::test]
async fn r_http_inside_tls_is_https_with_its_server_header() {
    use tokio::io::AsyncReadExt;
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
        ck.signing_key.serialize_der().into(),
    );
    let mut cfg = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let addr = serve(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(s).await else {
                return;
            };
            let mut b = [0u8; 512];
            if let Ok(n) = tls.read(&mut b).await {
                if b[..n].starts_with(b"HEAD / HTTP/1.1\r\nHost: ") {
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\r\n")
                        .await;
                    let _ = tls.flush().await;
                }
            }
        }
    })
    .await;
    let (cert, head) = portwarden_net::cert::inside_tls(addr, T).await;
    assert!(cert.is_some());
    let head = head.expect("an HTTP answer inside TLS");
    let p = portwarden_net::fingerprint::http(&head).unwrap();
    assert_eq!(
        (p.product.as_str(), p.version.as_deref()),
        ("nginx", Some("1.22.1"))
    );
}

#[tokio::test]
async fn ssh_http_redis_smtp() {
    let ssh = serve(|mut s| async move {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n").await;
        // Real time: a fake server holding its connection open while the probe reads.
        tokio::time::sleep(Duration::from_millis(300)).await;
    })
    .await;
    let r = probe(ssh, ProbeKind::Ssh, T).await;
    assert_eq!(
        (r.identified.as_deref(), r.tls),
        (Some("ssh"), TlsVerdict::Native)
    );
    assert_eq!(r.banner.as_deref(), Some("SSH-2.0-OpenSSH_9.2p1 Debian-2"));
    let r = probe(ssh, ProbeKind::Banner, T).await;
    assert_eq!(r.identified.as_deref(), Some("ssh"));

    let http = serve(|mut s| async move {
        let mut b = [0u8; 512];
        let _ = s.read(&mut b).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n")
            .await;
    })
    .await;
    let r = probe(http, ProbeKind::Http, T).await;
    assert_eq!(
        (r.identified.as_deref(), r.tls),
        (Some("http"), TlsVerdict::None)
    );

    let redis = serve(|mut s| async move {
        let mut b = [0u8; 64];
        if let Ok(n) = s.read(&mut b).await {
            if b[..n].starts_with(b"PING") {
                let _ = s.write_all(b"+PONG\r\n").await;
            }
        }
    })
    .await;
    let r = probe(redis, ProbeKind::Redis, T).await;
    assert_eq!(
        (r.identified.as_deref(), r.tls),
        (Some("redis"), TlsVerdict::None)
    );

    for offers in [true, false] {
        let smtp = serve(move |mut s| async move {
            let _ = s.write_all(b"220 mx.example ESMTP\r\n").await;
            let mut b = [0u8; 128];
            let _ = s.read(&mut b).await;
            let caps: &[u8] = if offers {
                b"250-mx.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
            } else {
                b"250-mx.example\r\n250 8BITMIME\r\n"
            };
            let _ = s.write_all(caps).await;
            // Real time: a fake server holding its connection open while the probe reads.
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let r = probe(smtp, ProbeKind::Smtp, T).await;
        assert_eq!(r.identified.as_deref(), Some("smtp"));
        assert_eq!(
            r.tls,
            if offers {
                TlsVerdict::Offered
            } else {
                TlsVerdict::None
            }
        );
    }
}

#[tokio::test]
async fn a_silent_service_is_reported_stalled_within_the_timeout() {
    let silent = serve(|s| async move {
        // Real time: the silent peer whose silence the probe's timeout must cut short.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    })
    .await;
    let t0 = Instant::now();
    let r = probe(silent, ProbeKind::Banner, Duration::from_millis(200)).await;
    assert!(r.stalled, "{r:?}");
    assert_eq!(r.tls, TlsVerdict::Unknown);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Nothing listening: not connected, no hang.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let r = probe(closed, ProbeKind::Tls, Duration::from_millis(200)).await;
    assert!(!r.connected);
}
