//! Helpers more than one command uses: secret files, trusted certificates, serving TLS.

use anyhow::{Context, Result};

use crate::cli::TlsArgs;

/// Writes a file only its owner may read (created with mode 0600).
pub fn write_secret(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    Ok(())
}

/// The certificates in a file: PEM (one or more), or a single DER certificate.
pub fn read_certificates(path: &std::path::Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path)?;
    if bytes.starts_with(b"-----") {
        let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(&bytes[..]))
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            anyhow::bail!("no certificate in the PEM file");
        }
        return Ok(certs);
    }
    Ok(vec![bytes])
}

impl TlsArgs {
    /// The server's TLS configuration, if TLS was asked for.
    pub fn server_config(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
        Ok(
            match (&self.tls_cert, &self.tls_key, &self.self_signed[..]) {
                (Some(c), Some(k), _) => Some(
                    burrow::tls::tls_from_files(c, k).map_err(|e| anyhow::anyhow!("TLS: {e}"))?,
                ),
                (_, _, names) if !names.is_empty() => {
                    let kept = self.cert_out.as_ref().map(|c| {
                        let mut key = c.clone().into_os_string();
                        key.push(".key");
                        (c.clone(), std::path::PathBuf::from(key))
                    });
                    match &kept {
                        Some((cert, key)) if cert.exists() && key.exists() => {
                            let (c, k) = (std::fs::read(cert)?, std::fs::read(key)?);
                            Some(burrow::tls::tls_from_der(c, k).map_err(|e| {
                                anyhow::anyhow!("the kept certificate {}: {e}", cert.display())
                            })?)
                        }
                        _ => {
                            let (config, der, key_der) = burrow::tls::self_signed(names)
                                .map_err(|e| anyhow::anyhow!("self-signed certificate: {e}"))?;
                            if let Some((cert, key)) = &kept {
                                write_secret(key, &key_der)?;
                                std::fs::write(cert, der)
                                    .with_context(|| format!("writing {}", cert.display()))?;
                            }
                            Some(config)
                        }
                    }
                }
                _ => None,
            },
        )
    }
}
