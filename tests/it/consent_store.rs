//! The consent tables on both stores, and the policy bounds of consent settings.
//!
//! Requirement tags: CON-7, CON-18, CON-27, CON-33, CON-35.

use crate::common;

use std::time::Duration;

use scp_pep::consent::model::{
    CaptureMode, Change, ConsentVersion, MAX_GRACE_DAYS, Recorded, grace_until,
};
use scp_pep::policy::PolicySet;
use scp_pep::store::Store;

/// CON-35: every minimum field is a column of `consent_versions`.
const CON_35: &[&str] = &[
    "consent_id",
    "tenant_id",
    "person_id",
    "vertical_id",
    "status",
    "active_from_ms",
    "active_until_ms",
    "grace_until_ms",
    "capture_mode",
    "evidence_attachment_ids",
    "verification_document_attachment_id",
    "reason_code",
    "reason_text",
    "version_id",
    "captured_by",
    "captured_at_ms",
];

fn version(n: i64, status: Recorded) -> ConsentVersion {
    ConsentVersion {
        consent_id: "c-1".into(),
        version: n,
        version_id: format!("v-{n}"),
        tenant_id: "ke".into(),
        person_id: "p-1".into(),
        vertical_id: "health".into(),
        purpose: String::new(),
        status,
        active_from_ms: 0,
        active_until_ms: Some(1_000),
        grace_until_ms: grace_until(Some(1_000), 30),
        capture_mode: CaptureMode::Online,
        evidence_attachment_ids: vec!["att-sig".into()],
        verification_document_attachment_id: None,
        identity_verification: None,
        fields: None,
        reason_code: (status == Recorded::Withdrawn).then(|| "USER_REQUEST".into()),
        reason_text: None,
        change: if n == 1 {
            Change::Capture
        } else {
            Change::Withdraw
        },
        captured_by: "officer".into(),
        captured_at_ms: 0,
        changed_by: "officer".into(),
        changed_at_ms: n,
    }
}

async fn columns(store: &Store) -> Vec<String> {
    match store {
        Store::Sqlite(p) => sqlx::query_scalar(
            "SELECT name FROM pragma_table_info('consent_versions')",
        )
        .fetch_all(p)
        .await
        .unwrap(),
        Store::Postgres(p) => sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'consent_versions'",
        )
        .fetch_all(p)
        .await
        .unwrap(),
    }
}

async fn exec(store: &Store, sql: &'static str) -> Result<u64, sqlx::Error> {
    match store {
        Store::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        Store::Postgres(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
    }
}

/// CON-35 (schema), CON-7 (versions immutable: UPDATE and DELETE refused by the store itself),
/// CON-18 (evidence stays with every version, as long as the record), and the version rule of
/// `consent_append` (a stale version is a conflict and writes nothing).
async fn tables(url: String) {
    let store = Store::connect(&url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let cols = columns(&store).await;
    for c in CON_35 {
        assert!(cols.iter().any(|x| x == c), "consent_versions lacks {c}");
    }
    store
        .consent_append(&version(1, Recorded::Active), 0)
        .await
        .unwrap();
    store
        .consent_append(&version(2, Recorded::Withdrawn), 0)
        .await
        .unwrap();
    let stale = store.consent_append(&version(2, Recorded::Active), 0).await;
    assert!(
        matches!(
            stale,
            Err(scp_pep::consent::ConsentStoreError::VersionConflict(_))
        ),
        "{stale:?}"
    );
    let history = store.consent_history("c-1").await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(
        history
            .iter()
            .all(|v| v.evidence_attachment_ids == ["att-sig"])
    );
    assert!(
        exec(&store, "UPDATE consent_versions SET status = 'active'")
            .await
            .is_err()
    );
    assert!(exec(&store, "DELETE FROM consent_versions").await.is_err());
    assert_eq!(store.consent_history("c-1").await.unwrap().len(), 2);
    store.close().await;
}

#[tokio::test]
async fn tables_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    tables(format!("sqlite:{}", dir.path().join("c.db").display())).await;
}

#[tokio::test]
async fn tables_postgres() {
    tables(common::fresh_pg_database().await).await;
}

/// CON-27: a tenant's grace period is at most 90 days; CON-33: reminder days are 1–366, unique.
#[test]
fn policy_bounds_of_consent_settings() {
    let tenant = |extra: &str| {
        format!(
            "tenants:\n  - id: ke\n    residency_region: r\n    issuer: https://idp.example/realms/ke\n    jwks: {{url: https://idp.example/certs}}\n{extra}"
        )
    };
    let parse = |text: String| {
        let f = PolicySet::parse_file("t.yaml", &text).unwrap();
        PolicySet::from_files(vec![("t.yaml".into(), f)])
    };
    assert!(parse(tenant("    consent_grace_days: 90\n")).is_ok());
    let e = parse(tenant("    consent_grace_days: 91\n")).unwrap_err();
    assert!(e.to_string().contains("consent_grace_days"), "{e}");
    assert_eq!(MAX_GRACE_DAYS, 90);
    let e = parse(tenant("    consent_reminder_days: [7, 7]\n")).unwrap_err();
    assert!(e.to_string().contains("consent_reminder_days"), "{e}");
    assert!(parse(tenant("    consent_reminder_days: [14, 2]\n")).is_ok());
}
