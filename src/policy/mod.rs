//! Policy as files and as a compiled, immutable snapshot.
//!
//! - [`model`]: the documents (tenants, integrations, routes, deny rules).
//! - [`PolicySet::load_dir`]: reads every `*.yaml`/`*.yml` file of a directory and validates the
//!   whole set; every problem is reported with its file, entry and field, and nothing is returned
//!   (so nothing is applied) unless the whole set is valid (EXT-4.2-1).
//! - [`snapshot`]: the compiled [`PolicySnapshot`] the decision pipeline reads, lock-free, through an
//!   `ArcSwap`.

pub mod cedar;
pub mod model;
pub mod snapshot;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

pub use model::*;
use serde::{Deserialize, Serialize};
pub use snapshot::{PolicySnapshot, RouteMatch};

/// One validation problem: where it is and what is wrong. Displayed as
/// `FILE: ENTRY: FIELD: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyError {
    /// File name relative to the policy directory (or `<store>` / `<set>`).
    pub file: String,
    /// e.g. `integrations[2] (int-ke-moh)`, or `-` for file-level problems.
    pub entry: String,
    /// Field path inside the entry, e.g. `rate_limit.burst`, or `-`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.file, self.entry, self.field, self.message
        )
    }
}

/// All problems found in one validation run (never empty).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} policy error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct PolicyErrors(pub Vec<PolicyError>);

/// The complete, validated set of policy documents. Entries are sorted by id so the set has one
/// canonical form (its [`digest`](PolicySet::digest) makes `policy apply` idempotent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicySet {
    pub tenants: Vec<Tenant>,
    pub integrations: Vec<Integration>,
    pub routes: Vec<Route>,
    pub deny_rules: Vec<DenyRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_packs: Vec<PolicyPack>,
}

/// Where each entry came from, for error messages.
#[derive(Default)]
struct Origins {
    map: HashMap<(&'static str, String), (String, usize)>,
}

impl Origins {
    /// A closure recording one problem `(field, message)` of entry `kind`/`id` into `out`.
    fn reporter<'a>(
        &self,
        out: &'a mut Vec<PolicyError>,
        kind: &'static str,
        id: &str,
    ) -> impl FnMut(&str, String) + 'a {
        let (file, entry) = self.entry(kind, id);
        move |field, message| {
            out.push(PolicyError {
                file: file.clone(),
                entry: entry.clone(),
                field: field.into(),
                message,
            })
        }
    }

    fn entry(&self, kind: &'static str, id: &str) -> (String, String) {
        match self.map.get(&(kind, id.to_owned())) {
            Some((file, idx)) => (file.clone(), format!("{kind}[{idx}] ({id})")),
            None => ("<set>".into(), format!("{kind} ({id})")),
        }
    }
}

