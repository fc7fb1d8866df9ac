//! Tenant boundaries and data residency (spec 4.5) through the real gRPC ext_authz server, on
//! SQLite and PostgreSQL: cross-tenant access of an umbrella-approved integration to exactly its
//! partner tenants, still checked per vertical, scope, deny rules, policy packs and consent of the
//! tenant it reaches (INT-4.5-2), and pipeline stage 6b, residency (INT-4.5-3, INT-4.5-4).
//!
//! Requirement tags: INT-4.5-1, INT-4.5-2, INT-4.5-3, INT-4.5-4, INT-9.4-1.

use crate::common;

use scp_pep::check::CheckInput;
use serde_json::Value;

use common::Harness;

/// The test policy on top of the fixtures: tenant `tz` (another region), the residency rules of
/// `ke` and `ug`, routes served from other regions, the cross-tenant integrations, a deny rule
/// and a policy pack of `ug` aimed at the partner of `ke`.
fn boundaries_yaml(idp: &str) -> String {
    format!(
        r#"tenants:
  - id: tz
    residency_region: africa-south
    issuer: "{idp}/realms/tz"
    jwks: {{url: "{idp}/realms/tz/protocol/openid-connect/certs"}}
integrations:
  - id: int-ke-xt
    tenant: ke
    partner_name: Regional health network
    legal_basis: Regional data-sharing agreement
    state: active
    verticals: [health]
    scopes: [health:person:read, stats:aggregate:read]
    rate_limit: {{per_second: 1000, burst: 5000}}
    partner_tenants: [ug, tz]
    onboarding:
      created_by: mgr-1
      reviewed_by: owner-1
      legal_reviewed_by: legal-1
      approved_by: umbrella-1
      legal_document_id: DSA-2026-07
  - id: int-ke-xt-unapproved
    tenant: ke
    partner_name: Unapproved regional partner
    legal_basis: Pending agreement
    state: active
    verticals: [health]
    scopes: [health:person:read]
    rate_limit: {{per_second: 1000, burst: 5000}}
    partner_tenants: [ug]
  - id: int-ke-xt-pending
    tenant: ke
    partner_name: Approved partner before its first handshake
    legal_basis: Regional data-sharing agreement
    state: approved
    client_id: int-ke-xt-pending
    verticals: [health]
    scopes: [health:person:read]
    rate_limit: {{per_second: 1000, burst: 5000}}
    partner_tenants: [ug]
    onboarding:
      created_by: mgr-1
      legal_reviewed_by: legal-1
      approved_by: umbrella-1
      legal_document_id: DSA-2026-08
routes:
  - id: res-handshake
    methods: [GET]
    path: /v1/tenants/{{tenant}}/health/handshake
    verticals: [health]
    action: read
    resource: handshake
    scope: health:person:read
    kind: handshake
  - id: res-backup-record
    methods: [GET]
    path: /v1/tenants/{{tenant}}/health/backup/{{person_id}}/record
    verticals: [health]
    action: read
    resource: person_health_record
    scope: health:person:read
    person_id: {{in: path, name: person_id}}
    data_categories: [identity.basic, health.clinical]
    kind: real_time
    data_region: africa-west
  - id: res-in-region-record
    methods: [GET]
    path: /v1/tenants/{{tenant}}/health/local/{{person_id}}/record
    verticals: [health]
    action: read
    resource: person_health_record
    scope: health:person:read
    person_id: {{in: path, name: person_id}}
    kind: real_time
    data_region: africa-east
  - id: res-eu-summary
    methods: [GET]
    path: /v1/tenants/{{tenant}}/stats/health/eu-summary
    verticals: [health]
    action: read
    resource: health_summary
    scope: stats:aggregate:read
    data_categories: [aggregate]
    kind: aggregate
    data_region: eu-west
  - id: res-eu-record
    methods: [GET]
    path: /v1/tenants/{{tenant}}/health/eu/{{person_id}}/record
    verticals: [health]
    action: read
    resource: person_health_record
    scope: health:person:read
    person_id: {{in: path, name: person_id}}
    kind: real_time
    data_region: eu-west
deny_rules:
  - {{id: dr-ug-xt-lookup, tenant: ug, integration: int-ke-xt, resource: person_lookup, reason: lookups by partners are paused}}
policy_packs:
  - id: pack-ug-health
    tenant: ug
    vertical: health
    status: active
    policies: |
      permit(principal, action, resource);
      @id("no-head")
      forbid(principal, action, resource) when {{ context.method == "HEAD" }};
"#
    )
}

