//! Policy store tests: every body runs against SQLite and against PostgreSQL (a fresh database on
//! the local server; the test fails, never skips, when PostgreSQL is unreachable).

use crate::common;

use std::time::{Duration, Instant};

use common::Harness;
use scp_pep::policy::{IntegrationState, PolicySet};
use scp_pep::store::{DocChange, DocKind, Expect, Source, Store, WriteError};

on_both_stores!(
    apply_is_atomic_idempotent_and_versioned,
    failed_apply_leaves_store_untouched,
    api_documents_survive_file_apply,
    policy_change_reaches_running_server,
    write_documents_is_all_or_nothing_and_versioned,
    api_owned_documents_win_over_policy_files,
);

fn fixture_set() -> PolicySet {
    let dir = tempfile::tempdir().unwrap();
    common::write_policies("http://127.0.0.1:1", dir.path());
    PolicySet::load_dir(dir.path()).expect("fixture policies are valid")
}

async fn connect(url: &str) -> Store {
    Store::connect(url, 4, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("store at {url} must be reachable: {e}"))
}

/// EXT-4.2-1, ADM-8: apply writes the whole set in one transaction, bumps the version once, and a
/// second apply of the same files changes nothing.
async fn apply_is_atomic_idempotent_and_versioned(url: String) {
    let store = connect(&url).await;
    assert_eq!(store.version().await.unwrap(), 0);
    let set = fixture_set();
    let first = store.apply(&set).await.unwrap();
    assert_eq!((first.version, first.changed), (1, true));
    let again = store.apply(&set).await.unwrap();
    assert_eq!((again.version, again.changed), (1, false), "idempotent");
    let (v, loaded) = store.load().await.unwrap();
    assert_eq!(v, 1);
    assert_eq!(loaded, set, "what was applied is what is loaded");

    let mut changed = set.clone();
    changed
        .integrations
        .iter_mut()
        .find(|i| i.id == "int-ke-moh")
        .unwrap()
        .state = IntegrationState::Suspended;
    let second = store.apply(&changed).await.unwrap();
    assert_eq!((second.version, second.changed), (2, true));
    let (_, loaded) = store.load().await.unwrap();
    assert_eq!(loaded, changed);
    // Re-connecting runs migrations again without harm.
    store.close().await;
    let store = connect(&url).await;
    assert_eq!(store.version().await.unwrap(), 2);
}

/// EXT-4.2-1, ADM-8: when a write fails half-way, nothing of the new set is visible.
async fn failed_apply_leaves_store_untouched(url: String) {
    let store = connect(&url).await;
    let set = fixture_set();
    store.apply(&set).await.unwrap();
    // A trigger that makes one particular insert fail, half-way through the transaction.
    match &store {
        Store::Sqlite(p) => {
            sqlx::query(
                "CREATE TRIGGER boom BEFORE INSERT ON policy_documents WHEN NEW.id = 'zz-boom' \
                 BEGIN SELECT RAISE(ABORT, 'boom'); END",
            )
            .execute(p)
            .await
            .unwrap();
        }
        Store::Postgres(p) => {
            sqlx::query(
                "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN \
                 IF NEW.id = 'zz-boom' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$ \
                 LANGUAGE plpgsql",
            )
            .execute(p)
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER boom BEFORE INSERT ON policy_documents FOR EACH ROW EXECUTE FUNCTION boom()",
            )
            .execute(p)
            .await
            .unwrap();
        }
    }
    let mut bad = set.clone();
    bad.integrations
        .iter_mut()
        .find(|i| i.id == "int-ke-moh")
        .unwrap()
        .state = IntegrationState::Suspended;
    let mut boom = bad.routes[0].clone();
    boom.id = "zz-boom".into();
    boom.path = "/zz/boom".into();
    bad.routes.push(boom);
    assert!(
        store.apply(&bad).await.is_err(),
        "the trigger makes apply fail"
    );
    let (v, loaded) = store.load().await.unwrap();
    assert_eq!(v, 1, "version unchanged");
    assert_eq!(loaded, set, "nothing of the failed apply is visible");
}

/// Documents written by the admin API (`source = 'api'`) are not deleted by a file apply.
async fn api_documents_survive_file_apply(url: String) {
    let store = connect(&url).await;
    let set = fixture_set();
    let api_route = {
        let mut r = set.routes[0].clone();
        r.id = "api-route".into();
        r.path = "/v1/api-made/{person_id}".into();
        r
    };
    let doc = serde_json::to_string(&api_route).unwrap();
    let q = "INSERT INTO policy_documents (kind, id, tenant_id, doc, source, updated_at) \
             VALUES ('route', 'api-route', NULL, $1, 'api', 'now')";
    match &store {
        Store::Sqlite(p) => sqlx::query(q).bind(&doc).execute(p).await.map(|_| ()),
        Store::Postgres(p) => sqlx::query(q).bind(&doc).execute(p).await.map(|_| ()),
    }
    .unwrap();
    store.apply(&set).await.unwrap();
    let (_, loaded) = store.load().await.unwrap();
    assert!(loaded.routes.iter().any(|r| r.id == "api-route"));
    assert_eq!(loaded.routes.len(), set.routes.len() + 1);
}

