//! Tenant isolation of the admin plane, walked from the OpenAPI document: every admin, consent and
//! audit operation, called by a caller of tenant `ug` holding every non-root role, naming each
//! object of tenant `ke` that fits the operation's path parameter, answers exactly as it does for
//! a random id, and leaves every non-audit table of the store byte-for-byte unchanged; creating
//! an object under one of `ke`'s ids answers as under a random id.

use crate::common;

use std::collections::BTreeMap;

use common::Harness;
use reqwest::Method;
use serde_json::{Value, json};

/// Every role of the default mappings except root.
const ALL_ROLES: &[&str] = &[
    "scp-integration-manager",
    "scp-vertical-owner",
    "scp-tenant-admin",
    "scp-umbrella-authority",
    "scp-security",
    "scp-auditor",
    "scp-consent-officer",
    "scp-field-agent",
    "scp-consent-evidence-viewer",
    "scp-person-registrar",
];

/// Every non-audit table as text (`quote()` of every column, rows in rowid order).
async fn dump(pool: &sqlx::SqlitePool) -> BTreeMap<String, String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'audit_%' \
         AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let cols: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            // Table names come from sqlite_master, not from input.
            "SELECT name FROM pragma_table_info('{t}')"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        let expr = cols
            .iter()
            .map(|c| format!("quote(\"{c}\")"))
            .collect::<Vec<_>>()
            .join("||','||");
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {expr} FROM \"{t}\" ORDER BY rowid"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        out.insert(t, rows.join("\n"));
    }
    out
}

/// Ids of `ke`'s objects per path parameter name.
async fn ke_ids(pool: &sqlx::SqlitePool) -> BTreeMap<&'static str, Vec<String>> {
    let docs = |kind: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT id FROM policy_documents WHERE kind = ? AND tenant_id = 'ke' ORDER BY id",
            )
            .bind(kind)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let consents: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT consent_id FROM consent_versions WHERE tenant_id = 'ke' ORDER BY 1 LIMIT 3",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut m = BTreeMap::new();
    m.insert("id", [docs("integration").await, consents].concat());
    m.insert("deny_id", docs("deny_rule").await);
    m.insert("group_id", docs("group").await);
    m.insert("role_id", docs("role").await);
    m.insert("policy_pack_id", docs("policy_pack").await);
    m.insert("policy_change_id", docs("policy_change").await);
    m.insert("assignment_id", docs("role_assignment").await);
    m.insert("tenant_id", vec!["ke".into()]);
    m
}

