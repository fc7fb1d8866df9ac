//! TLS and mTLS on scp-pep's own listeners (`[tls]`, INT-7.1-1), and the https rule for outbound
//! URLs (EXT-6-4, [`check_outbound_url`]).
//!
//! One server certificate (`cert_file` + `key_file`, PEM) serves every listener that has TLS on;
//! each listener (`grpc`, `http`, `http_authz`) is `off`, `tls` or `mtls`. `mtls` requires a client
//! certificate that chains to `client_ca_file` ("only Envoy can call `Check`"). Only rustls, only
//! TLS 1.3 and 1.2 (1.3 preferred: rustls negotiates the highest version both sides offer). ALPN:
//! `h2` on gRPC, `h2` and `http/1.1` on the HTTP listeners.
//!
//! Reload: each TLS listener hands new connections the [`rustls::ServerConfig`] it finds in an
//! [`ArcSwap`] at accept time. A background task ([`TlsSetup::run_reload`]) reads the three files
//! every `reload_interval_s`; when their bytes changed it builds new configurations and swaps them
//! in. Connections already open keep the configuration they were accepted with, so none is
//! dropped. (Swapping the whole configuration rather than only the certificate behind a
//! `ResolvesServerCert` reloads the client CA the same way.) Files that do not parse, or a key that does not match the certificate, are logged
//! (never their content) and the previous certificate stays in use.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// How one listener speaks: plain TCP, TLS, or TLS with a required client certificate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Off,
    Tls,
    Mtls,
}

/// `[tls]`: the server certificate of scp-pep's listeners and which listeners use it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Setting it turns TLS on (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: Option<PathBuf>,
    /// PEM bundle of the CAs whose client certificates `mtls` listeners accept.
    pub client_ca_file: Option<PathBuf>,
    /// The gRPC listener (`Check`, health, live tail). Unset: `mtls` when `client_ca_file` is set,
    /// else `tls` (when `cert_file` is set), else `off`.
    pub grpc: Option<TlsMode>,
    /// The HTTP listener (health, metrics, admin, consent, audit). Default as for `grpc`.
    pub http: Option<TlsMode>,
    /// The `[http_authz]` listener. Default as for `grpc`.
    pub http_authz: Option<TlsMode>,
    /// Seconds between two reads of the files for a reload (0: never reload).
    pub reload_interval_s: u64,
    /// Seconds a client has to finish the TLS handshake; its connection slot is freed after.
    pub handshake_timeout_s: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            grpc: None,
            http: None,
            http_authz: None,
            reload_interval_s: 5,
            handshake_timeout_s: 10,
        }
    }
}

/// The listeners `[tls]` knows, by their key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Grpc,
    Http,
    HttpAuthz,
}

impl Listener {
    pub fn key(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Http => "http",
            Listener::HttpAuthz => "http_authz",
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Listener::Grpc => vec![b"h2".to_vec()],
            Listener::Http | Listener::HttpAuthz => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

impl TlsConfig {
    /// The effective mode of `listener` (its key, else the default described on the fields).
    pub fn mode(&self, listener: Listener) -> TlsMode {
        let set = match listener {
            Listener::Grpc => self.grpc,
            Listener::Http => self.http,
            Listener::HttpAuthz => self.http_authz,
        };
        set.unwrap_or(if self.cert_file.is_none() {
            TlsMode::Off
        } else if self.client_ca_file.is_some() {
            TlsMode::Mtls
        } else {
            TlsMode::Tls
        })
    }

    /// Consistency of the keys (files are read by [`TlsSetup::new`]).
    ///
    /// Errors, naming the key: only one of `cert_file` and `key_file`; `client_ca_file` without
    /// a certificate; a listener set to `tls`/`mtls` without a certificate, or to `mtls` without
    /// `client_ca_file`; `client_ca_file` set while no listener is `mtls`; a zero handshake timeout.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err("tls.cert_file is set but tls.key_file is not".into()),
            (None, Some(_)) => return Err("tls.key_file is set but tls.cert_file is not".into()),
            _ => {}
        }
        if self.cert_file.is_none() && self.client_ca_file.is_some() {
            return Err("tls.client_ca_file needs tls.cert_file and tls.key_file".into());
        }
        let all = [Listener::Grpc, Listener::Http, Listener::HttpAuthz];
        for l in all {
            match self.mode(l) {
                TlsMode::Off => {}
                m if self.cert_file.is_none() => {
                    return Err(format!(
                        "tls.{} = \"{}\" needs tls.cert_file and tls.key_file",
                        l.key(),
                        if m == TlsMode::Mtls { "mtls" } else { "tls" }
                    ));
                }
                TlsMode::Mtls if self.client_ca_file.is_none() => {
                    return Err(format!(
                        "tls.{} = \"mtls\" needs tls.client_ca_file",
                        l.key()
                    ));
                }
                _ => {}
            }
        }
        if self.client_ca_file.is_some() && !all.iter().any(|l| self.mode(*l) == TlsMode::Mtls) {
            return Err(
                "tls.client_ca_file is set but no listener is \"mtls\": client certificates \
                 would not be checked"
                    .into(),
            );
        }
        if self.cert_file.is_some() && self.handshake_timeout_s == 0 {
            return Err("tls.handshake_timeout_s must be at least 1".into());
        }
        Ok(())
    }
}

