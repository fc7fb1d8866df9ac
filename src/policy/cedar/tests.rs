//! Tests of Cedar policy packs.

use super::*;
use crate::policy::model::{Action, RouteKind};

const NOW: i64 = 1_780_000_000_000;

fn pack(id: &str, vertical: &str, text: &str) -> PolicyPack {
    check_policies(text).unwrap_or_else(|e| panic!("{e}"));
    PolicyPack {
        id: id.into(),
        tenant: "ke".into(),
        vertical: vertical.into(),
        status: PackStatus::Active,
        policies: text.into(),
        active_from: None,
        active_until: None,
        mode: Default::default(),
    }
}

fn integ() -> Integration {
    serde_json::from_value(serde_json::json!({
        "id": "int-1", "tenant": "ke", "partner_name": "P", "legal_basis": "L", "state": "active",
        "verticals": ["health", "education"], "scopes": ["health:person:read"]
    }))
    .unwrap()
}

fn route(verticals: &[&str], action: Action) -> Route {
    Route {
        id: "r-1".into(),
        methods: vec!["GET".into()],
        path: "/v1/x".into(),
        verticals: verticals.iter().map(|s| s.to_string()).collect(),
        action,
        resource: "person_record".into(),
        scope: "health:person:read".into(),
        person_id: None,
        consent_purpose: None,
        data_categories: vec!["health.clinical".into()],
        fields: vec![],
        kind: RouteKind::RealTime,
        content_types: None,
        body_schema: None,
        data_region: None,
    }
}

fn check(packs: &[PolicyPack], r: &Route) -> Result<Vec<String>, String> {
    CompiledPacks::compile(packs).check_partner(
        &integ(),
        r,
        &["health:person:read".into()],
        1,
        "GET",
        NOW,
        &mut Vec::new(),
    )
}

const ALLOW_ALL: &str = "permit(principal, action, resource);";

/// ADM-6, issue 11: the entities and contexts stage 6 reuses between requests never carry
/// one request's scopes, person count or method into another's decision.
#[test]
fn reused_entities_and_contexts_follow_each_request() {
    let packs = CompiledPacks::compile(&[pack(
        "p",
        "health",
        r#"@id("readers") permit(principal is Scp::Integration, action, resource)
           when { principal.scopes.contains("health:person:read") && context.scopes.contains("health:person:read") && context.persons <= 1 && context.method == "GET" };"#,
    )]);
    let r = route(&["health"], Action::Read);
    let ok: Vec<String> = vec!["health:person:read".into()];
    let other: Vec<String> = vec!["health:other".into()];
    let allows = |scopes: &[String], persons: usize, method: &str| {
        packs
            .check_partner(&integ(), &r, scopes, persons, method, NOW, &mut Vec::new())
            .is_ok()
    };
    // Twice: the second round is served from the reused entities and contexts.
    for _ in 0..2 {
        assert!(allows(&ok, 1, "GET"));
        assert!(!allows(&other, 1, "GET"), "another request's scopes");
        assert!(!allows(&ok, 2, "GET"), "another person count");
        assert!(!allows(&ok, 1, "HEAD"), "another method");
    }
}

#[test]
fn schema_parses() {
    assert!(VALIDATOR.is_some());
}

/// ADM-6: a matching forbid beats a matching permit; the reason is the forbid's @id.
#[test]
fn forbid_wins() {
    let p = pack(
        "p",
        "health",
        r#"@mask("dob") permit(principal, action, resource);
           @id("no-clinical") forbid(principal, action, resource) when { resource.data_categories.contains("health.clinical") };"#,
    );
    let e = check(&[p], &route(&["health"], Action::Read)).unwrap_err();
    assert!(e.contains("no-clinical") && e.contains("`p`"), "{e}");
}

/// ADM-6: nothing permits → deny (default_deny); a permit with @mask allows and masks.
#[test]
fn no_permit_denies_and_permits_mask() {
    let p = pack(
        "p",
        "health",
        r#"@id("writers") permit(principal, action == Scp::Action::"write", resource);"#,
    );
    let e = check(&[p], &route(&["health"], Action::Read)).unwrap_err();
    assert!(e.contains(DEFAULT_DENY), "{e}");
    let p = pack(
        "p",
        "health",
        r#"@id("readers") @mask("dob, national_id") permit(principal is Scp::Integration, action == Scp::Action::"read", resource)
           when { principal.scopes.contains("health:person:read") && context.persons <= 1 };"#,
    );
    assert_eq!(
        check(&[p], &route(&["health"], Action::Read)).unwrap(),
        vec!["dob".to_string(), "national_id".to_string()]
    );
}

/// ADM-6: a request touching several verticals passes every vertical's pack; a vertical
/// without a pack does not restrict.
#[test]
fn every_vertical_pack_must_pass() {
    let health = pack("ph", "health", ALLOW_ALL);
    let edu = pack(
        "pe",
        "education",
        r#"@id("edu-no-health") forbid(principal, action, resource) when { resource.verticals.contains("health") };"#,
    );
    let both = route(&["health", "education"], Action::Read);
    let e = check(&[health.clone(), edu.clone()], &both).unwrap_err();
    assert!(e.contains("`pe`") && e.contains("edu-no-health"), "{e}");
    assert!(check(std::slice::from_ref(&health), &both).is_ok());
    assert!(check(&[edu], &route(&["health"], Action::Read)).is_ok());
    assert!(check(&[], &both).is_ok());
}

