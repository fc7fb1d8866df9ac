//! Wiring: store → snapshot → engine → gRPC and HTTP listeners, plus the change feed.
//!
//! [`start`] binds both listeners (port 0 allowed, for tests), spawns the servers and returns a
//! [`Running`] handle with the bound addresses and a graceful [`Running::shutdown`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::AdminAuth;
use crate::audit::{AuditLog, AuditMode, AuditSettings, CheckpointSigner};
use crate::authn::jwks::JwksCache;
use crate::authn::{AuthSettings, Authenticator, parse_algorithm};
use crate::config::Config;
use crate::consent::{Clock, Consents, SystemClock};
use crate::grpc::ExtAuthz;
use crate::health::Health;
use crate::pipeline::{Engine, PipelineSettings, SnapshotSlot};
use crate::policy::PolicySet;
use crate::sink::{DecisionSink, FanoutSink, JsonLogSink};
use crate::store::Store;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; later calls return the same handle.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "scp_pep_decision_duration_seconds".into(),
                    ),
                    &[
                        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                        0.01, 0.05,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()
                .inspect(|handle| {
                    // Histograms keep raw samples until upkeep drains them; without this a replica
                    // nobody scrapes grows without bound.
                    let h = handle.clone();
                    let _ = std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(Duration::from_secs(5));
                                h.run_upkeep();
                            }
                        });
                })
        })
        .as_ref()
}

/// A running scp-pep.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The HTTP authorization listener (`[http_authz] enabled`).
    pub http_authz_addr: Option<SocketAddr>,
    pub engine: Arc<Engine>,
    pub store: Store,
    /// The audit log (`None` when `audit.mode = "off"`).
    pub audit: Option<Arc<AuditLog>>,
    /// Admin caller authentication (audit export and tail, consent API).
    pub admin: AdminAuth,
    /// The consent service (stage 7 and the consent API).
    pub consents: Arc<Consents>,
    /// `grpc.health.v1` state: policy loaded, not draining.
    pub health: Health,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts draining: `grpc.health.v1` (and `/readyz`) report `NOT_SERVING` from now on, so
    /// Envoy's health checks take this replica out, while `Check` and everything else keep being
    /// answered until [`Running::shutdown`].
    pub async fn drain(&self) {
        self.health.drain().await;
    }

    /// [`Running::drain`], waits `period` (or until `cut_short` resolves: a second signal), then
    /// [`Running::shutdown`].
    pub async fn drain_and_shutdown(
        self,
        period: Duration,
        cut_short: impl std::future::Future<Output = ()>,
    ) {
        self.drain().await;
        if !period.is_zero() {
            tracing::info!(
                drain_s = period.as_secs_f64(),
                "draining: health NOT_SERVING, still answering Check"
            );
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = cut_short => tracing::info!("second signal: draining cut short"),
            }
        }
        self.shutdown().await;
    }

    /// Stops accepting, lets in-flight requests finish, stops the change feed. Health turns
    /// `NOT_SERVING` first.
    pub async fn shutdown(self) {
        self.health.drain().await;
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // After the listeners: in-flight decisions have their records; then the chains are sealed.
        if let Some(a) = &self.audit {
            a.close().await;
        }
        self.store.close().await;
    }
}

/// Starts scp-pep with `config`. `extra_sink` receives every decision besides the configured log
/// (tests and the demo use it).
///
/// Errors: store unreachable, migrations, invalid policy directory, listener bind failures.
pub async fn start(
    config: Config,
    extra_sink: Option<Arc<dyn DecisionSink>>,
) -> anyhow::Result<Running> {
    start_with_clock(config, extra_sink, Arc::new(SystemClock)).await
}