/// INT-4.5-1, INT-4.1-2 (an integration belongs to one tenant), ADM-1 (least privilege): for
/// every operation of `/openapi.json` with an object id in its path, a `ug` caller naming `ke`'s
/// objects gets the answer of a random id, and nothing outside the audit log changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ug_caller_cannot_tell_or_touch_ke_objects() {
    let h = Harness::start(None).await;
    let scp_pep::store::Store::Sqlite(pool) = &h.running.store else {
        unreachable!("the harness uses SQLite")
    };
    let ug = h.staff_token("ug", "ug-staff", ALL_ROLES, "scp-pep-admin");
    let client = reqwest::Client::new();
    let doc: Value = client
        .get(h.ops_url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Objects of ke beyond the policy files: a role and a group, made by ke's root.
    let ke_root = h.staff_token("ke", "ke-root", &["scp-root"], "scp-pep-admin");
    for (path, body) in [
        (
            "/v1/roles",
            json!({"role_name": "helper", "scope_type": "tenant", "permission_ids": ["roles.read"],
                   "active_from": "2020-01-01T00:00:00Z", "requires_approval": false}),
        ),
        (
            "/v1/groups",
            json!({"group_name": "ops", "active_from": "2020-01-01T00:00:00Z"}),
        ),
        (
            "/v1/policies/packs",
            json!({"vertical_id": "health", "policy_rules": "permit(principal, action, resource);",
                   "active_from": "2020-01-01T00:00:00Z"}),
        ),
    ] {
        let r = client
            .post(h.ops_url(path))
            .bearer_auth(&ke_root)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{path}: {:?}", r.text().await);
    }
    let ids = ke_ids(pool).await;
    assert!(
        !ids["role_id"].is_empty() && !ids["group_id"].is_empty(),
        "{ids:?}"
    );
    assert!(ids["id"].len() >= 10, "{ids:?}");
    assert!(!ids["deny_id"].is_empty(), "{ids:?}");
    assert!(!ids["policy_pack_id"].is_empty(), "{ids:?}");
    let before = dump(pool).await;

    let call = |method: Method, path: String| {
        let client = client.clone();
        let url = h.ops_url(&path);
        let token = ug.clone();
        async move {
            let mut r = client.request(method.clone(), url).bearer_auth(token);
            if method != Method::GET {
                r = r.json(&json!({}));
            }
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (
                status,
                body["error"]["code"].clone(),
                body["error"]["field"].clone(),
            )
        }
    };
    let mut compared = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        // The first path parameter decides whose object it names.
        let Some(param) = path
            .split('/')
            .find_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        else {
            continue;
        };
        let Some(candidates) = ids.get(param) else {
            continue; // person ids and route ids are resolved in the caller's own tenant
        };
        for (verb, _) in item.as_object().unwrap() {
            let Ok(method) = verb.to_uppercase().parse::<Method>() else {
                continue;
            };
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            let fill = |v: &str| {
                path.split('/')
                    .map(|s| if s.starts_with('{') { v } else { s })
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let random = call(method.clone(), fill("zz-no-such-object-4711")).await;
            for id in candidates {
                let got = call(method.clone(), fill(id)).await;
                assert!(
                    got.0 >= 400,
                    "{method} {path} with ke's `{id}` succeeded for ug: {got:?}"
                );
                assert_eq!(
                    (got.0, &got.1),
                    (random.0, &random.1),
                    "{method} {path}: ke's `{id}` answers unlike a random id"
                );
                compared += 1;
            }
        }
    }
    // Creating an object under an id of ke's answers exactly as under a random id: integration
    // ids are per tenant (`int-<tenant>-…`), pack and change ids are assigned by scp-pep.
    let create = |path: &'static str, body: Value| {
        let client = client.clone();
        let url = h.ops_url(path);
        let token = ug.clone();
        async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (
                status,
                body["error"]["code"].clone(),
                body["error"]["field"].clone(),
            )
        }
    };
    let draft = |id: &str| {
        json!({"id": id, "partner_name": "P", "legal_basis": "L", "verticals": ["health"],
               "scopes": ["health:person:read"],
               "technical_contacts": [{"name": "N", "email": "n@ug.example", "role": "technical"}]})
    };
    let pack = |id: &str| {
        json!({"policy_pack_id": id, "vertical_id": "health", "policy_rules": "",
               "active_from": "2020-01-01T00:00:00Z"})
    };
    let change = |id: &str, pack: &str| {
        json!({"policy_change_id": id, "policy_pack_id": pack, "change_summary": "s",
               "policy_rules": "", "active_from": "2020-01-01T00:00:00Z"})
    };
    let random = create("/v1/integrations", draft("int-ke-zz-no-such-4711")).await;
    assert_eq!(
        (random.0, random.2.as_str()),
        (400, Some("id")),
        "{random:?}"
    );
    for id in &ids["id"] {
        if id.starts_with("int-") {
            assert_eq!(create("/v1/integrations", draft(id)).await, random, "{id}");
            compared += 1;
        }
    }
    let random = create("/v1/policies/packs", pack("pp-zz-no-such")).await;
    assert_eq!(random.2.as_str(), Some("policy_pack_id"), "{random:?}");
    for id in &ids["policy_pack_id"] {
        assert_eq!(create("/v1/policies/packs", pack(id)).await, random, "{id}");
    }
    let random = create("/v1/policies/changes", change("pc-zz-no-such", "pp-zz")).await;
    assert_eq!(random.2.as_str(), Some("policy_change_id"), "{random:?}");
    for id in &ids["policy_change_id"] {
        let theirs = change(id, &ids["policy_pack_id"][0]);
        assert_eq!(create("/v1/policies/changes", theirs).await, random, "{id}");
    }
    eprintln!("admin_isolation: {compared} calls with ke's ids compared to a random id");
    assert!(compared >= 100, "only {compared} calls compared");
    let after = dump(pool).await;
    for (t, rows) in &before {
        assert_eq!(Some(rows), after.get(t), "table {t} changed");
    }
    assert_eq!(before.len(), after.len());
    // The draft above is valid: in ug's own namespace it is created.
    let own = create("/v1/integrations", draft("int-ug-isolation")).await;
    assert_eq!(own.0, 201, "{own:?}");
}