/// Starts scp-pep with the fixtures plus [`boundaries_yaml`]; `ke` may send aggregates to
/// `eu-west`, `ug` raw personal data to `africa-west`.
async fn start(store: Option<String>) -> Harness {
    Harness::start_with(store, |config| {
        let dir = config.policy.dir.clone().expect("policy dir");
        let tenants = std::fs::read_to_string(dir.join("tenants.yaml")).unwrap();
        let idp = tenants
            .split("issuer: \"")
            .nth(1)
            .and_then(|s| s.split("/realms/").next())
            .expect("fixture issuer")
            .to_owned();
        let tenants = tenants
            .replace(
                "  - id: ke\n    residency_region: africa-east\n",
                "  - id: ke\n    residency_region: africa-east\n    aggregate_export_regions: [eu-west]\n",
            )
            .replace(
                "  - id: ug\n    residency_region: africa-east\n",
                "  - id: ug\n    residency_region: africa-east\n    allowed_export_regions: [africa-west]\n",
            );
        assert!(tenants.contains("aggregate_export_regions") && tenants.contains("allowed_export_regions"));
        std::fs::write(dir.join("tenants.yaml"), tenants).unwrap();
        std::fs::write(dir.join("boundaries.yaml"), boundaries_yaml(&idp)).unwrap();
    })
    .await
}

fn token(h: &Harness, integration: &str, scope: &str) -> String {
    h.sign("ke-rs256", &h.claims("ke", integration, &["health"], scope))
}

async fn check(h: &mut Harness, method: &str, path: &str, token: &str) -> Value {
    let mut input: CheckInput = Harness::get(path, token);
    input.method = method.into();
    h.check(&input).await
}

fn assert_denied(r: &Value, status: u64, code: &str) {
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"], status, "{r}");
    assert_eq!(r["code"], code, "{r}");
    assert_eq!(r["body"]["error"]["code"], code, "{r}");
}

/// The audit records of `kind` whose body mentions `needle` (a decision id).
async fn audit_bodies(h: &Harness, kind: &str, needle: &str) -> Vec<Value> {
    let sql = "SELECT body FROM audit_records WHERE kind = $1 AND body LIKE $2 ORDER BY seq";
    let like = format!("%{needle}%");
    let rows: Vec<String> = match &h.running.store {
        scp_pep::store::Store::Sqlite(p) => sqlx::query_scalar(sql)
            .bind(kind)
            .bind(like)
            .fetch_all(p)
            .await
            .unwrap(),
        scp_pep::store::Store::Postgres(p) => sqlx::query_scalar(sql)
            .bind(kind)
            .bind(like)
            .fetch_all(p)
            .await
            .unwrap(),
    };
    rows.iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect()
}

