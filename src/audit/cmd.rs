//! `scp-pep audit …` commands: export, verify, keygen, public-key, purge.
//!
//! Exit codes: 0 success (verify: the log verifies), 1 verification found a problem or the
//! operation failed, 2 usage, configuration or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::checkpoint::{CheckpointSigner, TrustedKeys};
use super::export::{ExportRequest, ExportSink, Format};
use crate::config::Config;
use crate::store::Store;

/// Where the store is: `--store URL`, else `store.url` of `--config`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// TOML configuration file (for `store.url` and `[audit]`).
    #[arg(long, env = "SCP_PEP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Store URL; overrides the configuration.
    #[arg(long)]
    pub store: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Tenant whose records to export (`_` for records no tenant could be attributed to).
    #[arg(long)]
    pub tenant: String,
    /// Start of the window (inclusive): RFC 3339 time or `YYYY-MM-DD` (UTC). Default: the beginning.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window (exclusive): RFC 3339 time or `YYYY-MM-DD` (UTC). Default: now.
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    /// Output file (default: standard output).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Export file to verify (`-` for standard input). Without it, the store is verified.
    pub file: Option<PathBuf>,
    /// Trusted verifier key `<name>+<id>+<base64>` (repeatable). Without one, the keys found in
    /// the export or the store are used and the report says they were not pinned.
    #[arg(long = "key")]
    pub keys: Vec<String>,
    /// File with trusted verifier keys, one per line.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Only this tenant's chains (store verification).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Also check the checkpoints published to this directory (`audit.checkpoint_dir`).
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Key name (no spaces, no `+`); the first segment of every checkpoint origin.
    #[arg(long, default_value = "scp-pep")]
    pub name: String,
    /// Write the signer key to this new file (mode 0600) instead of standard output.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PublicKeyArgs {
    /// TOML configuration file (`audit.signing_key` or `audit.signing_key_file`).
    #[arg(long, env = "SCP_PEP_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: configuration: {e}");
        ExitCode::from(2)
    })
}

/// Loads the configuration and connects to its store (`--store` overrides `store.url`); prints
/// the error and returns exit code 2 on failure.
pub(crate) async fn connect(args: &StoreArgs) -> Result<(Config, Store), ExitCode> {
    let mut cfg = load_config(args.config.as_deref())?;
    if let Some(s) = &args.store {
        cfg.store.url = s.clone();
    }
    match Store::connect(
        &cfg.store.url,
        2,
        Duration::from_secs(cfg.store.acquire_timeout_s),
    )
    .await
    {
        Ok(s) => Ok((cfg, s)),
        Err(e) => {
            eprintln!("error: store: {e}");
            Err(ExitCode::from(2))
        }
    }
}

use crate::time::parse_instant;

/// The configured signing key, if any (`audit.signing_key`, else `audit.signing_key_file`).
pub fn configured_signer(cfg: &Config) -> Result<Option<CheckpointSigner>, String> {
    let key = match (&cfg.audit.signing_key, &cfg.audit.signing_key_file) {
        (Some(k), _) => k.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| format!("reading audit.signing_key_file {}: {e}", f.display()))?,
        (None, None) => return Ok(None),
    };
    CheckpointSigner::from_key(&key)
        .map(Some)
        .map_err(|e| format!("audit signing key: {e}"))
}

