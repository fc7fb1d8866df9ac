//! Impact preview (issue 16, ADM-6): decisions recorded by a real server are re-decided against
//! a candidate policy; the report names what flips.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::Harness;
use scp_pep::impact::{self, Impact};
use scp_pep::policy::{PolicySet, PolicySnapshot};
use scp_pep::store::Store;

const RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";
const RECORD2: &str = "/v1/tenants/ke/health/persons/p-2/record";

/// A pack for `ke`/`health` that forbids every GET.
const FORBID_GET: &str = "policy_packs:\n  - id: pack-ke-health-impact\n    tenant: ke\n    vertical: health\n    status: active\n    policies: |\n      permit(principal, action, resource);\n      @id(\"no-get\")\n      forbid(principal, action, resource) when { context.method == \"GET\" };\n";

/// Sends the recorded traffic: two allows of `int-ke-moh`, one `DENY_RULE_MATCHED` of
/// `int-ke-denyme`. Returns their decision ids.
async fn traffic(h: &mut Harness) -> (Vec<String>, String) {
    let moh = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
    );
    let mut allows = Vec::new();
    for p in [RECORD, RECORD2] {
        let r = h.check(&Harness::get(p, &moh)).await;
        assert_eq!(r["allowed"], true, "{r}");
        allows.push(r["decision_id"].as_str().unwrap().to_owned());
    }
    let denyme = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-denyme", &["health"], "health:person:read"),
    );
    let r = h.check(&Harness::get(RECORD, &denyme)).await;
    assert_eq!(r["code"], "DENY_RULE_MATCHED", "{r}");
    (allows, r["decision_id"].as_str().unwrap().to_owned())
}

/// A copy of the harness's policy directory with `extra` files written and `drop` removed.
fn candidate(h: &Harness, name: &str, extra: &[(&str, &str)], drop: &[&str]) -> std::path::PathBuf {
    let dir = h.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&h.policy_dir).unwrap() {
        let p = e.unwrap().path();
        let file = p.file_name().unwrap().to_str().unwrap().to_owned();
        if !drop.contains(&file.as_str()) {
            std::fs::copy(&p, dir.join(&file)).unwrap();
        }
    }
    for (f, text) in extra {
        std::fs::write(dir.join(f), text).unwrap();
    }
    dir
}

fn snapshot(dir: &Path) -> PolicySnapshot {
    PolicySnapshot::compile(PolicySet::load_dir(dir).unwrap(), 0, "scp-pep")
}

async fn store(h: &Harness) -> Store {
    Store::connect(&h.store_url, 2, Duration::from_secs(5))
        .await
        .unwrap()
}

fn window() -> (i64, i64) {
    let now = chrono::Utc::now().timestamp_millis();
    (now - 3_600_000, now + 3_600_000)
}