/// What the three files held when they were last read.
#[derive(Clone, PartialEq, Eq)]
struct FileBytes {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

/// Parsed files: the certified key and, with a client CA, the client-certificate verifier.
struct Material {
    key: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// SHA-256 of the leaf certificate (hex), for the log.
    fingerprint: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_files(c: &TlsConfig) -> Result<FileBytes, String> {
    let read = |key: &str, p: &Path| {
        std::fs::read(p).map_err(|e| format!("tls.{key} `{}`: {e}", p.display()))
    };
    let (Some(cert), Some(key)) = (&c.cert_file, &c.key_file) else {
        return Err("tls.cert_file and tls.key_file are not set".into());
    };
    Ok(FileBytes {
        cert: read("cert_file", cert)?,
        key: read("key_file", key)?,
        ca: match &c.client_ca_file {
            Some(p) => Some(read("client_ca_file", p)?),
            None => None,
        },
    })
}

/// Parses the files. Error messages name the key and never quote file content.
fn parse(bytes: &FileBytes) -> Result<Material, String> {
    let chain = CertificateDer::pem_slice_iter(&bytes.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert_file: not a PEM certificate chain ({e})"))?;
    if chain.is_empty() {
        return Err("tls.cert_file: no certificate found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&bytes.key).map_err(|_| {
        "tls.key_file: no PEM private key (PKCS#8, PKCS#1 or SEC1) found".to_owned()
    })?;
    let provider = provider();
    let fingerprint = hex::encode(sha2::Sha256::digest(chain[0].as_ref()));
    let key = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| format!("tls.key_file does not fit tls.cert_file: {e}"))?;
    let verifier = match &bytes.ca {
        None => None,
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                let c = c.map_err(|e| format!("tls.client_ca_file: not a PEM bundle ({e})"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("tls.client_ca_file: unusable CA certificate ({e})"))?;
            }
            if roots.is_empty() {
                return Err("tls.client_ca_file: no certificate found".into());
            }
            Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("tls.client_ca_file: {e}"))?,
            )
        }
    };
    Ok(Material {
        key: Arc::new(key),
        verifier,
        fingerprint,
    })
}

/// Serves one fixed certificate (the configuration is swapped whole on reload).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The TLS versions scp-pep's listeners accept: 1.3 and 1.2, nothing older (INT-7.1-1).
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn server_config(
    m: &Material,
    listener: Listener,
    mode: TlsMode,
) -> Result<rustls::ServerConfig, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let builder = match (mode, &m.verifier) {
        (TlsMode::Mtls, Some(v)) => builder.with_client_cert_verifier(v.clone()),
        (TlsMode::Mtls, None) => {
            return Err(format!(
                "tls.{} = \"mtls\" needs tls.client_ca_file",
                listener.key()
            ));
        }
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(Fixed(m.key.clone())));
    cfg.alpn_protocols = listener.alpn();
    Ok(cfg)
}

/// The TLS side of one listener: its current configuration (swapped on reload) and the
/// handshake timeout.
#[derive(Clone)]
pub struct Acceptor {
    listener: Listener,
    mode: TlsMode,
    config: Arc<ArcSwap<rustls::ServerConfig>>,
    handshake_timeout: Duration,
}

