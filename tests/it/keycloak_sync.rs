//! Keycloak in step with the lifecycle, recoverable secret rotation and secrets by reference,
//! end to end over real HTTP against the wire-format Keycloak fake of `admin_integrations`
//! (INT-6.2-*, ONB-4, ONB-AUD-2, EXT-5.1-1), with real gRPC checks of the partner's traffic and
//! real SQLite and PostgreSQL stores.

use crate::admin_integrations::{
    Env, HANDSHAKE, KC_ADMIN_SECRET, env_with, kc_enabled, partner_token, to_approved,
};
use crate::common::{Harness, fresh_pg_database};

use std::time::Duration;

use scp_pep::audit::checkpoint::{CheckpointSigner, TrustedKeys};
use scp_pep::audit::verify::{Problem, verify_store};
use scp_pep::store::{DocKind, Store};
use serde_json::{Value, json};

/// Polls `f` every 100 ms for up to `secs` seconds.
async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A fresh draft of `id` (health vertical) taken to `active` with its Keycloak client; returns
/// the client id and the secret shown at provisioning.
async fn to_active(e: &Env, id: &str) -> (String, String) {
    let p = e.p();
    let a = to_approved(e, crate::admin_integrations::draft(id), &p.tenant_admin).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = e.act(id, "provision", &p.manager, json!({})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let client_id = a.body["credentials"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = a.body["credentials"]["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = e.act(id, "activate", &p.tenant_admin, json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    (client_id, secret)
}

/// `keycloak_client` of `GET /v1/integrations/{id}`.
async fn kc_view(e: &Env, id: &str) -> Value {
    let a = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}"),
            Some(&e.p().auditor),
            None,
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["keycloak_client"].clone()
}

/// Audit bodies of tenant `ke` about `subject`, oldest first.
async fn audit_bodies(e: &Env, subject: &str) -> Vec<Value> {
    let q = "SELECT body FROM audit_records WHERE tenant_id = 'ke' ORDER BY time_ms, seq";
    let bodies: Vec<String> = match &e.h.running.store {
        Store::Sqlite(p) => sqlx::query_scalar(q).fetch_all(p).await.unwrap(),
        Store::Postgres(p) => sqlx::query_scalar(q).fetch_all(p).await.unwrap(),
    };
    bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter(|b| b["subject"] == json!(subject))
        .collect()
}

// ------------------------------------------------------------------------------------------
// The client's enabled flag follows the lifecycle

// INT-6.2-2, INT-6.2-3, INT-6.2-4, INT-6.2-5, ONB-4: suspend disables the Keycloak client,
// activate enables it again, restrict keeps it (reads stay allowed), deprecate and archive
// disable it; each change is pending in the transition's answer, then synced and audited.
async fn client_enabled_follows_lifecycle(store_url: Option<String>) {
    let e = env_with(store_url, true, |_| {}).await;
    let p = e.p();
    let id = "int-ke-kcsync";
    let (client_id, _) = to_active(&e, id).await;
    assert_eq!(kc_enabled(&e.kc, &client_id), Some(true));
    assert_eq!(kc_view(&e, id).await, Value::Null, "nothing to sync yet");

    let reason = json!({"reason_code": "SECURITY_INCIDENT"});
    let a = e.act(id, "restrict", &p.security, reason.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.body["keycloak_client"],
        Value::Null,
        "restricted keeps its client"
    );
    assert_eq!(kc_enabled(&e.kc, &client_id), Some(true));

    let a = e.act(id, "suspend", &p.security, reason.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["keycloak_client"]["enabled"], false, "{}", a.text);
    assert_eq!(a.body["keycloak_client"]["sync"], "pending", "{}", a.text);
    assert!(
        eventually(10, async || kc_enabled(&e.kc, &client_id) == Some(false)).await,
        "the client is disabled in Keycloak"
    );
    assert!(eventually(10, async || kc_view(&e, id).await["sync"] == "synced").await);
    let v = kc_view(&e, id).await;
    assert_eq!(
        (v["enabled"].clone(), v["last_error"].clone()),
        (json!(false), Value::Null),
        "{v}"
    );

    let a = e.act(id, "activate", &p.tenant_admin, json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["keycloak_client"]["enabled"], true, "{}", a.text);
    assert!(eventually(10, async || kc_enabled(&e.kc, &client_id) == Some(true)).await);
    assert!(eventually(10, async || kc_view(&e, id).await["sync"] == "synced").await);

    let a = e.act(id, "deprecate", &p.security, reason.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["keycloak_client"]["enabled"], false, "{}", a.text);
    assert!(eventually(10, async || kc_enabled(&e.kc, &client_id) == Some(false)).await);
    assert!(eventually(10, async || kc_view(&e, id).await["sync"] == "synced").await);
    let a = e.act(id, "archive", &p.tenant_admin, reason).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(kc_enabled(&e.kc, &client_id), Some(false));

    // Every applied change is audited (actor keycloak-sync), without any secret.
    let syncs: Vec<Value> = audit_bodies(&e, id)
        .await
        .into_iter()
        .filter(|b| b["detail"]["action"] == "integration.keycloak_sync")
        .collect();
    assert_eq!(
        syncs
            .iter()
            .map(|b| b["detail"]["enabled"].as_bool().unwrap())
            .collect::<Vec<_>>(),
        vec![false, true, false],
        "{syncs:?}"
    );
    assert!(syncs.iter().all(|b| b["actor"] == "keycloak-sync"));
}

#[tokio::test]
async fn client_enabled_follows_lifecycle_sqlite() {
    client_enabled_follows_lifecycle(None).await;
}

#[tokio::test]
async fn client_enabled_follows_lifecycle_postgres() {
    client_enabled_follows_lifecycle(Some(fresh_pg_database().await)).await;
}

// INT-6.2-3, EXT-3.3-2 (fail closed): with Keycloak down the suspension succeeds at once in
// scp-pep, the partner's traffic is denied by scp-pep immediately, the sync state shows
// `pending` with its attempts and error class, and the client is disabled once Keycloak is back.
#[tokio::test]
async fn keycloak_down_during_suspend() {
    let mut e = env_with(None, true, |k| k.sync_interval_s = 1).await;
    let p = e.p();
    let id = "int-ke-kcdown";
    let (client_id, _) = to_active(&e, id).await;
    let tok = partner_token(&e.h, id, &client_id);
    let r = e.partner(HANDSHAKE, &tok, None).await;
    assert_eq!(r["allowed"], true, "{r}");

    e.kc.lock().unwrap().down = true;
    let a = e
        .act(
            id,
            "suspend",
            &p.security,
            json!({"reason_code": "SECURITY_INCIDENT"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body["state"].as_str()),
        (200, Some("suspended")),
        "{}",
        a.text
    );
    assert_eq!(a.body["keycloak_client"]["sync"], "pending");
    let r = e.partner(HANDSHAKE, &tok, None).await;
    assert_eq!(r["code"], "INTEGRATION_SUSPENDED", "{r}");
    assert!(
        eventually(10, async || {
            let v = kc_view(&e, id).await;
            v["attempts"].as_u64().unwrap_or(0) >= 2 && v["last_error"] == "unavailable"
        })
        .await,
        "{}",
        kc_view(&e, id).await
    );
    let v = kc_view(&e, id).await;
    assert_eq!(
        (v["sync"].clone(), v["enabled"].clone()),
        (json!("pending"), json!(false))
    );
    assert_eq!(
        kc_enabled(&e.kc, &client_id),
        Some(true),
        "Keycloak is down"
    );

    e.kc.lock().unwrap().down = false;
    assert!(
        eventually(30, async || kc_enabled(&e.kc, &client_id) == Some(false)).await,
        "disabled once Keycloak is back"
    );
    assert!(eventually(10, async || kc_view(&e, id).await["sync"] == "synced").await);
    let r = e.partner(HANDSHAKE, &tok, None).await;
    assert_eq!(r["code"], "INTEGRATION_SUSPENDED", "{r}");
}

// ------------------------------------------------------------------------------------------
// Recoverable rotation

/// Makes every credential write without a pending rotation marker fail (the final write of a
/// rotation), or removes that trigger.
async fn fail_rotation_record(store: &Store, on: bool) {
    match (store, on) {
        (Store::Sqlite(p), true) => {
            sqlx::query(
                "CREATE TRIGGER boom BEFORE INSERT ON policy_document_versions \
                 WHEN NEW.kind = 'credential' AND NEW.doc NOT LIKE '%\"rotation\"%' \
                 BEGIN SELECT RAISE(ABORT, 'boom'); END",
            )
            .execute(p)
            .await
            .unwrap();
        }
        (Store::Sqlite(p), false) => {
            sqlx::query("DROP TRIGGER boom").execute(p).await.unwrap();
        }
        (Store::Postgres(p), true) => {
            sqlx::query(
                "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN \
                 IF NEW.kind = 'credential' AND NEW.doc NOT LIKE '%\"rotation\"%' THEN \
                 RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            )
            .execute(p)
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER boom BEFORE INSERT ON policy_document_versions FOR EACH ROW \
                 EXECUTE FUNCTION boom()",
            )
            .execute(p)
            .await
            .unwrap();
        }
        (Store::Postgres(p), false) => {
            sqlx::query("DROP TRIGGER boom ON policy_document_versions")
                .execute(p)
                .await
                .unwrap();
        }
    }
}

// ONB-AUD-2, ADM-8: a rotation whose store write fails after Keycloak rotated is left pending
// (shown in the credentials, the unrecorded secret never shown); the next call re-issues, names
// the attempt it recovers, and the audit trail holds both attempts.
async fn rotation_with_failing_store_write(store_url: Option<String>) {
    let e = env_with(store_url, true, |_| {}).await;
    let p = e.p();
    let id = "int-ke-rotfail";
    let (client_id, first) = to_active(&e, id).await;
    let rotate = async |e: &Env| {
        e.call(
            "POST",
            &format!("/v1/integrations/{id}/credentials/rotate"),
            Some(&p.manager),
            None,
            Some(json!({"reason_code": "ROUTINE_REVIEW"})),
        )
        .await
    };
    let kc_secret = |e: &Env| {
        let kc = e.kc.lock().unwrap();
        let internal = kc
            .clients
            .iter()
            .find(|(_, c)| c["clientId"] == json!(client_id))
            .map(|(_, c)| c["id"].as_str().unwrap().to_owned())
            .unwrap();
        kc.secrets[&internal].clone()
    };

    fail_rotation_record(&e.h.running.store, true).await;
    let a = rotate(&e).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert!(a.text.contains("rotate again"), "{}", a.text);
    let unshown = kc_secret(&e);
    assert_ne!(unshown, first, "Keycloak rotated");
    assert!(
        !a.text.contains(&unshown),
        "the unrecorded secret is never shown"
    );
    let creds = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}/credentials"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    let cs = &creds.body["credentials"];
    let c = cs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "client_secret")
        .unwrap();
    assert_eq!(c["rotation_pending"], true, "{}", creds.text);

    fail_rotation_record(&e.h.running.store, false).await;
    let a = rotate(&e).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["recovered"], true);
    let secret = a.body["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret, kc_secret(&e), "the caller holds Keycloak's secret");
    assert_ne!(secret, unshown, "re-issued, not the unshown one");
    let cred =
        e.h.running
            .store
            .document(DocKind::Credential, &format!("{id}.client_secret"))
            .await
            .unwrap()
            .unwrap();
    let doc: Value = serde_json::from_str(&cred.doc).unwrap();
    assert_eq!(
        doc["sha256"],
        json!(scp_pep::admin::keycloak::Secret::new(secret.clone()).sha256_hex())
    );
    assert!(doc.get("rotation").is_none(), "{doc}");

    // The audit trail: begin(A), rotated(A, store write failed), begin(B, recovers A), rotated(B).
    let trail: Vec<(String, String, Value)> = audit_bodies(&e, id)
        .await
        .into_iter()
        .filter(|b| {
            b["detail"]["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("integration.rotate_secret"))
        })
        .map(|b| {
            (
                b["detail"]["action"].as_str().unwrap().to_owned(),
                b["detail"]["attempt"].as_str().unwrap().to_owned(),
                b["detail"]["recovers"].clone(),
            )
        })
        .collect();
    assert_eq!(trail.len(), 4, "{trail:?}");
    let actions: Vec<&str> = trail.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        actions,
        [
            "integration.rotate_secret_begin",
            "integration.rotate_secret",
            "integration.rotate_secret_begin",
            "integration.rotate_secret"
        ]
    );
    assert_eq!(trail[0].1, trail[1].1);
    assert_eq!(trail[2].1, trail[3].1);
    assert_eq!(
        trail[2].2,
        json!(trail[0].1),
        "the retry names what it recovers"
    );
    for b in audit_bodies(&e, id).await {
        let t = b.to_string();
        assert!(!t.contains(&secret) && !t.contains(&unshown) && !t.contains(&first));
    }
}

#[tokio::test]
async fn rotation_with_failing_store_write_sqlite() {
    rotation_with_failing_store_write(None).await;
}

#[tokio::test]
async fn rotation_with_failing_store_write_postgres() {
    rotation_with_failing_store_write(Some(fresh_pg_database().await)).await;
}

// ------------------------------------------------------------------------------------------
// Secrets by reference

// EXT-5.1-1: the Keycloak admin client's secret comes from a file read on every token request:
// after Keycloak's secret changes, rewriting the file is enough — no restart, no inline secret.
#[tokio::test]
async fn admin_secret_file_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kc-admin-secret");
    std::fs::write(&file, format!("{KC_ADMIN_SECRET}\n")).unwrap();
    let f = file.clone();
    let e = env_with(None, true, move |k| {
        k.client_secret = String::new();
        k.client_secret_file = Some(f);
    })
    .await;
    let p = e.p();
    let id = "int-ke-kcfile";
    to_active(&e, id).await;
    let rotate = async || {
        e.call(
            "POST",
            &format!("/v1/integrations/{id}/credentials/rotate"),
            Some(&p.manager),
            None,
            Some(json!({})),
        )
        .await
    };
    assert_eq!(e.kc.lock().unwrap().bad_secret, 0);

    // Keycloak's admin secret is rotated; scp-pep still reads the old one from the file.
    e.kc.lock().unwrap().admin_secret = Some("kc-admin-secret-rotated-4567".into());
    let a = rotate().await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (503, Some("PROVISIONER_UNAVAILABLE")),
        "{}",
        a.text
    );
    assert_eq!(e.kc.lock().unwrap().bad_secret, 1);
    assert!(!a.text.contains("kc-admin-secret"), "{}", a.text);

    // The file is rewritten: the next token request uses it.
    std::fs::write(&file, "kc-admin-secret-rotated-4567").unwrap();
    let tokens = e.kc.lock().unwrap().tokens;
    let a = rotate().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(e.kc.lock().unwrap().bad_secret, 1);
    assert!(e.kc.lock().unwrap().tokens > tokens);
}

