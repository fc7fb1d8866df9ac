//! TLS and mTLS on scp-pep's own listeners (INT-7.1-1) and the https rule for outbound URLs
//! (EXT-6-4), with certificates the test generates (rcgen): a CA, server certificates for
//! `localhost`/`127.0.0.1`, client certificates from that CA and from a foreign one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use scp_pep::tls::{TlsConfig, TlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{AuthorizationClient, Harness, Idp, Keys, test_config, write_policies};

const KE_RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";

/// A test CA that issues server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn leaf(&self, cn: &str, serial: u64, server: bool) -> Leaf {
        let sans = if server {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        } else {
            Vec::new()
        };
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from(serial));
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }
}

/// The PKI of one test: the CA, the server certificate files, a client certificate.
struct Pki {
    ca: Ca,
    server: Leaf,
    client: Leaf,
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = Ca::new("scp-pep test CA");
        let server = ca.leaf("scp-pep-1", 1, true);
        let client = ca.leaf("envoy", 100, false);
        let pki = Pki {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            ca_file: dir.join("client-ca.crt"),
            ca,
            server,
            client,
        };
        std::fs::write(&pki.cert_file, &pki.server.cert_pem).unwrap();
        std::fs::write(&pki.key_file, &pki.server.key_pem).unwrap();
        std::fs::write(&pki.ca_file, pki.ca.pem()).unwrap();
        pki
    }

    fn tls_config(&self, mtls: bool) -> TlsConfig {
        TlsConfig {
            cert_file: Some(self.cert_file.clone()),
            key_file: Some(self.key_file.clone()),
            client_ca_file: mtls.then(|| self.ca_file.clone()),
            reload_interval_s: 1,
            handshake_timeout_s: 2,
            ..TlsConfig::default()
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A rustls client trusting `roots`, presenting `client` when given, offering `versions` and
/// `alpn`.
fn client_tls(
    roots: &[CertificateDer<'static>],
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store);
    let mut cfg = match client {
        Some(c) => b
            .with_client_auth_cert(vec![c.der.clone()], c.key_der.clone_key())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

fn default_versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    rustls::DEFAULT_VERSIONS
}

/// TCP + TLS handshake to `addr` as `localhost`.
async fn handshake(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A gRPC channel over TLS (one connection; `connects` counts the TCP+TLS connections made).
async fn tls_channel(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    connects: Arc<AtomicUsize>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_uri| {
            let cfg = cfg.clone();
            let connects = connects.clone();
            async move {
                connects.fetch_add(1, Ordering::SeqCst);
                handshake(addr, cfg).await.map(TokioIo::new)
            }
        }))
        .await
}

/// Starts scp-pep with `tls` (fixture policies, a JWKS server) and a `Harness` whose gRPC client
/// speaks TLS with `client`.
async fn start(
    pki: &Pki,
    dir: &Path,
    tls: TlsConfig,
    tweak: impl FnOnce(&mut scp_pep::config::Config),
) -> Harness {
    let idp = Idp::start(Arc::new(Keys::generate())).await;
    let policy_dir = dir.join("policies");
    write_policies(&idp.base, &policy_dir);
    let log_path = dir.join("decisions.jsonl");
    let store_url = format!("sqlite:{}", dir.join("pep.db").display());
    let mut config = test_config(&store_url, &policy_dir, &log_path);
    config.tls = tls;
    tweak(&mut config);
    let running = scp_pep::server::start(config, None)
        .await
        .expect("scp-pep starts with TLS");
    crate::common::seed_default_consents(&running.consents).await;
    let cfg = client_tls(
        &[pki.ca.der()],
        Some(&pki.client),
        default_versions(),
        &[b"h2"],
    );
    let channel = tls_channel(running.grpc_addr, cfg, Arc::new(AtomicUsize::new(0)))
        .await
        .expect("TLS client connects");
    Harness {
        idp,
        running,
        client: AuthorizationClient::new(channel),
        log_path,
        policy_dir,
        store_url,
        dir: tempfile::tempdir().unwrap(),
    }
}

fn with_http_authz(c: &mut scp_pep::config::Config) {
    c.http_authz.enabled = true;
    c.http_authz.listen = "127.0.0.1:0".parse().unwrap();
}

fn partner_check(h: &Harness) -> scp_pep::check::CheckInput {
    let claims = h.claims("ke", "int-ke-moh", &["health"], "health:person:read");
    Harness::get(KE_RECORD, &h.sign("ke-rs256", &claims))
}

/// A reqwest client over TLS with `pki`'s CA (and its client certificate when `mtls`).
fn https_client(pki: &Pki, client: Option<&Leaf>) -> reqwest::Client {
    let cfg = client_tls(
        &[pki.ca.der()],
        client,
        default_versions(),
        &[b"h2", b"http/1.1"],
    );
    reqwest::Client::builder()
        .use_preconfigured_tls((*cfg).clone())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Whether one Check over `channel` (a fresh client) gets an answer.
async fn check_answers(h: &Harness, channel: tonic::transport::Channel) -> bool {
    let mut c = AuthorizationClient::new(channel);
    c.check(scp_pep::check::build_request(&partner_check(h)))
        .await
        .is_ok()
}

// INT-7.1-1: with mTLS on, a tonic client that trusts the CA and presents a client certificate
// gets `Check` answered over TLS on the gRPC listener (ALPN h2), the HTTP listener answers
// /healthz over TLS (h2 or HTTP/1.1), and so does the `[http_authz]` listener. A client that offers TLS 1.2 only still connects; the
// default client negotiates TLS 1.3.
#[tokio::test]
async fn tls_grpc_check_and_http_healthz_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut h = start(&pki, dir.path(), pki.tls_config(true), with_http_authz).await;
    let r = h.check(&partner_check(&h)).await;
    assert_eq!(r["allowed"], true, "{r}");

    // The HTTP authorization listener answers over mTLS too (a decision: no token → 401).
    let authz = h.running.http_authz_addr.unwrap();
    let resp = https_client(&pki, Some(&pki.client))
        .get(format!("https://localhost:{}{KE_RECORD}", authz.port()))
        .send()
        .await
        .expect("http_authz over TLS");
    assert_eq!(resp.status(), 401);

    let resp = https_client(&pki, Some(&pki.client))
        .get(format!(
            "https://localhost:{}/healthz",
            h.running.http_addr.port()
        ))
        .send()
        .await
        .expect("/healthz over TLS");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok\n");

    // TLS 1.3 preferred, TLS 1.2 accepted; ALPN h2 on gRPC. (The raw connections are dropped
    // at once: one that never speaks HTTP/2 would hold up the graceful shutdown.)
    let s = handshake(
        h.running.grpc_addr,
        client_tls(
            &[pki.ca.der()],
            Some(&pki.client),
            default_versions(),
            &[b"h2"],
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(s);
    let tls12 = client_tls(
        &[pki.ca.der()],
        Some(&pki.client),
        &[&rustls::version::TLS12],
        &[b"h2"],
    );
    let s = handshake(h.running.grpc_addr, tls12.clone()).await.unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    drop(s);
    let ch = tls_channel(h.running.grpc_addr, tls12, Arc::new(AtomicUsize::new(0)))
        .await
        .unwrap();
    assert!(check_answers(&h, ch).await, "Check over TLS 1.2");
    h.running.shutdown().await;
}

// INT-7.1-1: the server configuration offers TLS 1.3 and 1.2 only, and a TLS 1.1 ClientHello is
// answered with an alert, never a ServerHello.
#[tokio::test]
async fn tls_versions_below_1_2_cannot_be_negotiated() {
    let versions: Vec<_> = scp_pep::tls::VERSIONS.iter().map(|v| v.version).collect();
    assert_eq!(
        versions,
        [
            rustls::ProtocolVersion::TLSv1_3,
            rustls::ProtocolVersion::TLSv1_2
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let h = start(&pki, dir.path(), pki.tls_config(false), |_| {}).await;
    for addr in [h.running.grpc_addr, h.running.http_addr] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&tls11_client_hello()).await.unwrap();
        let mut buf = [0u8; 7];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("the server answers or closes")
            .unwrap();
        assert!(n > 0, "closed without an alert");
        assert_eq!(buf[0], 0x15, "an alert record, not a ServerHello: {buf:?}");
    }
    h.running.shutdown().await;
}

/// A TLS 1.1 ClientHello (no supported_versions extension), CBC suites only.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

// INT-7.1-1 ("only Envoy can call Check"): plain-text clients, TLS clients without a client
// certificate and clients whose certificate comes from another CA are all refused, on gRPC and
// HTTP; the accept loop survives every failed handshake (a good client still gets in).
#[tokio::test]
async fn mtls_refuses_plaintext_missing_and_foreign_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let h = start(&pki, dir.path(), pki.tls_config(true), with_http_authz).await;
    let grpc = h.running.grpc_addr;
    let roots = [pki.ca.der()];
    let authz = h.running.http_authz_addr.unwrap();
    for url in [
        format!("http://{authz}{KE_RECORD}"),
        format!("https://localhost:{}{KE_RECORD}", authz.port()),
    ] {
        let r = https_client(&pki, None).get(&url).send().await;
        assert!(
            r.is_err(),
            "{url} without a client certificate was answered: {r:?}"
        );
    }

    // Plain text.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Ok(ch) = plain.connect().await {
        assert!(!check_answers(&h, ch).await, "plain-text gRPC was answered");
    }
    let r = reqwest::Client::new()
        .get(format!("http://{}/healthz", h.running.http_addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(r.is_err(), "plain-text HTTP was answered: {r:?}");

    // TLS without a client certificate.
    let none = client_tls(&roots, None, default_versions(), &[b"h2"]);
    if let Ok(ch) = tls_channel(grpc, none, Arc::new(AtomicUsize::new(0))).await {
        assert!(
            !check_answers(&h, ch).await,
            "no client certificate was answered"
        );
    }
    let r = https_client(&pki, None)
        .get(format!(
            "https://localhost:{}/healthz",
            h.running.http_addr.port()
        ))
        .send()
        .await;
    assert!(
        r.is_err(),
        "HTTP without a client certificate was answered: {r:?}"
    );

    // A client certificate from another CA.
    let rogue_ca = Ca::new("rogue CA");
    let rogue = rogue_ca.leaf("envoy", 100, false);
    let foreign = client_tls(&roots, Some(&rogue), default_versions(), &[b"h2"]);
    if let Ok(ch) = tls_channel(grpc, foreign, Arc::new(AtomicUsize::new(0))).await {
        assert!(
            !check_answers(&h, ch).await,
            "a foreign client certificate was answered"
        );
    }
    let r = https_client(&pki, Some(&rogue))
        .get(format!(
            "https://localhost:{}/healthz",
            h.running.http_addr.port()
        ))
        .send()
        .await;
    assert!(
        r.is_err(),
        "HTTP with a foreign client certificate was answered: {r:?}"
    );

    // The listeners still accept good clients.
    let good = client_tls(&roots, Some(&pki.client), default_versions(), &[b"h2"]);
    let ch = tls_channel(grpc, good, Arc::new(AtomicUsize::new(0)))
        .await
        .unwrap();
    assert!(check_answers(&h, ch).await);
    h.running.shutdown().await;
}

// INT-7.1-1: a client that opens TCP and never starts the handshake holds its connection slot
// for `handshake_timeout_s` only; with one gRPC slot, a good client gets in after it.
#[tokio::test]
async fn tls_stalled_handshake_frees_its_connection_slot() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut tls = pki.tls_config(false);
    tls.handshake_timeout_s = 1;
    let h = start(&pki, dir.path(), tls, |c| c.server.grpc_max_connections = 1).await;
    // The harness's own client holds the one slot; free it, then stall the slot.
    let Harness {
        running,
        client,
        idp,
        ..
    } = h;
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _silent = tokio::net::TcpStream::connect(running.grpc_addr)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let cfg = client_tls(&[pki.ca.der()], None, default_versions(), &[b"h2"]);
    let s = tokio::time::timeout(Duration::from_secs(10), handshake(running.grpc_addr, cfg))
        .await
        .expect("the stalled handshake's slot is freed")
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    drop(idp);
    running.shutdown().await;
}

/// The leaf certificate a new TLS connection to `addr` is served.
async fn served_leaf(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> CertificateDer<'static> {
    let s = handshake(addr, cfg).await.expect("TLS handshake");
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

// INT-7.1-1: replacing the certificate files switches new connections to the new certificate
// (another serial and CN) within a few reload intervals, while an HTTP/2 connection opened before
// keeps answering on the same connection; a broken replacement keeps the certificate in use.
#[tokio::test]
async fn tls_certificate_reload_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let h = start(&pki, dir.path(), pki.tls_config(true), |_| {}).await;
    let grpc = h.running.grpc_addr;
    let roots = [pki.ca.der()];
    let cfg = client_tls(&roots, Some(&pki.client), default_versions(), &[b"h2"]);
    let http_cfg = client_tls(
        &roots,
        Some(&pki.client),
        default_versions(),
        &[b"http/1.1"],
    );
    assert_eq!(served_leaf(grpc, cfg.clone()).await, pki.server.der);

    // An HTTP/2 connection opened before the rotation.
    let connects = Arc::new(AtomicUsize::new(0));
    let ch = tls_channel(grpc, cfg.clone(), connects.clone())
        .await
        .unwrap();
    let mut open = AuthorizationClient::new(ch);
    let req = || scp_pep::check::build_request(&partner_check(&h));
    open.check(req()).await.unwrap();

    // Rotate: a new key pair, serial 2, another CN.
    let next = pki.ca.leaf("scp-pep-2", 2, true);
    std::fs::write(&pki.key_file, &next.key_pem).unwrap();
    std::fs::write(&pki.cert_file, &next.cert_pem).unwrap();
    let mut seen = false;
    for _ in 0..100 {
        if served_leaf(grpc, cfg.clone()).await == next.der {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "new connections never got the new certificate");
    assert_eq!(
        served_leaf(h.running.http_addr, http_cfg.clone()).await,
        next.der
    );
    // The connection opened before still works, and it is the same connection.
    for _ in 0..3 {
        let r = open
            .check(req())
            .await
            .expect("the old connection keeps working");
        assert!(r.into_inner().status.is_some());
    }
    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "the old connection was replaced"
    );

    // A broken replacement: the certificate in use stays.
    std::fs::write(&pki.cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served_leaf(grpc, cfg.clone()).await, next.der);
    let ch = tls_channel(grpc, cfg, Arc::new(AtomicUsize::new(0)))
        .await
        .unwrap();
    assert!(check_answers(&h, ch).await);
    open.check(req()).await.unwrap();
    h.running.shutdown().await;
}

// INT-7.1-1 (configuration): inconsistent `[tls]` keys and unreadable or mismatched files stop
// the start with an error naming the key.
#[tokio::test]
async fn tls_bad_configuration_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let base = test_config(
        &format!("sqlite:{}", dir.path().join("pep.db").display()),
        &dir.path().join("none"),
        &dir.path().join("log.jsonl"),
    );
    let attempt = |tls: TlsConfig| {
        let mut c = base.clone();
        c.policy.dir = None;
        c.tls = tls;
        async move {
            match scp_pep::server::start(c, None).await {
                Ok(r) => {
                    r.shutdown().await;
                    String::new()
                }
                Err(e) => format!("{e:#}"),
            }
        }
    };
    let other = pki.ca.leaf("other", 9, true);
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not pem").unwrap();
    let cases = [
        (
            TlsConfig {
                key_file: Some(other_key),
                ..pki.tls_config(false)
            },
            "tls.key_file does not fit tls.cert_file",
        ),
        (
            TlsConfig {
                cert_file: Some(garbage.clone()),
                ..pki.tls_config(false)
            },
            "tls.cert_file",
        ),
        (
            TlsConfig {
                key_file: Some(dir.path().join("missing.key")),
                ..pki.tls_config(false)
            },
            "tls.key_file",
        ),
        (
            TlsConfig {
                client_ca_file: Some(garbage),
                ..pki.tls_config(false)
            },
            "tls.client_ca_file",
        ),
        (
            TlsConfig {
                grpc: Some(TlsMode::Mtls),
                ..pki.tls_config(false)
            },
            "tls.grpc = \"mtls\" needs tls.client_ca_file",
        ),
        (
            TlsConfig {
                key_file: None,
                ..pki.tls_config(false)
            },
            "tls.key_file",
        ),
    ];
    for (tls, want) in cases {
        let e = attempt(tls).await;
        assert!(e.contains(want), "want `{want}` in `{e}`");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
    }
}

// EXT-6-4: an outbound URL in the configuration that is plain http to a host other than
// loopback stops the start, naming the key; http to loopback (the test fakes) and https pass.
#[tokio::test]
async fn outbound_plain_http_to_non_loopback_is_refused() {
    let mut c = scp_pep::config::Config::default();
    assert_eq!(c.validate(), Ok(()));
    c.consent.notify_url = Some("http://127.0.0.1:9/notify".into());
    c.audit.checkpoint_url = Some("https://witness.example/checkpoints".into());
    assert_eq!(c.validate(), Ok(()));

    let mut c1 = c.clone();
    c1.audit.checkpoint_url = Some("http://witness.example/checkpoints".into());
    let mut c2 = c.clone();
    c2.consent.notify_url = Some("http://notify.example/consent".into());
    let mut c3 = c.clone();
    c3.admin.keycloak = Some(scp_pep::admin::keycloak::KeycloakConfig {
        base_url: "http://keycloak:8080".into(),
        admin_realm: "master".into(),
        client_id: "scp-pep-provisioner".into(),
        client_secret: "s".into(),
        client_secret_file: None,
        timeout_s: 10,
        sync_interval_s: 10,
    });
    for (cfg, field) in [
        (c1, "audit.checkpoint_url"),
        (c2, "consent.notify_url"),
        (c3, "admin.keycloak.base_url"),
    ] {
        let e = cfg.validate().unwrap_err();
        assert!(e.starts_with(field) && e.contains("https"), "{field}: {e}");
        // The running server refuses it too.
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = cfg;
        cfg.store.url = format!("sqlite:{}", dir.path().join("pep.db").display());
        cfg.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
        cfg.server.http_listen = "127.0.0.1:0".parse().unwrap();
        let e = match scp_pep::server::start(cfg, None).await {
            Ok(_) => panic!("{field}: started"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(field), "{e}");
    }
}

// EXT-6-4: a JWKS URL over plain http to a non-loopback host is refused when policies load,
// naming the field.
#[test]
fn policy_jwks_plain_http_to_non_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_policies("http://idp.example", dir.path());
    let e = scp_pep::policy::PolicySet::load_dir(dir.path())
        .expect_err("policies with http://idp.example are refused")
        .to_string();
    assert!(e.contains("jwks.url"), "{e}");
    assert!(e.contains("EXT-6-4"), "{e}");
    write_policies("http://127.0.0.1:8080", &dir.path().join("ok"));
    scp_pep::policy::PolicySet::load_dir(&dir.path().join("ok")).unwrap();
}

/// INT-7.1-1 (TLS on the ext_authz port), issue 14 (container health checks): `scp-pep health`
/// reaches a listener with `grpc = "mtls"` given the CA and a client certificate; without the
/// client certificate, or with plain text, it reports UNREACHABLE and exits 1; the CA file it
/// cannot read is named, its content never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_cli_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let h = start(&pki, dir.path(), pki.tls_config(true), |_| {}).await;
    let client_cert = dir.path().join("client.crt");
    let client_key = dir.path().join("client.key");
    std::fs::write(&client_cert, &pki.client.cert_pem).unwrap();
    std::fs::write(&client_key, &pki.client.key_pem).unwrap();
    let port = h.running.grpc_addr.port();
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_scp-pep"))
            .arg("health")
            .args(&args)
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let s = |p: &Path| p.display().to_string();
    let ok = run(vec![
        "--grpc".into(),
        format!("https://localhost:{port}"),
        "--ca-file".into(),
        s(&pki.ca_file),
        "--cert-file".into(),
        s(&client_cert),
        "--key-file".into(),
        s(&client_key),
    ])
    .await;
    // The address's host need not match the certificate when the name is given.
    let named = run(vec![
        "--grpc".into(),
        format!("127.0.0.1:{port}"),
        "--ca-file".into(),
        s(&pki.ca_file),
        "--cert-file".into(),
        s(&client_cert),
        "--key-file".into(),
        s(&client_key),
        "--tls-server-name".into(),
        "localhost".into(),
    ])
    .await;
    assert_eq!(named, (Some(0), "SERVING".to_owned()));
    assert_eq!(ok, (Some(0), "SERVING".to_owned()));
    let no_client_cert = run(vec![
        "--grpc".into(),
        format!("https://localhost:{port}"),
        "--ca-file".into(),
        s(&pki.ca_file),
    ])
    .await;
    assert_eq!(no_client_cert.0, Some(1), "{no_client_cert:?}");
    assert!(
        no_client_cert.1.starts_with("UNREACHABLE"),
        "{no_client_cert:?}"
    );
    let plain = run(vec!["--grpc".into(), format!("127.0.0.1:{port}")]).await;
    assert_eq!(plain.0, Some(1), "{plain:?}");
    let missing = run(vec![
        "--grpc".into(),
        format!("127.0.0.1:{port}"),
        "--ca-file".into(),
        "/nonexistent/ca.pem".into(),
    ])
    .await;
    assert_eq!(missing.0, Some(1));
    assert!(missing.1.contains("/nonexistent/ca.pem"), "{missing:?}");
    assert!(!ok.1.contains("PRIVATE KEY") && !missing.1.contains("BEGIN"));
}