/// `audit export`.
pub async fn export(a: ExportArgs) -> ExitCode {
    let from_ms = match a.from.as_deref().map(parse_instant).transpose() {
        Ok(v) => v.unwrap_or(0),
        Err(e) => {
            eprintln!("error: --from: {e}");
            return ExitCode::from(2);
        }
    };
    let to_ms = match a.to.as_deref().map(parse_instant).transpose() {
        Ok(v) => v.unwrap_or(i64::MAX),
        Err(e) => {
            eprintln!("error: --to: {e}");
            return ExitCode::from(2);
        }
    };
    let (cfg, store) = match connect(&a.store).await {
        Ok(x) => x,
        Err(c) => return c,
    };
    let keys: Vec<String> = match configured_signer(&cfg) {
        Ok(s) => s.map(|s| s.verifier_key().to_owned()).into_iter().collect(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let out: Box<dyn std::io::Write + Send> = match &a.out {
        None => Box::new(std::io::stdout()),
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
    };
    let req = ExportRequest {
        tenant: a.tenant,
        from_ms,
        to_ms,
        format: a.format,
    };
    let res = super::export::export(&store, &req, &keys, ExportSink::Write(out)).await;
    store.close().await;
    match res {
        Ok(sum) => {
            eprintln!(
                "exported {} records, {} checkpoints, {} chains",
                sum.records, sum.checkpoints, sum.chains
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `audit verify`: prints the JSON report on stdout and a one-line verdict on stderr.
pub async fn verify(a: VerifyArgs) -> ExitCode {
    let mut keys = a.keys.clone();
    if let Some(f) = &a.key_file {
        match std::fs::read_to_string(f) {
            Ok(s) => keys.extend(
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            ),
            Err(e) => {
                eprintln!("error: {}: {e}", f.display());
                return ExitCode::from(2);
            }
        }
    }
    let trusted = if keys.is_empty() {
        None
    } else {
        match TrustedKeys::new(&keys) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("error: --key: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let report = match &a.file {
        Some(p) if p.as_os_str() == "-" => {
            super::verify::verify_export(std::io::stdin().lock(), trusted.as_ref())
        }
        Some(p) => match std::fs::File::open(p) {
            Ok(f) => super::verify::verify_export(
                std::io::BufReader::with_capacity(1 << 20, f),
                trusted.as_ref(),
            ),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => {
            let (_, store) = match connect(&a.store).await {
                Ok(x) => x,
                Err(c) => return c,
            };
            let r = super::verify::verify_store(
                &store,
                a.tenant.as_deref(),
                trusted.as_ref(),
                a.checkpoints.as_deref(),
            )
            .await;
            store.close().await;
            match r {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: store: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    match &report.failure {
        None => {
            eprintln!(
                "OK: {} records in {} chains, {} checkpoints{}",
                report.records,
                report.chains,
                report.checkpoints,
                if report.keys_pinned {
                    ""
                } else {
                    " (keys not pinned)"
                }
            );
            ExitCode::SUCCESS
        }
        Some(f) => {
            eprintln!("FAILED: {f}");
            ExitCode::from(1)
        }
    }
}

/// `audit keygen`.
pub fn keygen(a: KeygenArgs) -> ExitCode {
    let (signer, skey) = match CheckpointSigner::generate(&a.name) {
        Ok(x) => x,
        Err(_) => {
            eprintln!("error: --name must be non-empty, without spaces or `+`");
            return ExitCode::from(2);
        }
    };
    match &a.out {
        Some(p) => {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            match opts
                .open(p)
                .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{skey}\n").as_bytes()))
            {
                Ok(()) => {
                    eprintln!("signer key written to {} (keep it secret)", p.display());
                    println!("{}", signer.verifier_key());
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", p.display());
                    return ExitCode::from(2);
                }
            }
        }
        None => {
            println!("{skey}");
            println!("{}", signer.verifier_key());
            eprintln!(
                "line 1: signer key (secret: audit.signing_key); line 2: verifier key (publish it)"
            );
        }
    }
    ExitCode::SUCCESS
}

/// `audit public-key`.
pub fn public_key(a: PublicKeyArgs) -> ExitCode {
    let cfg = match load_config(a.config.as_deref()) {
        Ok(c) => c,
        Err(c) => return c,
    };
    match configured_signer(&cfg) {
        Ok(Some(s)) => {
            println!("{}", s.verifier_key());
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("error: no audit.signing_key or audit.signing_key_file is configured");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `audit purge`: one retention run now. The purge events are written by a writer of this
/// process (its own chains), signed with the configured key.
pub async fn purge(a: PurgeArgs) -> ExitCode {
    let (cfg, store) = match connect(&a.store).await {
        Ok(x) => x,
        Err(c) => return c,
    };
    let signer = match configured_signer(&cfg) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("error: purging needs the audit signing key (audit.signing_key)");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let days = match store.load().await {
        Ok((_, set)) => set
            .tenants
            .iter()
            .filter_map(|t| t.audit_retention_days.map(|d| (t.id.clone(), d)))
            .collect(),
        Err(_) => Default::default(),
    };
    let settings = super::AuditSettings {
        mode: super::AuditMode::Durable,
        writer: format!("{}-purge", crate::audit::default_writer()),
        ..Default::default()
    };
    let audit = super::AuditLog::start(store.clone(), signer, settings);
    let res = super::retention::purge_expired(
        &store,
        Some(&audit),
        &days,
        cfg.audit.retention_days,
        chrono::Utc::now().timestamp_millis(),
    )
    .await;
    audit.close().await;
    store.close().await;
    match res {
        Ok(done) => {
            println!("{}", serde_json::to_string(&done).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
