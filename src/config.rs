//! Configuration: defaults that work with no file, then a TOML file, then `SCP_PEP_*` environment
//! variables (`SCP_PEP_SECTION__KEY`, e.g. `SCP_PEP_STORE__URL=postgres://…`), later sources
//! winning. Built with `figment`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Top-level configuration; every section has defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub policy: PolicyConfig,
    pub auth: AuthConfig,
    pub decision_log: DecisionLogConfig,
    pub audit: AuditConfig,
    pub admin: crate::admin::AdminConfig,
    pub consent: crate::consent::ConsentConfig,
    pub request: RequestConfig,
    pub http_authz: crate::http_authz::HttpAuthzConfig,
    pub tracing: crate::telemetry::TracingConfig,
    pub tls: crate::tls::TlsConfig,
    pub rate_limit: crate::limits::RateLimitConfig,
    /// Outbound webhook delivery (`[webhooks]`, INT-5.1-1, EXT-4.3-2, ONB-LOG-01).
    pub webhooks: crate::webhooks::WebhooksConfig,
}

/// Request-smuggling defences (`[request]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RequestConfig {
    /// Headers some upstream frameworks read as "the real method" (lower-case). A request that
    /// carries one with a value other than its own method is denied 400 `REQUEST_AMBIGUOUS`; the
    /// headers are always removed before the request goes upstream.
    pub method_override_headers: Vec<String>,
    /// Headers some upstream frameworks read as "the real path" (lower-case); same rule against
    /// the request's own path (with or without its query).
    pub path_override_headers: Vec<String>,
}

impl Default for RequestConfig {
    fn default() -> Self {
        RequestConfig {
            method_override_headers: [
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
            ]
            .map(String::from)
            .to_vec(),
            path_override_headers: ["x-original-url", "x-rewrite-url"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Listeners.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// ext_authz gRPC listener.
    pub grpc_listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http_listen: SocketAddr,
    /// Most HTTP connections open at once (also capped at a quarter of the descriptors left
    /// after `reserved_fds`); more wait in the accept queue.
    pub http_max_connections: usize,
    /// Most gRPC connections open at once (also capped by the descriptors HTTP and the reserve
    /// leave).
    pub grpc_max_connections: usize,
    /// Descriptors kept for the store pool, JWKS, Keycloak, checkpoint and notification calls
    /// and files, never used by inbound connections.
    pub reserved_fds: usize,
    /// Seconds an HTTP client has to send a whole request head (slow-loris), and to start the
    /// next request on a kept-alive HTTP/1 connection.
    pub header_read_timeout_s: u64,
    /// Seconds an HTTP connection may move no byte before it is closed.
    pub idle_timeout_s: u64,
    /// Seconds an HTTP request may take, body read included, before it is answered 503
    /// `REQUEST_TIMEOUT`.
    pub request_timeout_s: u64,
    /// Seconds between SIGTERM/Ctrl-C and closing the listeners: `grpc.health.v1` and `/readyz`
    /// report `NOT_SERVING` at once while `Check` keeps being answered, so health checkers take
    /// the replica out first. 0 closes at once; a second signal cuts the wait short.
    pub drain_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grpc_listen: ([127, 0, 0, 1], 9191).into(),
            http_listen: ([127, 0, 0, 1], 9192).into(),
            http_max_connections: 512,
            grpc_max_connections: 4096,
            reserved_fds: 128,
            header_read_timeout_s: 10,
            idle_timeout_s: 120,
            request_timeout_s: 60,
            drain_s: 5,
        }
    }
}

/// Policy store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:PATH` (created if missing) or `postgres://user@host/db`.
    pub url: String,
    pub max_connections: u32,
    /// Seconds a query waits for a pooled connection.
    pub acquire_timeout_s: u64,
    /// Milliseconds between two checks of the policy version (the change feed on SQLite; a safety
    /// net beside LISTEN/NOTIFY on PostgreSQL).
    pub poll_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite:scp-pep.db".into(),
            max_connections: 8,
            acquire_timeout_s: 5,
            poll_interval_ms: 1000,
        }
    }
}

/// Policy files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// When set, this directory is validated and applied to the store at start (idempotent).
    pub dir: Option<PathBuf>,
}

