//! Provisioning of partner machine clients (ONB-4, ONB-AUD-2) behind the [`Provisioner`] trait;
//! [`KeycloakAdmin`] is the real implementation, speaking the Keycloak admin REST API:
//!
//! - admin token: `POST {base}/realms/{admin_realm}/protocol/openid-connect/token`
//!   (`grant_type=client_credentials`);
//! - `GET /admin/realms/{realm}/clients?clientId=…` (exists?), `POST /admin/realms/{realm}/clients`
//!   (a confidential client with a service account, the hardcoded-claim mappers `tenant_id`,
//!   `integration_id`, `verticals` (JSON array) and an audience mapper);
//! - `GET|POST /admin/realms/{realm}/clients/{id}/client-secret` (read / regenerate);
//! - `DELETE /admin/realms/{realm}/clients/{id}` (undo a creation the store did not record);
//! - `PUT /admin/realms/{realm}/clients/{id}` with the client's representation and `enabled`
//!   changed (the lifecycle: a suspended, deprecated or archived integration's client is
//!   disabled, see `crate::admin::integrations::keycloak_sync`).
//!
//! The admin service client's secret is read on every token request (no token is cached): from
//! `client_secret_file` when set (re-read each time, so rewriting the file rotates it without a
//! restart, EXT-5.1-1), else from `client_secret` (best set through the environment).
//!
//! Secrets exist only in [`Secret`] values, whose `Debug` is redacted; they are shown once to the
//! caller and stored as SHA-256 only.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `[admin.keycloak]`: where the Keycloak admin API is and the service client scp-pep uses.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakConfig {
    /// e.g. `https://idp.example` (without `/realms/...`).
    pub base_url: String,
    /// Realm the admin service client lives in, e.g. `master`.
    pub admin_realm: String,
    /// The admin service client (needs the realm-management `manage-clients` role).
    pub client_id: String,
    /// Its secret; set it through the environment (`SCP_PEP_ADMIN__KEYCLOAK__CLIENT_SECRET`). Never
    /// logged, never serialized.
    #[serde(skip_serializing, default)]
    pub client_secret: String,
    /// File holding the secret (trimmed), read on every admin token request: rewrite it to
    /// rotate the secret without a restart (EXT-5.1-1). Takes precedence over `client_secret`
    /// (setting both is a configuration error).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Timeout of each admin call, seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Seconds between two passes of the background task that brings Keycloak clients' `enabled`
    /// flag in step with the lifecycle; a failed client waits `sync_interval_s × 2^(attempts−1)`,
    /// at most 32 intervals, before its next attempt.
    #[serde(default = "default_sync_interval_s")]
    pub sync_interval_s: u64,
}

fn default_timeout_s() -> u64 {
    10
}

fn default_sync_interval_s() -> u64 {
    10
}

impl KeycloakConfig {
    /// Checks the secret settings: at most one of `client_secret` and `client_secret_file`.
    ///
    /// Errors: a message naming the keys (never a value).
    pub fn validate(&self) -> Result<(), String> {
        if !self.client_secret.is_empty() && self.client_secret_file.is_some() {
            return Err(
                "admin.keycloak.client_secret and admin.keycloak.client_secret_file are both set; set one"
                    .into(),
            );
        }
        Ok(())
    }
}

impl std::fmt::Debug for KeycloakConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeycloakConfig")
            .field("base_url", &self.base_url)
            .field("admin_realm", &self.admin_realm)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("client_secret_file", &self.client_secret_file)
            .field("timeout_s", &self.timeout_s)
            .field("sync_interval_s", &self.sync_interval_s)
            .finish()
    }
}

