//! `scp-pep explain`: one request evaluated without a server, and the trace of every pipeline
//! stage it went through (its inputs, its result and, for policy packs, the determining Cedar
//! policies), like `opa eval --explain`.
//!
//! `scp-pep explain --policies DIR [--consents FILE] [--at TIME] METHOD PATH --claims JSON|--token T`
//! loads the policy files of DIR (validated as `policy validate` does), builds the request from
//! the command line and runs the same pure stages the server runs ([`crate::pipeline::authorize`]
//! for stages 2–6b, the consent rules of stage 7 over an in-memory registry loaded from FILE, and
//! stage 8's [`crate::pipeline::minimize`]). What cannot be evaluated offline is reported as not
//! evaluated, never guessed:
//! - stage 1: the claims are taken as given (`--claims`) or decoded from the token without
//!   verifying its signature, issuer, audience or expiry (no JWKS is fetched); a missing
//!   `tenant_id`, `integration_id` or `verticals` claim is still `TOKEN_CLAIMS_MISSING`;
//! - stage 7 without `--consents`: not evaluated (the outcome then holds only if consent does);
//! - stage 9 (rate limits, quotas): counters live in a running server; never evaluated here.
//!
//! The trace ([`Trace`]) is printed as text or, with `--json`, as one JSON object. Person ids
//! given on the command line never appear in it: the path is shown as its route template and
//! persons as keyed references (`person_ref`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine as _;
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use crate::authn::VerifiedToken;
use crate::decision::{Decision, DenyCode, Outcome, Stage};
use crate::pipeline::{
    PipelineSettings, RequestFacts, apply_pack_masks, authorize, minimize, recorded_path,
};
use crate::policy::snapshot::PolicySnapshot;
use crate::policy::{PolicySet, RouteKind};

/// `scp-pep explain` arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Directory of policy files (`*.yaml`), as `policy validate` reads it.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Persons and consents (YAML or JSON, the format of `scp-pep consent import`), loaded into
    /// an in-memory registry for stage 7. Without it, consent is not evaluated.
    #[arg(long)]
    pub consents: Option<PathBuf>,
    /// Token claims as a JSON object: `tenant_id`, `integration_id`, `verticals` (array),
    /// `scope` (space-separated) or `scopes` (array), `azp` or `client_id`, `cnf`.
    #[arg(long, conflicts_with = "token")]
    pub claims: Option<String>,
    /// A bearer token whose claims are used. Its signature, issuer, audience and expiry are NOT
    /// verified offline. Prefer the env var: the token stays out of shell history.
    #[arg(long, env = "SCP_PEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Extra request header, `NAME:VALUE` (repeatable), e.g. `x-api-key:…`.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body file (for routes that read persons from the body or check its schema).
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// Source address Envoy would report (IP allowlists).
    #[arg(long)]
    pub source_ip: Option<IpAddr>,
    /// When the request is decided (pack windows and hours, deny-rule windows, consent
    /// validity): RFC 3339 or `YYYY-MM-DD`; default now.
    #[arg(long)]
    pub at: Option<String>,
    /// Print the trace as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Explain a recorded decision instead (its id, `x-scp-decision-id`): the record's inputs
    /// are re-decided against `--policies DIR` or, without it, the store's current policy.
    #[arg(long, conflicts_with_all = ["claims", "token", "consents", "body", "headers", "source_ip", "at"])]
    pub decision: Option<String>,
    /// The store holding the audit log (with `--decision`).
    #[command(flatten)]
    pub store: crate::audit::cmd::StoreArgs,
    /// HTTP method, e.g. GET.
    pub method: Option<String>,
    /// Request path with optional query.
    pub path: Option<String>,
}

/// How the trace's stage 1 claims were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimsSource {
    /// `--claims`: taken as given.
    Claims,
    /// `--token`: decoded, signature not verified.
    UnverifiedToken,
    /// A recorded decision's inputs.
    Recorded,
}

/// The token facts a trace shows at stage 1.
#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    pub source: ClaimsSource,
    pub tenant_id: String,
    pub integration_id: String,
    pub verticals: Vec<String>,
    /// Sorted.
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
}

