//! The command line: `serve`, `policy validate|apply`, `check`, `health`, `demo`, `audit …`,
//! `consent import`, `explain`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::policy::PolicySet;

/// scp-pep: policy enforcement point (Envoy ext_authz) for the Smart Community Platform.
#[derive(Debug, Parser)]
#[command(name = "scp-pep", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ext_authz gRPC server and the HTTP ops listener.
    Serve {
        /// TOML configuration file; every key can be overridden by `SCP_PEP_SECTION__KEY`.
        #[arg(long, env = "SCP_PEP_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate or apply policy files.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Send one real CheckRequest to an ext_authz server and print the decision as JSON.
    Check(CheckArgs),
    /// Ask a running scp-pep's `grpc.health.v1` whether it is SERVING (for container
    /// HEALTHCHECKs): exit 0 when it is, 1 otherwise; one line on stdout.
    Health(HealthArgs),
    /// Start scp-pep with demo policies and a throwaway signing key, and run a tour of checks.
    Demo(crate::demo::DemoArgs),
    /// The tamper-evident audit log: export, verify, keys, live tail.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Evaluate one request offline against policy files and print every pipeline stage with its
    /// inputs and result (the determining Cedar policies for packs); exit 0 allow, 1 deny.
    Explain(crate::explain::ExplainArgs),
    /// The consent registry (operator tools; day-to-day changes go through `/v1/consents`).
    Consent {
        #[command(subcommand)]
        action: ConsentAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConsentAction {
    /// Import persons and consents from a YAML or JSON file (`persons:`, `consents:`), validated
    /// as a whole first; idempotent; every capture is a `consent_change` audit event.
    Import {
        file: PathBuf,
        /// TOML configuration file (for `store.url`, `audit.*`, `consent.*`).
        #[arg(long, env = "SCP_PEP_CONFIG")]
        config: Option<PathBuf>,
        /// Store URL; overrides the configuration.
        #[arg(long)]
        store: Option<String>,
        /// Operator recorded as `captured_by`.
        #[arg(long, default_value = "scp-pep-import")]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Follow the audit log live (decisions; `--events` for every record), one line each.
    Tail(crate::tail::TailArgs),
    /// Export a tenant's audit records (with the checkpoints and keys needed to verify them) as
    /// JSON lines or CSV, streamed to stdout or a file.
    Export(crate::audit::cmd::ExportArgs),
    /// Verify an export file or the store: replay every chain, check every checkpoint signature,
    /// and name the first record where tampering, deletion, reordering or truncation shows.
    Verify(crate::audit::cmd::VerifyArgs),
    /// Generate a checkpoint signing key (Ed25519, Go note format) and print its verifier key.
    Keygen(crate::audit::cmd::KeygenArgs),
    /// Print the verifier (public) key of the configured signing key.
    PublicKey(crate::audit::cmd::PublicKeyArgs),
    /// Apply the retention policy now (purges records older than each tenant's retention).
    Purge(crate::audit::cmd::PurgeArgs),
}

#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Parse and validate every `*.yaml` file in DIR; print each problem with file, entry, field.
    Validate { dir: PathBuf },
    /// Validate DIR and write it to the store in one transaction (idempotent).
    Apply {
        dir: PathBuf,
        /// TOML configuration file (for `store.url`).
        #[arg(long, env = "SCP_PEP_CONFIG")]
        config: Option<PathBuf>,
        /// Store URL; overrides the configuration.
        #[arg(long)]
        store: Option<String>,
    },
    /// Impact preview (ADM-6): re-decide the recorded decisions of a window against a candidate
    /// policy (`--candidate DIR` or a stored `--change ID`) and report what flips.
    Impact(crate::impact::ImpactArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// ext_authz server, e.g. `http://127.0.0.1:9191`.
    #[arg(long, default_value = "http://127.0.0.1:9191")]
    pub server: String,
    /// Bearer token (sent as `authorization: Bearer T`). Prefer `--token-file` or the env var, so
    /// the token does not land in shell history.
    #[arg(long, env = "SCP_PEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Extra request header, `NAME:VALUE` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Source address Envoy would report.
    #[arg(long)]
    pub source_ip: Option<String>,
    /// HTTP method, e.g. GET.
    pub method: String,
    /// Request path with optional query, e.g. `/v1/tenants/ke/health/persons/p-1/record`.
    pub path: String,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The ext_authz gRPC listener, `HOST:PORT` or `http://HOST:PORT`.
    #[arg(long, env = "SCP_PEP_HEALTH_GRPC", default_value = "127.0.0.1:9191")]
    pub grpc: String,
    /// Seconds for the whole call (connect included).
    #[arg(long, default_value_t = 3)]
    pub timeout_s: u64,
    /// Service name asked about: `""` (the server) or `envoy.service.auth.v3.Authorization`.
    #[arg(long, default_value = "")]
    pub service: String,
    /// CA bundle (PEM) that signed the listener's certificate: the call uses TLS (`[tls] grpc =
    /// "tls"` or `"mtls"`).
    #[arg(long, env = "SCP_PEP_HEALTH_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM) for a listener with `grpc = "mtls"`; needs `--key-file`.
    #[arg(long, env = "SCP_PEP_HEALTH_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "SCP_PEP_HEALTH_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<std::path::PathBuf>,
    /// Name the listener's certificate must carry; default: the host of `--grpc`.
    #[arg(long)]
    pub tls_server_name: Option<String>,
}

/// Parses the command line and runs it. Exit codes: 0 success (for `check`: allowed), 1 failure
/// (for `check`: denied), 2 usage or configuration error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(run(cli))
}

/// The process log (JSON lines on stderr, `RUST_LOG`, default `info`) and, with `otel`, the
/// OpenTelemetry span export ([`crate::telemetry`]); decision spans never reach the process log.
fn init_tracing(otel: Option<&opentelemetry_sdk::trace::SdkTracerProvider>) {
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _, layer::SubscriberExt as _};
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if let Ok(d) = format!("{}=off", crate::telemetry::TARGET).parse() {
        filter = filter.add_directive(d);
    }
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let _ = tracing_subscriber::registry()
        .with(otel.map(crate::telemetry::layer))
        .with(fmt)
        .try_init();
}

async fn run(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Serve { .. }) {
        init_tracing(None);
    }
    match cli.command {
        Command::Serve { config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            let otel = match crate::telemetry::provider(&cfg.tracing) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: configuration: tracing: {e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(otel.as_ref());
            let code = serve(cfg).await;
            if let Some(p) = otel {
                // Flushes the spans still queued.
                match tokio::task::spawn_blocking(move || p.shutdown()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "span export did not finish"),
                    Err(e) => tracing::warn!(error = %e, "span export did not finish"),
                }
            }
            code
        }
        Command::Policy { action } => policy(action).await,
        Command::Check(args) => check(args).await,
        Command::Health(args) => health(args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Audit { action } => audit(action).await,
        Command::Consent { action } => consent(action).await,
        Command::Explain(args) => crate::explain::run(args).await,
    }
}

async fn audit(action: AuditAction) -> ExitCode {
    match action {
        AuditAction::Tail(args) => crate::tail::run_cli(args).await,
        AuditAction::Export(a) => crate::audit::cmd::export(a).await,
        AuditAction::Verify(a) => crate::audit::cmd::verify(a).await,
        AuditAction::Keygen(a) => crate::audit::cmd::keygen(a),
        AuditAction::PublicKey(a) => crate::audit::cmd::public_key(a),
        AuditAction::Purge(a) => crate::audit::cmd::purge(a).await,
    }
}

async fn serve(cfg: Config) -> ExitCode {
    let drain = std::time::Duration::from_secs(cfg.server.drain_s);
    // Handlers first: a SIGTERM during start-up still drains.
    let first = shutdown_signal();
    let running = match crate::server::start(cfg, None).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    first.await;
    tracing::info!("shutting down");
    // Health NOT_SERVING at once; Check answered for `server.drain_s` more; then the listeners
    // close gracefully. A second signal skips the rest of the drain.
    running.drain_and_shutdown(drain, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// `scp-pep health`: exit 0 when SERVING, 1 otherwise (never 2: Docker reserves it).
async fn health(args: HealthArgs) -> ExitCode {
    let timeout = std::time::Duration::from_secs(args.timeout_s.max(1));
    let tls = match crate::health::ProbeTls::from_files(
        args.ca_file.as_deref(),
        args.cert_file.as_deref(),
        args.key_file.as_deref(),
        args.tls_server_name.clone(),
    ) {
        Ok(t) => t,
        Err(why) => {
            println!("UNREACHABLE: {why}");
            return ExitCode::from(1);
        }
    };
    let p = crate::health::probe_with(&args.grpc, &args.service, timeout, tls.as_ref()).await;
    println!("{}", p.line());
    if p == crate::health::Probe::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Writes a command's result to stdout. A closed pipe (`| head`) is not an error worth a panic
/// (`println!` would panic), so write errors are ignored.
pub fn write_stdout(text: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    shutdown_signal().await
}

/// Registers the Ctrl-C (SIGINT) and SIGTERM handlers now and returns a future that resolves
/// on the first of them. Registering before the listeners start means a signal that arrives
/// while the server is starting is not lost to the default action (which would kill the
/// process without a drain).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (Some(mut term), None) => {
                    term.recv().await;
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn policy(action: PolicyAction) -> ExitCode {
    match action {
        PolicyAction::Impact(a) => crate::impact::cmd(a).await,
        PolicyAction::Validate { dir } => match PolicySet::load_dir(&dir) {
            Ok(set) => {
                let counts = set.counts();
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "counts": counts, "digest": set.digest()})
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                println!("{}", serde_json::json!({"valid": false, "errors": e.0}));
                ExitCode::from(1)
            }
        },
        PolicyAction::Apply { dir, config, store } => {
            let mut cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(s) = store {
                cfg.store.url = s;
            }
            let set = match PolicySet::load_dir(&dir) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("nothing was applied");
                    return ExitCode::from(1);
                }
            };
            let store = match crate::store::Store::connect(
                &cfg.store.url,
                2,
                std::time::Duration::from_secs(cfg.store.acquire_timeout_s),
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            match store.apply(&set).await {
                Ok(out) => {
                    println!(
                        "{}",
                        serde_json::json!({"applied": true, "changed": out.changed, "version": out.version, "counts": set.counts(), "skipped": out.skipped})
                    );
                    store.close().await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}; nothing was applied");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn consent(action: ConsentAction) -> ExitCode {
    let ConsentAction::Import {
        file,
        config,
        store,
        by,
    } = action;
    let mut cfg = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(s) = store {
        cfg.store.url = s;
    }
    let doc: crate::consent::import::ImportFile = match std::fs::read_to_string(&file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_yaml_ng::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}: {e}; nothing was imported", file.display());
            return ExitCode::from(1);
        }
    };
    let store = match crate::store::Store::connect(
        &cfg.store.url,
        2,
        std::time::Duration::from_secs(cfg.store.acquire_timeout_s),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let grace: std::collections::HashMap<String, u32> = match store.load().await {
        Ok((_, set)) => set
            .tenants
            .iter()
            .filter_map(|t| t.consent_grace_days.map(|d| (t.id.clone(), d)))
            .collect(),
        Err(_) => Default::default(),
    };
    let audit = match crate::server::start_audit(&cfg, &store) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: audit log: {e:#}");
            return ExitCode::from(2);
        }
    };
    let refs = match crate::pseudonym::resolve(&cfg.audit, &store).await {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let consents = crate::consent::Consents::with_refs(
        store.clone(),
        cfg.consent.clone(),
        std::sync::Arc::new(crate::consent::SystemClock),
        refs,
    );
    let default_grace = cfg.consent.default_grace_days;
    let res = crate::consent::import::import(&consents, audit.as_deref(), &doc, &by, |t| {
        grace.get(t).copied().unwrap_or(default_grace)
    })
    .await;
    if let Some(a) = &audit {
        a.close().await;
    }
    store.close().await;
    match res {
        Ok(out) => {
            println!("{}", serde_json::json!({"imported": true, "counts": out}));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn check(args: CheckArgs) -> ExitCode {
    let token = match (&args.token, &args.token_file) {
        (_, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                eprintln!("error: cannot read --token-file: {e}");
                return ExitCode::from(2);
            }
        },
        (Some(t), None) => Some(t.clone()),
        (None, None) => None,
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                headers.push((k.trim().to_owned(), v.trim().to_owned()))
            }
            _ => {
                eprintln!("error: header `{h}` is not NAME:VALUE");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(t) = token {
        headers.push(("authorization".into(), format!("Bearer {t}")));
    }
    let input = crate::check::CheckInput {
        method: args.method.to_ascii_uppercase(),
        path: args.path,
        headers,
        source_ip: args.source_ip,
        peer_certificate: None,
        body: None,
    };
    match crate::check::check(&args.server, &input).await {
        Ok(v) => {
            write_stdout(&(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"));
            if v["allowed"] == serde_json::Value::Bool(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: check failed: {e}");
            ExitCode::from(2)
        }
    }
}