/// Fail closed: a policy erroring at evaluation (here an `Scp::User`-only attribute read
/// through an unchecked record access) denies, even though Cedar would skip it.
#[test]
fn evaluation_error_fails_closed() {
    // `resource.kind` is a string; `like` compiles; use a runtime error: long overflow.
    let p = pack(
        "p",
        "health",
        r#"permit(principal, action, resource);
           @id("overflow") forbid(principal, action, resource) when { context.persons + 9223372036854775807 > 0 };"#,
    );
    let e = check(&[p], &route(&["health"], Action::Read)).unwrap_err();
    assert!(
        e.contains(EVALUATION_ERROR) && e.contains("overflow"),
        "{e}"
    );
    // A pack whose stored text no longer parses denies its vertical.
    let mut broken = pack("b", "health", ALLOW_ALL);
    broken.policies = "permit(".into();
    let e = check(&[broken], &route(&["health"], Action::Read)).unwrap_err();
    assert!(e.contains(EVALUATION_ERROR), "{e}");
}

/// Windows and statuses: only active/restricted packs inside their window apply; restricted
/// packs refuse writes.
#[test]
fn windows_statuses_and_restricted() {
    let forbid_all = "forbid(principal, action, resource);";
    let mut p = pack("p", "health", forbid_all);
    p.active_from = Some("2099-01-01T00:00:00Z".into());
    assert!(check(&[p.clone()], &route(&["health"], Action::Read)).is_ok());
    p.active_from = None;
    p.status = PackStatus::Suspended;
    assert!(check(&[p], &route(&["health"], Action::Read)).is_ok());
    let mut r = pack("r", "health", ALLOW_ALL);
    r.status = PackStatus::Restricted;
    assert!(check(&[r.clone()], &route(&["health"], Action::Read)).is_ok());
    let e = check(&[r], &route(&["health"], Action::Write)).unwrap_err();
    assert!(e.contains(RESTRICTED), "{e}");
}

/// Submission checks: syntax, schema (unknown attribute, unknown entity type), templates,
/// @mask on forbid, duplicate @id.
#[test]
fn submission_is_validated() {
    assert!(check_policies("permit(principal, action, resource").is_err());
    let e = check_policies(
        r#"permit(principal is Scp::Integration, action, resource) when { principal.nope == "x" };"#,
    )
    .unwrap_err();
    assert!(e.contains("schema"), "{e}");
    assert!(check_policies("permit(principal is Foo, action, resource);").is_err());
    assert!(check_policies("permit(principal == ?principal, action, resource);").is_err());
    assert!(check_policies(r#"@mask("a") forbid(principal, action, resource);"#).is_err());
    assert!(
        check_policies(
            r#"@id("a") permit(principal, action, resource); @id("a") permit(principal, action, resource);"#
        )
        .is_err()
    );
    assert!(check_policies("").is_err());
    assert!(
        check_policies(
            r#"permit(principal, action, resource) when { context has purpose && context.purpose == "research" && context.hour < 20 };"#
        )
        .is_ok()
    );
}

/// The `User` principal (evaluate) works with roles.
#[test]
fn user_principal() {
    let packs = CompiledPacks::compile(&[pack(
        "p",
        "health",
        r#"@id("clinicians") permit(principal is Scp::User, action, resource) when { principal.roles.contains("clinician") };"#,
    )]);
    let mut req = PackRequest {
        principal_type: "User",
        principal_id: "u-1",
        action: "read",
        resource: "person_record",
        tenant: "ke",
        vertical: "health",
        context: serde_json::json!({"roles": ["clinician"]}),
        now_ms: NOW,
    };
    let d = packs.evaluate(&req).unwrap();
    assert!(
        d.allowed && d.reasons == vec!["clinicians".to_string()],
        "{d:?}"
    );
    req.context = serde_json::json!({"roles": []});
    assert!(!packs.evaluate(&req).unwrap().allowed);
    req.principal_type = "Robot";
    assert_eq!(
        packs.evaluate(&req).unwrap().reasons,
        vec![EVALUATION_ERROR.to_string()]
    );
    req.vertical = "education";
    assert!(packs.evaluate(&req).is_none());
}

/// ADM-6: stage 6 reports the determining policies as reasons, `<pack id>/<policy id>`, for
/// an allow and for a denial; the denial message names the pack and the bare policy ids.
#[test]
fn check_partner_reports_determining_policies() {
    let r = route(&["health"], Action::Read);
    let scopes: Vec<String> = vec!["health:person:read".into()];
    let allow = CompiledPacks::compile(&[pack(
        "hp",
        "health",
        r#"@id("readers") permit(principal, action, resource);"#,
    )]);
    let mut reasons = Vec::new();
    assert!(
        allow
            .check_partner(&integ(), &r, &scopes, 1, "GET", NOW, &mut reasons)
            .is_ok()
    );
    assert_eq!(reasons, vec!["hp/readers".to_string()]);

    let deny = CompiledPacks::compile(&[pack(
        "hp",
        "health",
        r#"@id("readers") permit(principal, action, resource);
           @id("no-bulk") forbid(principal, action, resource) when { context.persons > 0 };"#,
    )]);
    let mut reasons = Vec::new();
    let m = deny
        .check_partner(&integ(), &r, &scopes, 1, "GET", NOW, &mut reasons)
        .unwrap_err();
    assert_eq!(reasons, vec!["hp/no-bulk".to_string()]);
    assert!(
        m.contains("policy pack `hp`") && m.ends_with(": no-bulk"),
        "{m}"
    );
}
