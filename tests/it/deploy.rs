//! The deployment files agree with scp-pep and with each other (docs/deploy.md): the Keycloak
//! realm `ke` issues the claims, audiences and roles scp-pep reads, its partner client is the
//! one the provisioner would create for `int-ke-moh`; docker-compose.yml parses, its profiles
//! hold the promised services, every mounted file exists, and the `full` profile's configuration
//! and assembled policy directory load; Envoy and Prometheus reach both replicas on the ports
//! scp-pep listens on; the Kubernetes manifests probe real routes, expose the configured ports,
//! and select their own pods. (The schema check of deploy/k8s is `kubernetes-validate` in
//! scripts/test.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use scp_pep::admin::AdminConfig;
use scp_pep::admin::keycloak::{ClientSpec, client_representation};
use scp_pep::config::Config;
use scp_pep::consent::ConsentConfig;
use scp_pep::policy::{JwksSource, PolicySet};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn realm() -> Json {
    serde_json::from_str(&read("deploy/keycloak/realm-ke.json")).expect("realm-ke.json is JSON")
}

/// docker-compose.yml with its `<<` merge keys applied, as Compose reads it.
fn compose() -> Yaml {
    let mut v: Yaml = serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("compose YAML");
    v.apply_merge().expect("merge keys");
    v
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose service `{name}`"))
}

fn strs(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The full-profile configuration file, loaded as `scp-pep serve --config` loads it.
fn full_config() -> Config {
    Config::load(Some(&repo().join("deploy/compose/scp-pep.toml")))
        .expect("deploy/compose/scp-pep.toml loads")
}

fn client<'a>(realm: &'a Json, client_id: &str) -> &'a Json {
    realm["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["clientId"] == client_id)
        .unwrap_or_else(|| panic!("realm client `{client_id}`"))
}

fn client_scope<'a>(realm: &'a Json, name: &str) -> &'a Json {
    realm["clientScopes"]
        .as_array()
        .expect("clientScopes")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("realm client scope `{name}`"))
}

fn service_account<'a>(realm: &'a Json, client_id: &str) -> &'a Json {
    realm["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["serviceAccountClientId"] == client_id)
        .unwrap_or_else(|| panic!("service account user of `{client_id}`"))
}

