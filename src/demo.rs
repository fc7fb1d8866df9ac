//! `scp-pep demo`: a self-contained tour on a fresh checkout.
//!
//! Starts scp-pep on an embedded SQLite store (in a temporary directory) with the demo policies,
//! generates throwaway signing keys (never written anywhere but memory), serves their JWKS over
//! HTTP at Keycloak's paths, and sends real gRPC `CheckRequest`s through the network stack. Prints
//! one table row per decision and fails (exit 1) if any decision differs from the expected one.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Args;
use jsonwebtoken::Algorithm;

use crate::check::{CheckInput, check};
use crate::config::Config;
use crate::signer::{ClaimsSpec, SigningKey, jwks_json};

const TENANTS_YAML: &str = include_str!("../policies/tenants.yaml");
const INTEGRATIONS_YAML: &str = include_str!("../policies/integrations.yaml");
const ROUTES_YAML: &str = include_str!("../policies/routes.yaml");

/// `scp-pep demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit after the tour instead of serving.
    #[arg(long)]
    pub once: bool,
    /// ext_authz gRPC listener.
    #[arg(long, default_value = "127.0.0.1:9191")]
    pub grpc_listen: SocketAddr,
    /// Ops HTTP listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, default_value = "127.0.0.1:9192")]
    pub http_listen: SocketAddr,
    /// Demo issuer (JWKS) listener; the demo policies name port 9193.
    #[arg(long, default_value = "127.0.0.1:9193")]
    pub jwks_listen: SocketAddr,
}

struct Issuer {
    ke: SigningKey,
    ug: SigningKey,
}

async fn certs(State(iss): State<Arc<Issuer>>, Path(realm): Path<String>) -> impl IntoResponse {
    let body = match realm.as_str() {
        "ke" => jwks_json(&[&iss.ke]),
        "ug" => jwks_json(&[&iss.ug]),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                [("content-type", "application/json")],
                "{}".to_owned(),
            );
        }
    };
    (StatusCode::OK, [("content-type", "application/json")], body)
}

/// One step of the tour.
struct Step {
    scenario: &'static str,
    input: CheckInput,
    expect: &'static str,
}