/// Everything scp-pep is made of, assembled but not listening: the store (migrated, policy files
/// applied), the decision engine with its loaded snapshot, the audit log, the consent service
/// and the admin-token check. [`App::http_router`] is the whole HTTP surface as an axum
/// [`Router`], usable without a socket (`tower::ServiceExt::oneshot`); [`start`] binds the
/// listeners and runs the background tasks.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub engine: Arc<Engine>,
    /// `None` when `audit.mode = "off"`.
    pub audit: Option<Arc<AuditLog>>,
    /// Admin token verification (audit export and tail, consent and admin APIs).
    pub admin: AdminAuth,
    /// The one admin-token check of every REST surface and the tail.
    pub access: crate::admin::access::Access,
    pub consents: Arc<Consents>,
    /// Integration activity (last sync, handshake activations).
    pub activity: Arc<crate::admin::integrations::Activity>,
    provisioner: Option<Arc<dyn crate::admin::keycloak::Provisioner>>,
    /// Set when the replica starts draining (`/readyz` then answers 503).
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Becomes `true` at shutdown ([`start`] drives it): ends the staff view's open streams.
    shutdown: (watch::Sender<bool>, watch::Receiver<bool>),
}

impl App {
    /// Assembles scp-pep from `config` without binding anything. `extra_sink` receives every
    /// decision besides the configured log; `clock` is what consent evaluation reads "now" from.
    ///
    /// Errors: store unreachable, migrations, invalid policy directory or configuration.
    pub async fn assemble(
        config: Config,
        extra_sink: Option<Arc<dyn DecisionSink>>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<App> {
        let _ = prometheus();
        config.validate().map_err(|e| anyhow::anyhow!(e))?;
        let mut config = config;
        config.audit.link_key = config
            .audit
            .resolve_link_key()
            .map_err(|e| anyhow::anyhow!(e))?;
        let store = Store::connect(
            &config.store.url,
            config.store.max_connections,
            Duration::from_secs(config.store.acquire_timeout_s),
        )
        .await
        .context("connecting to the policy store")?;

        if let Some(dir) = &config.policy.dir {
            let set = PolicySet::load_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
            let out = store.apply(&set).await.context("applying policy files")?;
            tracing::info!(dir = %dir.display(), version = out.version, changed = out.changed, "policy files applied");
            for s in &out.skipped {
                tracing::warn!(entry = %s, "policy file entry skipped: the admin API owns this document");
            }
        }

        crate::admin::http::check_claim_permissions(&config.admin)
            .map_err(|e| anyhow::anyhow!(e))?;
        let algorithms = config
            .auth
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("auth.algorithms: {e}"))?;
        let algorithms_for_admin = algorithms.clone();
        let jwks = JwksCache::new(
            Duration::from_secs(config.auth.jwks_ttl_s),
            Duration::from_secs(config.auth.jwks_refetch_min_interval_s),
            Duration::from_secs(config.auth.jwks_fetch_timeout_s),
            algorithms.clone(),
        );
        let auth = Authenticator::new(
            jwks.clone(),
            AuthSettings {
                leeway_s: config.auth.leeway_s,
                algorithms,
                token_cache_entries: config.auth.token_cache_entries,
            },
        );

        let mut sinks: Vec<Arc<dyn DecisionSink>> = Vec::new();
        if config.decision_log.enabled {
            let s = if config.decision_log.output == "stdout" {
                JsonLogSink::stdout()
            } else {
                JsonLogSink::file(std::path::Path::new(&config.decision_log.output))
                    .context("opening decision_log.output")?
            };
            sinks.push(Arc::new(s));
        }
        if let Some(s) = extra_sink {
            sinks.push(s);
        }
        let sink: Arc<dyn DecisionSink> = Arc::new(FanoutSink(sinks));

        let audit = start_audit(&config, &store)?;
        let slot: SnapshotSlot = Arc::new(ArcSwap::from_pointee(None));
        let mut engine = Engine::new(
            slot.clone(),
            auth,
            sink,
            PipelineSettings {
                api_key_header: config.auth.api_key_header.to_ascii_lowercase(),
                trust_xfcc: config.auth.trust_xfcc,
                max_body_bytes: config.consent.max_body_bytes,
                max_persons: config.consent.max_persons,
                method_override_headers: lower(&config.request.method_override_headers),
                path_override_headers: lower(&config.request.path_override_headers),
            },
        );
        if let Some(a) = &audit {
            engine = engine.with_audit(a.clone());
        }
        if config.rate_limit.backend == crate::limits::RateBackend::Redis {
            engine =
                engine.with_shared_limits(crate::limits::SharedLimits::new(&config.rate_limit)?);
        }
        if config.consent.default_grace_days > crate::consent::model::MAX_GRACE_DAYS {
            anyhow::bail!("consent.default_grace_days must be at most 90 (CON-27)");
        }
        let refs = Arc::new(crate::pseudonym::resolve(&config.audit, &store).await?);
        engine = engine.with_person_refs(refs.clone());
        let consents = Consents::with_refs(store.clone(), config.consent.clone(), clock, refs);
        engine = engine.with_consents(consents.clone());
        let activity = crate::admin::integrations::Activity::new();
        engine = engine.with_activity(activity.clone());
        let engine = Arc::new(engine);
        let provisioner: Option<Arc<dyn crate::admin::keycloak::Provisioner>> =
            match &config.admin.keycloak {
                Some(k) => Some(Arc::new(
                    crate::admin::keycloak::KeycloakAdmin::new(k.clone())
                        .map_err(|e| anyhow::anyhow!("admin.keycloak: {e}"))?,
                )),
                None => None,
            };
        let admin = AdminAuth::new(
            jwks.clone(),
            slot,
            config.admin.clone(),
            algorithms_for_admin,
            config.auth.leeway_s,
        );
        let access =
            crate::admin::access::Access::new(admin.clone(), store.clone(), engine.clone());
        let audience = config.auth.audience.clone();
        match crate::feed::reload(&store, &engine, &audience).await {
            Ok(Some(v)) => tracing::info!(version = v, "policy snapshot loaded"),
            Ok(None) => tracing::warn!(
                "policy store is empty: every request is denied until `scp-pep policy apply`"
            ),
            Err(e) => tracing::error!(error = %e, "cannot load policy; denying until it loads"),
        }
        if let Some(snap) = engine.snapshot().load().as_ref() {
            for t in snap.tenants.values() {
                if let Err(e) = jwks.prefetch(&t.tenant.jwks).await {
                    tracing::warn!(tenant = %t.tenant.id, error = %e, "JWKS prefetch failed; will retry on demand");
                }
            }
        }
        Ok(App {
            config,
            store,
            engine,
            audit,
            admin,
            access,
            consents,
            activity,
            provisioner,
            draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            shutdown: watch::channel(false),
        })
    }

