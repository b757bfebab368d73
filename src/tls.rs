//! TLS client settings shared by the connections shenhe opens: to an `https` model server and to
//! PostgreSQL with `sslmode=require`. Server certificates are verified against the system's roots
//! plus an optional CA file.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;

/// A rustls client config (ring, TLS 1.2 and 1.3) trusting the system's roots and the
/// certificates in `ca_file`. `ca_key` names the setting in messages (`upstream.ca_file`);
/// `purpose` says what the roots are for when none is found.
pub fn client_config(
    ca_file: Option<&Path>,
    ca_key: &str,
    purpose: &str,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (mut added, _) = roots.add_parsable_certificates(found.certs);
    if let Some(path) = ca_file {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{ca_key} {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{ca_key} {}: no certificates in it",
                path.display()
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{ca_key} {}: {e}", path.display()))?;
            added += 1;
        }
    }
    if added == 0 {
        return Err(format!(
            "no trusted root certificates found on this system ({purpose})"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