/// The decision log line of `decision_id` (waits for it).
async fn log_line(h: &Harness, decision_id: &Value) -> Value {
    for _ in 0..100 {
        let n = std::fs::read_to_string(&h.log_path)
            .unwrap_or_default()
            .lines()
            .count();
        if let Some(l) = h
            .log_lines(n.max(1))
            .await
            .into_iter()
            .find(|l| l["decision_id"] == *decision_id)
        {
            return l;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no decision log line for {decision_id}");
}

/// The value of the sample of `name` whose labels contain `label` (0 when absent).
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// INT-4.5-2, INT-4.5-1, INT-9.4-1: an integration of `ke` approved (umbrella authority, legal
/// document on record) for partner tenants `ug` and `tz` reaches `ug`'s routes, and is still
/// checked by scope, `ug`'s deny rules, `ug`'s policy pack and consent in `ug`; any other tenant
/// and any integration with `partner_tenants` that is unapproved, or approved but not yet active
/// (handshake only), get `TENANT_MISMATCH` and a
/// `cross_tenant` incident. The decision, its audit record and the decision log carry both the
/// partner's home tenant and the target tenant.
async fn cross_tenant_reaches_only_the_approved_partner_tenants(store: Option<String>) {
    let mut h = start(store).await;
    let xt = token(&h, "int-ke-xt", "health:person:read stats:aggregate:read");

    // Allowed into the partner tenant, recorded with both tenants.
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ug/health/persons/p-1/record",
        &xt,
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["metadata"]["tenant_id"], "ke", "{r}");
    assert_eq!(r["metadata"]["target_tenant_id"], "ug", "{r}");
    assert_eq!(r["headers_set"]["x-scp-tenant-id"], "ke", "{r}");
    let id = r["decision_id"].as_str().unwrap().to_owned();
    let rec = audit_bodies(&h, "decision", &id).await;
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0]["tenant_id"], "ke");
    assert_eq!(rec[0]["target_tenant_id"], "ug");
    assert_eq!(rec[0]["outcome"], "allow");
    assert_eq!(
        rec[0]["path"],
        "/v1/tenants/ug/health/persons/{person_id}/record"
    );
    let stages: Vec<&str> = rec[0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let pos = |s: &str| stages.iter().position(|x| *x == s).unwrap();
    assert!(pos("tenant_vertical") < pos("residency") && pos("residency") < pos("consent"));
    let line = log_line(&h, &r["decision_id"]).await;
    assert_eq!(line["tenant_id"], "ke", "{line}");
    assert_eq!(line["target_tenant_id"], "ug", "{line}");

    // Its own tenant as before; no target tenant recorded.
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ke/health/persons/p-1/record",
        &xt,
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r["metadata"].get("target_tenant_id").is_none(), "{r}");
    let line = log_line(&h, &r["decision_id"]).await;
    assert!(line.get("target_tenant_id").is_none(), "{line}");

    // Still scope-checked in the partner tenant: no write scope, and a token without the scope.
    let r = check(
        &mut h,
        "POST",
        "/v1/tenants/ug/health/persons/p-1/encounters",
        &xt,
    )
    .await;
    assert_denied(&r, 403, "SCOPE_VIOLATION");
    let narrow = token(&h, "int-ke-xt", "stats:aggregate:read");
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ug/health/persons/p-1/record",
        &narrow,
    )
    .await;
    assert_denied(&r, 403, "SCOPE_VIOLATION");
    // Vertical: the route touches education, outside the integration's verticals.
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ug/education/students/p-1/enrolment",
        &xt,
    )
    .await;
    assert_denied(&r, 403, "VERTICAL_NOT_PERMITTED");

    // The partner tenant's deny rule applies to it (not in its home tenant).
    let r = check(&mut h, "GET", "/v1/tenants/ug/health/lookup?pid=p-1", &xt).await;
    assert_denied(&r, 403, "DENY_RULE_MATCHED");
    let r = check(&mut h, "GET", "/v1/tenants/ke/health/lookup?pid=p-1", &xt).await;
    assert_eq!(r["allowed"], true, "{r}");

    // The partner tenant's policy pack decides (forbids HEAD in ug; ke has no pack).
    let r = check(
        &mut h,
        "HEAD",
        "/v1/tenants/ug/health/persons/p-1/record",
        &xt,
    )
    .await;
    assert_denied(&r, 403, "POLICY_DENIED");
    let r = check(
        &mut h,
        "HEAD",
        "/v1/tenants/ke/health/persons/p-1/record",
        &xt,
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");

    // Consent is looked up in the partner tenant: a person with consent in ke only.
    common::seed_consents(
        &h.running.consents,
        "ke",
        &["health"],
        &["p-ke-only".to_string()],
    )
    .await;
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ke/health/persons/p-ke-only/record",
        &xt,
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ug/health/persons/p-ke-only/record",
        &xt,
    )
    .await;
    assert_denied(&r, 403, "CONSENT_MISSING");

    // Nothing else: a tenant that is not a partner, an unknown one, an unapproved integration
    // with the same partner tenant, an integration without partner tenants.
    let incidents0 = metric(
        &h.metrics_text().await,
        "scp_pep_security_incidents_total",
        "kind=\"cross_tenant\"",
    );
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/xx/health/persons/p-1/record",
        &xt,
    )
    .await;
    assert_denied(&r, 403, "TENANT_MISMATCH");
    assert!(r["metadata"].get("target_tenant_id").is_none(), "{r}");
    let unapproved = token(&h, "int-ke-xt-unapproved", "health:person:read");
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ug/health/persons/p-1/record",
        &unapproved,
    )
    .await;
    assert_denied(&r, 403, "TENANT_MISMATCH");
    assert_eq!(r["metadata"]["target_tenant_id"], "ug", "{r}");
    let denied_id = r["decision_id"].as_str().unwrap().to_owned();
    let pending = token(&h, "int-ke-xt-pending", "health:person:read");
    let r = check(&mut h, "GET", "/v1/tenants/ug/health/handshake", &pending).await;
    assert_denied(&r, 403, "TENANT_MISMATCH");
    let r = check(&mut h, "GET", "/v1/tenants/ke/health/handshake", &pending).await;
    assert_eq!(r["allowed"], true, "its own handshake: {r}");
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ke/health/persons/p-1/record",
        &unapproved,
    )
    .await;
    assert_eq!(r["allowed"], true, "its own tenant still works: {r}");
    let moh = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
    );
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ug/health/persons/p-1/record",
        &moh,
    )
    .await;
    assert_denied(&r, 403, "TENANT_MISMATCH");
    let incidents1 = metric(
        &h.metrics_text().await,
        "scp_pep_security_incidents_total",
        "kind=\"cross_tenant\"",
    );
    assert_eq!(incidents1 - incidents0, 4.0);
    let inc = audit_bodies(&h, "security_incident", &denied_id).await;
    assert_eq!(inc.len(), 1, "{inc:?}");
    assert_eq!(inc[0]["detail"]["incident"], "cross_tenant");
    assert_eq!(inc[0]["detail"]["target_tenant_id"], "ug");
    assert_eq!(inc[0]["tenant_id"], "ke");
}