/// A secret shown once to the caller. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The secret itself: only for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Lower-case hex SHA-256 of the secret (what is stored).
    pub fn sha256_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What to create for one integration (ONB-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    /// Keycloak realm of the tenant (from its issuer `…/realms/<realm>`).
    pub realm: String,
    /// The `clientId` to create (the token's `azp`).
    pub client_id: String,
    pub tenant_id: String,
    pub integration_id: String,
    pub verticals: Vec<String>,
    /// Audience the PEP requires (`auth.audience`).
    pub audience: String,
    /// Human name (partner name).
    pub name: String,
}

/// A created client: Keycloak's internal id and its secret.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// Keycloak's internal client id (UUID).
    pub internal_id: String,
    pub secret: Secret,
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A client with this `clientId` exists already (nothing was changed).
    #[error("a client `{0}` already exists in the realm")]
    Exists(String),
    /// No client with this `clientId`.
    #[error("no client `{0}` in the realm")]
    NotFound(String),
    /// Keycloak is unreachable or answered unexpectedly (the message holds no secret).
    #[error("identity provider: {0}")]
    Unavailable(String),
}

impl ProvisionError {
    /// A machine-readable class for sync state and logs: `client_exists`, `client_missing` or
    /// `unavailable` (never a secret, never Keycloak's message).
    pub fn class(&self) -> &'static str {
        match self {
            ProvisionError::Exists(_) => "client_exists",
            ProvisionError::NotFound(_) => "client_missing",
            ProvisionError::Unavailable(_) => "unavailable",
        }
    }
}

/// Creates partner machine clients and rotates their secrets (ONB-4, ONB-AUD-2).
pub trait Provisioner: Send + Sync {
    /// Creates the confidential client of `spec` and returns its secret.
    ///
    /// Errors: [`ProvisionError::Exists`] when the `clientId` is taken; `Unavailable`.
    fn create_client<'a>(
        &'a self,
        spec: &'a ClientSpec,
    ) -> BoxFuture<'a, Result<Provisioned, ProvisionError>>;

    /// Regenerates the secret of `client_id` in `realm`; the old one stops working.
    ///
    /// Errors: [`ProvisionError::NotFound`], `Unavailable`.
    fn rotate_secret<'a>(
        &'a self,
        realm: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Secret, ProvisionError>>;

    /// Deletes `client_id` from `realm` (undoing a creation the store could not record).
    fn delete_client<'a>(
        &'a self,
        realm: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(), ProvisionError>>;

    /// Sets the `enabled` flag of `client_id` in `realm` (a disabled client gets no token;
    /// INT-6.2-3, INT-6.2-4). Idempotent.
    ///
    /// Errors: [`ProvisionError::NotFound`], `Unavailable`.
    fn set_enabled<'a>(
        &'a self,
        realm: &'a str,
        client_id: &'a str,
        enabled: bool,
    ) -> BoxFuture<'a, Result<(), ProvisionError>>;
}