impl Acceptor {
    /// Runs the server handshake on `io` with the configuration current now. Errors: the
    /// handshake failed or took longer than `handshake_timeout_s`.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        match tokio::time::timeout(self.handshake_timeout, acceptor.accept(io)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    /// The configuration new connections get now (tests read its versions and ALPN).
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.load_full()
    }

    /// The listener's key in `[tls]`.
    pub fn listener(&self) -> &'static str {
        self.listener.key()
    }
}

/// The acceptors of the TLS listeners, and what reloads them.
pub struct TlsSetup {
    pub grpc: Option<Acceptor>,
    pub http: Option<Acceptor>,
    pub http_authz: Option<Acceptor>,
    config: TlsConfig,
    last: FileBytes,
}

impl TlsSetup {
    /// Reads and parses the files and builds one configuration per TLS listener; `None` when no
    /// listener uses TLS.
    ///
    /// Errors (the start stops): the keys are inconsistent ([`TlsConfig::validate`]), a file is
    /// unreadable, or does not parse, or the key does not fit the certificate.
    pub fn new(c: &TlsConfig) -> Result<Option<TlsSetup>, String> {
        c.validate()?;
        if c.cert_file.is_none() {
            return Ok(None);
        }
        let bytes = read_files(c)?;
        let m = parse(&bytes)?;
        tracing::info!(
            sha256 = %m.fingerprint,
            grpc = ?c.mode(Listener::Grpc),
            http = ?c.mode(Listener::Http),
            http_authz = ?c.mode(Listener::HttpAuthz),
            "TLS certificate loaded"
        );
        let timeout = Duration::from_secs(c.handshake_timeout_s.max(1));
        let make = |l: Listener| -> Result<Option<Acceptor>, String> {
            match c.mode(l) {
                TlsMode::Off => Ok(None),
                mode => Ok(Some(Acceptor {
                    listener: l,
                    mode,
                    config: Arc::new(ArcSwap::from_pointee(server_config(&m, l, mode)?)),
                    handshake_timeout: timeout,
                })),
            }
        };
        Ok(Some(TlsSetup {
            grpc: make(Listener::Grpc)?,
            http: make(Listener::Http)?,
            http_authz: make(Listener::HttpAuthz)?,
            config: c.clone(),
            last: bytes,
        }))
    }

    fn acceptors(&self) -> impl Iterator<Item = &Acceptor> {
        [&self.grpc, &self.http, &self.http_authz]
            .into_iter()
            .flatten()
    }

    /// Reads the files once; when they changed since the last read, parses them and swaps the
    /// new configurations in. Returns whether a new certificate is now in use.
    fn reload_once(&mut self) -> bool {
        let bytes = match read_files(&self.config) {
            Ok(b) => b,
            Err(e) => {
                // A file being replaced may be missing for a moment; keep serving.
                tracing::warn!(error = %e, "TLS reload: cannot read the files; keeping the current certificate");
                return false;
            }
        };
        if bytes == self.last {
            return false;
        }
        // Remember the attempt either way: a broken file is reported once, not every interval.
        self.last = bytes.clone();
        let built = parse(&bytes).and_then(|m| {
            let configs = self
                .acceptors()
                .map(|a| server_config(&m, a.listener, a.mode))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((m.fingerprint, configs))
        });
        match built {
            Ok((fingerprint, configs)) => {
                for (a, cfg) in self.acceptors().zip(configs) {
                    a.config.store(Arc::new(cfg));
                }
                metrics::counter!("scp_pep_tls_reloads_total", "outcome" => "ok").increment(1);
                tracing::info!(sha256 = %fingerprint, "TLS certificate reloaded");
                true
            }
            Err(e) => {
                metrics::counter!("scp_pep_tls_reloads_total", "outcome" => "error").increment(1);
                tracing::error!(error = %e, "TLS reload failed; keeping the current certificate");
                false
            }
        }
    }

    /// Polls the files every `reload_interval_s` until `stop` turns true (returns at once when
    /// the interval is 0).
    pub async fn run_reload(mut self, mut stop: watch::Receiver<bool>) {
        if self.config.reload_interval_s == 0 {
            return;
        }
        let every = Duration::from_secs(self.config.reload_interval_s);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            let mut this = self;
            // Files are small, but reading and parsing still blocks: off the async workers.
            self = match tokio::task::spawn_blocking(move || {
                this.reload_once();
                this
            })
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload task failed; reloads stop");
                    return;
                }
            };
        }
    }
}