impl PolicySet {
    /// Reads and validates every `*.yaml` / `*.yml` file directly inside `dir` (sorted by name).
    ///
    /// Errors: [`PolicyErrors`] listing every parse and validation problem with file, entry and field.
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyErrors> {
        let mut errors = Vec::new();
        let mut files = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let p = e.path();
                    let ext = p.extension().and_then(|s| s.to_str()).unwrap_or("");
                    if p.is_file() && (ext == "yaml" || ext == "yml") {
                        files.push(p);
                    }
                }
            }
            Err(e) => {
                return Err(PolicyErrors(vec![PolicyError {
                    file: dir.display().to_string(),
                    entry: "-".into(),
                    field: "-".into(),
                    message: format!("cannot read policy directory: {e}"),
                }]));
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(PolicyErrors(vec![PolicyError {
                file: dir.display().to_string(),
                entry: "-".into(),
                field: "-".into(),
                message: "no `*.yaml` policy files in directory".into(),
            }]));
        }
        let mut parsed = Vec::new();
        for p in &files {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::read_to_string(p) {
                Ok(text) => match Self::parse_file(&name, &text) {
                    Ok(f) => parsed.push((name, f)),
                    Err(e) => errors.push(e),
                },
                Err(e) => errors.push(PolicyError {
                    file: name,
                    entry: "-".into(),
                    field: "-".into(),
                    message: format!("cannot read file: {e}"),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        Self::from_files(parsed)
    }

    /// Parses one YAML document. The error names the line, column and, when serde knows it, the
    /// field (`unknown field`, `missing field`, wrong type).
    pub fn parse_file(name: &str, text: &str) -> Result<PolicyFile, PolicyError> {
        if text.trim().is_empty() {
            return Ok(PolicyFile::default());
        }
        serde_yaml_ng::from_str::<PolicyFile>(text).map_err(|e| {
            let (entry, field) = locate_yaml_error(&e);
            PolicyError {
                file: name.to_owned(),
                entry,
                field,
                message: e.to_string(),
            }
        })
    }

    /// Merges parsed files (name, content) into one validated, canonical set.
    pub fn from_files(files: Vec<(String, PolicyFile)>) -> Result<PolicySet, PolicyErrors> {
        let mut set = PolicySet::default();
        let mut origins = Origins::default();
        let mut errors = Vec::new();
        for (name, f) in files {
            macro_rules! merge {
                ($list:ident, $kind:literal) => {
                    for (i, item) in f.$list.into_iter().enumerate() {
                        let key = ($kind, item.id.clone());
                        if let Some((pf, pi)) = origins.map.get(&key) {
                            errors.push(PolicyError {
                                file: name.clone(),
                                entry: format!("{}[{}] ({})", $kind, i, item.id),
                                field: "id".into(),
                                message: format!(
                                    "duplicate id `{}` (first defined in {} {}[{}])",
                                    item.id, pf, $kind, pi
                                ),
                            });
                            continue;
                        }
                        origins.map.insert(key, (name.clone(), i));
                        set.$list.push(item);
                    }
                };
            }
            merge!(tenants, "tenants");
            merge!(integrations, "integrations");
            merge!(routes, "routes");
            merge!(deny_rules, "deny_rules");
            merge!(policy_packs, "policy_packs");
        }
        set.sort();
        errors.extend(set.problems(&origins));
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(PolicyErrors(errors))
        }
    }

    /// Validates a set that did not come from files (e.g. read back from the store).
    pub fn validate(mut self) -> Result<PolicySet, PolicyErrors> {
        self.sort();
        let errors = self.problems(&Origins::default());
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(PolicyErrors(errors))
        }
    }

    fn sort(&mut self) {
        self.tenants.sort_by(|a, b| a.id.cmp(&b.id));
        self.integrations.sort_by(|a, b| a.id.cmp(&b.id));
        self.routes.sort_by(|a, b| a.id.cmp(&b.id));
        self.deny_rules.sort_by(|a, b| a.id.cmp(&b.id));
        self.policy_packs.sort_by(|a, b| a.id.cmp(&b.id));
    }

    /// Hex SHA-256 of the canonical JSON form; equal sets have equal digests.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }

    fn problems(&self, origins: &Origins) -> Vec<PolicyError> {
        let mut out = Vec::new();
        let tenants: HashSet<&str> = self.tenants.iter().map(|t| t.id.as_str()).collect();
        let routes: HashSet<&str> = self.routes.iter().map(|r| r.id.as_str()).collect();
        let integrations: HashMap<&str, &Integration> = self
            .integrations
            .iter()
            .map(|i| (i.id.as_str(), i))
            .collect();
        let mut issuers: HashMap<&str, &str> = HashMap::new();
        // Every region the policy names (INT-4.5-3): a route's `data_region` must be one of them.
        let regions: HashSet<&str> = self
            .tenants
            .iter()
            .flat_map(|t| {
                std::iter::once(&t.residency_region)
                    .chain(&t.allowed_export_regions)
                    .chain(&t.aggregate_export_regions)
            })
            .map(String::as_str)
            .collect();

        for t in &self.tenants {
            let mut err = origins.reporter(&mut out, "tenants", &t.id);
            if !is_ident(&t.id, false) {
                err("id", format!("`{}` must match [a-z0-9][a-z0-9_-]*", t.id));
            }
            if t.residency_region.trim().is_empty() {
                err("residency_region", "must not be empty".into());
            }
            for (field, list) in [
                ("allowed_export_regions", &t.allowed_export_regions),
                ("aggregate_export_regions", &t.aggregate_export_regions),
            ] {
                for (k, r) in list.iter().enumerate() {
                    if !is_ident(r, false) {
                        err(
                            &format!("{field}[{k}]"),
                            format!("`{r}` is not a region name ([a-z0-9][a-z0-9_-]*)"),
                        );
                    } else if *r == t.residency_region || list[..k].contains(r) {
                        err(
                            &format!("{field}[{k}]"),
                            format!(
                                "`{r}` is the tenant's residency region or listed twice (INT-4.5-3)"
                            ),
                        );
                    }
                }
            }
            if let Some(d) = t.consent_grace_days
                && d > crate::consent::model::MAX_GRACE_DAYS
            {
                err(
                    "consent_grace_days",
                    format!("{d} is above the global maximum of 90 days (CON-27)"),
                );
            }
            if let Some(days) = &t.consent_reminder_days {
                let mut seen = HashSet::new();
                if days.is_empty() || days.len() > 16 {
                    err("consent_reminder_days", "1 to 16 days before expiry".into());
                }
                for d in days {
                    if *d == 0 || *d > 366 || !seen.insert(*d) {
                        err(
                            "consent_reminder_days",
                            format!("{d}: each day is 1–366 and appears once"),
                        );
                    }
                }
            }
            if let Err(m) = check_url(&t.issuer) {
                err("issuer", m);
            }
            if let Some(other) = issuers.insert(t.issuer.as_str(), t.id.as_str()) {
                err(
                    "issuer",
                    format!("issuer `{}` is already used by tenant `{other}`", t.issuer),
                );
            }
            match &t.jwks {
                JwksSource::Url(u) => {
                    if let Err(m) = check_url(u) {
                        err("jwks.url", m);
                    }
                }
                JwksSource::File(f) => {
                    if f.trim().is_empty() {
                        err("jwks.file", "must not be empty".into());
                    }
                }
            }
            if t.audience.as_deref().is_some_and(|a| a.trim().is_empty()) {
                err("audience", "must not be empty when set".into());
            }
        }

        for i in &self.integrations {
            let mut err = origins.reporter(&mut out, "integrations", &i.id);
            if !is_ident(&i.id, true) {
                err(
                    "id",
                    format!("`{}` must match [A-Za-z0-9][A-Za-z0-9._-]*", i.id),
                );
            }
            if let Some(owner) = id_namespace(&i.id, tenants.iter().copied())
                && owner != i.tenant
            {
                err(
                    "id",
                    format!(
                        "`int-{owner}-…` ids belong to tenant `{owner}`, not `{}`",
                        i.tenant
                    ),
                );
            }
            if !tenants.contains(i.tenant.as_str()) {
                err("tenant", format!("unknown tenant `{}`", i.tenant));
            }
            if i.partner_name.trim().is_empty() {
                err("partner_name", "must not be empty".into());
            }
            if i.legal_basis.trim().is_empty() {
                err("legal_basis", "must not be empty".into());
            }
            if i.verticals.is_empty() {
                err(
                    "verticals",
                    "an integration declares at least one vertical".into(),
                );
            }
            for (k, v) in i.verticals.iter().enumerate() {
                if !is_ident(v, false) {
                    err(
                        &format!("verticals[{k}]"),
                        format!("`{v}` is not a valid vertical"),
                    );
                }
            }
            for (k, s) in i.scopes.iter().enumerate() {
                if s.trim().is_empty() || s.contains(char::is_whitespace) {
                    err(
                        &format!("scopes[{k}]"),
                        format!("`{s}` is not a valid scope"),
                    );
                }
            }
            for (k, t) in i.partner_tenants.iter().enumerate() {
                if *t == i.tenant
                    || !tenants.contains(t.as_str())
                    || i.partner_tenants[..k].contains(t)
                {
                    err(
                        &format!("partner_tenants[{k}]"),
                        format!("`{t}`: another known tenant, once (INT-4.5-2)"),
                    );
                }
            }
            if let Some(rs) = &i.routes {
                for (k, r) in rs.iter().enumerate() {
                    if !routes.contains(r.as_str()) {
                        err(&format!("routes[{k}]"), format!("unknown route `{r}`"));
                    }
                }
            }
            if let Some(rl) = i.rate_limit {
                if rl.per_second == 0 {
                    err("rate_limit.per_second", "must be at least 1".into());
                }
                if rl.burst == 0 {
                    err("rate_limit.burst", "must be at least 1".into());
                }
            }
            if let Some(q) = i.quota
                && q.per_day == 0
            {
                err("quota.per_day", "must be at least 1".into());
            }
            for (field, v) in [
                ("api_key_sha256", &i.api_key_sha256),
                ("mtls_cert_sha256", &i.mtls_cert_sha256),
            ] {
                if let Some(h) = v
                    && !(h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                {
                    err(field, "must be 64 lower-case hex digits (SHA-256)".into());
                }
            }
            if let Some(fp) = &i.field_policy.allowed_fields
                && fp.iter().any(|f| f.trim().is_empty())
            {
                err(
                    "field_policy.allowed_fields",
                    "field names must not be empty".into(),
                );
            }
        }

        let mut shapes: HashMap<(String, Vec<Option<String>>), &str> = HashMap::new();
        for r in &self.routes {
            let mut err = origins.reporter(&mut out, "routes", &r.id);
            if !is_ident(&r.id, true) {
                err(
                    "id",
                    format!("`{}` must match [A-Za-z0-9][A-Za-z0-9._-]*", r.id),
                );
            }
            if r.methods.is_empty() {
                err("methods", "at least one method".into());
            }
            for (k, m) in r.methods.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    err(
                        &format!("methods[{k}]"),
                        format!("`{m}` is not an upper-case HTTP method"),
                    );
                }
            }
            let template = match snapshot::parse_template(&r.path) {
                Ok(t) => Some(t),
                Err(m) => {
                    err("path", m);
                    None
                }
            };
            if r.verticals.is_empty() {
                err(
                    "verticals",
                    "a route names at least one vertical (INT-4.4-3)".into(),
                );
            }
            if r.scope.trim().is_empty() || r.scope.contains(char::is_whitespace) {
                err("scope", format!("`{}` is not a valid scope", r.scope));
            }
            if r.resource.trim().is_empty() {
                err("resource", "must not be empty".into());
            }
            if let Some(g) = &r.data_region
                && !regions.contains(g.as_str())
            {
                err(
                    "data_region",
                    if is_ident(g, false) {
                        format!(
                            "unknown region `{g}`: not the residency or export region of any tenant (INT-4.5-3)"
                        )
                    } else {
                        format!("`{g}` is not a region name ([a-z0-9][a-z0-9_-]*)")
                    },
                );
            }
            if let Err((field, m)) = crate::payload::PayloadRules::compile(r) {
                err(&field, m);
            }
            if let Some(p) = &r.consent_purpose
                && !is_ident(p, false)
            {
                err(
                    "consent_purpose",
                    format!("`{p}` must match [a-z0-9][a-z0-9_-]*"),
                );
            }
            match (&r.person_id, &template) {
                (Some(PersonLocation::Path { name }), Some(t)) if !t.has_param(name) => {
                    err(
                        "person_id.name",
                        format!("path template has no `{{{name}}}` parameter"),
                    );
                }
                (Some(PersonLocation::Header { name }), _)
                    if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) =>
                {
                    err(
                        "person_id.name",
                        "header names are lower-case and non-empty".into(),
                    );
                }
                (Some(PersonLocation::Query { name }), _) if name.is_empty() => {
                    err("person_id.name", "must not be empty".into());
                }
                (Some(PersonLocation::Body { pointer }), _) if !pointer.starts_with('/') => {
                    err("person_id.pointer", "a JSON pointer starts with `/`".into());
                }
                (Some(PersonLocation::Body { pointer }), _)
                    if pointer.split('/').skip(1).any(str::is_empty) =>
                {
                    err(
                        "person_id.pointer",
                        "a JSON pointer has no empty segments".into(),
                    );
                }
                _ => {}
            }
            if let Some(t) = &template {
                for m in &r.methods {
                    let key = (m.clone(), t.shape());
                    if let Some(other) = shapes.insert(key, r.id.as_str()) {
                        err(
                            "path",
                            format!("`{m} {}` is ambiguous with route `{other}`", r.path),
                        );
                    }
                }
            }
        }

        for d in &self.deny_rules {
            let mut err = origins.reporter(&mut out, "deny_rules", &d.id);
            if !tenants.contains(d.tenant.as_str()) {
                err("tenant", format!("unknown tenant `{}`", d.tenant));
            }
            if let Some(i) = &d.integration {
                match integrations.get(i.as_str()) {
                    None => err("integration", format!("unknown integration `{i}`")),
                    // A tenant may deny a cross-tenant partner that reaches it (INT-4.5-2).
                    Some(int)
                        if int.tenant != d.tenant && !int.partner_tenants.contains(&d.tenant) =>
                    {
                        err(
                            "integration",
                            format!("integration `{i}` belongs to tenant `{}`", int.tenant),
                        )
                    }
                    _ => {}
                }
            }
            if d.reason.trim().is_empty() {
                err("reason", "must not be empty".into());
            }
            validate_deny_extras(d, &mut err);
            if d.mode.is_shadow() && !d.for_traffic() {
                err(
                    "mode",
                    "shadow mode is only supported for partner-traffic deny rules".into(),
                );
            }
        }

        // Policy packs (ADM-6): tenant exists, vertical known, Cedar valid against the schema,
        // windows well-formed, one enforced pack per (tenant, vertical).
        let known_verticals: HashSet<&str> = self
            .routes
            .iter()
            .flat_map(|r| r.verticals.iter())
            .chain(self.integrations.iter().flat_map(|i| i.verticals.iter()))
            .map(String::as_str)
            .collect();
        let mut enforced: HashMap<(&str, &str), &str> = HashMap::new();
        let mut shadowed: HashMap<(&str, &str), &str> = HashMap::new();
        for p in &self.policy_packs {
            let mut err = origins.reporter(&mut out, "policy_packs", &p.id);
            if !is_ident(&p.id, true) {
                err(
                    "id",
                    format!("`{}` must match [A-Za-z0-9][A-Za-z0-9._-]*", p.id),
                );
            }
            if !tenants.contains(p.tenant.as_str()) {
                err("tenant", format!("unknown tenant `{}`", p.tenant));
            }
            if !is_ident(&p.vertical, false) || !known_verticals.contains(p.vertical.as_str()) {
                err(
                    "vertical",
                    format!(
                        "`{}` is not a vertical any route or integration uses",
                        p.vertical
                    ),
                );
            }
            if !matches!(p.status, PackStatus::Archived | PackStatus::Deprecated)
                && let Err(m) = cedar::check_policies(&p.policies)
            {
                err("policies", m);
            }
            let from = p.active_from.as_deref().map(|t| (t, "active_from"));
            let until = p.active_until.as_deref().map(|t| (t, "active_until"));
            let mut times = Vec::new();
            for (t, field) in from.into_iter().chain(until) {
                match chrono::DateTime::parse_from_rfc3339(t) {
                    Ok(x) => times.push(x),
                    Err(_) => err(field, format!("`{t}` is not an RFC 3339 time")),
                }
            }
            if p.active_from.is_some()
                && p.active_until.is_some()
                && times.len() == 2
                && times[1] <= times[0]
            {
                err("active_until", "must be after active_from".into());
            }
            // One enforced and at most one shadow pack per (tenant, vertical).
            let (seen, what) = if p.mode.is_shadow() {
                (&mut shadowed, "in shadow mode")
            } else {
                (&mut enforced, "enforced")
            };
            if matches!(p.status, PackStatus::Active | PackStatus::Restricted)
                && let Some(other) =
                    seen.insert((p.tenant.as_str(), p.vertical.as_str()), p.id.as_str())
            {
                err(
                    "status",
                    format!(
                        "pack `{other}` is already {what} for tenant `{}` vertical `{}`",
                        p.tenant, p.vertical
                    ),
                );
            }
        }
        out
    }

    /// Counts per kind, for CLI output: (tenants, integrations, routes, deny rules).
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        BTreeMap::from([
            ("tenants", self.tenants.len()),
            ("integrations", self.integrations.len()),
            ("routes", self.routes.len()),
            ("deny_rules", self.deny_rules.len()),
        ])
    }
}