/// Token authentication.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Audience tokens must carry, unless a tenant sets its own.
    pub audience: String,
    /// Clock-skew allowance for `exp`/`nbf`, seconds.
    pub leeway_s: u64,
    /// Accepted JWS algorithms (asymmetric only).
    pub algorithms: Vec<String>,
    /// Seconds a fetched JWKS is fresh.
    pub jwks_ttl_s: u64,
    /// Least seconds between two refetches triggered by unknown `kid`s (values below 1 count as 1).
    pub jwks_refetch_min_interval_s: u64,
    /// Seconds per JWKS HTTP request.
    pub jwks_fetch_timeout_s: u64,
    /// Verified-token cache capacity, entries.
    pub token_cache_entries: u64,
    /// Header carrying the API key (lower-case).
    pub api_key_header: String,
    /// Trust the XFCC `Hash` element (only with Envoy's `forward_client_cert_details: SANITIZE_SET`).
    pub trust_xfcc: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            audience: "scp-pep".into(),
            leeway_s: 30,
            algorithms: vec![
                "RS256".into(),
                "PS256".into(),
                "ES256".into(),
                "EdDSA".into(),
            ],
            jwks_ttl_s: 300,
            jwks_refetch_min_interval_s: 10,
            jwks_fetch_timeout_s: 5,
            token_cache_entries: 100_000,
            api_key_header: "x-api-key".into(),
            trust_xfcc: false,
        }
    }
}

/// The JSON-lines decision log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionLogConfig {
    pub enabled: bool,
    /// `stdout`, or a file path to append to.
    pub output: String,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig {
            enabled: true,
            output: "stdout".into(),
        }
    }
}

/// The tamper-evident audit log (`[audit]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// `durable` (an allow leaves only after its record is committed), `buffered` (records are
    /// queued; a crash loses at most `queue_capacity + max_batch` records) or `off` (development only).
    pub mode: crate::audit::AuditMode,
    /// Writer name stored with every chain; defaults to the host name.
    pub writer: Option<String>,
    /// Checkpoint signing key in the Go note format (`PRIVATE+KEY+<name>+<id>+<base64>`). Prefer
    /// `signing_key_file` or `SCP_PEP_AUDIT__SIGNING_KEY`. With neither, a throwaway key is
    /// generated at start (logged as a warning: checkpoints then prove nothing after a restart).
    pub signing_key: Option<String>,
    /// File holding the signing key.
    pub signing_key_file: Option<PathBuf>,
    /// Records queued at most; beyond it decisions are denied with `AUDIT_UNAVAILABLE`.
    pub queue_capacity: usize,
    /// Records per transaction at most.
    pub max_batch: usize,
    /// Milliseconds a commit may take before it counts as failed.
    pub write_timeout_ms: u64,
    /// A checkpoint every this many records per chain…
    pub checkpoint_every: u64,
    /// …or this many seconds after the last one, when the chain has new records.
    pub checkpoint_interval_s: u64,
    /// Also write the latest checkpoint of each chain to `<dir>/<tenant>/<chain id>.note`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Also POST every checkpoint to this URL.
    pub checkpoint_url: Option<String>,
    /// Retention in days for tenants that set none (`audit_retention_days` in the tenant policy).
    pub retention_days: u32,
    /// Seconds between two retention runs (0: never).
    pub purge_interval_s: u64,
    /// Seconds between two incremental self-verifications of the stored chains (0: never).
    pub verify_interval_s: u64,
    /// Seconds between two full re-verifications (everything from the start, not just new records).
    pub full_verify_interval_s: u64,
    /// Key for signed export download links (any string, ≥ 32 bytes; share it between replicas).
    /// Without it a random per-process key is used: links then only work on the replica that made them.
    pub link_key: Option<String>,
    /// File holding the link key (trimmed), read at start (EXT-5.1-1); not together with
    /// `link_key`.
    pub link_key_file: Option<PathBuf>,
    /// Seconds an export download link stays valid.
    pub link_ttl_s: u64,
    /// Events buffered per live-tail subscriber before it starts losing events.
    pub tail_capacity: usize,
    /// Key of the keyed person references (`<key id>:<hex>`) and path hashes in records (any
    /// string, ≥ 32 bytes; the same on every replica). Prefer `person_ref_key_file` or
    /// `SCP_PEP_AUDIT__PERSON_REF_KEY`. With neither, a key generated on first start is kept in
    /// the store (a warning says so); see `crate::pseudonym::resolve`.
    pub person_ref_key: Option<String>,
    /// File holding the person_ref key (trimmed).
    pub person_ref_key_file: Option<PathBuf>,
    /// Keys used before a rotation: references written under them are still found (share ledger).
    pub person_ref_previous_keys: Vec<String>,
    /// Files holding previous keys.
    pub person_ref_previous_key_files: Vec<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            mode: crate::audit::AuditMode::Durable,
            writer: None,
            signing_key: None,
            signing_key_file: None,
            queue_capacity: 65_536,
            max_batch: 4096,
            write_timeout_ms: 2000,
            checkpoint_every: 1000,
            checkpoint_interval_s: 10,
            checkpoint_dir: None,
            checkpoint_url: None,
            retention_days: 2557,
            purge_interval_s: 3600,
            verify_interval_s: 60,
            full_verify_interval_s: 86_400,
            link_key: None,
            link_key_file: None,
            link_ttl_s: 300,
            tail_capacity: 4096,
            person_ref_key: None,
            person_ref_key_file: None,
            person_ref_previous_keys: Vec::new(),
            person_ref_previous_key_files: Vec::new(),
        }
    }
}