/// Every protocol mapper a client's tokens get: its own and those of its default client scopes.
fn token_mappers<'a>(realm: &'a Json, client: &'a Json) -> Vec<&'a Json> {
    let mut out: Vec<&Json> = client["protocolMappers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    for s in client["defaultClientScopes"]
        .as_array()
        .expect("defaultClientScopes")
    {
        let scope = client_scope(realm, s.as_str().expect("scope name"));
        out.extend(scope["protocolMappers"].as_array().into_iter().flatten());
    }
    out
}

fn audiences(mappers: &[&Json]) -> BTreeSet<String> {
    mappers
        .iter()
        .filter(|m| m["protocolMapper"] == "oidc-audience-mapper")
        .filter(|m| m["config"]["access.token.claim"] == "true")
        .filter_map(|m| m["config"]["included.custom.audience"].as_str())
        .map(str::to_owned)
        .collect()
}

/// The partner client of `int-ke-moh` is exactly what scp-pep's provisioner creates for that
/// integration (hardcoded claims `tenant_id`, `integration_id`, `verticals` as a JSON array,
/// audience `scp-pep`), and its tokens carry the integration's scopes and a `sub`.
#[test]
fn deploy_realm_partner_client_matches_policy_and_provisioner() {
    let realm = realm();
    assert_eq!(realm["realm"], "ke");
    let set = PolicySet::load_dir(&repo().join("policies")).expect("policies/ loads");
    let integration = set
        .integrations
        .iter()
        .find(|i| i.id == "int-ke-moh")
        .expect("int-ke-moh in policies/integrations.yaml");
    let client_id = integration
        .client_id
        .as_deref()
        .expect("int-ke-moh client_id");
    assert_eq!(client_id, "ke-moh-connector");
    let cfg = full_config();

    let expected = client_representation(&ClientSpec {
        realm: "ke".into(),
        client_id: client_id.into(),
        tenant_id: integration.tenant.clone(),
        integration_id: integration.id.clone(),
        verticals: integration.verticals.clone(),
        audience: cfg.auth.audience.clone(),
        name: integration.partner_name.clone(),
    });
    let actual = client(&realm, client_id);
    for (key, want) in expected.as_object().expect("representation object") {
        assert_eq!(&actual[key], want, "client {client_id}: `{key}`");
    }
    assert!(
        actual["secret"].is_string(),
        "confidential client has a secret"
    );

    let mappers = token_mappers(&realm, actual);
    let claim = |name: &str| {
        mappers
            .iter()
            .find(|m| m["config"]["claim.name"] == name)
            .unwrap_or_else(|| panic!("mapper for claim `{name}`"))
    };
    assert_eq!(claim("tenant_id")["config"]["claim.value"], "ke");
    assert_eq!(
        claim("integration_id")["config"]["claim.value"],
        "int-ke-moh"
    );
    let verticals = claim("verticals");
    assert_eq!(verticals["config"]["jsonType.label"], "JSON");
    let parsed: Vec<String> =
        serde_json::from_str(verticals["config"]["claim.value"].as_str().unwrap()).unwrap();
    assert_eq!(parsed, integration.verticals);
    assert_eq!(audiences(&mappers), BTreeSet::from(["scp-pep".to_owned()]));
    assert!(
        mappers
            .iter()
            .any(|m| m["protocolMapper"] == "oidc-sub-mapper"
                && m["config"]["access.token.claim"] == "true"),
        "access tokens carry `sub`"
    );
    // No roles in partner tokens: partner clients are not admin callers.
    assert!(
        !mappers
            .iter()
            .any(|m| m["protocolMapper"] == "oidc-usermodel-realm-role-mapper"),
        "partner tokens carry no realm roles"
    );

    // `scope`: every contract scope is a default client scope included in the token's `scope`.
    let defaults = strs_json(&actual["defaultClientScopes"]);
    for s in &integration.scopes {
        assert!(defaults.contains(s), "default client scope `{s}`");
        assert_eq!(
            client_scope(&realm, s)["attributes"]["include.in.token.scope"],
            "true",
            "`{s}` appears in the token's scope claim"
        );
    }
    service_account(&realm, client_id);
}

fn strs_json(v: &Json) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every role scp-pep maps (admin claim mapping, audit roles, break-glass, consent roles) is a
/// realm role; the admin client's tokens have audience `admin.audience` and the realm roles at
/// `admin.roles_claim`; the provisioner client is the configured one and may manage clients.
#[test]
fn deploy_realm_admin_client_roles_and_provisioner() {
    let realm = realm();
    let cfg = full_config();
    let realm_roles: BTreeSet<String> = realm["roles"]["realm"]
        .as_array()
        .expect("realm roles")
        .iter()
        .map(|r| r["name"].as_str().expect("role name").to_owned())
        .collect();
    let admin = AdminConfig::default();
    let consent = ConsentConfig::default();
    let mut wanted: BTreeSet<String> = admin.claim_permissions.keys().cloned().collect();
    wanted.extend(admin.audit_roles.iter().cloned());
    wanted.insert(admin.root_role.clone());
    for list in [
        &consent.officer_roles,
        &consent.field_agent_roles,
        &consent.evidence_roles,
        &consent.tenant_admin_roles,
        &consent.registrar_roles,
    ] {
        wanted.extend(list.iter().cloned());
    }
    let missing: Vec<_> = wanted.difference(&realm_roles).collect();
    assert!(missing.is_empty(), "realm roles missing: {missing:?}");

    let admin_client = client(&realm, "scp-admin");
    assert_eq!(admin_client["publicClient"], false);
    assert_eq!(admin_client["fullScopeAllowed"], true);
    let mappers = token_mappers(&realm, admin_client);
    assert_eq!(
        audiences(&mappers),
        BTreeSet::from([cfg.admin.audience.clone()]),
        "admin tokens are for the admin API only"
    );
    assert_eq!(cfg.admin.audience, "scp-pep-admin");
    assert!(
        mappers.iter().any(
            |m| m["protocolMapper"] == "oidc-usermodel-realm-role-mapper"
                && m["config"]["claim.name"] == cfg.admin.roles_claim.as_str()
                && m["config"]["multivalued"] == "true"
                && m["config"]["access.token.claim"] == "true"
        ),
        "realm roles at `{}`",
        cfg.admin.roles_claim
    );
    let sa_roles = strs_json(&service_account(&realm, "scp-admin")["realmRoles"]);
    assert!(!sa_roles.is_empty() && sa_roles.iter().all(|r| realm_roles.contains(r)));
    assert!(
        !sa_roles.contains(&admin.root_role),
        "no break-glass role for the dev admin client"
    );

    let kc = cfg
        .admin
        .keycloak
        .as_ref()
        .expect("[admin.keycloak] in the full profile");
    assert_eq!(kc.admin_realm, "ke");
    let prov = client(&realm, &kc.client_id);
    assert_eq!(prov["serviceAccountsEnabled"], true);
    let granted =
        strs_json(&service_account(&realm, &kc.client_id)["clientRoles"]["realm-management"]);
    assert!(granted.iter().any(|r| r == "manage-clients"), "{granted:?}");
    assert!(
        token_mappers(&realm, prov)
            .iter()
            .any(|m| m["config"]["claim.name"] == "resource_access.realm-management.roles"),
        "the provisioner's token carries its realm-management roles"
    );
}

/// No secret is committed: every client secret in the realm is an environment placeholder that
/// the compose Keycloak service sets, with a default marked `dev-only-`.
#[test]
fn deploy_realm_secrets_are_placeholders() {
    let realm = realm();
    let compose = compose();
    let kc_env = &service(&compose, "keycloak")["environment"];
    let clients = realm["clients"].as_array().expect("clients");
    let mut seen = 0;
    for c in clients {
        let Some(secret) = c.get("secret") else {
            continue;
        };
        let s = secret.as_str().expect("secret string");
        let var = s
            .strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .filter(|v| v.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
            .unwrap_or_else(|| {
                panic!(
                    "client {}: secret is not a ${{VAR}} placeholder",
                    c["clientId"]
                )
            });
        let value = kc_env[var]
            .as_str()
            .unwrap_or_else(|| panic!("compose keycloak sets {var}"));
        assert!(
            value.starts_with(&format!("${{{var}:-dev-only-")),
            "{var}: `{value}` is overridable and marked dev-only"
        );
        seen += 1;
    }
    assert_eq!(
        seen, 3,
        "partner, admin and provisioner clients are confidential"
    );
    // Every other secret-bearing variable in the compose file is a placeholder too.
    let text = read("docker-compose.yml");
    for line in text.lines().filter(|l| l.contains("${")) {
        assert!(
            line.contains(":-dev-only-"),
            "a compose variable without a dev-only default: {line}"
        );
    }
}

/// docker-compose.yml parses; `demo` (the default, through .env) and `full` hold the promised
/// services; every file a service mounts exists; Check's port 9191 is never published.
#[test]
fn deploy_compose_profiles_ports_and_mounts() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let mut by_profile: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap().to_owned();
        let profiles = strs(&svc["profiles"]);
        if profiles.is_empty() {
            by_profile
                .entry("*".into())
                .or_default()
                .insert(name.clone());
        }
        for p in profiles {
            by_profile.entry(p).or_default().insert(name.clone());
        }
    }
    let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(by_profile["demo"], set(&["scp-pep", "envoy"]));
    assert_eq!(by_profile["*"], set(&["echo"]));
    assert_eq!(
        by_profile["full"],
        set(&[
            "postgres",
            "keycloak",
            "scp-pep-1",
            "scp-pep-2",
            "keycloak-loopback-1",
            "keycloak-loopback-2",
            "envoy-full",
            "redis",
            "prometheus",
        ])
    );
    assert_eq!(by_profile.len(), 3, "{:?}", by_profile.keys());
    assert!(
        read(".env")
            .lines()
            .any(|l| l.trim() == "COMPOSE_PROFILES=demo"),
        "demo is the default profile"
    );

    // The demo services are unchanged.
    assert_eq!(
        strs(&service(&compose, "scp-pep")["command"])[0],
        "demo",
        "the demo profile runs `scp-pep demo`"
    );
    assert!(
        strs(&service(&compose, "envoy")["volumes"])
            .contains(&"./envoy/envoy.yaml:/etc/envoy/envoy.yaml:ro".to_owned())
    );

    // Published ports per profile: no clash inside one, 9191 nowhere.
    let published = |names: &BTreeSet<String>| {
        let mut host = BTreeMap::new();
        for n in names {
            for p in strs(&service(&compose, n)["ports"]) {
                let parts: Vec<&str> = p.split(':').collect();
                assert!(parts.len() >= 2, "{n}: port `{p}`");
                let host_port = parts[parts.len() - 2].to_owned();
                let container = parts[parts.len() - 1];
                assert_ne!(container, "9191", "{n} publishes Check's port");
                if parts.len() == 2 {
                    // Only the partner edge listens on every interface.
                    assert_eq!(container, "10000", "{n}: `{p}` is not on loopback");
                } else {
                    assert_eq!(parts[0], "127.0.0.1", "{n}: `{p}` is not on loopback");
                }
                assert!(
                    host.insert(host_port, n.clone()).is_none(),
                    "port clash: {p}"
                );
            }
        }
        host
    };
    let demo: BTreeSet<String> = by_profile["demo"]
        .union(&by_profile["*"])
        .cloned()
        .collect();
    let full: BTreeSet<String> = by_profile["full"]
        .union(&by_profile["*"])
        .cloned()
        .collect();
    let demo_ports = published(&demo);
    let full_ports = published(&full);
    assert_eq!(demo_ports["10000"], "envoy");
    assert_eq!(full_ports["10000"], "envoy-full");
    assert_eq!(full_ports["8080"], "keycloak");
    assert_eq!(full_ports["9090"], "prometheus");
    assert_eq!(full_ports["9192"], "scp-pep-1");

    // Every bind mount's host file exists.
    let mut mounts = 0;
    for (name, svc) in services {
        for v in strs(&svc["volumes"]) {
            let host = v.split(':').next().unwrap();
            if host.starts_with("./") {
                assert!(
                    repo().join(host).is_file(),
                    "{}: mounted file `{host}` is missing",
                    name.as_str().unwrap()
                );
                mounts += 1;
            }
        }
    }
    assert!(mounts >= 12, "{mounts} bind mounts");
    let build = &service(&compose, "scp-pep-1")["build"];
    assert!(repo().join(build["dockerfile"].as_str().unwrap()).is_file());
}