    /// The HTTP surface: health, readiness and metrics; the audit export (when the audit log is
    /// on), consent and admin APIs and `/openapi.json`; unknown routes answer 404 `NOT_FOUND`
    /// in the REST error shape.
    pub fn http_router(&self) -> Router {
        let mut app = Router::new();
        if let Some(a) = &self.audit {
            app = app.merge(
                crate::audit::http::AuditHttp::new(
                    self.store.clone(),
                    a.clone(),
                    self.access.clone(),
                    self.config.audit.link_key.as_deref(),
                    self.config.audit.link_ttl_s,
                )
                .router(),
            );
            // The read-only security staff view (`/staff`) and its data endpoints.
            app = app.merge(
                crate::staff::StaffHttp::new(self.store.clone(), a.clone(), self.access.clone())
                    .with_shutdown(self.shutdown.1.clone())
                    .router(),
            );
        }
        app = app.merge(
            crate::consent::http::ConsentHttp::new(
                self.consents.clone(),
                self.audit.clone(),
                self.access.clone(),
                self.engine.snapshot().clone(),
            )
            .router(),
        );
        app = app.merge(
            crate::admin::http::AdminHttp {
                store: self.store.clone(),
                audit: self.audit.clone(),
                access: self.access.clone(),
                engine: self.engine.clone(),
                audience: self.config.auth.audience.clone(),
                provisioner: self.provisioner.clone(),
                webhooks: self.config.webhooks.clone(),
            }
            .router(),
        );
        // Every root use and cross-tenant attempt of the admin plane is recorded (ADM-2).
        let app = app.layer(axum::middleware::from_fn_with_state(
            self.audit.clone(),
            crate::admin::ledger::record_request,
        ));
        ops_router(OpsState {
            engine: self.engine.clone(),
            store: self.store.clone(),
            draining: self.draining.clone(),
        })
        .merge(app)
        .fallback(|| async { crate::api::ApiError::not_found("no such route").into_response() })
    }
}

