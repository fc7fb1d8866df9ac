//! Fuzz entry points: each takes arbitrary bytes and must return without panicking, hanging or
//! allocating without bound. The cargo-fuzz targets in `fuzz/` call them under libFuzzer, and
//! `tests/it/fuzz_corpus.rs` replays every corpus file in `fuzz/corpus/<target>/` on the stable
//! toolchain, so a finding once fixed stays fixed.
//!
//! | target | what it feeds |
//! |---|---|
//! | `token` | the bearer parser and JWS/claims verification ([`crate::authn::Authenticator`]): raw tokens, and claims signed with a trusted key |
//! | `path_route` | path normalization and route matching ([`crate::path::normalize`], [`PolicySnapshot::match_route`]) |
//! | `decide` | stages 2–6 and 8 of the pipeline ([`crate::pipeline::authorize`], [`crate::pipeline::minimize`]) on structured requests (`arbitrary`) |
//! | `policy_yaml` | policy file parsing, validation and compilation ([`PolicySet::parse_file`]) |
//! | `consent_import` | the consent import file: parsing, validation and the import into a store |
//! | `audit_verify` | export parsing and verification ([`crate::audit::verify::verify_export`]) |
//! | `jwks` | JWKS documents as an issuer might serve them ([`crate::authn::jwks::parse_jwks`]) |
//! | `admin_json` | request bodies of every admin, consent and audit operation that takes one, through a real server's HTTP port (it asserts: no 5xx but a 503 with `retry-after`, every error in the REST error shape) |

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use jsonwebtoken::Algorithm;

use crate::authn::jwks::JwksCache;
use crate::authn::{AuthSettings, Authenticator, VerifiedToken};
use crate::decision::Decision;
use crate::pipeline::{PipelineSettings, RequestFacts};
use crate::policy::snapshot::PolicySnapshot;
use crate::policy::{JwksSource, PolicySet};
use crate::signer::SigningKey;

/// A fuzz entry point: arbitrary bytes in, nothing out (it must not panic).
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("token", token),
    ("path_route", path_route),
    ("decide", decide),
    ("policy_yaml", policy_yaml),
    ("consent_import", consent_import),
    ("audit_verify", audit_verify),
    ("jwks", jwks),
    ("admin_json", admin_json),
];

/// Shared, built once per process: the shipped policies with a file JWKS holding the fuzz key.
struct Fixture {
    rt: tokio::runtime::Runtime,
    snapshot: Arc<PolicySnapshot>,
    auth: Authenticator,
    key: SigningKey,
    _dir: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let key = SigningKey::generate(Algorithm::EdDSA, "fuzz").expect("key");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, crate::signer::jwks_json(&[&key])).expect("jwks file");
    let mut set = PolicySet::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies"
    )))
    .expect("shipped policies load");
    for t in &mut set.tenants {
        t.jwks = JwksSource::File(jwks.display().to_string());
    }
    let snapshot = Arc::new(PolicySnapshot::compile(set, 1, "scp-pep"));
    let algorithms = vec![
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];
    let auth = Authenticator::new(
        JwksCache::new(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            Duration::from_secs(1),
            algorithms.clone(),
        ),
        AuthSettings {
            leeway_s: 30,
            algorithms,
            token_cache_entries: 1024,
        },
    );
    Fixture {
        rt,
        snapshot,
        auth,
        key,
        _dir: dir,
    }
});

/// `token`: byte 0 even → the rest is a bearer value as sent (`authorization: <rest>`); odd →
/// the rest is a claims document, signed with the trusted key, so claims validation runs on it.
pub fn token(data: &[u8]) {
    let f = &*FIXTURE;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let token = if mode % 2 == 0 {
        let headers: HashMap<String, String> = [("authorization".to_owned(), text.into_owned())]
            .into_iter()
            .collect();
        match crate::pipeline::bearer(&headers) {
            Some(t) => t.to_owned(),
            None => return,
        }
    } else {
        let Ok(claims) = serde_json::from_str::<serde_json::Value>(&text) else {
            return;
        };
        f.key.sign(&claims)
    };
    let _ = f.rt.block_on(f.auth.authenticate(&f.snapshot, &token));
}

/// `path_route`: byte 0 picks the method, the rest is the raw `:path`.
pub fn path_route(data: &[u8]) {
    let f = &*FIXTURE;
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
    let raw = String::from_utf8_lossy(rest);
    if let Ok(norm) = crate::path::normalize(&raw) {
        let _ = f
            .snapshot
            .match_route(METHODS[m as usize % METHODS.len()], &norm.segments);
    }
}

/// A structured request for `decide`.
#[derive(Debug, Arbitrary)]
struct DecideInput {
    method: u8,
    path: String,
    /// Index into the shipped routes: the request uses that route's concrete path when set.
    route: Option<u8>,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    body_truncated: bool,
    source_ip: Option<[u8; 4]>,
    tenant: u8,
    integration: u8,
    verticals: Vec<u8>,
    scopes: Vec<u8>,
    client_id: Option<String>,
}