/// One stage of a [`Trace`].
#[derive(Debug, Clone, Serialize)]
pub struct TraceStage {
    /// Stage name: `authenticate`, `integration`, `second_factor`, `route`, `tenant_vertical`,
    /// `scope`, `payload`, `deny_rules`, `policy_packs`, `residency`, `consent`,
    /// `data_minimization`, `rate_limit`.
    pub stage: &'static str,
    /// `pass`, `deny`, `not_reached` (an earlier stage denied) or `not_evaluated` (offline).
    pub result: &'static str,
    /// What the stage looked at (policy facts and request facts, never a person id).
    pub inputs: Value,
    /// The denial code, when this stage denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<DenyCode>,
    /// Why: the denial message, or a note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Policy packs only: the determining Cedar policies, `<pack id>/<policy id>`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

/// The explanation of one decision: every stage in pipeline order with its inputs and result,
/// then the outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub method: String,
    /// The route template (or the sanitized shape of an unrouted path).
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_id: Option<String>,
    /// Policy version (0: policy files) and the files' digest, when known.
    pub policy_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// RFC 3339.
    pub time: String,
    pub stages: Vec<TraceStage>,
    /// `allow` or `deny`.
    pub outcome: &'static str,
    pub code: String,
    /// HTTP status of the outcome (200 for an allow).
    pub http_status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub masked_fields: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_fields: Option<Vec<String>>,
    /// Stages the outcome did not evaluate (it holds only if they pass): `consent`,
    /// `rate_limit`.
    pub not_evaluated: Vec<&'static str>,
    /// What documents in shadow mode would have denied (recorded, never enforced).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<crate::decision::ShadowFinding>,
    /// `--decision`: what the audit record says (`decision_id`, `outcome`, `code`,
    /// `policy_version`, `time`) and whether the re-decision agrees (`same_code`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<Value>,
}

/// Pipeline order of the trace's stages (`policy_packs` is part of [`Stage::DenyRules`] in a
/// decision; the trace shows it on its own line).
const ORDER: [&str; 13] = [
    "authenticate",
    "integration",
    "second_factor",
    "route",
    "tenant_vertical",
    "scope",
    "payload",
    "deny_rules",
    "policy_packs",
    "residency",
    "consent",
    "data_minimization",
    "rate_limit",
];

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Authenticate => "authenticate",
        Stage::Integration => "integration",
        Stage::SecondFactor => "second_factor",
        Stage::Route => "route",
        Stage::TenantVertical => "tenant_vertical",
        Stage::Scope => "scope",
        Stage::Payload => "payload",
        Stage::DenyRules => "deny_rules",
        Stage::Residency => "residency",
        Stage::Consent => "consent",
        Stage::DataMinimization => "data_minimization",
        Stage::RateLimit => "rate_limit",
    }
}

