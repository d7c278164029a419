//! The certificate a TLS service presents: a real handshake (TLS 1.3 encrypts the
//! certificate, so reading the ServerHello is not enough) with verification switched off
//! — we want to see the certificate, not to trust it — and a minimal DER reader for the
//! subject and the expiry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Subject, e.g. `CN=mirror.example.org, O=Example`.
    pub subject: String,
    /// Issuer, in the same form.
    pub issuer: String,
    /// Expiry, unix seconds.
    pub not_after: i64,
}

#[derive(Debug)]
struct SeeAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for SeeAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects, completes a TLS handshake and reads the leaf certificate.
pub async fn certificate(addr: SocketAddr, t: Duration) -> Option<CertInfo> {
    inside_tls(addr, t).await.0
}

/// A TLS client that accepts any certificate (it looks, it does not trust), offering
/// `alpn` when given.
pub fn connector(alpn: Option<&[u8]>) -> Option<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?;
    let mut cfg = cfg
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SeeAnything(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
    Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// What a TLS service shows: its leaf certificate, and, asked `HEAD /` inside the TLS
/// session (ALPN `http/1.1`), the head of its HTTP answer when it speaks HTTP: an
/// implicit-TLS HTTP server is `https`, not just "tls".
pub async fn inside_tls(addr: SocketAddr, t: Duration) -> (Option<CertInfo>, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(connector) = connector(Some(b"http/1.1")) else {
        return (None, None);
    };
    let Ok(Ok(tcp)) = timeout(t, TcpStream::connect(addr)).await else {
        return (None, None);
    };
    let name = ServerName::IpAddress(addr.ip().into());
    let Ok(Ok(mut tls)) = timeout(t, connector.connect(name, tcp)).await else {
        return (None, None);
    };
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| parse_certificate(der));
    if tls.write_all(&crate::probe::http_head(addr)).await.is_err() {
        return (cert, None);
    }
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + t;
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match timeout(left, tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let http = head
        .starts_with(b"HTTP/")
        .then(|| String::from_utf8_lossy(&head).into_owned());
    (cert, http)
}

/// One DER element: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, hdr) = if first & 0x80 == 0 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = len << 8 | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    Some((tag, b.get(hdr..end)?, b.get(end..)?))
}

/// Unix seconds from a UTCTime or GeneralizedTime.
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.trim_end_matches('Z');
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(0..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (m, d, hh, mm, ss) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8).unwrap_or(0));
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// `CN=…, O=…` from a Name.
fn name(v: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut rest = v;
    while let Some((_, set, r)) = tlv(rest) {
        rest = r;
        let mut inner = set;
        while let Some((_, atv, r2)) = tlv(inner) {
            inner = r2;
            let Some((0x06, oid, after)) = tlv(atv) else {
                continue;
            };
            let Some((_, val, _)) = tlv(after) else {
                continue;
            };
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x0b] => "OU",
                [0x55, 0x04, 0x06] => "C",
                [0x55, 0x04, 0x07] => "L",
                [0x55, 0x04, 0x08] => "ST",
                _ => continue,
            };
            parts.push(format!("{key}={}", String::from_utf8_lossy(val)));
        }
    }
    parts.join(", ")
}

/// Subject, issuer and expiry of an X.509 certificate in DER.
pub fn parse_certificate(der: &[u8]) -> Option<CertInfo> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (mut tag, _, mut r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
        (tag, _, r) = tlv(rest)?;
    }
    if tag != 0x02 {
        return None; // serial number
    }
    let (_, _, r) = tlv(r)?; // signature algorithm
    let (_, issuer, r) = tlv(r)?;
    let (0x30, validity, r) = tlv(r)? else {
        return None;
    };
    let (_, _, v) = tlv(validity)?; // notBefore
    let (t2, not_after, _) = tlv(v)?;
    let (_, subject, _) = tlv(r)?;
    Some(CertInfo {
        subject: name(subject),
        issuer: name(issuer),
        not_after: time(t2, not_after)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x18, b"20000229000000Z"), Some(951_782_400));
        assert_eq!(time(0x17, b"261118110640Z"), Some(1_795_000_000));
        assert_eq!(time(0x05, b""), None);
    }

    #[test]
    fn junk_is_not_a_certificate() {
        assert!(parse_certificate(b"not a certificate").is_none());
        assert!(parse_certificate(&[0x30, 0x82, 0xff]).is_none());
    }
}