/// ADM-3, ADM-4, INT-6.2-3: a policy change written to the store (here: suspending an integration)
/// reaches the running server's decisions without a restart (PostgreSQL: LISTEN/NOTIFY; SQLite:
/// polling every 100 ms in this test).
async fn policy_change_reaches_running_server(url: String) {
    let mut h = Harness::start(Some(url.clone())).await;
    let token = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
    );
    let req = Harness::get("/v1/tenants/ke/health/persons/p-1/record", &token);
    assert_eq!(h.check(&req).await["code"], "OK");

    let store = connect(&url).await;
    let mut set = PolicySet::load_dir(&h.policy_dir).unwrap();
    set.integrations
        .iter_mut()
        .find(|i| i.id == "int-ke-moh")
        .unwrap()
        .state = IntegrationState::Suspended;
    let written = Instant::now();
    assert!(store.apply(&set).await.unwrap().changed);
    let mut last = serde_json::Value::Null;
    while written.elapsed() < Duration::from_secs(5) {
        last = h.check(&req).await;
        if last["code"] == "INTEGRATION_SUSPENDED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        last["code"], "INTEGRATION_SUSPENDED",
        "suspension took effect"
    );
    eprintln!(
        "{}: suspension visible after {} ms",
        store.backend(),
        written.elapsed().as_millis()
    );
    h.running.shutdown().await;
}

fn count_versions_sql() -> &'static str {
    "SELECT COUNT(*) FROM policy_document_versions WHERE kind = $1 AND id = $2"
}

async fn history_len(store: &Store, kind: DocKind, id: &str) -> usize {
    store.document_versions(kind, id).await.unwrap().len()
}