/// Runs the demo. Exit code 0 when every decision matched its expectation.
pub async fn run(args: DemoArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run_inner(args: DemoArgs) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    let issuer = Arc::new(Issuer {
        ke: SigningKey::generate(Algorithm::RS256, format!("demo-ke-{}", short_id()))?,
        ug: SigningKey::generate(Algorithm::ES256, format!("demo-ug-{}", short_id()))?,
    });

    // The demo issuer: JWKS at Keycloak's path.
    let jwks_listener = tokio::net::TcpListener::bind(args.jwks_listen).await?;
    let jwks_addr = jwks_listener.local_addr()?;
    let app = Router::new()
        .route("/realms/{realm}/protocol/openid-connect/certs", get(certs))
        .with_state(issuer.clone());
    tokio::spawn(async move {
        let _ = axum::serve(jwks_listener, app).await;
    });
    let issuer_base = format!("http://127.0.0.1:{}", jwks_addr.port());

    // Demo policies, pointed at this issuer.
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir)?;
    let tenants = TENANTS_YAML.replace("http://127.0.0.1:9193", &issuer_base);
    std::fs::write(policy_dir.join("tenants.yaml"), tenants)?;
    std::fs::write(policy_dir.join("integrations.yaml"), INTEGRATIONS_YAML)?;
    std::fs::write(policy_dir.join("routes.yaml"), ROUTES_YAML)?;

    let log_path = dir.path().join("decisions.jsonl");
    let mut config = Config::default();
    config.server.grpc_listen = args.grpc_listen;
    config.server.http_listen = args.http_listen;
    config.store.url = format!("sqlite:{}", dir.path().join("scp-pep.db").display());
    config.policy.dir = Some(policy_dir);
    config.decision_log.output = log_path.display().to_string();
    let admin_audience = config.admin.audience.clone();
    let running = crate::server::start(config, None).await?;
    let server = format!("http://{}", running.grpc_addr);
    seed_consents(&running).await?;

    let token = |key: &SigningKey,
                 realm: &str,
                 client: &str,
                 integ: &str,
                 verticals: &[&str],
                 scope: &str,
                 ttl: i64| {
        let mut claims = ClaimsSpec {
            issuer: &format!("{issuer_base}/realms/{realm}"),
            audience: "scp-pep",
            client_id: client,
            tenant_id: realm,
            integration_id: integ,
            verticals,
            scope,
            ttl_s: ttl.max(0) as u64,
        }
        .claims();
        if ttl < 0 {
            let now = crate::authn::now_s() as i64;
            claims["exp"] = serde_json::json!(now + ttl);
            claims["iat"] = serde_json::json!(now + ttl - 300);
        }
        key.sign(&claims)
    };
    let moh = token(
        &issuer.ke,
        "ke",
        "ke-moh-connector",
        "int-ke-moh",
        &["health"],
        "health:person:read health:encounter:write",
        300,
    );
    let moh_edu = token(
        &issuer.ke,
        "ke",
        "ke-moh-connector",
        "int-ke-moh",
        &["health"],
        "health:person:read education:student:read",
        300,
    );
    let ngo = token(
        &issuer.ke,
        "ke",
        "literacy-first",
        "int-ke-ngo-literacy",
        &["education"],
        "education:student:read",
        300,
    );
    let knbs = token(
        &issuer.ke,
        "ke",
        "knbs",
        "int-ke-knbs",
        &["health", "education"],
        "stats:aggregate:read",
        300,
    );
    let expired = token(
        &issuer.ke,
        "ke",
        "ke-moh-connector",
        "int-ke-moh",
        &["health"],
        "health:person:read",
        -120,
    );
    let ug = token(
        &issuer.ug,
        "ug",
        "ug-moh",
        "int-ug-moh",
        &["health"],
        "health:person:read",
        300,
    );

    let get = |path: &str, tok: &str, extra: &[(&str, &str)]| {
        let mut headers: Vec<(String, String)> =
            vec![("authorization".into(), format!("Bearer {tok}"))];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        CheckInput {
            method: "GET".into(),
            path: path.into(),
            headers,
            source_ip: Some("203.0.113.10".into()),
            peer_certificate: None,
            body: None,
        }
    };
    let record = "/v1/tenants/ke/health/persons/p-1001/record";
    let mut steps = vec![
        Step {
            scenario: "MoH reads a health record (fields masked)",
            input: get(record, &moh, &[]),
            expect: "OK",
        },
        Step {
            scenario: "MoH reads a person without recorded consent",
            input: get("/v1/tenants/ke/health/persons/p-1002/record", &moh, &[]),
            expect: "CONSENT_MISSING",
        },
        Step {
            scenario: "MoH reads an education record (out-of-scope vertical)",
            input: get(
                "/v1/tenants/ke/education/students/p-1001/enrolment",
                &moh_edu,
                &[],
            ),
            expect: "VERTICAL_NOT_PERMITTED",
        },
        Step {
            scenario: "MoH (ke) reads a Uganda record (wrong tenant)",
            input: get("/v1/tenants/ug/health/persons/p-1001/record", &moh, &[]),
            expect: "TENANT_MISMATCH",
        },
        Step {
            scenario: "Suspended NGO reads an enrolment",
            input: get(
                "/v1/tenants/ke/education/students/p-1001/enrolment",
                &ngo,
                &[],
            ),
            expect: "INTEGRATION_SUSPENDED",
        },
        Step {
            scenario: "MoH forges x-scp-masked-fields: none",
            input: get(
                record,
                &moh,
                &[("x-scp-masked-fields", "none"), ("x-scp-tenant-id", "ug")],
            ),
            expect: "OK",
        },
        Step {
            scenario: "Uganda MoH reads its own tenant (ES256 key)",
            input: get("/v1/tenants/ug/health/persons/p-2001/record", &ug, &[]),
            expect: "OK",
        },
        Step {
            scenario: "API key without a token",
            input: CheckInput {
                method: "GET".into(),
                path: record.into(),
                headers: vec![("x-api-key".into(), "k-123".into())],
                source_ip: None,
                peer_certificate: None,
                body: None,
            },
            expect: "TOKEN_MISSING",
        },
        Step {
            scenario: "Expired token",
            input: get(record, &expired, &[]),
            expect: "TOKEN_EXPIRED",
        },
        Step {
            scenario: "Path traversal (..)",
            input: get("/v1/tenants/ke/health/persons/p-1/../p-2/record", &moh, &[]),
            expect: "PATH_AMBIGUOUS",
        },
    ];
    for i in 1..=5 {
        steps.push(Step {
            scenario: [
                "KNBS aggregate #1 (limit 1/s, burst 3)",
                "KNBS aggregate #2",
                "KNBS aggregate #3",
                "KNBS aggregate #4",
                "KNBS aggregate #5",
            ][i - 1],
            input: get("/v1/tenants/ke/stats/health-education/summary", &knbs, &[]),
            expect: if i <= 3 { "OK" } else { "RATE_LIMITED" },
        });
    }

    println!(
        "\nscp-pep demo: {} real gRPC checks against {server}\n",
        steps.len()
    );
    println!(
        "{:<3} {:<58} {:>6}  {:<24} detail",
        "#", "scenario", "status", "code"
    );
    println!("{}", "-".repeat(120));
    let mut all_ok = true;
    for (n, s) in steps.iter().enumerate() {
        let v = check(&server, &s.input).await?;
        let code = v["code"].as_str().unwrap_or("?").to_owned();
        let status = v["status"].as_u64().unwrap_or(0);
        let detail = if v["allowed"] == true {
            let h = &v["headers_set"];
            format!(
                "x-scp-tenant-id={} x-scp-verticals={} x-scp-masked-fields={}",
                h["x-scp-tenant-id"].as_str().unwrap_or(""),
                h["x-scp-verticals"].as_str().unwrap_or(""),
                h["x-scp-masked-fields"].as_str().unwrap_or(""),
            )
        } else {
            let retry = v["headers_set"]["retry-after"]
                .as_str()
                .map(|r| format!(" retry-after={r}s"))
                .unwrap_or_default();
            format!(
                "{}{retry}",
                v["body"]["error"]["message"].as_str().unwrap_or("")
            )
        };
        let mark = if code == s.expect { " " } else { "✗" };
        if code != s.expect {
            all_ok = false;
        }
        println!(
            "{:<3} {:<58} {:>6}  {mark}{:<23} {}",
            n + 1,
            s.scenario,
            status,
            code,
            detail
        );
    }
    println!("{}", "-".repeat(120));
    println!(
        "{}\ndecision log (JSON lines): {}\n",
        if all_ok {
            "every decision as expected"
        } else {
            "✗ some decisions differ from the expected ones"
        },
        log_path.display()
    );

    // Every decision above is in the tamper-evident audit log; replay it.

    if let Some(audit) = &running.audit {
        let vkey = audit.verifier_key().to_owned();
        let keys = crate::audit::checkpoint::TrustedKeys::new(&[vkey.as_str()])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let r = crate::audit::verify::verify_store(&running.store, None, Some(&keys), None).await?;
        println!(
            "audit log: {} records in {} chains, hash chains {} ({} records not yet under a signed checkpoint)\ncheckpoint key: {vkey}\n",
            r.records,
            r.chains,
            if r.ok { "verify" } else { "DO NOT verify" },
            r.unsigned_records
        );
        all_ok &= r.ok;
    }

    if args.once {
        running.shutdown().await;
        return Ok(all_ok);
    }
    let token_file = dir.path().join("token-ke-moh.jwt");
    std::fs::write(&token_file, &moh)?;
    // The third user of the product: security staff watching the decisions live.
    let now = crate::authn::now_s() as i64;
    let auditor = issuer.ke.sign(&serde_json::json!({
        "iss": format!("{issuer_base}/realms/ke"),
        "aud": admin_audience,
        "sub": "demo-auditor",
        "iat": now,
        "exp": now + AUDITOR_TOKEN_TTL_S,
        "realm_access": {"roles": ["scp-auditor"]},
    }));
    let auditor_file = dir.path().join("token-ke-auditor.jwt");
    std::fs::write(&auditor_file, &auditor)?;
    println!(
        "scp-pep is serving ext_authz on {} (ops: http://{}/metrics). Try:\n",
        running.grpc_addr, running.http_addr
    );
    println!(
        "  cargo run -q -- check --server {server} --token-file {} GET {record}\n",
        token_file.display()
    );
    println!(
        "Watch the decisions live in a second terminal, as security staff do (an auditor token of tenant ke):\n"
    );
    println!(
        "  cargo run -q -- audit tail --server {server} --token-file {}\n",
        auditor_file.display()
    );
    println!(
        "or in a browser, the read-only staff view (live decisions, last hour's denials; the token after # never reaches the server):\n"
    );
    println!("  http://{}/staff#token={auditor}\n", running.http_addr);
    println!("or, through Envoy (docker compose up, see envoy/README.md):\n");
    println!("  export TOKEN={moh}");
    println!("  curl -H \"authorization: Bearer $TOKEN\" http://localhost:10000{record}\n");
    println!(
        "The tokens are throwaway demo tokens signed by a key that exists only in this process; the partner token is valid for 5 minutes, the auditor token for an hour. Ctrl-C to stop."
    );
    crate::cli::wait_for_signal().await;
    running.shutdown().await;
    Ok(all_ok)
}