// EXT-5.1-1: an inline secret and a secret file together are a configuration error.
#[test]
fn admin_secret_inline_and_file_conflict() {
    let mut c = scp_pep::config::Config::default();
    c.admin.keycloak = Some(scp_pep::admin::keycloak::KeycloakConfig {
        base_url: "http://127.0.0.1:8080".into(),
        admin_realm: "master".into(),
        client_id: "scp".into(),
        client_secret: "inline".into(),
        client_secret_file: Some("/run/secrets/kc".into()),
        timeout_s: 1,
        sync_interval_s: 1,
    });
    let err = c.validate().unwrap_err();
    assert!(
        err.contains("client_secret_file") && !err.contains("inline"),
        "{err}"
    );
}

// EXT-5.1-1, INT-8-2: rotating the audit signing key (`audit.signing_key_file` rewritten with a
// new key id, then a restart) keeps every earlier record verifiable: the store verifies with the
// old and the new verifier key together, and with neither alone.
#[tokio::test]
async fn audit_signing_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("rot.db").display());
    let key_file = dir.path().join("audit-signing-key");
    let (old, old_key) = CheckpointSigner::generate("scp-pep").unwrap();
    let (new, new_key) = CheckpointSigner::generate("scp-pep").unwrap();
    assert_ne!(old.key_id(), new.key_id());

    for key in [&old_key, &new_key] {
        std::fs::write(&key_file, key).unwrap();
        let kf = key_file.clone();
        let mut h = Harness::start_with(Some(url.clone()), move |c| {
            c.audit.signing_key_file = Some(kf);
        })
        .await;
        let tok = h.sign(
            "ke-rs256",
            &h.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
        );
        let r = h
            .check(&Harness::get(
                "/v1/tenants/ke/health/persons/p-1/record",
                &tok,
            ))
            .await;
        assert!(r.get("allowed").is_some(), "{r}");
        let Harness { running, .. } = h;
        running.shutdown().await;
    }

    let store = Store::connect(&url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let both = TrustedKeys::new(&[old.verifier_key(), new.verifier_key()]).unwrap();
    let r = verify_store(&store, None, Some(&both), None).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert!(r.chains >= 2, "one chain per writer process: {r:?}");
    for only in [old.verifier_key(), new.verifier_key()] {
        let keys = TrustedKeys::new(&[only]).unwrap();
        let r = verify_store(&store, None, Some(&keys), None).await.unwrap();
        assert_eq!(
            r.failure.map(|f| f.problem),
            Some(Problem::BadSignature),
            "one key alone does not verify both generations"
        );
    }
    store.close().await;
}