/// `decide`: a structured request and an already verified token (tenant, integration,
/// verticals and scopes picked from the shipped policies or made up) through
/// [`crate::pipeline::authorize`] and, when it allows, [`crate::pipeline::minimize`].
pub fn decide(data: &[u8]) {
    let f = &*FIXTURE;
    let Ok(input) = DecideInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let snap = &f.snapshot;
    let pick = |names: Vec<&String>, i: u8| -> String {
        names
            .get(i as usize % (names.len() + 1))
            .map(|s| s.to_string())
            .unwrap_or_else(|| format!("x{i}"))
    };
    let tenants: Vec<&String> = snap.tenants.keys().collect();
    let integrations: Vec<&String> = snap.integrations.keys().collect();
    let verticals = ["health", "education", "welfare", "stats", "x"];
    let routes = &snap.set.routes;
    let scopes: Vec<String> = routes.iter().map(|r| r.scope.clone()).collect();
    const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
    let path = match input
        .route
        .and_then(|i| routes.get(i as usize % routes.len().max(1)))
    {
        Some(r) => r.path.replace(['{', '}'], ""),
        None => input.path,
    };
    let facts = RequestFacts {
        method: METHODS[input.method as usize % METHODS.len()].into(),
        path,
        headers: input
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
        source_ip: input.source_ip.map(std::net::IpAddr::from),
        peer_certificate: None,
        body: input.body,
        body_truncated: input.body_truncated,
    };
    let token = VerifiedToken {
        tenant_id: pick(tenants, input.tenant),
        integration_id: pick(integrations, input.integration),
        verticals: input
            .verticals
            .iter()
            .map(|i| verticals[*i as usize % verticals.len()].to_owned())
            .collect(),
        scopes: input
            .scopes
            .iter()
            .filter_map(|i| scopes.get(*i as usize % scopes.len().max(1)).cloned())
            .collect::<HashSet<_>>(),
        client_id: input.client_id,
        exp: u64::MAX,
        cnf_x5t_s256: None,
        key_epoch: 0,
    };
    let settings = PipelineSettings::default();
    let mut d = Decision::new(&facts.method, "", chrono::Utc::now());
    if let Ok(a) = crate::pipeline::authorize(snap, &facts, &token, &settings, &mut d) {
        crate::pipeline::minimize(a.integration, a.route, None, &mut d);
        crate::pipeline::apply_pack_masks(a.route, &a.pack_masks, &mut d);
    }
}

/// `policy_yaml`: one policy file, parsed, validated and (when valid) compiled.
pub fn policy_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(file) = PolicySet::parse_file("fuzz.yaml", &text) else {
        return;
    };
    if let Ok(set) = PolicySet::from_files(vec![("fuzz.yaml".into(), file)]) {
        let _ = PolicySnapshot::compile(set, 1, "scp-pep");
    }
}

static CONSENTS: LazyLock<Arc<crate::consent::Consents>> = LazyLock::new(|| {
    let store = FIXTURE
        .rt
        .block_on(crate::store::Store::connect(
            "sqlite::memory:",
            1,
            Duration::from_secs(5),
        ))
        .expect("in-memory store");
    crate::consent::Consents::new(
        store,
        crate::consent::ConsentConfig::default(),
        Arc::new(crate::consent::SystemClock),
    )
});

/// `consent_import`: an import file (YAML), parsed, validated and imported into an in-memory
/// store (the same path as `scp-pep consent import`).
pub fn consent_import(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(file) = serde_yaml_ng::from_str::<crate::consent::import::ImportFile>(&text) else {
        return;
    };
    let _ = FIXTURE.rt.block_on(crate::consent::import::import(
        &CONSENTS,
        None,
        &file,
        "fuzz",
        |_| 30,
    ));
}

/// `audit_verify`: bytes as an export file, verified without and with pinned keys.
pub fn audit_verify(data: &[u8]) {
    let _ = crate::audit::verify::verify_export(std::io::Cursor::new(data), None);
    static KEYS: LazyLock<Option<crate::audit::checkpoint::TrustedKeys>> = LazyLock::new(|| {
        let (signer, _) = crate::audit::CheckpointSigner::generate("fuzz").ok()?;
        crate::audit::checkpoint::TrustedKeys::new(&[signer.verifier_key()]).ok()
    });
    if let Some(k) = KEYS.as_ref() {
        let _ = crate::audit::verify::verify_export(std::io::Cursor::new(data), Some(k));
    }
}

/// `jwks`: bytes as a JWKS document.
pub fn jwks(data: &[u8]) {
    let _ = crate::authn::jwks::parse_jwks(
        data,
        &[
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ],
    );
}