fn run_cli(h: &Harness, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scp-pep"))
        .args(["policy", "impact"])
        .args(args)
        .args(["--store", &h.store_url])
        .env_remove("SCP_PEP_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// ADM-6, INT-8-1: a candidate pack that forbids GET on `ke`/`health` flips the recorded allows
/// of `int-ke-moh` to `POLICY_DENIED`, in one group with their decision ids (CLI, `--json`);
/// the recorded deny-rule denial stays (deny rules run before packs); the same policy as the
/// running one flips nothing.
#[tokio::test]
async fn impact_of_a_forbidding_pack_lists_the_denials_it_would_cause() {
    let mut h = Harness::start(None).await;
    let (allows, _denied) = traffic(&mut h).await;
    let dir = candidate(&h, "cand-forbid", &[("zz-pack.yaml", FORBID_GET)], &[]);
    let (code, out, err) = run_cli(
        &h,
        &[
            "--candidate",
            dir.to_str().unwrap(),
            "--from",
            "2020-01-01",
            "--to",
            "2100-01-01",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["totals"]["read"], 3, "{r}");
    assert_eq!(r["totals"]["redecided"], 3, "{r}");
    assert_eq!(r["totals"]["flipped"], 2, "{r}");
    assert_eq!(r["totals"]["unchanged"], 1, "{r}");
    assert_eq!(r["totals"]["not_redecidable"], 0, "{r}");
    let flips = r["flips"].as_array().unwrap();
    assert_eq!(flips.len(), 1, "{r}");
    let f = &flips[0];
    assert_eq!(f["tenant_id"], "ke");
    assert_eq!(f["integration_id"], "int-ke-moh");
    assert_eq!(f["route_id"], "health-person-record");
    assert_eq!(f["from"], "OK");
    assert_eq!(f["to"], "POLICY_DENIED");
    assert_eq!(f["count"], 2);
    let mut samples: Vec<String> = serde_json::from_value(f["samples"].clone()).unwrap();
    samples.sort();
    let mut want = allows.clone();
    want.sort();
    assert_eq!(samples, want);
    assert_eq!(f["unverified"], serde_json::json!([]));

    // The human form names the group.
    let (code, out, _) = run_cli(&h, &["--candidate", dir.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("flipped 2"), "{out}");
    assert!(out.contains("allow → deny POLICY_DENIED"), "{out}");

    // The running policy as candidate: nothing flips.
    let s = store(&h).await;
    let (from, to) = window();
    let same = impact::from_store(&s, &snapshot(&h.policy_dir), from, to, None, 5)
        .await
        .unwrap();
    assert_eq!(same.totals.read, 3);
    assert_eq!(same.totals.unchanged, 3, "{same:?}");
    assert_eq!(same.totals.flipped, 0, "{same:?}");
    assert!(same.flips.is_empty());

    // An invalid candidate is refused with the validation errors, exit 1.
    let bad = candidate(
        &h,
        "cand-bad",
        &[("zz-bad.yaml", "routes: [{id: 1}]\n")],
        &[],
    );
    let (code, out, _) = run_cli(&h, &["--candidate", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains(r#""valid":false"#), "{out}");
}

/// ADM-6, ADM-3: removing the deny rule flips the recorded `DENY_RULE_MATCHED` to an allow that
/// is reported as unverified for the stages that never ran (consent, rate limit); the full
/// re-decision of one record names its stages and outcome. A record written before format 3
/// (no `inputs`) is counted as not re-decidable.
#[tokio::test]
async fn impact_of_a_deny_rule_removal_and_old_records() {
    let mut h = Harness::start(None).await;
    let (_allows, denied) = traffic(&mut h).await;
    let dir = candidate(&h, "cand-nodeny", &[], &["deny_rules.yaml"]);
    let snap = snapshot(&dir);
    let s = store(&h).await;
    let (from, to) = window();
    let r = impact::from_store(&s, &snap, from, to, Some("ke"), 5)
        .await
        .unwrap();
    assert_eq!(r.totals.flipped, 1, "{r:?}");
    let f = &r.flips[0];
    assert_eq!(f.integration_id.as_deref(), Some("int-ke-denyme"));
    assert_eq!(f.from, "DENY_RULE_MATCHED");
    assert_eq!(f.to, "OK");
    assert_eq!(f.unverified, vec!["consent", "rate_limit"]);
    assert_eq!(f.samples, vec![denied.clone()]);

    // The recorded bodies, as the store holds them.
    let bodies: Vec<(i64, String)> = match &s {
        Store::Sqlite(p) => sqlx::query_as(
            "SELECT time_ms, body FROM audit_records WHERE kind = 'decision' ORDER BY time_ms",
        )
        .fetch_all(p)
        .await
        .unwrap(),
        Store::Postgres(_) => unreachable!(),
    };
    assert_eq!(bodies.len(), 3);
    let v: Value = serde_json::from_str(&bodies[2].1).unwrap();
    assert_eq!(v["format"], 3);
    assert_eq!(
        v["inputs"]["scopes"],
        serde_json::json!(["health:person:read"])
    );
    assert_eq!(v["inputs"]["verticals"], serde_json::json!(["health"]));

    // One record, re-decided in full (what `explain` builds on).
    let rec = impact::RecordedDecision::parse(&bodies[2].1).unwrap();
    let one = impact::redecide(&snap, &rec).unwrap();
    assert!(one.decision.allowed());
    assert_eq!(one.decision.decision_id, denied);
    assert_eq!(one.unverified, vec!["consent", "rate_limit"]);
    let current = impact::redecide(&snapshot(&h.policy_dir), &rec).unwrap();
    assert_eq!(current.decision.code_str(), "DENY_RULE_MATCHED");

    // Format 2 (no inputs): not re-decidable, never guessed.
    let mut old: Value = serde_json::from_str(&bodies[0].1).unwrap();
    old.as_object_mut().unwrap().remove("inputs");
    old["format"] = 2.into();
    let mut run = Impact::new(&snap, 5);
    run.add(&old.to_string(), bodies[0].0);
    run.add(&bodies[1].1, bodies[1].0);
    let r = run.finish();
    assert_eq!(r.totals.read, 2);
    assert_eq!(r.totals.not_redecidable, 1);
    assert_eq!(r.totals.redecided, 1);
    let old_text = old.to_string();
    let parsed = impact::RecordedDecision::parse(&old_text).unwrap();
    assert!(matches!(
        impact::redecide(&snap, &parsed),
        Err(impact::NotRedecidable::OldFormat)
    ));
}

const OWNER: &str = "scp-vertical-owner";

fn admin_token(h: &Harness, tenant: &str, roles: &[&str]) -> String {
    h.staff_token(
        tenant,
        &format!("officer-{tenant}-{}", roles.join("+")),
        roles,
        "scp-pep-admin",
    )
}

async fn post(h: &Harness, path: &str, token: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(h.ops_url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn get(h: &Harness, path: &str, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(h.ops_url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// A draft pack of `ke`/health permitting everything and a draft change of it that forbids GET;
/// returns the change id.
async fn forbidding_change(h: &Harness) -> String {
    let owner = admin_token(h, "ke", &[OWNER]);
    let (s, b) = post(
        h,
        "/v1/policies/packs",
        &owner,
        serde_json::json!({"vertical_id": "health", "policy_rules": "permit(principal, action, resource);",
               "active_from": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let pack = b["policy_pack_id"].as_str().unwrap().to_owned();
    let (s, b) = post(
        h,
        "/v1/policies/changes",
        &owner,
        serde_json::json!({"policy_pack_id": pack, "change_summary": "stop GET",
               "policy_rules": "permit(principal, action, resource);\n@id(\"no-get\")\nforbid(principal, action, resource) when { context.method == \"GET\" };\n",
               "active_from": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    b["policy_change_id"].as_str().unwrap().to_owned()
}

/// ADM-6, ADM-2, ADM-1: `POST /v1/policies/changes/{id}/impact` re-decides the tenant's recorded
/// decisions with the change's rules and answers the flips (the allows of `int-ke-moh` →
/// `POLICY_DENIED`, with their ids); the change then shows the summary, the action is audited,
/// a caller without the permission is refused; `review` computes the impact of a change that
/// has none; `scp-pep policy impact --change` agrees. On SQLite and PostgreSQL.
async fn impact_of_a_policy_change_over_rest(store: Option<String>) {
    let mut h = Harness::start(store).await;
    let (allows, _) = traffic(&mut h).await;
    let owner = admin_token(&h, "ke", &[OWNER]);
    let pc = forbidding_change(&h).await;

    let (s, r) = post(
        &h,
        &format!("/v1/policies/changes/{pc}/impact"),
        &owner,
        serde_json::json!({"from": "2020-01-01", "to": "2100-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["tenant"], "ke");
    assert_eq!(r["totals"]["read"], 3, "{r}");
    assert_eq!(r["totals"]["flipped"], 2, "{r}");
    let f = &r["flips"][0];
    assert_eq!(
        (&f["integration_id"], &f["from"], &f["to"], &f["count"]),
        (
            &Value::from("int-ke-moh"),
            &Value::from("OK"),
            &Value::from("POLICY_DENIED"),
            &Value::from(2)
        ),
        "{r}"
    );
    let mut samples: Vec<String> = serde_json::from_value(f["samples"].clone()).unwrap();
    samples.sort();
    let mut want = allows.clone();
    want.sort();
    assert_eq!(samples, want);

    let (s, c) = get(&h, &format!("/v1/policies/changes/{pc}"), &owner).await;
    assert_eq!(s, 200);
    assert_eq!(c["impact"]["totals"]["flipped"], 2, "{c}");
    assert!(c["impact"]["computed_at"].is_string(), "{c}");
    assert!(
        crate::common::count_audit_events(&h.running.store, "admin_change", "policy_change.impact")
            .await
            >= 1
    );

    // Bad input names the field; no permission → 403.
    let (s, b) = post(
        &h,
        &format!("/v1/policies/changes/{pc}/impact"),
        &owner,
        serde_json::json!({"from": "yesterday"}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.to_string().contains("from"), "{b}");
    let nobody = admin_token(&h, "ke", &[]);
    let (s, _) = post(
        &h,
        &format!("/v1/policies/changes/{pc}/impact"),
        &nobody,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(s, 403);

    // The review computes the impact of a change that has none (default window: 7 days).
    let pc2 = forbidding_change(&h).await;
    let (s, b) = post(
        &h,
        &format!("/v1/policies/changes/{pc2}/request-review"),
        &owner,
        serde_json::json!({"request_reason_code": "POLICY_UPDATE"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["impact"].is_null(), "{b}");
    let (s, b) = post(
        &h,
        &format!("/v1/policies/changes/{pc2}/review"),
        &owner,
        serde_json::json!({"review_notes": "see the impact"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (_, c) = get(&h, &format!("/v1/policies/changes/{pc2}"), &owner).await;
    assert_eq!(c["status"], "reviewed");
    assert_eq!(c["impact"]["totals"]["flipped"], 2, "{c}");
    assert_eq!(c["impact"]["flips"][0]["to"], "POLICY_DENIED", "{c}");

    // The CLI with `--change`.
    let (code, out, err) = run_cli(
        &h,
        &[
            "--change",
            &pc,
            "--tenant",
            "ke",
            "--from",
            "2020-01-01",
            "--to",
            "2100-01-01",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["totals"]["flipped"], 2, "{r}");
    let (code, _, err) = run_cli(&h, &["--change", "pc-nope"]);
    assert_eq!(code, 1, "{err}");
}

on_both_stores!(optional: impact_of_a_policy_change_over_rest);

/// ADM-6 with shadow mode: the candidate of a change that promotes a shadow pack (`"mode":
/// "enforce"`) is what its activation would enforce: the pack in enforce mode and the previously
/// enforced pack of the same tenant and vertical deprecated, so the preview shows the denials
/// the promotion causes. Without a mode the pack keeps its shadow mode (no flips possible).
#[tokio::test]
async fn impact_candidate_of_a_promotion_enforces_the_shadow_pack() {
    use scp_pep::admin::packs::PolicyChange;
    use scp_pep::policy::model::{Mode, PackStatus};
    let h = Harness::start(None).await;
    let st = store(&h).await;
    let pack = |id: &str, mode: &str, rules: &str| {
        format!(
            "  - id: {id}\n    tenant: ke\n    vertical: health\n    status: active\n    mode: {mode}\n    policies: |\n      {rules}\n"
        )
    };
    let packs = format!(
        "policy_packs:\n{}{}",
        pack("pp-live", "enforce", "permit(principal, action, resource);"),
        pack(
            "pp-next",
            "shadow",
            "forbid(principal, action, resource) when { context.method == \"GET\" };"
        ),
    );
    let dir = candidate(&h, "with-shadow", &[("zz-packs.yaml", packs.as_str())], &[]);
    st.apply(&PolicySet::load_dir(&dir).unwrap()).await.unwrap();
    let mut change = PolicyChange {
        id: "pc-promote".into(),
        tenant: "ke".into(),
        policy_pack_id: "pp-next".into(),
        vertical: "health".into(),
        change_summary: "promote".into(),
        policies: "permit(principal, action, resource);\n@id(\"no-get\")\nforbid(principal, action, resource) when { context.method == \"GET\" };".into(),
        active_from: "2020-01-01T00:00:00Z".into(),
        active_until: None,
        status: PackStatus::Reviewed,
        applied_pack_version: None,
        mode: Some(Mode::Enforce),
        impact: None,
    };
    let snap = impact::candidate_with_change(&st, &change, "scp-pep")
        .await
        .unwrap();
    let by_id = |s: &PolicySnapshot, id: &str| {
        s.set
            .policy_packs
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .unwrap()
    };
    let next = by_id(&snap, "pp-next");
    assert_eq!(
        (next.mode, next.status),
        (Mode::Enforce, PackStatus::Active)
    );
    assert_eq!(by_id(&snap, "pp-live").status, PackStatus::Deprecated);
    assert!(snap.shadow_packs.is_empty());

    change.mode = None;
    let snap = impact::candidate_with_change(&st, &change, "scp-pep")
        .await
        .unwrap();
    assert_eq!(by_id(&snap, "pp-next").mode, Mode::Shadow);
    assert_eq!(by_id(&snap, "pp-live").status, PackStatus::Active);
    assert!(!snap.shadow_packs.is_empty());
}