impl AuditConfig {
    /// The export link key: `link_key`, else the content of `link_key_file` read now (trimmed),
    /// else none (EXT-5.1-1).
    ///
    /// Errors: both set, an unreadable or empty file (the message names the key, never a value).
    pub fn resolve_link_key(&self) -> Result<Option<String>, String> {
        match (&self.link_key, &self.link_key_file) {
            (Some(_), Some(_)) => {
                Err("audit.link_key and audit.link_key_file are both set; set one".into())
            }
            (Some(k), None) => Ok(Some(k.clone())),
            (None, Some(f)) => {
                let k = std::fs::read_to_string(f)
                    .map_err(|e| format!("reading audit.link_key_file {}: {e}", f.display()))?;
                let k = k.trim();
                if k.is_empty() {
                    return Err(format!("audit.link_key_file {} is empty", f.display()));
                }
                Ok(Some(k.to_owned()))
            }
            (None, None) => Ok(None),
        }
    }
}

impl Config {
    /// Checks that need more than types, done before anything starts: the `[tls]` keys are
    /// consistent, and every outbound URL of the configuration is https or plain http to a
    /// loopback host (EXT-6-4): `audit.checkpoint_url`, `consent.notify_url`,
    /// `admin.keycloak.base_url`. (JWKS URLs are checked with the policy documents.) A secret set
    /// both inline and by file (`admin.keycloak.client_secret{,_file}`) is an error.
    ///
    /// Errors: a message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.tls.validate()?;
        if let Some(k) = &self.admin.keycloak {
            k.validate()?;
        }
        let urls = [
            ("audit.checkpoint_url", self.audit.checkpoint_url.as_deref()),
            ("consent.notify_url", self.consent.notify_url.as_deref()),
            (
                "admin.keycloak.base_url",
                self.admin.keycloak.as_ref().map(|k| k.base_url.as_str()),
            ),
        ];
        for (field, url) in urls {
            if let Some(u) = url {
                crate::tls::check_outbound_url(field, u)?;
            }
        }
        Ok(())
    }
}

/// The top-level sections of [`Config`], read off the type itself (its serialized default), so
/// a section added to `Config` is addressable from the environment without a second list.
pub fn sections() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

