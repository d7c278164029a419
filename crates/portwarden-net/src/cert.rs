//! The certificate a TLS service presents: a real handshake (TLS 1.3 encrypts the
//! certificate, so reading the ServerHello is not enough) with verification switched off
//! — we want to see the certificate, not to trust it — and the certificate read with
//! `x509-parser`: subject, issuer, expiry and the subject alternative names.

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
    /// Subject alternative names: DNS names and IP addresses.
    pub names: Vec<String>,
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

/// Subject, issuer, expiry and alternative names of an X.509 certificate in DER. Every
/// ASN.1 string type of a name is read; a value that is none of them shows as hex.
pub fn parse_certificate(der: &[u8]) -> Option<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => <[u8; 4]>::try_from(*b)
                            .ok()
                            .map(|a| std::net::Ipv4Addr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(*b)
                            .ok()
                            .map(|a| std::net::Ipv6Addr::from(a).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.timestamp(),
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_is_not_a_certificate() {
        assert!(parse_certificate(b"not a certificate").is_none());
        assert!(parse_certificate(&[0x30, 0x82, 0xff]).is_none());
    }
}