/// INT-4.5-3, INT-4.5-4, INT-9.4-1: in-region routes are allowed; a route serving raw personal
/// data from a region the tenant does not allow is 403 `RESIDENCY_VIOLATION`, recorded as a
/// `residency_violation` security incident and counted; the same route is allowed for a tenant
/// whose `allowed_export_regions` name the region; an aggregate route is allowed where the
/// tenant's `aggregate_export_regions` name its region while a personal route there is not; a
/// cross-tenant request whose partner sits in another region than the target tenant allows is
/// denied too.
async fn residency_is_enforced_per_data_class(store: Option<String>) {
    let mut h = start(store).await;
    let xt = token(&h, "int-ke-xt", "health:person:read stats:aggregate:read");

    // In region: implicit (no data_region) and explicit.
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ke/health/persons/p-1/record",
        &xt,
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = check(&mut h, "GET", "/v1/tenants/ke/health/local/p-1/record", &xt).await;
    assert_eq!(r["allowed"], true, "{r}");

    // Raw personal data served from africa-west: ke allows no export.
    let text = h.metrics_text().await;
    let (inc0, code0) = (
        metric(
            &text,
            "scp_pep_security_incidents_total",
            "kind=\"residency_violation\"",
        ),
        metric(
            &text,
            "scp_pep_decisions_total",
            "code=\"RESIDENCY_VIOLATION\"",
        ),
    );
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ke/health/backup/p-1/record",
        &xt,
    )
    .await;
    assert_denied(&r, 403, "RESIDENCY_VIOLATION");
    assert_eq!(r["body"]["error"]["retryable"], false, "{r}");
    let msg = r["body"]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("africa-west") && !msg.contains("p-1"), "{msg}");
    let id = r["decision_id"].as_str().unwrap().to_owned();
    let rec = audit_bodies(&h, "decision", &id).await;
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["code"], "RESIDENCY_VIOLATION");
    assert_eq!(
        rec[0]["incidents"],
        serde_json::json!(["residency_violation"])
    );
    assert_eq!(
        rec[0]["stages"].as_array().unwrap().last().unwrap(),
        "residency"
    );
    assert!(
        rec[0]["consent_checks"].as_array().unwrap().is_empty(),
        "no consent lookup"
    );
    let inc = audit_bodies(&h, "security_incident", &id).await;
    assert_eq!(inc.len(), 1, "{inc:?}");
    assert_eq!(inc[0]["detail"]["incident"], "residency_violation");
    assert_eq!(inc[0]["detail"]["route_id"], "res-backup-record");
    assert!(
        !inc[0].to_string().contains("p-1"),
        "no person id: {}",
        inc[0]
    );
    let text = h.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "scp_pep_security_incidents_total",
            "kind=\"residency_violation\""
        ) - inc0,
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "scp_pep_decisions_total",
            "code=\"RESIDENCY_VIOLATION\""
        ) - code0,
        1.0
    );

    // ug's allowed_export_regions name africa-west: its own integration is allowed.
    let ug = h.sign(
        "ug-rs256",
        &h.claims("ug", "int-ug-moh", &["health"], "health:person:read"),
    );
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ug/health/backup/p-1/record",
        &ug,
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    // And so is the approved partner of ke reaching ug (both tenants in africa-east).
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ug/health/backup/p-1/record",
        &xt,
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");

    // eu-west: aggregates of ke may go there, raw personal data may not.
    let r = check(&mut h, "GET", "/v1/tenants/ke/stats/health/eu-summary", &xt).await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = check(&mut h, "GET", "/v1/tenants/ke/health/eu/p-1/record", &xt).await;
    assert_denied(&r, 403, "RESIDENCY_VIOLATION");
    // ug allows no aggregate export to eu-west (its approved partner from ke asks).
    let r = check(&mut h, "GET", "/v1/tenants/ug/stats/health/eu-summary", &xt).await;
    assert_denied(&r, 403, "RESIDENCY_VIOLATION");

    // Cross-tenant into tz (africa-south): the data of tz would go to ke's africa-east partner.
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/tz/health/persons/p-1/record",
        &xt,
    )
    .await;
    assert_denied(&r, 403, "RESIDENCY_VIOLATION");
    assert_eq!(r["metadata"]["target_tenant_id"], "tz", "{r}");
    let msg = r["body"]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("africa-east") && msg.contains("`tz`"), "{msg}");
}

