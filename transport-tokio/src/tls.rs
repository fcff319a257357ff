//! Server-side TLS configuration: from PEM files, from a kept DER certificate and key, or a
//! fresh self-signed certificate. Shared by `burrow derper` and `burrow control serve`.

use std::io;
use std::sync::Arc;

/// A fresh self-signed certificate for these host names or IP addresses (for tests and private
/// deployments): the server configuration, the certificate (DER) and its key (PKCS #8 DER).
#[allow(clippy::type_complexity)]
pub fn self_signed(
    names: &[String],
) -> Result<(Arc<rustls::ServerConfig>, Vec<u8>, Vec<u8>), Box<dyn std::error::Error + Send + Sync>>
{
    let cert = rcgen::generate_simple_self_signed(names.to_vec())?;
    let der = cert.cert.der().to_vec();
    let key = cert.key_pair.serialize_der();
    Ok((tls_from_der(der.clone(), key.clone())?, der, key))
}

/// TLS from one certificate (DER) and its PKCS #8 key (DER), e.g. a kept self-signed one.
pub fn tls_from_der(
    cert: Vec<u8>,
    key: Vec<u8>,
) -> Result<Arc<rustls::ServerConfig>, Box<dyn std::error::Error + Send + Sync>> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from(cert)],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
    )?;
    Ok(Arc::new(config))
}

/// TLS from PEM files.
pub fn tls_from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, Box<dyn std::error::Error + Send + Sync>> {
    let certs = rustls_pemfile::certs(&mut io::BufReader::new(std::fs::File::open(cert)?))
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut io::BufReader::new(std::fs::File::open(key)?))?
        .ok_or("no private key in the key file")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}