/// Identifier rule: lower-case (`[a-z0-9][a-z0-9_-]*`) or, with `mixed`, `[A-Za-z0-9][A-Za-z0-9._-]*`.
/// The tenant whose namespace an integration id lies in: the longest tenant id `t` such that
/// the id begins with `int-<t>-`, `None` when there is none. An id in a tenant's namespace
/// belongs to that tenant only (checked for files here, for admin-API creates in
/// `admin::integrations`), so ids are per tenant: no caller can learn or take an id of
/// another tenant's namespace by trying to create it (INT-4.1).
pub fn id_namespace<'a>(id: &str, tenants: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let rest = id.strip_prefix("int-")?;
    tenants
        .filter(|t| {
            rest.strip_prefix(t)
                .is_some_and(|after| after.starts_with('-'))
        })
        .max_by_key(|t| t.len())
}

fn is_ident(s: &str, mixed: bool) -> bool {
    let mut bytes = s.bytes();
    let ok_first =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || (mixed && b.is_ascii_uppercase());
    match bytes.next() {
        Some(b) if ok_first(b) => {}
        _ => return false,
    }
    s.len() <= 128 && bytes.all(|b| ok_first(b) || b == b'-' || b == b'_' || (mixed && b == b'.'))
}

/// Issuer and JWKS URLs: `https://`, or `http://` to a loopback host only (local development).
fn check_url(u: &str) -> Result<(), String> {
    // EXT-6-4 / INT-7.1-1: https, or plain http to a loopback host only. The reporter names the
    // field; the shared check's own field prefix is left out.
    if u.chars().any(char::is_whitespace) {
        return Err(format!("`{u}` has no host"));
    }
    crate::tls::check_outbound_url("", u).map_err(|e| e.trim_start_matches(": ").to_owned())
}