/// Builds the trace of decision `d`, decided against `snap` for a caller with `token`.
///
/// The stages are those `d.stages` records, in order: each passed except the last one of a
/// denial, which denied; `policy_packs` is shown after `deny_rules` when the tenant has packs
/// for the route's verticals; stages after a denial are `not_reached`. `not_evaluated` names
/// stages the caller could not run (they are shown as such). Inputs come from `snap` and `d`
/// only (no request values: no person id can appear).
pub fn trace(
    snap: &PolicySnapshot,
    token: Option<&TokenView>,
    d: &Decision,
    not_evaluated: &[&'static str],
) -> Trace {
    let denial = d.denial();
    let ran: Vec<&'static str> = d.stages.iter().map(|s| stage_name(*s)).collect();
    // The stage that denied: the last recorded one (packs deny under `deny_rules`).
    let mut denied_at = denial.map(|_| ran.last().copied().unwrap_or("authenticate"));
    if denied_at == Some("deny_rules") && denial.is_some_and(|x| x.code == DenyCode::PolicyDenied) {
        denied_at = Some("policy_packs");
    }
    let integ = d
        .integration_id
        .as_deref()
        .and_then(|id| snap.integrations.get(id));
    let route = d
        .route_id
        .as_deref()
        .and_then(|id| snap.set.routes.iter().find(|r| r.id == id));
    let target = d
        .target_tenant_id
        .as_deref()
        .or(d.tenant_id.as_deref())
        .unwrap_or("");
    let packs: Vec<&crate::policy::PolicyPack> = snap
        .set
        .policy_packs
        .iter()
        .filter(|p| {
            p.tenant == target
                && matches!(
                    p.status,
                    crate::policy::model::PackStatus::Active
                        | crate::policy::model::PackStatus::Restricted
                )
                && route.is_some_and(|r| r.verticals.contains(&p.vertical))
        })
        .collect();
    let mut stages = Vec::new();
    // Set once the denying stage is pushed: every later stage is `not_reached`.
    let mut reached_denial = false;
    for name in ORDER {
        let recorded = if name == "policy_packs" {
            ran.contains(&"deny_rules") && (!packs.is_empty() || denied_at == Some(name))
        } else {
            ran.contains(&name)
        };
        let result = if reached_denial {
            "not_reached"
        } else if not_evaluated.contains(&name) {
            "not_evaluated"
        } else if !recorded {
            // Not applicable to this request (no body, no packs, no persons…).
            continue;
        } else if denied_at == Some(name) {
            "deny"
        } else {
            "pass"
        };
        let (code, detail) = match (result, denial) {
            ("deny", Some(x)) => (Some(x.code), Some(x.message.clone())),
            _ => (None, None),
        };
        let inputs = if result == "not_reached" {
            Value::Null
        } else {
            stage_inputs(
                name,
                snap,
                token,
                d,
                integ.map(|e| &e.integration),
                route,
                &packs,
            )
        };
        let policies = if name == "policy_packs" {
            d.reasons.clone()
        } else {
            vec![]
        };
        let detail = detail.or_else(|| match (name, result) {
            ("authenticate", "pass") => token.map(|t| match t.source {
                ClaimsSource::Claims => "claims taken as given (--claims): signature, issuer, audience and expiry are not checked offline".to_owned(),
                ClaimsSource::UnverifiedToken => "claims decoded from the token WITHOUT verifying its signature, issuer, audience or expiry (offline)".to_owned(),
                ClaimsSource::Recorded => "the recorded decision's verified claims".to_owned(),
            }),
            ("consent", "not_evaluated") => Some("no consent registry given (--consents): the outcome holds only if every person's consent does".to_owned()),
            ("rate_limit", "not_evaluated") => Some("rate-limit and quota counters live in the running servers; not evaluated".to_owned()),
            _ => None,
        });
        stages.push(TraceStage {
            stage: name,
            result,
            inputs,
            code,
            detail,
            policies,
        });
        if result == "deny" {
            reached_denial = true;
        }
    }
    let (outcome, message, http_status) = match &d.outcome {
        Outcome::Allow => ("allow", None, 200),
        Outcome::Deny(x) => ("deny", Some(x.message.clone()), x.code.http_status()),
    };
    Trace {
        method: d.method.clone(),
        path: d.path.clone(),
        route_id: d.route_id.clone(),
        policy_version: d.policy_version,
        policy_digest: None,
        time: crate::audit::record::format_time(d.time),
        stages,
        outcome,
        code: d.code_str().to_owned(),
        http_status,
        message,
        masked_fields: d.masked_fields.clone(),
        allowed_fields: d.allowed_fields.clone(),
        not_evaluated: if d.allowed() {
            not_evaluated.to_vec()
        } else {
            vec![]
        },
        shadow: d.shadow.clone(),
        recorded: None,
    }
}

/// The inputs a stage looked at, from the policy and the decision.
fn stage_inputs(
    name: &str,
    snap: &PolicySnapshot,
    token: Option<&TokenView>,
    d: &Decision,
    integ: Option<&crate::policy::Integration>,
    route: Option<&crate::policy::Route>,
    packs: &[&crate::policy::PolicyPack],
) -> Value {
    let target = d.target_tenant_id.as_deref().or(d.tenant_id.as_deref());
    match name {
        "authenticate" => match token {
            Some(t) => json!({
                "tenant_id": t.tenant_id,
                "integration_id": t.integration_id,
                "verticals": t.verticals,
                "scopes": t.scopes,
                "client_id": t.client_id,
            }),
            None => Value::Null,
        },
        "integration" => match integ {
            Some(i) => json!({
                "integration_id": i.id,
                "state": i.state.as_str(),
                "tenant": i.tenant,
                "declared_verticals": i.verticals,
                "token_verticals": token.map(|t| &t.verticals),
                "bound_client_id": i.client_id,
            }),
            None => json!({"integration_id": d.integration_id, "known": false}),
        },
        "second_factor" => match integ {
            Some(i) => json!({
                "api_key_required": i.api_key_sha256.is_some(),
                "client_certificate_required": i.mtls_cert_sha256.is_some(),
                "ip_allowlist": i.ip_allowlist.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            }),
            None => Value::Null,
        },
        "route" => match route {
            Some(r) => json!({
                "method": d.method,
                "route_id": r.id,
                "template": r.path,
                "kind": r.kind,
                "action": r.action.as_str(),
                "resource": r.resource,
            }),
            None => json!({"method": d.method, "path": d.path}),
        },
        "tenant_vertical" => json!({
            "token_tenant": d.tenant_id,
            "reached_tenant": target,
            "route_verticals": route.map(|r| &r.verticals),
            "integration_verticals": integ.map(|i| &i.verticals),
            "token_verticals": token.map(|t| &t.verticals),
            "partner_tenants": integ.map(|i| &i.partner_tenants),
        }),
        "scope" => json!({
            "route_scope": route.map(|r| &r.scope),
            "contract_scopes": integ.map(|i| &i.scopes),
            "contract_routes": integ.and_then(|i| i.routes.as_ref()),
            "token_scopes": token.map(|t| &t.scopes),
            "effective_scopes": d.scopes,
        }),
        "payload" => json!({
            "content_types": route.and_then(|r| r.content_types.as_ref()),
            "body_schema": route.is_some_and(|r| r.body_schema.is_some()),
        }),
        "deny_rules" => {
            let now = d.time.timestamp_millis();
            let tenants: Vec<&str> = d
                .tenant_id
                .as_deref()
                .into_iter()
                .chain(d.target_tenant_id.as_deref())
                .collect();
            let in_force: Vec<&str> = tenants
                .iter()
                .filter_map(|t| snap.traffic_denies.get(*t))
                .flatten()
                .filter(|r| r.in_window(now))
                .map(|r| r.rule.id.as_str())
                .collect();
            json!({"tenants": tenants, "rules_in_force": in_force})
        }
        "policy_packs" => json!({
            "tenant": target,
            "packs": packs.iter().map(|p| json!({
                "id": p.id, "vertical": p.vertical, "status": p.status.as_str(), "mode": p.mode.as_str(),
                "active_from": p.active_from, "active_until": p.active_until,
            })).collect::<Vec<_>>(),
            "principal": d.integration_id.as_deref().map(|i| format!("Integration::\"{i}\"")),
            "action": d.action,
            "resource": d.resource,
            "context": {
                "scopes": d.scopes,
                "persons": d.persons,
                "method": d.method,
                "hour": d.time.timestamp_millis().div_euclid(3_600_000).rem_euclid(24),
            },
        }),
        "residency" => {
            let t = target.and_then(|t| snap.tenants.get(t)).map(|e| &e.tenant);
            json!({
                "route_data_region": route.and_then(|r| r.data_region.as_ref()),
                "tenant_residency_region": t.map(|t| &t.residency_region),
                "allowed_export_regions": t.map(|t| &t.allowed_export_regions),
                "aggregate_export_regions": t.map(|t| &t.aggregate_export_regions),
                "personal_data": route.map(|r| r.carries_personal_data()),
            })
        }
        "consent" => json!({
            "persons": d.persons,
            "purpose": route.and_then(|r| r.consent_purpose.as_ref()),
            "checks": d.consent_checks,
        }),
        "data_minimization" => json!({
            "field_policy": integ.map(|i| &i.field_policy),
            "route_fields": route.map(|r| &r.fields),
            "masked_fields": d.masked_fields,
            "allowed_fields": d.allowed_fields,
        }),
        "rate_limit" => json!({
            "kind": route.map(|r| r.kind),
            "rate_limit": integ.and_then(|i| i.rate_limit),
            "quota": integ.and_then(|i| i.quota),
        }),
        _ => Value::Null,
    }
}

impl Trace {
    /// The human-readable rendering: one line per stage (number, name, result, detail), its
    /// inputs indented below, then the outcome.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "explain {} {}{}",
            self.method,
            self.path,
            self.route_id
                .as_deref()
                .map(|r| format!("  (route {r})"))
                .unwrap_or_default()
        );
        if let Some(r) = &self.recorded {
            let _ = writeln!(
                out,
                "recorded decision {} at {}: {} {} under policy version {}",
                r["decision_id"].as_str().unwrap_or(""),
                r["time"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or(""),
                r["code"].as_str().unwrap_or(""),
                r["policy_version"]
            );
        }
        let _ = writeln!(
            out,
            "policy version {}{} · at {}",
            self.policy_version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "none".into()),
            self.policy_digest
                .as_deref()
                .map(|d| format!(" (files {d})"))
                .unwrap_or_default(),
            self.time
        );
        for (n, s) in self.stages.iter().enumerate() {
            let mut line = format!("{:>3}  {:<18} {:<14}", n + 1, s.stage, s.result);
            if let Some(c) = s.code {
                let _ = write!(line, " {}", c.as_str());
            }
            if let Some(d) = &s.detail {
                let _ = write!(line, " {d}");
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if let Value::Object(m) = &s.inputs {
                for (k, v) in m {
                    if v.is_null() {
                        continue;
                    }
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let _ = writeln!(out, "{:>24}{k}: {v}", "");
                }
            }
            for p in &s.policies {
                let _ = writeln!(out, "{:>24}determining policy: {p}", "");
            }
        }
        let _ = write!(
            out,
            "outcome: {} {} ({})",
            self.outcome, self.code, self.http_status
        );
        if let Some(m) = &self.message {
            let _ = write!(out, " — {m}");
        }
        out.push('\n');
        if let Some(r) = &self.recorded {
            let same = r["same_code"].as_bool().unwrap_or(false);
            let _ = writeln!(
                out,
                "{}",
                if same {
                    "same code as the recorded decision"
                } else {
                    "DIFFERS from the recorded decision"
                }
            );
        }
        if !self.masked_fields.is_empty() {
            let _ = writeln!(out, "masked fields: {}", self.masked_fields.join(", "));
        }
        for f in &self.shadow {
            let _ = writeln!(
                out,
                "shadow (not enforced): {} would deny {}{}",
                f.document,
                f.code.as_str(),
                if f.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", f.reasons.join(", "))
                }
            );
        }
        if !self.not_evaluated.is_empty() {
            let _ = writeln!(
                out,
                "not evaluated: {} (the allow holds only if these pass)",
                self.not_evaluated.join(", ")
            );
        }
        out
    }
}