/// The `full` profile's scp-pep: its configuration loads, the policy directory assembled from
/// its mounts validates (issuer = the Keycloak realm), its store is the compose PostgreSQL, the
/// replicas are distinct audit writers, and Envoy and Prometheus reach both on scp-pep's ports.
#[test]
fn deploy_compose_full_profile_config_policies_and_wiring() {
    let compose = compose();
    let cfg = full_config();
    assert_eq!(cfg.server.grpc_listen.port(), 9191);
    assert_eq!(cfg.server.http_listen.port(), 9192);
    assert!(
        cfg.server.grpc_listen.ip().is_unspecified(),
        "reachable from Envoy's container"
    );
    let policy_dir = cfg.policy.dir.clone().expect("[policy] dir");

    let mut writers = BTreeSet::new();
    for name in ["scp-pep-1", "scp-pep-2"] {
        let svc = service(&compose, name);
        let cmd = strs(&svc["command"]);
        assert_eq!(
            cmd,
            ["serve", "--config", "/etc/scp-pep/scp-pep.toml"],
            "{name}"
        );
        assert_eq!(svc["read_only"], Yaml::Bool(true), "{name}: read-only root");
        let env = &svc["environment"];
        let store = env["SCP_PEP_STORE__URL"].as_str().expect("store url");
        assert!(
            store.starts_with("postgres://") && store.contains("@postgres:5432/"),
            "{store}"
        );
        assert!(writers.insert(env["SCP_PEP_AUDIT__WRITER"].as_str().unwrap().to_owned()));
        // Both replicas count rate limits in the stack's Redis (one budget, issue 14).
        assert_eq!(
            env["SCP_PEP_RATE_LIMIT__BACKEND"].as_str(),
            Some("redis"),
            "{name}"
        );
        assert_eq!(
            env["SCP_PEP_RATE_LIMIT__REDIS_URL"].as_str(),
            Some("redis://redis:6379"),
            "{name}"
        );
        for key in [
            "SCP_PEP_AUDIT__LINK_KEY",
            "SCP_PEP_AUDIT__PERSON_REF_KEY",
            "SCP_PEP_ADMIN__KEYCLOAK__CLIENT_SECRET",
        ] {
            let value = env[key].as_str().unwrap_or("");
            assert!(value.contains(":-dev-only-"), "{name}: {key}");
        }
        // The keys' development defaults are long enough to be accepted (≥ 32 bytes).
        for key in ["SCP_PEP_AUDIT__LINK_KEY", "SCP_PEP_AUDIT__PERSON_REF_KEY"] {
            let value = env[key].as_str().unwrap();
            let default = value
                .split_once(":-")
                .and_then(|(_, d)| d.strip_suffix('}'))
                .unwrap_or_else(|| panic!("{key}: `{value}`"));
            assert!(default.len() >= 32, "{key}: default shorter than 32 bytes");
        }

        // Assemble the container's policy directory from the mounts and validate it.
        let tmp = tempfile::tempdir().unwrap();
        let mut config_mounted = false;
        for v in strs(&svc["volumes"]) {
            let mut parts = v.split(':');
            let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
            if container == "/etc/scp-pep/scp-pep.toml" {
                assert_eq!(host, "./deploy/compose/scp-pep.toml");
                config_mounted = true;
            }
            if let Ok(rel) = Path::new(container).strip_prefix(&policy_dir) {
                std::fs::copy(repo().join(host), tmp.path().join(rel)).unwrap();
            }
        }
        assert!(config_mounted, "{name} mounts the configuration");
        let set = PolicySet::load_dir(tmp.path()).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let ke = set
            .tenants
            .iter()
            .find(|t| t.id == "ke")
            .expect("tenant ke");
        let kc_env = &service(&compose, "keycloak")["environment"];
        let kc_host = kc_env["KC_HOSTNAME"].as_str().expect("KC_HOSTNAME");
        assert_eq!(
            ke.issuer,
            format!("{kc_host}/realms/{}", realm()["realm"].as_str().unwrap())
        );
        match &ke.jwks {
            JwksSource::Url(u) => {
                assert_eq!(u, &format!("{}/protocol/openid-connect/certs", ke.issuer))
            }
            other => panic!("tenant ke jwks {other:?}"),
        }
        assert_eq!(ke.audience.as_deref(), Some(cfg.auth.audience.as_str()));
        assert!(set.integrations.iter().any(|i| i.id == "int-ke-moh"));
        // The loopback forwarder shares this replica's network namespace.
        let loopback = service(&compose, &name.replace("scp-pep", "keycloak-loopback"));
        assert_eq!(
            loopback["network_mode"].as_str(),
            Some(format!("service:{name}").as_str())
        );
    }
    let kc = cfg.admin.keycloak.as_ref().unwrap();
    assert_eq!(kc.base_url, "http://127.0.0.1:8080");

    // The Keycloak realm import and the loopback forwarder point where the config expects.
    let kc_svc = service(&compose, "keycloak");
    assert_eq!(strs(&kc_svc["command"]), ["start-dev", "--import-realm"]);
    let image = kc_svc["image"].as_str().unwrap();
    let tag = image
        .strip_prefix("quay.io/keycloak/keycloak:")
        .expect("the Keycloak image");
    // The realm file names the version it was written for, so Keycloak runs no import
    // migrations of older versions over it (they would add client scopes of their own).
    let version = realm()["keycloakVersion"].as_str().unwrap().to_owned();
    assert!(
        version.starts_with(&format!("{tag}.")),
        "{version} vs image {tag}"
    );
    let fwd: Yaml = serde_yaml_ng::from_str(&read("deploy/envoy/keycloak-loopback.yaml")).unwrap();
    let listener = &fwd["static_resources"]["listeners"][0]["address"]["socket_address"];
    assert_eq!(listener["address"], "127.0.0.1");
    assert_eq!(listener["port_value"].as_u64(), Some(8080));

    // Envoy: the scp_pep cluster has both replicas on the gRPC port, health-checked on /readyz.
    let envoy: Yaml = serde_yaml_ng::from_str(&read("deploy/envoy/envoy-full.yaml")).unwrap();
    let clusters = envoy["static_resources"]["clusters"].as_sequence().unwrap();
    let pep = clusters
        .iter()
        .find(|c| c["name"] == "scp_pep")
        .expect("scp_pep cluster");
    let endpoints = pep["load_assignment"]["endpoints"][0]["lb_endpoints"]
        .as_sequence()
        .unwrap();
    let hosts: BTreeSet<(String, u64)> = endpoints
        .iter()
        .map(|e| {
            let a = &e["endpoint"]["address"]["socket_address"];
            assert_eq!(
                e["endpoint"]["health_check_config"]["port_value"].as_u64(),
                Some(u64::from(cfg.server.http_listen.port()))
            );
            (
                a["address"].as_str().unwrap().to_owned(),
                a["port_value"].as_u64().unwrap(),
            )
        })
        .collect();
    let port = u64::from(cfg.server.grpc_listen.port());
    assert_eq!(
        hosts,
        BTreeSet::from([
            ("scp-pep-1".to_owned(), port),
            ("scp-pep-2".to_owned(), port)
        ])
    );
    assert_eq!(
        pep["health_checks"][0]["http_health_check"]["path"],
        "/readyz"
    );
    assert!(
        strs(&service(&compose, "envoy-full")["volumes"])
            .contains(&"./deploy/envoy/envoy-full.yaml:/etc/envoy/envoy.yaml:ro".to_owned())
    );

    // Prometheus scrapes both replicas' /metrics on the HTTP port.
    let prom: Yaml = serde_yaml_ng::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    let job = &prom["scrape_configs"][0];
    assert_eq!(job["metrics_path"], "/metrics");
    let targets: BTreeSet<String> = job["static_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|s| strs(&s["targets"]))
        .collect();
    let http = cfg.server.http_listen.port();
    assert_eq!(
        targets,
        BTreeSet::from([format!("scp-pep-1:{http}"), format!("scp-pep-2:{http}")])
    );
}

/// The Envoy configurations of the full profile pass `envoy --mode validate` (skipped without
/// an Envoy binary unless CI is set, like envoy_e2e).
#[test]
fn deploy_envoy_configs_validate() {
    let bin = std::env::var_os("SCP_PEP_ENVOY")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("envoy"))
                .find(|c| c.is_file())
        });
    let Some(bin) = bin else {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
        assert!(
            !ci,
            "no Envoy binary (SCP_PEP_ENVOY or `envoy` on PATH) in CI"
        );
        eprintln!("SKIPPED deploy_envoy_configs_validate: no Envoy binary");
        return;
    };
    for f in [
        "deploy/envoy/envoy-full.yaml",
        "deploy/envoy/keycloak-loopback.yaml",
    ] {
        let out = std::process::Command::new(&bin)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(repo().join(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn k8s_docs() -> BTreeMap<(String, String), Yaml> {
    let mut docs = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("deploy/k8s")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("yaml")
            || p.file_name().unwrap() == "kustomization.yaml"
        {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = <Yaml as serde::Deserialize>::deserialize(doc).unwrap();
            let kind = v["kind"].as_str().unwrap().to_owned();
            let name = v["metadata"]["name"].as_str().unwrap().to_owned();
            assert!(docs.insert((kind, name), v).is_none(), "{}", p.display());
        }
    }
    docs
}

fn get<'a>(docs: &'a BTreeMap<(String, String), Yaml>, kind: &str, name: &str) -> &'a Yaml {
    docs.get(&(kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("{kind}/{name} in deploy/k8s"))
}

/// The Kubernetes manifests agree with scp-pep and each other: two replicas probing routes the
/// ops listener serves, container ports = the ConfigMap's listen ports, non-root with a
/// read-only root, selectors that match the pods, a NetworkPolicy admitting only Envoy to 9191
/// and Prometheus to 9192, and a kustomization listing every file.
#[test]
fn deploy_k8s_manifests_agree() {
    let docs = k8s_docs();
    let dep = get(&docs, "Deployment", "scp-pep");
    assert_eq!(dep["spec"]["replicas"].as_u64(), Some(2));
    let pod = &dep["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(
        dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        labels["app.kubernetes.io/name"]
    );
    let spec = &pod["spec"];
    let c = &spec["containers"][0];

    // The configuration file of the ConfigMap loads, and the ports match it.
    let cm = get(&docs, "ConfigMap", "scp-pep-config");
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("scp-pep.toml");
    std::fs::write(&toml, cm["data"]["scp-pep.toml"].as_str().unwrap()).unwrap();
    let cfg = Config::load(Some(&toml)).expect("the ConfigMap's scp-pep.toml loads");
    let ports: BTreeMap<String, u64> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["grpc"], u64::from(cfg.server.grpc_listen.port()));
    assert_eq!(ports["http"], u64::from(cfg.server.http_listen.port()));

    // Probes ask routes the ops router serves, on the HTTP port.
    let server = read("src/server.rs");
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "http", "{probe}");
        assert!(
            server.contains(&format!(".route(\"{path}\"")),
            "{path} is served"
        );
    }

    // Hardening and resources.
    assert_eq!(spec["securityContext"]["runAsNonRoot"], Yaml::Bool(true));
    assert_eq!(spec["automountServiceAccountToken"], Yaml::Bool(false));
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], Yaml::Bool(true));
    assert_eq!(sc["allowPrivilegeEscalation"], Yaml::Bool(false));
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    // Mounts: the config file, the policy directory where the config looks for it, the keys
    // where the config reads them; every mount has a volume.
    let volumes: BTreeMap<String, &Yaml> = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_owned(), v))
        .collect();
    let mut mounted = BTreeMap::new();
    for m in c["volumeMounts"].as_sequence().unwrap() {
        let name = m["name"].as_str().unwrap();
        assert!(volumes.contains_key(name), "volume {name}");
        mounted.insert(m["mountPath"].as_str().unwrap().to_owned(), name.to_owned());
    }
    assert_eq!(
        strs(&c["args"]),
        ["serve", "--config", "/etc/scp-pep/scp-pep.toml"]
    );
    assert_eq!(mounted["/etc/scp-pep/scp-pep.toml"], "config");
    assert_eq!(volumes["config"]["configMap"]["name"], "scp-pep-config");
    let policy_dir = cfg.policy.dir.clone().unwrap();
    assert_eq!(mounted[policy_dir.to_str().unwrap()], "policies");
    let key_file = cfg.audit.signing_key_file.clone().unwrap();
    let key_dir = key_file.parent().unwrap().to_str().unwrap();
    assert!(
        volumes[&mounted[key_dir]]["secret"].is_mapping(),
        "audit keys from a Secret"
    );

    // Services, PDB and NetworkPolicy select these pods.
    let name_label = labels["app.kubernetes.io/name"].as_str().unwrap();
    let grpc = get(&docs, "Service", "scp-pep-grpc");
    assert_eq!(
        grpc["spec"]["clusterIP"], "None",
        "headless: Envoy balances per call"
    );
    assert_eq!(
        grpc["spec"]["ports"][0]["port"].as_u64(),
        Some(ports["grpc"])
    );
    let http = get(&docs, "Service", "scp-pep");
    assert_eq!(
        http["spec"]["ports"][0]["port"].as_u64(),
        Some(ports["http"])
    );
    for svc in [grpc, http] {
        assert_eq!(
            svc["spec"]["selector"]["app.kubernetes.io/name"],
            name_label
        );
    }
    let pdb = get(&docs, "PodDisruptionBudget", "scp-pep");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        name_label
    );
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));
    let np = get(&docs, "NetworkPolicy", "scp-pep");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        name_label
    );
    assert_eq!(strs(&np["spec"]["policyTypes"]), ["Ingress"]);
    let rules: Vec<(String, u64)> = np["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            let from = r["from"].as_sequence().unwrap();
            assert_eq!(from.len(), 1);
            let who = from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                .as_str()
                .unwrap()
                .to_owned();
            let ports = r["ports"].as_sequence().unwrap();
            assert_eq!(ports.len(), 1);
            (who, ports[0]["port"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("envoy".to_owned(), ports["grpc"]),
            ("prometheus".to_owned(), ports["http"])
        ]
    );

    // The kustomization lists exactly the manifest files.
    let kust: Yaml = serde_yaml_ng::from_str(&read("deploy/k8s/kustomization.yaml")).unwrap();
    let listed: BTreeSet<String> = strs(&kust["resources"]).into_iter().collect();
    let files: BTreeSet<String> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);
}