/// The Keycloak admin REST API client.
pub struct KeycloakAdmin {
    config: KeycloakConfig,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

#[derive(Deserialize)]
struct Credential {
    value: Option<String>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Unavailable(format!("{what}: {e}"))
}

/// The body of `POST /admin/realms/{realm}/clients` for `spec`: a confidential client with a
/// service account only, hardcoded claims `tenant_id`, `integration_id`, `verticals` (JSON
/// array) and an audience mapper for the PEP (ONB-4).
pub fn client_representation(spec: &ClientSpec) -> Value {
    let claim = |name: &str, value: String, json_type: &str| {
        json!({
            "name": name,
            "protocol": "openid-connect",
            "protocolMapper": "oidc-hardcoded-claim-mapper",
            "consentRequired": false,
            "config": {
                "claim.name": name,
                "claim.value": value,
                "jsonType.label": json_type,
                "access.token.claim": "true",
                "id.token.claim": "false",
                "userinfo.token.claim": "false",
                "introspection.token.claim": "true",
            }
        })
    };
    json!({
        "clientId": spec.client_id,
        "name": spec.name,
        "description": format!("scp-pep integration {} of tenant {}", spec.integration_id, spec.tenant_id),
        "enabled": true,
        "protocol": "openid-connect",
        "publicClient": false,
        "bearerOnly": false,
        "serviceAccountsEnabled": true,
        "standardFlowEnabled": false,
        "implicitFlowEnabled": false,
        "directAccessGrantsEnabled": false,
        "clientAuthenticatorType": "client-secret",
        "attributes": {"scp.integration_id": spec.integration_id, "scp.tenant_id": spec.tenant_id},
        "protocolMappers": [
            claim("tenant_id", spec.tenant_id.clone(), "String"),
            claim("integration_id", spec.integration_id.clone(), "String"),
            claim("verticals", serde_json::to_string(&spec.verticals).unwrap_or_default(), "JSON"),
            {
                "name": "scp-pep audience",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "consentRequired": false,
                "config": {
                    "included.custom.audience": spec.audience,
                    "access.token.claim": "true",
                    "id.token.claim": "false",
                    "introspection.token.claim": "true",
                }
            }
        ],
    })
}

impl KeycloakAdmin {
    /// A client for `config`.
    ///
    /// Errors: the HTTP client cannot be built.
    pub fn new(config: KeycloakConfig) -> Result<Self, ProvisionError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_s.max(1)))
            .build()
            .map_err(|e| unavailable("http client", e))?;
        Ok(KeycloakAdmin { config, http })
    }

    fn base(&self) -> &str {
        self.config.base_url.trim_end_matches('/')
    }

    fn clients_url(&self, realm: &str) -> Result<reqwest::Url, ProvisionError> {
        let mut u = reqwest::Url::parse(self.base()).map_err(|e| unavailable("base_url", e))?;
        u.path_segments_mut()
            .map_err(|_| unavailable("base_url", "cannot be a base"))?
            .pop_if_empty()
            .extend(["admin", "realms", realm, "clients"]);
        Ok(u)
    }

    /// The admin service client's secret: `client_secret_file` read now (trimmed), else
    /// `client_secret` (EXT-5.1-1).
    async fn admin_secret(&self) -> Result<String, ProvisionError> {
        match &self.config.client_secret_file {
            Some(f) => tokio::fs::read_to_string(f)
                .await
                .map(|s| s.trim().to_owned())
                .map_err(|e| unavailable("admin.keycloak.client_secret_file", e.kind())),
            None => Ok(self.config.client_secret.clone()),
        }
    }

    /// An admin access token (client credentials), with the secret read now.
    async fn token(&self) -> Result<String, ProvisionError> {
        let secret = self.admin_secret().await?;
        let url = format!(
            "{}/realms/{}/protocol/openid-connect/token",
            self.base(),
            self.config.admin_realm
        );
        let body = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            urlencode(&self.config.client_id),
            urlencode(&secret)
        );
        let resp = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| unavailable("token request", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(unavailable("token request", resp.status()));
        }
        let t: TokenResponse = resp
            .json()
            .await
            .map_err(|e| unavailable("token response", e.without_url()))?;
        Ok(t.access_token)
    }

    /// Keycloak's internal id of `client_id`, if it exists.
    async fn find(
        &self,
        token: &str,
        realm: &str,
        client_id: &str,
    ) -> Result<Option<String>, ProvisionError> {
        Ok(self
            .find_rep(token, realm, client_id)
            .await?
            .and_then(|c| c["id"].as_str().map(str::to_owned)))
    }

    /// The representation of `client_id` (as `GET …/clients?clientId=` lists it), if it exists.
    async fn find_rep(
        &self,
        token: &str,
        realm: &str,
        client_id: &str,
    ) -> Result<Option<Value>, ProvisionError> {
        let mut url = self.clients_url(realm)?;
        url.query_pairs_mut().append_pair("clientId", client_id);
        let resp = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| unavailable("client lookup", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(unavailable("client lookup", resp.status()));
        }
        let found: Vec<Value> = resp
            .json()
            .await
            .map_err(|e| unavailable("client lookup", e.without_url()))?;
        Ok(found
            .into_iter()
            .find(|c| c["clientId"] == json!(client_id) && c["id"].is_string()))
    }

    async fn enable(
        &self,
        realm: &str,
        client_id: &str,
        enabled: bool,
    ) -> Result<(), ProvisionError> {
        let token = self.token().await?;
        let mut rep = self
            .find_rep(&token, realm, client_id)
            .await?
            .ok_or_else(|| ProvisionError::NotFound(client_id.to_owned()))?;
        if rep["enabled"] == json!(enabled) {
            return Ok(());
        }
        let id = rep["id"].as_str().unwrap_or_default().to_owned();
        rep["enabled"] = json!(enabled);
        // The secret is not part of the update (Keycloak keeps it when absent).
        if let Value::Object(m) = &mut rep {
            m.remove("secret");
        }
        let mut url = self.clients_url(realm)?;
        url.path_segments_mut()
            .map_err(|_| unavailable("base_url", "cannot be a base"))?
            .push(&id);
        let resp = self
            .http
            .put(url)
            .bearer_auth(&token)
            .json(&rep)
            .send()
            .await
            .map_err(|e| unavailable("client update", e.without_url()))?;
        match resp.status().as_u16() {
            200 | 204 => Ok(()),
            404 => Err(ProvisionError::NotFound(client_id.to_owned())),
            s => Err(unavailable("client update", s)),
        }
    }

    async fn secret(
        &self,
        token: &str,
        realm: &str,
        internal_id: &str,
        regenerate: bool,
    ) -> Result<Secret, ProvisionError> {
        let mut url = self.clients_url(realm)?;
        url.path_segments_mut()
            .map_err(|_| unavailable("base_url", "cannot be a base"))?
            .extend([internal_id, "client-secret"]);
        let req = if regenerate {
            self.http.post(url)
        } else {
            self.http.get(url)
        };
        let resp = req
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| unavailable("client secret", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(unavailable("client secret", resp.status()));
        }
        let c: Credential = resp
            .json()
            .await
            .map_err(|e| unavailable("client secret", e.without_url()))?;
        c.value
            .filter(|v| !v.is_empty())
            .map(Secret)
            .ok_or_else(|| unavailable("client secret", "no secret in the answer"))
    }

    async fn create(&self, spec: &ClientSpec) -> Result<Provisioned, ProvisionError> {
        let token = self.token().await?;
        if self
            .find(&token, &spec.realm, &spec.client_id)
            .await?
            .is_some()
        {
            return Err(ProvisionError::Exists(spec.client_id.clone()));
        }
        let resp = self
            .http
            .post(self.clients_url(&spec.realm)?)
            .bearer_auth(&token)
            .json(&client_representation(spec))
            .send()
            .await
            .map_err(|e| unavailable("client creation", e.without_url()))?;
        match resp.status().as_u16() {
            201 | 204 => {}
            409 => return Err(ProvisionError::Exists(spec.client_id.clone())),
            s => return Err(unavailable("client creation", s)),
        }
        let internal_id = self
            .find(&token, &spec.realm, &spec.client_id)
            .await?
            .ok_or_else(|| unavailable("client creation", "the created client is not found"))?;
        let secret = self
            .secret(&token, &spec.realm, &internal_id, false)
            .await?;
        Ok(Provisioned {
            internal_id,
            secret,
        })
    }

    async fn rotate(&self, realm: &str, client_id: &str) -> Result<Secret, ProvisionError> {
        let token = self.token().await?;
        let id = self
            .find(&token, realm, client_id)
            .await?
            .ok_or_else(|| ProvisionError::NotFound(client_id.to_owned()))?;
        self.secret(&token, realm, &id, true).await
    }

    async fn delete(&self, realm: &str, client_id: &str) -> Result<(), ProvisionError> {
        let token = self.token().await?;
        let Some(id) = self.find(&token, realm, client_id).await? else {
            return Ok(());
        };
        let mut url = self.clients_url(realm)?;
        url.path_segments_mut()
            .map_err(|_| unavailable("base_url", "cannot be a base"))?
            .push(&id);
        let resp = self
            .http
            .delete(url)
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| unavailable("client deletion", e.without_url()))?;
        if resp.status().is_success() || resp.status().as_u16() == 404 {
            Ok(())
        } else {
            Err(unavailable("client deletion", resp.status()))
        }
    }
}