/// Claims of `--claims` or `--token` as a [`VerifiedToken`] (stage 1 taken as passed) or the
/// `TOKEN_*` denial with its message. Never echoes the token.
pub fn claims_token(claims: &Value) -> Result<VerifiedToken, (DenyCode, String)> {
    let missing = |what: &str| {
        (
            DenyCode::TokenClaimsMissing,
            format!("claim `{what}` is missing or not of the right type"),
        )
    };
    let obj = claims
        .as_object()
        .ok_or_else(|| missing("(the claims must be a JSON object)"))?;
    let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let tenant_id = s("tenant_id")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| missing("tenant_id"))?;
    let integration_id = s("integration_id")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| missing("integration_id"))?;
    let verticals: Vec<String> = obj
        .get("verticals")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
        .ok_or_else(|| missing("verticals"))?;
    let mut scopes: HashSet<String> = s("scope")
        .map(|x| x.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(a) = obj.get("scopes").and_then(Value::as_array) {
        scopes.extend(a.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    Ok(VerifiedToken {
        tenant_id,
        integration_id,
        verticals,
        scopes,
        client_id: s("azp").or_else(|| s("client_id")),
        exp: obj.get("exp").and_then(Value::as_u64).unwrap_or(0),
        cnf_x5t_s256: obj
            .get("cnf")
            .and_then(|c| c.get("x5t#S256"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        key_epoch: 0,
    })
}

/// The claims of compact JWS `token`, decoded without verification. Errors name the problem,
/// never the token.
pub fn unverified_claims(token: &str) -> Result<Value, String> {
    let token = token.trim();
    let token = token
        .strip_prefix("Bearer ")
        .or_else(|| token.strip_prefix("bearer "))
        .unwrap_or(token);
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the token is not a compact JWS (three dot-separated parts)".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the token's payload is not base64url".to_owned())?;
    serde_json::from_slice(&bytes).map_err(|_| "the token's payload is not JSON".to_owned())
}

/// Evaluates one request offline against `snap` (stages 1–8; 9 not evaluated) and returns its
/// trace. `consents`: the in-memory registry of `--consents`, `None` to leave stage 7 not
/// evaluated. `now_ms`: the decision time.
pub async fn explain_request(
    snap: &PolicySnapshot,
    facts: &RequestFacts,
    claims: Result<(VerifiedToken, ClaimsSource), (DenyCode, String)>,
    consents: Option<&crate::consent::Consents>,
    now_ms: i64,
) -> Trace {
    let time = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_else(chrono::Utc::now);
    let mut d = Decision::new(&facts.method, "", time);
    d.policy_version = Some(snap.version);
    d.stages.push(Stage::Authenticate);
    let settings = PipelineSettings::default();
    let refs = crate::pseudonym::PersonRefKeys::ephemeral();
    let mut not_evaluated: Vec<&'static str> = vec![];
    let (verified, source) = match claims {
        Ok(v) => v,
        Err((code, msg)) => {
            d.outcome = Outcome::Deny(crate::decision::Denial::new(code, msg));
            recorded_path(Some(snap), facts, &refs, &mut d);
            return trace(snap, None, &d, &[]);
        }
    };
    let mut scopes: Vec<String> = verified.scopes.iter().cloned().collect();
    scopes.sort();
    let view = TokenView {
        source,
        tenant_id: verified.tenant_id.clone(),
        integration_id: verified.integration_id.clone(),
        verticals: verified.verticals.clone(),
        scopes,
        client_id: verified.client_id.clone(),
    };
    d.tenant_id = Some(verified.tenant_id.clone());
    d.integration_id = Some(verified.integration_id.clone());
    d.client_id = verified.client_id.clone();
    if !snap.tenants.contains_key(&verified.tenant_id) {
        d.outcome = Outcome::Deny(crate::decision::Denial::new(
            DenyCode::TokenIssuerUnknown,
            "no tenant of the policy has the token's tenant_id",
        ));
    } else {
        match authorize(snap, facts, &verified, &settings, &mut d) {
            Err(denial) => d.outcome = Outcome::Deny(denial),
            Ok(a) => {
                let needs_consent = !a.persons.is_empty() || a.route.kind == RouteKind::Aggregate;
                let mut consent_fields = None;
                let mut denied = None;
                if needs_consent {
                    match consents {
                        None => not_evaluated.push("consent"),
                        Some(c) => {
                            match crate::pipeline::consent_stage(
                                c, a.tenant, a.route, &a.persons, &mut d,
                            )
                            .await
                            {
                                Ok(f) => consent_fields = f,
                                Err(x) => denied = Some(x),
                            }
                        }
                    }
                }
                match denied {
                    Some(x) => d.outcome = Outcome::Deny(x),
                    None => {
                        minimize(a.integration, a.route, consent_fields.as_deref(), &mut d);
                        apply_pack_masks(a.route, &a.pack_masks, &mut d);
                        not_evaluated.push("rate_limit");
                        d.outcome = Outcome::Allow;
                    }
                }
            }
        }
    }
    if d.route_id.is_none() {
        recorded_path(Some(snap), facts, &refs, &mut d);
    }
    trace(snap, Some(&view), &d, &not_evaluated)
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// `scp-pep explain`: exit 0 when the request would be allowed, 1 when denied, 2 on bad input
/// (message on stderr naming the argument at fault; nothing is evaluated).
pub async fn run(a: ExplainArgs) -> ExitCode {
    if let Some(id) = &a.decision {
        return explain_recorded(&a, id).await;
    }
    let Some(dir) = &a.policies else {
        return fail("--policies DIR is required");
    };
    let (Some(method), Some(path)) = (&a.method, &a.path) else {
        return fail("METHOD and PATH are required, e.g. `GET /v1/tenants/ke/health/lookup`");
    };
    let set = match PolicySet::load_dir(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return fail(format!(
                "--policies: {} is not a valid policy set",
                dir.display()
            ));
        }
    };
    let now_ms = match a.at.as_deref().map(crate::time::parse_instant) {
        None => chrono::Utc::now().timestamp_millis(),
        Some(Ok(t)) => t,
        Some(Err(e)) => return fail(format!("--at: {e}")),
    };
    let claims = match (&a.claims, &a.token) {
        (Some(c), _) => match serde_json::from_str::<Value>(c) {
            Ok(v) => claims_token(&v).map(|t| (t, ClaimsSource::Claims)),
            Err(e) => return fail(format!("--claims: not JSON: {e}")),
        },
        (None, Some(t)) => match unverified_claims(t) {
            Ok(v) => claims_token(&v).map(|t| (t, ClaimsSource::UnverifiedToken)),
            Err(e) => return fail(format!("--token: {e}")),
        },
        (None, None) => return fail("one of --claims JSON or --token T is required"),
    };
    let mut headers = HashMap::new();
    for h in &a.headers {
        let Some((k, v)) = h.split_once(':') else {
            return fail(format!(
                "--header: expected NAME:VALUE, got `{}`",
                h.split(':').next().unwrap_or("")
            ));
        };
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let body = match &a.body {
        None => None,
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(b),
            Err(e) => return fail(format!("--body: {}: {e}", p.display())),
        },
    };
    if body.is_some() && !headers.contains_key("content-type") {
        headers.insert("content-type".into(), "application/json".into());
    }
    let facts = RequestFacts {
        method: method.to_ascii_uppercase(),
        path: path.clone(),
        headers,
        source_ip: a.source_ip,
        body,
        ..Default::default()
    };
    let digest = set.digest();
    let snap = PolicySnapshot::compile(set, 0, "scp-pep");
    let consents = match &a.consents {
        None => None,
        Some(file) => match load_consents(file, &snap, now_ms).await {
            Ok(c) => Some(c),
            Err(e) => return fail(format!("--consents: {e}")),
        },
    };
    let mut t = explain_request(&snap, &facts, claims, consents.as_deref(), now_ms).await;
    t.policy_digest = Some(digest);
    emit(&t, a.json)
}

/// Prints `t` (text, or JSON with `json`) and maps its outcome to the exit status: 0 allow,
/// 1 deny.
fn emit(t: &Trace, json: bool) -> ExitCode {
    let text = if json {
        serde_json::to_string_pretty(t).unwrap_or_default() + "\n"
    } else {
        t.render()
    };
    crate::cli::write_stdout(&text);
    if t.outcome == "allow" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// An in-memory consent registry (SQLite `:memory:`) loaded from an import file, clocked at
/// `now_ms`. Errors name the entry and field at fault (the import's validation).
async fn load_consents(
    file: &std::path::Path,
    snap: &PolicySnapshot,
    now_ms: i64,
) -> Result<Arc<crate::consent::Consents>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let doc: crate::consent::import::ImportFile =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let store =
        crate::store::Store::connect("sqlite::memory:", 1, std::time::Duration::from_secs(5))
            .await
            .map_err(|e| format!("in-memory registry: {e}"))?;
    let clock = crate::consent::ManualClock::new(now_ms);
    let consents =
        crate::consent::Consents::new(store, crate::consent::ConsentConfig::default(), clock);
    let grace = |t: &str| {
        snap.tenants
            .get(t)
            .and_then(|e| e.tenant.consent_grace_days)
            .unwrap_or(0)
    };
    crate::consent::import::import(&consents, None, &doc, "scp-pep-explain", grace)
        .await
        .map_err(|e| e.to_string())?;
    Ok(consents)
}

/// The trace of recorded decision `rec_body` (a decision record body, format 3) re-decided
/// against `snap` with [`crate::impact::redecide`]: policy stages run again; non-policy stages
/// (second factors, payload, consent, rate limits) keep their recorded results, and those the
/// recorded request never reached are `not_evaluated`. Errors: the body is not a decision body,
/// or it predates format 3 (no recorded token inputs).
pub fn explain_record(snap: &PolicySnapshot, rec_body: &str) -> Result<Trace, String> {
    let rec = crate::impact::RecordedDecision::parse(rec_body)
        .map_err(|e| format!("not a decision record: {e}"))?;
    let red = crate::impact::redecide(snap, &rec).map_err(|e| match e {
        crate::impact::NotRedecidable::OldFormat => {
            "the record predates decision format 3: its token inputs were not recorded".to_owned()
        }
        crate::impact::NotRedecidable::Malformed => "the record's time does not parse".to_owned(),
    })?;
    let raw: Value = serde_json::from_str(rec_body).map_err(|e| e.to_string())?;
    let mut d = red.decision;
    // The consent results the record used (keyed person references only).
    if let Some(c) = raw.get("consent_checks")
        && let Ok(checks) = serde_json::from_value(c.clone())
    {
        d.consent_checks = checks;
    }
    let view = rec.inputs.as_ref().map(|i| TokenView {
        source: ClaimsSource::Recorded,
        tenant_id: rec.tenant_id.as_deref().unwrap_or("").to_owned(),
        integration_id: rec.integration_id.as_deref().unwrap_or("").to_owned(),
        verticals: i.verticals.iter().map(|v| v.to_string()).collect(),
        scopes: i.scopes.iter().map(|v| v.to_string()).collect(),
        client_id: rec.client_id.as_deref().map(str::to_owned),
    });
    let mut t = trace(snap, view.as_ref(), &d, &red.unverified);
    t.recorded = Some(json!({
        "decision_id": rec.decision_id,
        "time": rec.time,
        "outcome": raw.get("outcome"),
        "code": rec.code,
        "policy_version": raw.get("policy_version"),
        "same_code": rec.code == t.code,
    }));
    Ok(t)
}

/// `explain --decision ID`: exit 0 when the re-decision allows, 1 when it denies or the
/// decision is not found, 2 on bad input or an unreachable store.
async fn explain_recorded(a: &ExplainArgs, id: &str) -> ExitCode {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return fail("--decision: expected a decision id (a UUID)");
    }
    let (cfg, store) = match crate::audit::cmd::connect(&a.store).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let rec = match crate::audit::store::record_by_event(&store, id).await {
        Ok(Some(r)) if r.kind == "decision" => r,
        Ok(_) => {
            eprintln!("error: no decision record with id {id}");
            return ExitCode::from(1);
        }
        Err(e) => return fail(format!("store: {e}")),
    };
    let snap = match &a.policies {
        Some(dir) => match PolicySet::load_dir(dir) {
            Ok(set) => PolicySnapshot::compile(set, 0, &cfg.auth.audience),
            Err(e) => {
                eprintln!("{e}");
                return fail(format!(
                    "--policies: {} is not a valid policy set",
                    dir.display()
                ));
            }
        },
        None => match store.load().await {
            Ok((version, set)) => PolicySnapshot::compile(set, version, &cfg.auth.audience),
            Err(e) => return fail(format!("store: {e}")),
        },
    };
    let t = match explain_record(&snap, &rec.body) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: decision {id}: {e}");
            return ExitCode::from(1);
        }
    };
    emit(&t, a.json)
}
