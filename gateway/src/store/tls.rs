//! TLS to Redis (`rediss://`): the rustls client configuration built from
//! `ROOMCAST_REDIS_TLS_*`. Certificates are always verified, against the CAs of
//! `ROOMCAST_REDIS_TLS_CA` or the system's trust store; there is no setting that skips it,
//! and a URL that asks for TLS never runs without it.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use fred::rustls::pki_types::pem::PemObject;
use fred::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use fred::rustls::{ClientConfig, RootCertStore};
use fred::types::config::{
    HostMapping, Server, ServerConfig, TlsConfig, TlsConnector, TlsHostMapping,
};

use crate::config::{redis_url_uses_tls, Config};

/// The TLS configuration for `config.redis_url`: `None` for a plaintext URL, else rustls
/// with the configured trust and identity (files read and parsed here). Errors name the
/// setting at fault.
pub fn client_config(config: &Config) -> Result<Option<TlsConfig>, String> {
    // A plaintext URL carries no TLS setting: `Config::validate` refuses the mix.
    if !redis_url_uses_tls(&config.redis_url) {
        return Ok(None);
    }
    let roots = match &config.redis_tls_ca {
        Some(path) => roots_from(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(fred::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS to Redis: {e}"))?
        .with_root_certificates(roots);
    let client = match (&config.redis_tls_cert, &config.redis_tls_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "ROOMCAST_REDIS_TLS_CERT")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "ROOMCAST_REDIS_TLS_KEY: no private key in {}: {e}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("ROOMCAST_REDIS_TLS_CERT/KEY: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(
                "ROOMCAST_REDIS_TLS_CERT and ROOMCAST_REDIS_TLS_KEY go together (mutual TLS)"
                    .into(),
            )
        }
    };
    if let Some(name) = &config.redis_tls_server_name {
        fred::rustls::pki_types::ServerName::try_from(name.as_str()).map_err(|_| {
            format!("ROOMCAST_REDIS_TLS_SERVER_NAME: {name:?} is not a DNS name or IP")
        })?;
    }
    let hostnames = match &config.redis_tls_server_name {
        // Cluster nodes are discovered by address: verify each against the one name.
        Some(name) => TlsHostMapping::Custom(Arc::new(FixedName(name.clone()))),
        None => TlsHostMapping::None,
    };
    Ok(Some(TlsConfig {
        connector: TlsConnector::from(client),
        hostnames,
    }))
}

/// Sets the name the seed servers' certificates are checked against.
pub fn set_server_name(servers: &mut ServerConfig, name: &str) {
    let set = |s: &mut Server| s.tls_server_name = Some(name.into());
    match servers {
        ServerConfig::Centralized { server } => set(server),
        ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => {
            hosts.iter_mut().for_each(set)
        }
    }
}

fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let read =
        |e: &dyn std::fmt::Display| format!("{setting}: cannot read {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(&e))?;
    if certs.is_empty() {
        return Err(format!("{setting}: no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn roots_from(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, "ROOMCAST_REDIS_TLS_CA")? {
        roots
            .add(cert)
            .map_err(|e| format!("ROOMCAST_REDIS_TLS_CA: {}: {e}", path.display()))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let found = fred::rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // One unusable system certificate must not disable TLS; the rest still verify.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(
            "TLS to Redis: no CA certificates in the system's trust store; set ROOMCAST_REDIS_TLS_CA"
                .into(),
        );
    }
    Ok(roots)
}

/// Every cluster node is verified against one configured name.
#[derive(Debug)]
struct FixedName(String);

impl HostMapping for FixedName {
    fn map(&self, _ip: &IpAddr, _default_host: &str) -> Option<String> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use fred::types::config::HostMapping;

    use super::FixedName;

    /// With `ROOMCAST_REDIS_TLS_SERVER_NAME`, every cluster node, whatever address the
    /// cluster announces for it, is verified against that one name.
    #[test]
    fn every_node_is_verified_against_the_configured_name() {
        let name = FixedName("redis.internal".into());
        for ip in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 0, 3, 7)] {
            assert_eq!(
                name.map(&IpAddr::V4(ip), "10.0.3.7").as_deref(),
                Some("redis.internal")
            );
        }
    }
}
