//! `grpc.health.v1.Health` on the ext_authz listener, and the `scp-pep health` probe.
//!
//! Two service names are reported, both with the same status: `""` (the whole server) and
//! `envoy.service.auth.v3.Authorization` (what Envoy's `grpc_health_check` names). The status is
//! `SERVING` while a policy snapshot is installed and the replica is not draining, `NOT_SERVING`
//! otherwise: before the first snapshot loads (an empty or unreachable store), and from the moment
//! shutdown starts, so that health checkers take the replica out while it still answers `Check`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::server::HealthReporter;

use crate::pipeline::Engine;

/// The ext_authz service name, as Envoy's `grpc_health_check.service_name` names it.
pub const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";
/// Every service name reported (`""` is the server as a whole).
pub const SERVICES: [&str; 2] = ["", AUTHZ_SERVICE];

/// How often the snapshot is looked at for the `NOT_SERVING` → `SERVING` transition.
const POLL: Duration = Duration::from_millis(100);

/// The health state of one running scp-pep: policy loaded and not draining.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    engine: Arc<Engine>,
    draining: Arc<AtomicBool>,
    /// The status last published (only changes are published: every publish wakes watchers).
    published: Arc<Mutex<Option<ServingStatus>>>,
}

impl Health {
    /// A health state for `engine`, `NOT_SERVING` until [`Health::refresh`] sees a snapshot, and
    /// the `grpc.health.v1` service that reports it. `draining` is shared with `/readyz`.
    pub async fn new(
        engine: Arc<Engine>,
        draining: Arc<AtomicBool>,
    ) -> (Health, HealthServer<impl HealthApi>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let health = Health {
            reporter,
            engine,
            draining,
            published: Arc::new(Mutex::new(None)),
        };
        // tonic-health starts "" as SERVING: publish the real state before the listener binds.
        health.refresh().await;
        (health, server)
    }

    /// `SERVING` when a policy snapshot is installed and the replica is not draining.
    pub fn status(&self) -> ServingStatus {
        if !self.draining.load(Ordering::SeqCst) && self.engine.snapshot().load().is_some() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }

    /// Whether [`Health::drain`] was called.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Publishes [`Health::status`] to the health service if it changed.
    pub async fn refresh(&self) {
        let mut last = self.published.lock().await;
        let now = self.status();
        if *last == Some(now) {
            return;
        }
        for name in SERVICES {
            self.reporter.set_service_status(name, now).await;
        }
        if last.is_some() {
            tracing::info!(status = ?now, "grpc.health.v1 status changed");
        }
        *last = Some(now);
    }

    /// Starts draining: `NOT_SERVING` from now on, for good. `Check` keeps being answered.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.refresh().await;
    }

    /// Follows the snapshot until `stop`: publishes `SERVING` once one is installed.
    pub async fn follow(self, mut stop: watch::Receiver<bool>) {
        loop {
            self.refresh().await;
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    }
}

/// What `scp-pep health` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Serving,
    /// The server answered with another status (`NOT_SERVING`, `UNKNOWN`, `SERVICE_UNKNOWN`).
    NotServing(&'static str),
    /// No answer: the reason, never the address or anything else the caller passed.
    Unreachable(&'static str),
}

impl Probe {
    /// The one line `scp-pep health` prints.
    pub fn line(&self) -> String {
        match self {
            Probe::Serving => "SERVING".into(),
            Probe::NotServing(s) => (*s).into(),
            Probe::Unreachable(why) => format!("UNREACHABLE: {why}"),
        }
    }
}

/// The endpoint URI for `addr`: `host:port`, or `http://host:port` (`https://` when `tls`); no
/// credentials, no path.
pub fn endpoint_uri(addr: &str, tls: bool) -> Result<tonic::transport::Uri, &'static str> {
    const USAGE: &str =
        "--grpc must be HOST:PORT, http://HOST:PORT or (with --ca-file) https://HOST:PORT";
    let addr = addr.trim();
    let scheme = if tls { "https://" } else { "http://" };
    let with_scheme = if addr.starts_with(scheme) {
        addr.to_owned()
    } else if addr.contains("://") {
        return Err(USAGE);
    } else {
        format!("{scheme}{addr}")
    };
    let uri: tonic::transport::Uri = with_scheme.parse().map_err(|_| USAGE)?;
    let ok = uri
        .authority()
        .is_some_and(|a| !a.as_str().contains('@') && a.port_u16().is_some())
        && uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    if ok { Ok(uri) } else { Err(USAGE) }
}