/// A running server for `admin_json`: SQLite in a temporary directory, the shipped policies with
/// a file JWKS holding the fuzz key, and the operations of its `/openapi.json` that take a body.
struct AdminFixture {
    base: String,
    client: reqwest::Client,
    /// `(method, path with parameters filled)`.
    operations: Vec<(reqwest::Method, String)>,
    /// Bearer tokens: ke root, ke tenant admin with every other role, ug tenant admin.
    tokens: Vec<String>,
    _running: crate::server::Running,
    _dir: tempfile::TempDir,
}

static ADMIN: LazyLock<AdminFixture> = LazyLock::new(|| {
    let f = &*FIXTURE;
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("policy dir");
    let jwks = f._dir.path().join("jwks.json");
    let shipped = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    for e in std::fs::read_dir(shipped).expect("shipped policies") {
        let path = e.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("policy file");
        let text = text
            .lines()
            .map(|l| match l.find("jwks: {url:") {
                Some(i) => format!("{}jwks: {{file: {}}}", &l[..i], jwks.display()),
                None => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(policies.join(path.file_name().expect("name")), text).expect("write");
    }
    let mut config = crate::config::Config::default();
    config.server.grpc_listen = "127.0.0.1:0".parse().expect("addr");
    config.server.http_listen = "127.0.0.1:0".parse().expect("addr");
    config.store.url = format!("sqlite:{}", dir.path().join("pep.db").display());
    config.policy.dir = Some(policies);
    config.decision_log.output = dir.path().join("decisions.jsonl").display().to_string();
    let running =
        f.rt.block_on(crate::server::start(config, None))
            .expect("server starts");
    let base = format!("http://{}", running.http_addr);
    let client = reqwest::Client::new();
    let doc: serde_json::Value =
        f.rt.block_on(async {
            client
                .get(format!("{base}/openapi.json"))
                .send()
                .await?
                .json()
                .await
        })
        .expect("openapi document");
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (verb, op) in item.as_object().into_iter().flatten() {
            let Ok(method) = verb.to_uppercase().parse::<reqwest::Method>() else {
                continue;
            };
            if op.get("requestBody").is_none() {
                continue;
            }
            let filled: Vec<String> = path
                .split('/')
                .map(|seg| match seg {
                    "{tenant}" | "{tenant_id}" => "ke".to_owned(),
                    "{id}" => "int-ke-moh".to_owned(),
                    s if s.starts_with('{') => "fuzz-object".to_owned(),
                    s => s.to_owned(),
                })
                .collect();
            operations.push((method, filled.join("/")));
        }
    }
    operations.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
    let now = chrono::Utc::now().timestamp();
    let staff = |tenant: &str, roles: &[&str]| {
        f.key.sign(&serde_json::json!({
            "iss": format!("http://127.0.0.1:9193/realms/{tenant}"),
            "aud": "scp-pep-admin",
            "sub": format!("fuzz-{tenant}"),
            "iat": now,
            "exp": now + 10 * 365 * 86_400,
            "realm_access": {"roles": roles},
        }))
    };
    let every_role = [
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
    let tokens = vec![
        staff("ke", &["scp-root"]),
        staff("ke", &every_role),
        staff("ug", &every_role),
    ];
    AdminFixture {
        base,
        client,
        operations,
        tokens,
        _running: running,
        _dir: dir,
    }
});

/// `admin_json`: byte 0 picks an operation with a request body (from the server's own
/// `/openapi.json`), byte 1 the caller (ke root, ke with every other role, ug with every other
/// role); the rest is the body, sent to a real server. Asserts what every admin answer must be
/// (EXT-4.4-2, ADM-8): never a 5xx except a 503 with `retry-after`, and every error a JSON
/// `{"error": {"code", "message"}}`.
pub fn admin_json(data: &[u8]) {
    let a = &*ADMIN;
    let [op, who, body @ ..] = data else {
        return;
    };
    let (method, path) = &a.operations[*op as usize % a.operations.len()];
    let token = &a.tokens[*who as usize % a.tokens.len()];
    let req = a
        .client
        .request(method.clone(), format!("{}{path}", a.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_vec());
    let (status, retry_after, text) = FIXTURE
        .rt
        .block_on(async {
            let r = req.send().await?;
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            Ok::<_, reqwest::Error>((status, retry_after, r.text().await?))
        })
        .expect("the admin API answers");
    if status < 400 {
        return;
    }
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{method} {path}: {status} without a JSON body: {text}"));
    let e = &v["error"];
    assert!(
        e["code"].is_string() && e["message"].is_string(),
        "{method} {path}: {status} not in the error shape: {text}"
    );
    assert!(
        status < 500 || (status == 503 && retry_after),
        "{method} {path}: {status}: {text}"
    );
}