impl Config {
    /// Defaults ← `file` (TOML, if given) ← `SCP_PEP_*` environment.
    ///
    /// Environment keys are `SCP_PEP_<SECTION>__<KEY>`; every `SCP_PEP_*` variable whose name has
    /// a `__` is configuration, so a misspelt section (`SCP_PEP_CONSNET__MAX_PERSONS`) is an
    /// error like a misspelt key. Variables without `__` (`SCP_PEP_CONFIG`, `SCP_PEP_TOKEN`) are
    /// left to the CLI.
    ///
    /// Errors: unreadable file, TOML syntax, unknown sections or keys, wrong types; the message
    /// names the key (never its value).
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file `{}` does not exist",
                    f.display()
                ))));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        let sections = sections();
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix("SCP_PEP_") else {
                continue;
            };
            if let Some((section, _)) = rest.split_once("__")
                && !sections.iter().any(|s| section.eq_ignore_ascii_case(s))
            {
                return Err(Box::new(figment::Error::from(format!(
                    "environment variable `{name}`: unknown section `{}` (known: {})",
                    section.to_ascii_lowercase(),
                    sections.join(", ")
                ))));
            }
        }
        fig = fig.merge(
            Env::prefixed("SCP_PEP_")
                .split("__")
                .filter(move |k| k.as_str().contains('.')),
        );
        fig.extract().map_err(Box::new)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file() {
        figment::Jail::expect_with(|_jail| {
            let c = Config::load(None).unwrap();
            assert_eq!(c.server.grpc_listen.to_string(), "127.0.0.1:9191");
            assert_eq!(c.store.url, "sqlite:scp-pep.db");
            Ok(())
        });
    }

    #[test]
    fn env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[store]\nurl = \"sqlite:a.db\"\n[auth]\nleeway_s = 5\n",
            )?;
            jail.set_env("SCP_PEP_STORE__URL", "postgres://x@127.0.0.1/test");
            jail.set_env("SCP_PEP_CONFIG", "ignored");
            let c = Config::load(Some(Path::new("c.toml"))).unwrap();
            assert_eq!(c.store.url, "postgres://x@127.0.0.1/test");
            assert_eq!(c.auth.leeway_s, 5);
            Ok(())
        });
    }

    #[test]
    fn link_key_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("link.key");
        std::fs::write(&f, "0123456789abcdef0123456789abcdef\n").unwrap();
        let mut a = AuditConfig {
            link_key_file: Some(f.clone()),
            ..AuditConfig::default()
        };
        assert_eq!(
            a.resolve_link_key().unwrap().as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        a.link_key = Some("inline-secret".into());
        let e = a.resolve_link_key().unwrap_err();
        assert!(
            e.contains("link_key_file") && !e.contains("inline-secret"),
            "{e}"
        );
        a.link_key = None;
        std::fs::write(&f, " \n").unwrap();
        assert!(a.resolve_link_key().is_err());
        assert_eq!(AuditConfig::default().resolve_link_key().unwrap(), None);
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[auth]\nleway_s = 5\n")?;
            let e = Config::load(Some(Path::new("c.toml"))).unwrap_err();
            assert!(e.to_string().contains("leway_s"), "{e}");
            Ok(())
        });
    }
    /// INT-7 (strict configuration): every section of `Config`, derived from the type, accepts
    /// environment overrides and rejects unknown keys; a misspelt section is an error too.
    #[test]
    fn every_section_rejects_unknown_env_keys() {
        let sections = sections();
        assert!(sections.len() >= 8, "{sections:?}");
        assert!(sections.iter().any(|s| s == "consent"));
        for section in sections {
            figment::Jail::expect_with(|jail| {
                let var = format!("SCP_PEP_{}__NO_SUCH_KEY", section.to_ascii_uppercase());
                jail.set_env(&var, "1");
                let e = Config::load(None).unwrap_err().to_string().to_lowercase();
                assert!(e.contains("no_such_key"), "{section}: {e}");
                Ok(())
            });
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("SCP_PEP_CONSNET__MAX_PERSONS", "10");
            let e = Config::load(None).unwrap_err().to_string();
            assert!(e.contains("unknown section `consnet`"), "{e}");
            Ok(())
        });
    }

    /// INT-7: a wrong type is an error in every section that has a number or boolean key (the
    /// key is picked from the type's serialized default, not from a hand-written list).
    #[test]
    fn every_section_rejects_wrong_types_from_env() {
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut tried = 0;
        for (section, fields) in defaults.as_object().unwrap() {
            let Some(key) = fields.as_object().and_then(|f| {
                f.iter()
                    .find(|(_, v)| v.is_number() || v.is_boolean())
                    .map(|(k, _)| k.clone())
            }) else {
                continue;
            };
            tried += 1;
            figment::Jail::expect_with(|jail| {
                let var = format!(
                    "SCP_PEP_{}__{}",
                    section.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                );
                jail.set_env(&var, "notanumber");
                let e = Config::load(None).unwrap_err().to_string();
                assert!(e.to_lowercase().contains(&key), "{section}.{key}: {e}");
                Ok(())
            });
        }
        assert!(tried >= 7, "only {tried} sections have a scalar key");
    }

    /// `[rate_limit]` from the file and the environment (issue 14); unknown values are errors.
    #[test]
    fn rate_limit_section() {
        use crate::limits::{RateBackend, RedisErrorMode};
        figment::Jail::expect_with(|jail| {
            assert_eq!(
                Config::load(None).unwrap().rate_limit.backend,
                RateBackend::Local
            );
            jail.create_file(
                "c.toml",
                "[rate_limit]\non_redis_error = \"deny\"\ntimeout_ms = 5\n",
            )?;
            // As docker-compose.yml sets them.
            jail.set_env("SCP_PEP_RATE_LIMIT__BACKEND", "redis");
            jail.set_env("SCP_PEP_RATE_LIMIT__REDIS_URL", "redis://r:6380/2");
            let c = Config::load(Some(Path::new("c.toml"))).unwrap();
            assert_eq!(c.rate_limit.backend, RateBackend::Redis);
            assert_eq!(c.rate_limit.on_redis_error, RedisErrorMode::Deny);
            assert_eq!(c.rate_limit.timeout_ms, 5);
            assert_eq!(c.rate_limit.redis_url, "redis://r:6380/2");
            jail.set_env("SCP_PEP_RATE_LIMIT__ON_REDIS_ERROR", "allow");
            let e = Config::load(None).unwrap_err().to_string();
            assert!(e.contains("allow"), "{e}");
            Ok(())
        });
    }

    /// The `[consent]` section is addressable from the environment (it was once silently ignored).
    #[test]
    fn consent_section_from_env() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SCP_PEP_CONSENT__MAX_PERSONS", "7");
            let c = Config::load(None).unwrap();
            assert_eq!(c.consent.max_persons, 7);
            jail.set_env("SCP_PEP_CONSENT__MAX_PERSONS", "notanumber");
            let e = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(e.contains("max_persons"), "{e}");
            Ok(())
        });
    }
}