impl Provisioner for KeycloakAdmin {
    fn create_client<'a>(
        &'a self,
        spec: &'a ClientSpec,
    ) -> BoxFuture<'a, Result<Provisioned, ProvisionError>> {
        Box::pin(self.create(spec))
    }

    fn rotate_secret<'a>(
        &'a self,
        realm: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Secret, ProvisionError>> {
        Box::pin(self.rotate(realm, client_id))
    }

    fn delete_client<'a>(
        &'a self,
        realm: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(self.delete(realm, client_id))
    }

    fn set_enabled<'a>(
        &'a self,
        realm: &'a str,
        client_id: &'a str,
        enabled: bool,
    ) -> BoxFuture<'a, Result<(), ProvisionError>> {
        Box::pin(self.enable(realm, client_id, enabled))
    }
}

/// `application/x-www-form-urlencoded` value encoding.
fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The Keycloak realm of an issuer URL (`…/realms/<realm>`), if it has one.
pub fn realm_of_issuer(issuer: &str) -> Option<&str> {
    let (_, rest) = issuer.rsplit_once("/realms/")?;
    let realm = rest.trim_end_matches('/');
    (!realm.is_empty() && !realm.contains('/')).then_some(realm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realm_from_issuer() {
        assert_eq!(realm_of_issuer("https://idp/realms/ke"), Some("ke"));
        assert_eq!(realm_of_issuer("https://idp/realms/ke/"), Some("ke"));
        assert_eq!(realm_of_issuer("https://idp/other"), None);
    }

    fn config(secret: &str, file: Option<PathBuf>) -> KeycloakConfig {
        KeycloakConfig {
            base_url: "http://127.0.0.1:1".into(),
            admin_realm: "master".into(),
            client_id: "scp".into(),
            client_secret: secret.into(),
            client_secret_file: file,
            timeout_s: 1,
            sync_interval_s: 1,
        }
    }

    // EXT-5.1-1: the file is read on every use (trimmed), so rewriting it rotates the secret; a
    // missing file is `unavailable` without its path's content; inline + file is refused.
    #[tokio::test]
    async fn admin_secret_from_file_per_use() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kc");
        std::fs::write(&f, "first\n").unwrap();
        let kc = KeycloakAdmin::new(config("", Some(f.clone()))).unwrap();
        assert_eq!(kc.admin_secret().await.unwrap(), "first");
        std::fs::write(&f, "second").unwrap();
        assert_eq!(kc.admin_secret().await.unwrap(), "second");
        std::fs::remove_file(&f).unwrap();
        let e = kc.admin_secret().await.unwrap_err();
        assert_eq!(e.class(), "unavailable");
        let inline = KeycloakAdmin::new(config("inline", None)).unwrap();
        assert_eq!(inline.admin_secret().await.unwrap(), "inline");
        assert!(config("inline", Some(f)).validate().is_err());
        assert!(config("inline", None).validate().is_ok());
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        let c = KeycloakConfig {
            base_url: "http://x".into(),
            admin_realm: "master".into(),
            client_id: "scp".into(),
            client_secret: "hunter2".into(),
            client_secret_file: None,
            timeout_s: 1,
            sync_interval_s: 1,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&c).unwrap().contains("hunter2"));
    }
}
