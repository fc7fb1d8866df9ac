//! Policy store tests: every body runs against SQLite and against PostgreSQL (a fresh database on
//! the local server; the test fails, never skips, when PostgreSQL is unreachable).

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use scp_pep::policy::{IntegrationState, PolicySet};
use scp_pep::store::Store;

/// Runs `$body(url)` once on a fresh SQLite file and once on a fresh PostgreSQL database.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite:{}", dir.path().join("store.db").display());
                    super::$name(url).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::common::fresh_pg_database().await).await;
                }
            }
        )*
    };
}

on_both_stores!(
    apply_is_atomic_idempotent_and_versioned,
    failed_apply_leaves_store_untouched,
    api_documents_survive_file_apply,
    policy_change_reaches_running_server,
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