/// Best-effort `(entry, field)` for a serde_yaml error: the list and index from the error's path
/// text, and the field from "unknown field"/"missing field" messages.
fn locate_yaml_error(e: &serde_yaml_ng::Error) -> (String, String) {
    let msg = e.to_string();
    // serde_yaml_ng prefixes errors with their path, e.g. "integrations[1].rate_limit: invalid type ..."
    let path = msg.split(": ").next().unwrap_or("");
    let entry = if path.contains('[') {
        path.split('.').next().unwrap_or("-").to_owned()
    } else {
        match e.location() {
            Some(l) => format!("line {} column {}", l.line(), l.column()),
            None => "-".to_owned(),
        }
    };
    let field = if let Some(f) = between(&msg, "unknown field `", "`") {
        f
    } else if let Some(f) = between(&msg, "missing field `", "`") {
        f
    } else if path.contains('.') {
        path.split_once('.').map(|x| x.1).unwrap_or("-").to_owned()
    } else {
        "-".to_owned()
    };
    (entry, field)
}

fn between(s: &str, a: &str, b: &str) -> Option<String> {
    let start = s.find(a)? + a.len();
    let end = s[start..].find(b)? + start;
    Some(s[start..end].to_owned())
}

/// The admin-API fields of a deny rule (ADM-3): the subject, the action for partner traffic,
/// the window.
fn validate_deny_extras(d: &DenyRule, err: &mut impl FnMut(&str, String)) {
    match (d.subject_type, &d.subject_id) {
        (Some(_), None) => err("subject_id", "is required with subject_type".into()),
        (None, Some(_)) => err("subject_type", "is required with subject_id".into()),
        (Some(DenySubject::Integration), Some(s)) if d.integration.as_ref() != Some(s) => err(
            "integration",
            "must equal subject_id when subject_type is integration".into(),
        ),
        _ => {}
    }
    if let Some(a) = &d.action {
        if d.for_traffic() && a != "read" && a != "write" {
            err(
                "action",
                format!("`{a}`: partner traffic rules take read or write"),
            );
        } else if a.trim().is_empty() {
            err("action", "must not be blank".into());
        }
    }
    let mut bounds = [None, None];
    for (i, (name, v)) in [
        ("active_from", &d.active_from),
        ("active_until", &d.active_until),
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(t) = v {
            match chrono::DateTime::parse_from_rfc3339(t) {
                Ok(t) => bounds[i] = Some(t),
                Err(_) => err(name, "must be an RFC 3339 time".into()),
            }
        }
    }
    if let [Some(f), Some(u)] = bounds
        && u <= f
    {
        err("active_until", "must be after active_from".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant_yaml() -> &'static str {
        "tenants:\n  - id: ke\n    residency_region: africa-east\n    issuer: https://idp.example/realms/ke\n    jwks: {url: https://idp.example/realms/ke/certs}\n"
    }

    /// EXT-4.2-1: an unknown field is an error naming file, entry and field.
    #[test]
    fn unknown_field_is_named() {
        let text = format!(
            "{}integrations:\n  - id: a\n    tenant: ke\n    partner_name: P\n    legal_basis: L\n    state: active\n    verticals: [health]\n    scopes: []\n    ip_alowlist: []\n",
            tenant_yaml()
        );
        let e = PolicySet::parse_file("x.yaml", &text).unwrap_err();
        assert_eq!(e.file, "x.yaml");
        assert_eq!(e.field, "ip_alowlist");
        assert!(e.entry.starts_with("integrations[0]"), "{e}");
    }

    /// INT-4.1: integration ids are per tenant: `int-<t>-…` belongs to the longest tenant id
    /// `t` that fits; a file integration in another tenant's namespace is refused.
    #[test]
    fn integration_ids_lie_in_their_tenants_namespace() {
        let t = ["ke", "ke-north", "ug"];
        assert_eq!(id_namespace("int-ke-moh", t.into_iter()), Some("ke"));
        assert_eq!(
            id_namespace("int-ke-north-x", t.into_iter()),
            Some("ke-north")
        );
        assert_eq!(id_namespace("int-kenya", t.into_iter()), None);
        assert_eq!(id_namespace("int-ug", t.into_iter()), None);
        assert_eq!(id_namespace("ke-moh", t.into_iter()), None);
        let text = format!(
            "{}  - id: ug\n    residency_region: africa-east\n    issuer: https://idp.example/realms/ug\n    jwks: {{url: https://idp.example/realms/ug/certs}}\nintegrations:\n  - id: int-ug-squat\n    tenant: ke\n    partner_name: P\n    legal_basis: L\n    state: active\n    verticals: [health]\n    scopes: [health:person:read]\n",
            tenant_yaml()
        );
        let f = PolicySet::parse_file("i.yaml", &text).unwrap();
        let errs = PolicySet::from_files(vec![("i.yaml".into(), f.clone())])
            .unwrap_err()
            .0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "id");
        assert!(
            errs[0].message.contains("belong to tenant `ug`"),
            "{errs:?}"
        );
        let ok = text.replace("int-ug-squat", "int-ke-fine");
        let f = PolicySet::parse_file("i.yaml", &ok).unwrap();
        assert!(PolicySet::from_files(vec![("i.yaml".into(), f)]).is_ok());
    }

    /// EXT-4.2-1: semantic errors name the entry and field; all are reported.
    #[test]
    fn semantic_errors_are_collected() {
        let text = format!(
            "{}integrations:\n  - id: a\n    tenant: xx\n    partner_name: P\n    legal_basis: ''\n    state: active\n    verticals: []\n    scopes: [s]\n    rate_limit: {{per_second: 0, burst: 1}}\n",
            tenant_yaml()
        );
        let f = PolicySet::parse_file("i.yaml", &text).unwrap();
        let errs = PolicySet::from_files(vec![("i.yaml".into(), f)])
            .unwrap_err()
            .0;
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"tenant"));
        assert!(fields.contains(&"legal_basis"));
        assert!(fields.contains(&"verticals"));
        assert!(fields.contains(&"rate_limit.per_second"));
        assert!(
            errs.iter()
                .all(|e| e.file == "i.yaml" && e.entry == "integrations[0] (a)")
        );
    }

    /// ADM-3: the admin-API fields of deny rules are validated; old-style rules still load.
    #[test]
    fn deny_rule_extras_are_validated() {
        let text = format!(
            "{}deny_rules:\n  - {{id: old, tenant: ke, action: read, reason: r}}\n  - {{id: d1, tenant: ke, subject_type: integration, subject_id: x, action: approve, reason: r}}\n  - {{id: d2, tenant: ke, subject_type: user, reason: r, active_from: '2026-02-01T00:00:00Z', active_until: '2026-01-01T00:00:00Z'}}\n  - {{id: d3, tenant: ke, subject_type: user, subject_id: u, action: approve, status: revoked, reason: r}}\n",
            tenant_yaml()
        );
        let f = PolicySet::parse_file("d.yaml", &text).unwrap();
        let errs = PolicySet::from_files(vec![("d.yaml".into(), f)])
            .unwrap_err()
            .0;
        let got: Vec<(String, String)> = errs
            .iter()
            .map(|e| (e.entry.clone(), e.field.clone()))
            .collect();
        let has =
            |entry: &str, field: &str| got.iter().any(|(e, f)| e.contains(entry) && f == field);
        assert!(has("(d1)", "integration"), "{got:?}");
        assert!(has("(d1)", "action"), "{got:?}");
        assert!(has("(d2)", "subject_id"), "{got:?}");
        assert!(has("(d2)", "active_until"), "{got:?}");
        assert!(
            !got.iter()
                .any(|(e, _)| e.contains("(old)") || e.contains("(d3)")),
            "{got:?}"
        );
    }

    /// Issue 16: `mode` accepts `enforce` and `shadow` only (the error names the field); shadow
    /// deny rules are partner-traffic rules; a (tenant, vertical) has at most one active shadow
    /// pack next to its enforced one; `enforce` is never written out.
    #[test]
    fn shadow_mode_is_validated() {
        let bad = format!(
            "{}deny_rules:\n  - {{id: d, tenant: ke, action: read, reason: r, mode: dry-run}}\n",
            tenant_yaml()
        );
        let e = PolicySet::parse_file("m.yaml", &bad).unwrap_err();
        assert!(
            e.field.contains("mode") || e.message.contains("mode"),
            "{e:?}"
        );
        assert!(e.message.contains("dry-run"), "{e:?}");

        let pack = |id: &str, mode: &str| {
            format!(
                "  - {{id: {id}, tenant: ke, vertical: health, status: active, {mode} policies: 'permit(principal, action, resource);'}}\n"
            )
        };
        let base = format!(
            "{}integrations:\n  - {{id: i, tenant: ke, partner_name: P, legal_basis: L, state: active, verticals: [health], scopes: [s]}}\n",
            tenant_yaml()
        );
        let ok = format!(
            "{base}deny_rules:\n  - {{id: d, tenant: ke, integration: i, reason: r, mode: shadow}}\npolicy_packs:\n{}{}",
            pack("enforced", ""),
            pack("candidate", "mode: shadow,")
        );
        let f = PolicySet::parse_file("ok.yaml", &ok).unwrap();
        let set = PolicySet::from_files(vec![("ok.yaml".into(), f)]).unwrap();
        let json = serde_json::to_string(&set.policy_packs).unwrap();
        assert_eq!(json.matches("\"mode\"").count(), 1, "{json}");
        let snap = PolicySnapshot::compile(set, 1, "aud");
        assert!(!snap.packs.is_empty() && !snap.shadow_packs.is_empty());
        assert_eq!(snap.shadow_denies["ke"].len(), 1);
        assert!(!snap.traffic_denies.contains_key("ke"));

        let two = format!(
            "{base}deny_rules:\n  - {{id: u, tenant: ke, subject_type: user, subject_id: x, reason: r, mode: shadow}}\npolicy_packs:\n{}{}",
            pack("c1", "mode: shadow,"),
            pack("c2", "mode: shadow,")
        );
        let f = PolicySet::parse_file("two.yaml", &two).unwrap();
        let errs = PolicySet::from_files(vec![("two.yaml".into(), f)])
            .unwrap_err()
            .0;
        let got: Vec<(String, String)> = errs
            .iter()
            .map(|e| (e.entry.clone(), e.field.clone()))
            .collect();
        assert!(
            got.iter().any(|(e, f)| e.contains("(c2)") && f == "status"),
            "{got:?}"
        );
        assert!(
            got.iter().any(|(e, f)| e.contains("(u)") && f == "mode"),
            "{got:?}"
        );
    }

    /// DESIGN stage 3: two routes that match the same requests are rejected at validation time.
    #[test]
    fn ambiguous_routes_are_rejected() {
        let r = "routes:\n  - {id: r1, methods: [GET], path: '/v1/{a}/x', verticals: [h], action: read, resource: r, scope: s, kind: real_time}\n  - {id: r2, methods: [GET], path: '/v1/{b}/x', verticals: [h], action: read, resource: r, scope: s, kind: real_time}\n";
        let f = PolicySet::parse_file("r.yaml", r).unwrap();
        let errs = PolicySet::from_files(vec![("r.yaml".into(), f)])
            .unwrap_err()
            .0;
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("ambiguous"), "{}", errs[0]);
    }

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(check_url("http://127.0.0.1:8080/realms/ke").is_ok());
        assert!(check_url("http://localhost/x").is_ok());
        assert!(check_url("https://idp.example").is_ok());
        assert!(check_url("http://idp.example/realms/ke").is_err());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("https://").is_err());
        // EXT-6-4: `[::2]` is not loopback (it once passed a prefix check).
        assert!(check_url("http://[::2]/x").is_err());
        assert!(check_url("http://[::1]:8080/x").is_ok());
    }
}