/// TLS for [`probe_with`]: the CA that signed the listener's certificate, an optional client
/// certificate (mTLS) and the name to check.
pub struct ProbeTls {
    config: tonic::transport::ClientTlsConfig,
}

impl ProbeTls {
    /// `None` without a CA file (plain text). Errors name the file that cannot be read, never
    /// its content.
    pub fn from_files(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
        server_name: Option<String>,
    ) -> Result<Option<ProbeTls>, String> {
        let Some(ca) = ca else {
            return if cert.is_some() {
                Err("--cert-file needs --ca-file".into())
            } else {
                Ok(None)
            };
        };
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {}", p.display(), e.kind()))
        };
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        if let (Some(c), Some(k)) = (cert, key) {
            config = config.identity(tonic::transport::Identity::from_pem(read(c)?, read(k)?));
        }
        if let Some(n) = server_name {
            config = config.domain_name(n);
        }
        Ok(Some(ProbeTls { config }))
    }
}

/// Calls `grpc.health.v1.Health/Check` for `service` on `addr`, all within `timeout`.
pub async fn probe(addr: &str, service: &str, timeout: Duration) -> Probe {
    probe_with(addr, service, timeout, None).await
}

/// [`probe`] over TLS when `tls` is given (`addr` may then be `https://HOST:PORT`).
pub async fn probe_with(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls: Option<&ProbeTls>,
) -> Probe {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_client::HealthClient;

    let uri = match endpoint_uri(addr, tls.is_some()) {
        Ok(u) => u,
        Err(why) => return Probe::Unreachable(why),
    };
    let call = async {
        let mut endpoint = tonic::transport::Endpoint::from(uri)
            .connect_timeout(timeout)
            .timeout(timeout);
        if let Some(t) = tls {
            endpoint = endpoint
                .tls_config(t.config.clone())
                .map_err(|_| "bad TLS settings")?;
        }
        let channel = endpoint.connect().await.map_err(|_| "cannot connect")?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => "SERVICE_UNKNOWN",
                tonic::Code::Unimplemented => "no grpc.health.v1 service there",
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => "timed out",
                _ => "health check call failed",
            })?;
        Ok::<_, &'static str>(resp.into_inner().status)
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Probe::Unreachable("timed out"),
        Ok(Err("SERVICE_UNKNOWN")) => Probe::NotServing("SERVICE_UNKNOWN"),
        Ok(Err(why)) => Probe::Unreachable(why),
        Ok(Ok(s)) => match Wire::try_from(s) {
            Ok(Wire::Serving) => Probe::Serving,
            Ok(Wire::NotServing) => Probe::NotServing("NOT_SERVING"),
            Ok(Wire::ServiceUnknown) => Probe::NotServing("SERVICE_UNKNOWN"),
            _ => Probe::NotServing("UNKNOWN"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            endpoint_uri("127.0.0.1:9191", false).unwrap().to_string(),
            "http://127.0.0.1:9191/"
        );
        assert!(endpoint_uri("http://scp-pep:9191", false).is_ok());
        assert!(endpoint_uri("https://scp-pep:9191", true).is_ok());
        assert!(endpoint_uri("https://scp-pep:9191", false).is_err());
        assert!(endpoint_uri("http://scp-pep:9191", true).is_err());
        assert!(endpoint_uri("[::1]:9191", false).is_ok());
        for bad in [
            "https://h:1",
            "user:secret@h:1",
            "http://user:secret@h:1",
            "h",
            "http://h:1/x",
            "",
        ] {
            assert!(endpoint_uri(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_name_no_input() {
        assert_eq!(Probe::Serving.line(), "SERVING");
        assert_eq!(Probe::NotServing("NOT_SERVING").line(), "NOT_SERVING");
        assert_eq!(
            Probe::Unreachable("cannot connect").line(),
            "UNREACHABLE: cannot connect"
        );
    }
}