/// EXT-6-4: an outbound URL must be `https`, or plain `http` to a loopback host (`localhost`,
/// `127.0.0.0/8`, `[::1]`: a sidecar or a test fake on the same machine). `field` names the
/// configuration key or policy field in the error.
pub fn check_outbound_url(field: &str, url: &str) -> Result<(), String> {
    let u =
        reqwest::Url::parse(url).map_err(|_| format!("{field}: `{url}` is not an absolute URL"))?;
    let Some(host) = u.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!("{field}: `{url}` has no host"));
    };
    match u.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(format!(
            "{field}: `{url}` uses plain http to a host that is not loopback; use https (EXT-6-4)"
        )),
        s => Err(format!(
            "{field}: `{url}` has scheme `{s}`; only https (or http to loopback) is allowed"
        )),
    }
}

/// `localhost`, `127.0.0.0/8` and `::1`, as a URL's host (IPv6 in brackets).
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h == "localhost" {
        return true;
    }
    h.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// INT-7.1-1: listener defaults follow the keys set; inconsistent keys are refused by name.
    #[test]
    fn tls_modes_default_and_validation() {
        let off = TlsConfig::default();
        assert_eq!(off.mode(Listener::Grpc), TlsMode::Off);
        assert_eq!(off.validate(), Ok(()));
        let tls = TlsConfig {
            cert_file: Some("c".into()),
            key_file: Some("k".into()),
            ..TlsConfig::default()
        };
        assert_eq!(tls.mode(Listener::Http), TlsMode::Tls);
        assert_eq!(tls.validate(), Ok(()));
        let mtls = TlsConfig {
            client_ca_file: Some("ca".into()),
            http: Some(TlsMode::Tls),
            http_authz: Some(TlsMode::Off),
            ..tls.clone()
        };
        assert_eq!(mtls.mode(Listener::Grpc), TlsMode::Mtls);
        assert_eq!(mtls.mode(Listener::Http), TlsMode::Tls);
        assert_eq!(mtls.mode(Listener::HttpAuthz), TlsMode::Off);
        assert_eq!(mtls.validate(), Ok(()));
        let bad = [
            (
                TlsConfig {
                    key_file: None,
                    ..tls.clone()
                },
                "tls.key_file",
            ),
            (
                TlsConfig {
                    grpc: Some(TlsMode::Tls),
                    ..TlsConfig::default()
                },
                "tls.grpc",
            ),
            (
                TlsConfig {
                    http: Some(TlsMode::Mtls),
                    ..tls.clone()
                },
                "tls.http = \"mtls\" needs tls.client_ca_file",
            ),
            (
                TlsConfig {
                    grpc: Some(TlsMode::Tls),
                    http: Some(TlsMode::Tls),
                    http_authz: Some(TlsMode::Tls),
                    ..mtls.clone()
                },
                "no listener is \"mtls\"",
            ),
            (
                TlsConfig {
                    handshake_timeout_s: 0,
                    ..tls.clone()
                },
                "handshake_timeout_s",
            ),
        ];
        for (c, want) in bad {
            let e = c.validate().unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    /// EXT-6-4: https everywhere, plain http only to loopback.
    #[test]
    fn outbound_urls_must_be_https_except_loopback() {
        for ok in [
            "https://idp.example/realms/ke",
            "http://127.0.0.1:8080/x",
            "http://127.0.0.2/x",
            "http://localhost/x",
            "http://LOCALHOST.:9/x",
            "http://[::1]:8080/x",
        ] {
            assert!(check_outbound_url("f", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example/realms/ke",
            "http://10.0.0.1/x",
            "http://[::2]/x",
            "http://localhost.evil.example/x",
            "http://x.localhost/x",
            "http://127.0.0.1.evil.example/x",
            "ftp://127.0.0.1/x",
            "https://",
            "not a url",
        ] {
            let e = check_outbound_url("consent.notify_url", bad).unwrap_err();
            assert!(e.starts_with("consent.notify_url: "), "{bad}: {e}");
        }
    }
}