/// ADM-8, ADM-2, INT-6.2-5: the one write path checks every version precondition before writing
/// anything, writes all changes or none, keeps an append-only history, refuses changes to an
/// archived document, validates the enforced set inside the transaction, and bumps the policy
/// version only when an enforced kind changed.
async fn write_documents_is_all_or_nothing_and_versioned(url: String) {
    let store = connect(&url).await;
    store.apply(&fixture_set()).await.unwrap();
    let v0 = store.version().await.unwrap();
    let role = |n: u32| format!("{{\"name\":\"r{n}\"}}");

    // Create, then update with the right version.
    let w = store
        .write_documents(
            &[DocChange::put(DocKind::Role, "r-1", Some("ke"), role(1))
                .status("draft")
                .expect(Expect::Absent)],
            Source::Api,
            "alice",
            None,
        )
        .await
        .unwrap();
    assert_eq!(w.versions, vec![1]);
    assert_eq!(
        w.policy_version, v0,
        "an admin-only kind does not bump the policy version"
    );
    let w = store
        .write_documents(
            &[DocChange::put(DocKind::Role, "r-1", Some("ke"), role(2))
                .status("pending")
                .expect(Expect::Version(1))],
            Source::Api,
            "alice",
            None,
        )
        .await
        .unwrap();
    assert_eq!(w.versions, vec![2]);

    // A create of an existing id and a stale version both fail and write nothing; in a batch,
    // the first (valid) change is not written either.
    let err = store
        .write_documents(
            &[
                DocChange::put(DocKind::Group, "g-1", Some("ke"), role(9)).expect(Expect::Absent),
                DocChange::put(DocKind::Role, "r-1", Some("ke"), role(3))
                    .expect(Expect::Version(1)),
            ],
            Source::Api,
            "bob",
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::Conflict {
                kind: DocKind::Role,
                current: Some(2),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        store
            .document(DocKind::Group, "g-1")
            .await
            .unwrap()
            .is_none(),
        "nothing of the batch written"
    );
    let cur = store.document(DocKind::Role, "r-1").await.unwrap().unwrap();
    assert_eq!(
        (cur.version, cur.doc.as_str(), cur.status.as_deref()),
        (2, role(2).as_str(), Some("pending"))
    );
    assert_eq!(history_len(&store, DocKind::Role, "r-1").await, 2);
    let err = store
        .write_documents(
            &[DocChange::put(DocKind::Role, "r-1", Some("ke"), role(4)).expect(Expect::Absent)],
            Source::Api,
            "bob",
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::Conflict {
                current: Some(2),
                ..
            }
        ),
        "{err:?}"
    );

    // Archived documents accept no change, not even an unconditional one.
    store
        .write_documents(
            &[DocChange::put(DocKind::Role, "r-1", Some("ke"), role(5)).status("archived")],
            Source::Api,
            "alice",
            None,
        )
        .await
        .unwrap();
    let err = store
        .write_documents(
            &[DocChange::put(DocKind::Role, "r-1", Some("ke"), role(6)).status("active")],
            Source::Api,
            "mallory",
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WriteError::Archived { .. }), "{err:?}");
    let err = store
        .write_documents(
            &[DocChange::delete(DocKind::Role, "r-1")],
            Source::Api,
            "mallory",
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WriteError::Archived { .. }), "{err:?}");

    // History is append-only in the database itself.
    let q = "UPDATE policy_document_versions SET actor = 'mallory'";
    let res = match &store {
        Store::Sqlite(p) => sqlx::query(q).execute(p).await.map(|_| ()),
        Store::Postgres(p) => sqlx::query(q).execute(p).await.map(|_| ()),
    };
    assert!(res.is_err(), "history rows cannot be rewritten");
    let n: i64 = match &store {
        Store::Sqlite(p) => {
            sqlx::query_scalar(count_versions_sql())
                .bind("role")
                .bind("r-1")
                .fetch_one(p)
                .await
        }
        Store::Postgres(p) => {
            sqlx::query_scalar(count_versions_sql())
                .bind("role")
                .bind("r-1")
                .fetch_one(p)
                .await
        }
    }
    .unwrap();
    assert_eq!(n, 3);
    let hist = store.document_versions(DocKind::Role, "r-1").await.unwrap();
    assert_eq!(
        hist.iter()
            .map(|h| (h.version, h.actor.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "alice"), (2, "alice"), (3, "alice")]
    );

    // An enforced change that would leave the set invalid (an integration of an unknown tenant)
    // rolls back; the policy version stays.
    let mut bad = fixture_set().integrations[0].clone();
    bad.id = "int-bad".into();
    bad.tenant = "zz".into();
    let err = store
        .write_documents(
            &[DocChange::put(
                DocKind::Integration,
                "int-bad",
                Some("zz"),
                serde_json::to_string(&bad).unwrap(),
            )
            .expect(Expect::Absent)],
            Source::Api,
            "alice",
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WriteError::Invalid(_)), "{err:?}");
    assert!(
        store
            .document(DocKind::Integration, "int-bad")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.version().await.unwrap(), v0);

    // A valid enforced change bumps the policy version once.
    let mut ok = fixture_set().integrations[0].clone();
    ok.id = "int-new".into();
    let w = store
        .write_documents(
            &[DocChange::put(
                DocKind::Integration,
                "int-new",
                Some(&ok.tenant),
                serde_json::to_string(&ok).unwrap(),
            )
            .expect(Expect::Absent)],
            Source::Api,
            "alice",
            None,
        )
        .await
        .unwrap();
    assert_eq!(w.policy_version, v0 + 1);
    let (_, set) = store.load().await.unwrap();
    assert!(set.integrations.iter().any(|i| i.id == "int-new"));
}

/// ADM-3, INT-6.2-3: once the admin API has changed a document that came from the policy files
/// (here: suspended an integration), a later `policy apply` of changed files skips it and reports
/// it, so a restart or a file edit never undoes a suspension.
async fn api_owned_documents_win_over_policy_files(url: String) {
    let store = connect(&url).await;
    let set = fixture_set();
    store.apply(&set).await.unwrap();
    let cur = store
        .document(DocKind::Integration, "int-ke-moh")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.source, "file");
    let mut suspended = set
        .integrations
        .iter()
        .find(|i| i.id == "int-ke-moh")
        .unwrap()
        .clone();
    suspended.state = IntegrationState::Suspended;
    store
        .write_documents(
            &[DocChange::put(
                DocKind::Integration,
                "int-ke-moh",
                Some("ke"),
                serde_json::to_string(&suspended).unwrap(),
            )
            .expect(Expect::Version(cur.version))],
            Source::Api,
            "security-officer",
            None,
        )
        .await
        .unwrap();
    // The files change elsewhere (a route gains a data category), so the apply is not a no-op.
    let mut edited = set.clone();
    edited.routes[0].data_categories.push("edited".into());
    let out = store.apply(&edited).await.unwrap();
    assert!(out.changed);
    assert_eq!(out.skipped, vec!["integration int-ke-moh".to_owned()]);
    let (_, loaded) = store.load().await.unwrap();
    let i = loaded
        .integrations
        .iter()
        .find(|i| i.id == "int-ke-moh")
        .unwrap();
    assert_eq!(
        i.state,
        IntegrationState::Suspended,
        "the API's suspension stands"
    );
    assert_eq!(
        loaded.routes, edited.routes,
        "the file's other changes are applied"
    );
}