/// [`start`] with the clock consent evaluation reads "now" from (tests cross consent time
/// boundaries with a [`crate::consent::ManualClock`]).
pub async fn start_with_clock(
    config: Config,
    extra_sink: Option<Arc<dyn DecisionSink>>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Running> {
    let app = App::assemble(config, extra_sink, clock).await?;
    let router = app.http_router();
    let App {
        config,
        store,
        engine,
        audit,
        admin,
        access,
        consents,
        activity,
        draining,
        provisioner,
        shutdown,
        ..
    } = app;
    let audience = config.auth.audience.clone();
    let (tx, rx) = shutdown;
    let mut tasks = Vec::new();

    // gRPC ext_authz.
    let grpc_listener = tokio::net::TcpListener::bind(config.server.grpc_listen)
        .await
        .with_context(|| format!("binding gRPC listener {}", config.server.grpc_listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let budget = crate::listen::budget(&config.server)?;
    tracing::info!(
        nofile = budget.nofile,
        http_connections = budget.http,
        grpc_connections = budget.grpc,
        "connection limits"
    );
    // The decision path's connections (gRPC, and the HTTP authorization listener when on) share
    // one budget.
    let decision_permits = Arc::new(tokio::sync::Semaphore::new(budget.grpc));
    // TLS on the listeners (INT-7.1-1): certificates read now (a bad file stops the start), then
    // re-read every `tls.reload_interval_s`.
    let tls = crate::tls::TlsSetup::new(&config.tls).map_err(|e| anyhow::anyhow!(e))?;
    let (grpc_tls, http_tls, http_authz_tls) = match &tls {
        Some(t) => (t.grpc.clone(), t.http.clone(), t.http_authz.clone()),
        None => (None, None, None),
    };
    if let Some(t) = tls {
        tasks.push(tokio::spawn(t.run_reload(rx.clone())));
    }
    let incoming = crate::listen::grpc_incoming(grpc_listener, decision_permits.clone(), grpc_tls);
    let svc = ExtAuthz::new(engine.clone()).into_server();
    // grpc.health.v1 on the same listener: NOT_SERVING until a snapshot is installed and again
    // from the start of draining.
    let (health, health_svc) = Health::new(engine.clone(), draining).await;
    // TAIL-SERVICE: the live tail (scp.pep.v1.DecisionLog) joins the same listener.
    let tail_svc = audit.as_ref().map(|a| {
        crate::tail::DecisionLogService::new(a.clone(), access.clone())
            .with_shutdown(rx.clone())
            .into_server()
    });
    let mut grpc_rx = rx.clone();
    tasks.push(tokio::spawn(async move {
        let res = tonic::transport::Server::builder()
            // Bounded per connection: a client past it waits for a free stream (Envoy's gRPC
            // client does; so does tonic's), instead of costing scp-pep unbounded memory.
            .max_concurrent_streams(Some(1024))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(svc)
            .add_service(health_svc)
            .add_optional_service(tail_svc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_rx.wait_for(|v| *v).await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }));

    // HTTP: health, readiness, metrics.
    let http_listener = tokio::net::TcpListener::bind(config.server.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener {}", config.server.http_listen))?;
    let http_addr = http_listener.local_addr()?;
    let http_rx = rx.clone();
    let timeouts = crate::listen::HttpTimeouts {
        header_read: Duration::from_secs(config.server.header_read_timeout_s.max(1)),
        idle: Duration::from_secs(config.server.idle_timeout_s.max(1)),
    };
    let router = router.layer(axum::middleware::from_fn_with_state(
        Duration::from_secs(config.server.request_timeout_s.max(1)),
        crate::listen::request_timeout,
    ));
    let http_permits = Arc::new(tokio::sync::Semaphore::new(budget.http));
    tasks.push(tokio::spawn(async move {
        crate::listen::serve_http(
            http_listener,
            router,
            http_permits,
            "http",
            timeouts,
            200,
            http_tls,
            http_rx,
        )
        .await;
    }));

    // HTTP authorization mode (nginx auth_request, Envoy http_service, forward auth).
    let http_authz_addr = if config.http_authz.enabled {
        let listener = tokio::net::TcpListener::bind(config.http_authz.listen)
            .await
            .with_context(|| {
                format!(
                    "binding HTTP authorization listener {}",
                    config.http_authz.listen
                )
            })?;
        let addr = listener.local_addr()?;
        let router = crate::http_authz::router(engine.clone(), &config.http_authz).layer(
            axum::middleware::from_fn_with_state(
                Duration::from_secs(config.server.request_timeout_s.max(1)),
                crate::listen::request_timeout,
            ),
        );
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            crate::listen::serve_http(
                listener,
                router,
                decision_permits,
                "http_authz",
                timeouts,
                10_000,
                http_authz_tls,
                rx,
            )
            .await;
        }));
        Some(addr)
    } else {
        None
    };
    tasks.push(tokio::spawn(health.clone().follow(rx.clone())));

    // Change feed.
    tasks.push(tokio::spawn(crate::feed::change_feed(
        store.clone(),
        engine.clone(),
        audience,
        Duration::from_millis(config.store.poll_interval_ms.max(50)),
        rx.clone(),
    )));

    // Last successful sync and handshake activations (ONB-6, ONB-7, ONB-AUD-4).
    tasks.push(tokio::spawn(activity.run(
        store.clone(),
        audit.clone(),
        engine.clone(),
        config.auth.audience.clone(),
        rx.clone(),
    )));

    // Outbound webhooks from the shared outbox (INT-5.1-1, EXT-4.3-2, ONB-LOG-01).
    match crate::webhooks::Deliverer::new(
        store.clone(),
        audit.clone(),
        Some(engine.clone()),
        config.auth.audience.clone(),
        config.webhooks.clone(),
        config.admin.webhook_allow_http_loopback,
    ) {
        Ok(d) => tasks.push(tokio::spawn(crate::webhooks::run(Arc::new(d), rx.clone()))),
        Err(e) => {
            tracing::error!(error = %e, "webhook deliverer unavailable; deliveries stay pending")
        }
    }

    // Keycloak clients' `enabled` flag in step with the lifecycle (INT-6.2-3, INT-6.2-4).
    if let (Some(p), Some(k)) = (&provisioner, &config.admin.keycloak) {
        tasks.push(tokio::spawn(
            crate::admin::integrations::keycloak_sync::run(
                store.clone(),
                audit.clone(),
                engine.clone(),
                p.clone(),
                Duration::from_secs(k.sync_interval_s.max(1)),
                rx.clone(),
            ),
        ));
    }

    // Consent: change feed (cache invalidation from other replicas), share ledger, outbox.
    tasks.push(tokio::spawn(consents.clone().follow(rx.clone())));
    tasks.push(tokio::spawn(consents.clone().run_share_writer(rx.clone())));
    tasks.push(tokio::spawn(crate::consent::notify::run(
        consents.clone(),
        engine.snapshot().clone(),
        rx.clone(),
    )));

    // Audit retention and incremental self-verification.
    if let Some(a) = &audit {
        if config.audit.purge_interval_s > 0 {
            tasks.push(tokio::spawn(retention_loop(
                store.clone(),
                a.clone(),
                engine.clone(),
                config.audit.retention_days,
                Duration::from_secs(config.audit.purge_interval_s),
                rx.clone(),
            )));
        }
        if config.audit.verify_interval_s > 0 {
            tasks.push(tokio::spawn(self_verify_loop(
                store.clone(),
                a.verifier_key().to_owned(),
                Duration::from_secs(config.audit.verify_interval_s),
                Duration::from_secs(config.audit.full_verify_interval_s.max(1)),
                rx.clone(),
            )));
        }
    }

    tracing::info!(
        %grpc_addr,
        %http_addr,
        http_authz = ?http_authz_addr,
        grpc_tls = ?config.tls.mode(crate::tls::Listener::Grpc),
        http_tls = ?config.tls.mode(crate::tls::Listener::Http),
        store = store.backend(),
        "scp-pep listening"
    );
    Ok(Running {
        grpc_addr,
        http_addr,
        http_authz_addr,
        engine,
        store,
        audit,
        admin,
        consents,
        health,
        shutdown: tx,
        tasks,
    })
}

/// Applies audit retention every `every` (tenant days from the policy snapshot).
async fn retention_loop(
    store: Store,
    audit: Arc<AuditLog>,
    engine: Arc<Engine>,
    default_days: u32,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        let days: std::collections::HashMap<String, u32> = engine
            .snapshot()
            .load()
            .as_ref()
            .as_ref()
            .map(|s| {
                s.tenants
                    .values()
                    .filter_map(|t| {
                        t.tenant
                            .audit_retention_days
                            .map(|d| (t.tenant.id.clone(), d))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let now = chrono::Utc::now().timestamp_millis();
        if let Err(e) =
            crate::audit::retention::purge_expired(&store, Some(&audit), &days, default_days, now)
                .await
        {
            tracing::warn!(error = %e, "audit retention run failed; will retry");
        }
    }
}

/// Re-verifies the stored chains incrementally every `every`, and from scratch every `full_every`.
async fn self_verify_loop(
    store: Store,
    own_key: String,
    every: Duration,
    full_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut v = crate::audit::verify::SelfVerifier::new(&own_key);
    let mut last_full = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        let full = last_full.elapsed() >= full_every;
        if full {
            last_full = std::time::Instant::now();
        }
        if let Err(e) = v.run_once(&store, full).await {
            tracing::warn!(error = %e, "audit self-verification could not read the store; will retry");
        }
    }
}

/// Builds the checkpoint signer and starts the audit writer, unless `audit.mode = "off"`.
///
/// Errors: unreadable or malformed signing key.
pub(crate) fn start_audit(config: &Config, store: &Store) -> anyhow::Result<Option<Arc<AuditLog>>> {
    let c = &config.audit;
    if c.mode == AuditMode::Off {
        tracing::warn!("audit.mode = \"off\": decisions are NOT audited (development only)");
        return Ok(None);
    }
    let key = match (&c.signing_key, &c.signing_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading audit.signing_key_file {}", f.display()))?,
        ),
        (None, None) => None,
    };
    let signer = match key {
        Some(k) => CheckpointSigner::from_key(&k).context("audit signing key")?,
        None => {
            tracing::warn!(
                "no audit.signing_key: checkpoints are signed with a throwaway key; \
                 generate one with `scp-pep audit keygen`"
            );
            CheckpointSigner::generate("scp-pep")
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .0
        }
    };
    tracing::info!(verifier_key = %signer.verifier_key(), mode = ?c.mode, "audit log");
    let settings = AuditSettings {
        mode: c.mode,
        writer: c
            .writer
            .clone()
            .unwrap_or_else(crate::audit::default_writer),
        queue_capacity: c.queue_capacity,
        max_batch: c.max_batch,
        write_timeout: Duration::from_millis(c.write_timeout_ms.max(1)),
        checkpoint_every: c.checkpoint_every,
        checkpoint_interval: Duration::from_secs(c.checkpoint_interval_s.max(1)),
        checkpoint_dir: c.checkpoint_dir.clone(),
        checkpoint_url: c.checkpoint_url.clone(),
        tail_capacity: c.tail_capacity,
    };
    Ok(Some(AuditLog::start(store.clone(), signer, settings)))
}

#[derive(Clone)]
struct OpsState {
    engine: Arc<Engine>,
    store: Store,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

fn ops_router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// 200 when a policy snapshot is installed and the replica is not draining, 503 otherwise. Store
/// reachability (1 s probe) is reported but does not gate readiness: a replica keeps deciding from
/// its last snapshot while the store is away (DESIGN.md, Scale).
async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    let has_policy = s.engine.snapshot().load().is_some();
    let draining = s.draining.load(std::sync::atomic::Ordering::SeqCst);
    let store_ok = matches!(
        tokio::time::timeout(Duration::from_secs(1), s.store.ping()).await,
        Ok(Ok(()))
    );
    let mut body = serde_json::json!({"policy_loaded": has_policy, "store_reachable": store_ok});
    if draining {
        body["draining"] = serde_json::Value::Bool(true);
    }
    let status = if has_policy && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn metrics_text() -> impl IntoResponse {
    match prometheus() {
        Some(h) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            h.render(),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/plain; version=0.0.4")],
            String::from("# metrics recorder unavailable\n"),
        ),
    }
}

/// Header names as Envoy reports them (lower-case), for the `[request]` lists.
fn lower(names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .collect()
}