/// Lifetime of the demo's auditor token, seconds.
const AUDITOR_TOKEN_TTL_S: i64 = 3600;

fn short_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()[24..].to_owned()
}

/// Gives the demo persons `p-1001` (tenant `ke`: health, education) and `p-2001` (`ug`: health)
/// active consent; `p-1002` has none, so the tour shows stage 7 refusing.
async fn seed_consents(running: &crate::server::Running) -> anyhow::Result<()> {
    use crate::consent::import::{ConsentDoc, ImportFile, PersonDoc, import};
    let person = |t: &str, p: &str| PersonDoc {
        tenant: t.into(),
        person_id: p.into(),
        verification: "verified".into(),
        status: "active".into(),
        channels: vec!["sms".into()],
    };
    let consent = |t: &str, p: &str, v: &str| ConsentDoc {
        tenant: t.into(),
        person_id: p.into(),
        vertical_id: v.into(),
        purpose: None,
        active_from: "2024-01-01".into(),
        active_until: None,
        evidence_attachment_ids: vec!["att-demo-signature".into()],
        fields: None,
    };
    let file = ImportFile {
        persons: vec![
            person("ke", "p-1001"),
            person("ke", "p-1002"),
            person("ug", "p-2001"),
        ],
        consents: vec![
            consent("ke", "p-1001", "health"),
            consent("ke", "p-1001", "education"),
            consent("ug", "p-2001", "health"),
        ],
    };
    import(
        &running.consents,
        running.audit.as_deref(),
        &file,
        "demo",
        |_| 30,
    )
    .await?;
    Ok(())
}