on_both_stores!(optional:
    cross_tenant_reaches_only_the_approved_partner_tenants,
    residency_is_enforced_per_data_class,
);

/// INT-4.5-3: a route whose `data_region` is no region of the policy, or not a region name, is a
/// load error naming the file, the entry and the field; nothing is loaded. A tenant export
/// region that repeats its residency region and a partner tenant that does not exist are load
/// errors too (INT-4.5-2).
#[test]
fn bad_regions_are_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.yaml"),
        "tenants:\n  - id: ke\n    residency_region: africa-east\n    issuer: https://idp.example/realms/ke\n    jwks: {url: https://idp.example/realms/ke/certs}\n    allowed_export_regions: [africa-west, africa-east]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        "routes:\n  - {id: r-ok, methods: [GET], path: /v1/a, verticals: [h], action: read, resource: r, scope: s, kind: real_time, data_region: africa-west}\n  - {id: r-mars, methods: [GET], path: /v1/b, verticals: [h], action: read, resource: r, scope: s, kind: real_time, data_region: mars-1}\n  - {id: r-bad, methods: [GET], path: /v1/c, verticals: [h], action: read, resource: r, scope: s, kind: real_time, data_region: 'Africa East'}\nintegrations:\n  - {id: int-ke-x, tenant: ke, partner_name: P, legal_basis: L, state: active, verticals: [h], scopes: [s], partner_tenants: [ke, zz]}\n",
    )
    .unwrap();
    let errs = scp_pep::policy::PolicySet::load_dir(dir.path())
        .unwrap_err()
        .0;
    let find = |entry: &str, field: &str| {
        errs.iter()
            .find(|e| e.entry.contains(entry) && e.field == field)
            .unwrap_or_else(|| panic!("no error {entry} {field} in {errs:?}"))
    };
    let mars = find("(r-mars)", "data_region");
    assert_eq!(mars.file, "r.yaml");
    assert_eq!(mars.entry, "routes[1] (r-mars)");
    assert!(mars.message.contains("unknown region `mars-1`"), "{mars}");
    let bad = find("(r-bad)", "data_region");
    assert!(bad.message.contains("not a region name"), "{bad}");
    let dup = find("(ke)", "allowed_export_regions[1]");
    assert_eq!(dup.file, "t.yaml");
    find("(int-ke-x)", "partner_tenants[0]");
    find("(int-ke-x)", "partner_tenants[1]");
    assert!(!errs.iter().any(|e| e.entry.contains("(r-ok)")), "{errs:?}");
    assert_eq!(errs.len(), 5, "{errs:?}");
}
