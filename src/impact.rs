//! Impact preview (ADM-6): re-decide recorded decisions against a candidate policy and report
//! what flips.
//!
//! A decision record of format 3 carries everything a re-decision needs besides the request's
//! raw data ([`crate::decision::DecisionInputs`]: the token's scopes and verticals). The
//! policy-dependent stages — integration (2), route (3), tenant and vertical (4), scope (5),
//! deny rules and policy packs (6), residency (6b) — run again against the candidate
//! [`PolicySnapshot`] with the very functions the pipeline runs
//! ([`crate::pipeline::stages`]). Stages whose inputs are not policy keep their recorded
//! result: token validity, second factors (API key, mTLS, IP), the request's own ambiguity,
//! payload and persons, consent, rate limits. When the candidate lets a request go further than
//! it went when recorded, those later non-policy stages never ran: the re-decision then names
//! them as `unverified` (e.g. `deny → allow (unverified: consent, rate_limit)`), never guesses.
//!
//! Records older than format 3 (no `inputs`) are counted as not re-decidable, not guessed.
//!
//! Speed: identical input shapes (integration, route, method, tenants, token claims, persons,
//! recorded stages and code, UTC hour, candidate window epoch) are decided once.
//!
//! JSON report ([`ImpactReport`]):
//! ```json
//! {"window": {"from": "…", "to": "…"}, "tenant": null,
//!  "totals": {"read": 12, "redecided": 10, "unchanged": 8, "flipped": 2, "not_redecidable": 2},
//!  "flips": [{"tenant_id": "ke", "integration_id": "int-ke-1", "route_id": "health-person-record",
//!             "from": "OK", "to": "POLICY_DENIED", "unverified": [], "count": 2,
//!             "samples": ["0193…", "0193…"]}]}
//! ```

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::authn::VerifiedToken;
use crate::decision::{Decision, Denial, DenyCode, Outcome, Stage};
use crate::pipeline::stages;
use crate::policy::{PolicySnapshot, Route, RouteKind};

/// The fields of a recorded decision body (any format) a re-decision reads, borrowed from the
/// body text where it has no escapes.
#[derive(Debug, Deserialize)]
pub struct RecordedDecision<'a> {
    #[serde(borrow)]
    pub decision_id: Cow<'a, str>,
    #[serde(borrow)]
    pub code: Cow<'a, str>,
    #[serde(default)]
    pub format: Option<u32>,
    #[serde(borrow, default)]
    pub tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub target_tenant_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub integration_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub client_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    #[serde(borrow, default)]
    pub route_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub stages: Vec<Cow<'a, str>>,
    #[serde(default)]
    pub persons: usize,
    #[serde(borrow, default)]
    pub verticals: Vec<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub inputs: Option<RecordedInputs<'a>>,
    #[serde(borrow)]
    pub time: Cow<'a, str>,
}

/// `inputs` of a format-3 body.
#[derive(Debug, Deserialize)]
pub struct RecordedInputs<'a> {
    #[serde(borrow, default)]
    pub scopes: Vec<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub verticals: Vec<Cow<'a, str>>,
}

impl<'a> RecordedDecision<'a> {
    /// Parses a decision body. Errors: not JSON, or a required key missing.
    pub fn parse(body: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }

    fn ran(&self, stage: &str) -> bool {
        self.stages.iter().any(|s| s == stage)
    }

    fn allowed(&self) -> bool {
        self.code == "OK"
    }
}

/// One re-decision: the decision the candidate makes and the later non-policy stages it
/// assumed passed because they never ran when the request was recorded.
#[derive(Debug, Clone)]
pub struct Redecision {
    pub decision: Decision,
    /// Names of non-policy stages assumed passed: `second_factor`, `payload`, `consent`,
    /// `rate_limit`. Empty when the result is fully backed by the record.
    pub unverified: Vec<&'static str>,
}

/// Why a record cannot be re-decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRedecidable {
    /// Written before format 3: no token inputs recorded.
    OldFormat,
    /// The body did not parse, or its time is not RFC 3339.
    Malformed,
}

fn code_of(s: &str) -> Option<DenyCode> {
    crate::decision::ALL_CODES
        .iter()
        .copied()
        .find(|c| c.as_str() == s)
}

/// Which non-policy step a recorded denial code belongs to.
fn non_policy_step(code: DenyCode, rec: &RecordedDecision) -> Option<&'static str> {
    use DenyCode::*;
    Some(match code {
        ApiKeyInvalid | ClientCertificateInvalid | IpNotAllowed => "second_factor",
        PathAmbiguous | RequestAmbiguous => "request",
        PayloadInvalid | MediaTypeUnsupported | PersonIdMissing => "payload",
        ConsentMissing | ConsentPending | ConsentWithdrawn | ConsentExpired | ConsentRejected => {
            "consent"
        }
        DependencyUnavailable if rec.ran("consent") => "consent",
        RateLimited | QuotaExceeded => "rate_limit",
        _ => return None,
    })
}

/// Re-decides ONE recorded decision against `snap` (ADM-6): the policy stages run again with
/// the pipeline's own functions; non-policy stages keep their recorded outcome (see the module
/// documentation). Returns the full [`Decision`] the candidate makes — `stages` it went
/// through, `outcome`, `reasons` (the determining Cedar policies, `<pack>/<policy>`), route,
/// scopes — with the recorded decision id, time, tenant, integration and client, and the
/// non-policy stages assumed passed (`unverified`).
///
/// For `scp-pep explain --decision ID`: parse the body with [`RecordedDecision::parse`] and
/// call this with the current (or any) snapshot.
///
/// Errors: [`NotRedecidable::OldFormat`] for records before format 3,
/// [`NotRedecidable::Malformed`] when the recorded time does not parse.
pub fn redecide(
    snap: &PolicySnapshot,
    rec: &RecordedDecision,
) -> Result<Redecision, NotRedecidable> {
    let time = DateTime::parse_from_rfc3339(&rec.time)
        .map_err(|_| NotRedecidable::Malformed)?
        .with_timezone(&Utc);
    redecide_at(snap, rec, time, None)
}

fn redecide_at(
    snap: &PolicySnapshot,
    rec: &RecordedDecision,
    time: DateTime<Utc>,
    routes_by_id: Option<&HashMap<&str, &Route>>,
) -> Result<Redecision, NotRedecidable> {
    let mut d = Decision::new(&rec.method, "", time);
    d.decision_id = rec.decision_id.to_string();
    d.policy_version = Some(snap.version);
    d.tenant_id = rec.tenant_id.as_deref().map(str::to_owned);
    d.integration_id = rec.integration_id.as_deref().map(str::to_owned);
    d.client_id = rec.client_id.as_deref().map(str::to_owned);
    d.path = rec.path.to_string();
    let mut unverified = Vec::new();
    let recorded = code_of(&rec.code);
    let Some(inputs) = &rec.inputs else {
        if rec.format.unwrap_or(1) >= 3 {
            // Format 3 without inputs: denied before the token authenticated (stage 1), which
            // no policy stage reaches: the recorded result stands.
            d.stages.push(Stage::Authenticate);
            d.outcome = match recorded {
                Some(c) => Outcome::Deny(Denial::new(c, "recorded (stage 1)")),
                None => Outcome::Allow,
            };
            return Ok(Redecision {
                decision: d,
                unverified,
            });
        }
        return Err(NotRedecidable::OldFormat);
    };
    let token = VerifiedToken {
        tenant_id: rec.tenant_id.as_deref().unwrap_or_default().to_owned(),
        integration_id: rec.integration_id.as_deref().unwrap_or_default().to_owned(),
        verticals: inputs.verticals.iter().map(|v| v.to_string()).collect(),
        scopes: inputs.scopes.iter().map(|v| v.to_string()).collect(),
        client_id: d.client_id.clone(),
        exp: 0,
        cnf_x5t_s256: None,
        key_epoch: 0,
    };
    d.inputs = Some(crate::decision::DecisionInputs {
        scopes: {
            let mut s: Vec<String> = token.scopes.iter().cloned().collect();
            s.sort();
            s
        },
        verticals: token.verticals.clone(),
    });
    // The recorded non-policy denial, if any, and where it happened.
    let kept = recorded.and_then(|c| non_policy_step(c, rec).map(|s| (s, c)));
    let kept_at = |step: &str| kept.filter(|(s, _)| *s == step).map(|(_, c)| c);
    let recorded_denial = |c: DenyCode| Denial::new(c, format!("recorded: {}", c.as_str()));
    d.stages.push(Stage::Authenticate);
    let out = (|| -> Result<(), Denial> {
        let (integ, handshake_only) = stages::integration_stage(snap, &token, &mut d)?;
        d.stages.push(Stage::SecondFactor);
        if let Some(c) = kept_at("second_factor") {
            return Err(recorded_denial(c));
        }
        if !rec.ran("second_factor") {
            unverified.push("second_factor");
        }
        d.stages.push(Stage::Route);
        if let Some(c) = kept_at("request") {
            return Err(recorded_denial(c));
        }
        let (route, tenant_param) = find_route(snap, rec, routes_by_id).ok_or_else(|| {
            Denial::new(
                DenyCode::RouteNotFound,
                "no route matches this method and path",
            )
        })?;
        stages::route_stage(
            snap,
            integ,
            route,
            tenant_param.as_deref(),
            handshake_only,
            &mut d,
        )?;
        let target = stages::tenant_vertical_stage(
            snap,
            integ,
            route,
            tenant_param.as_deref(),
            &token,
            &mut d,
        )?;
        stages::scope_stage(integ, route, &token, &mut d)?;
        // Stage 5b: the body and the persons it names are request data.
        if let Some(c) = kept_at("payload") {
            d.stages.push(Stage::Payload);
            return Err(recorded_denial(c));
        }
        if rec.ran("payload") {
            d.stages.push(Stage::Payload);
        }
        let persons_known = rec.ran("deny_rules");
        if !persons_known {
            unverified.push("payload");
        }
        let persons = rec.persons;
        d.persons = persons;
        let masks =
            stages::deny_pack_stage(snap, integ, target, route, persons, &rec.method, &mut d)?;
        stages::residency_stage(snap, integ, target, route, &mut d)?;
        // Stage 7: consent, recorded.
        let needs = if persons_known {
            persons > 0 || route.kind == RouteKind::Aggregate
        } else {
            route.person_id.is_some() || route.kind == RouteKind::Aggregate
        };
        if needs {
            d.stages.push(Stage::Consent);
            if let Some(c) = kept_at("consent") {
                return Err(recorded_denial(c));
            }
            let same_verticals = rec.verticals.len() == route.verticals.len()
                && rec
                    .verticals
                    .iter()
                    .zip(&route.verticals)
                    .all(|(a, b)| a == b);
            if !rec.ran("data_minimization") || !same_verticals {
                unverified.push("consent");
            }
        }
        stages::minimize(integ, route, None, &mut d);
        stages::apply_pack_masks(route, &masks, &mut d);
        d.stages.push(Stage::RateLimit);
        if let Some(c) = kept_at("rate_limit") {
            return Err(recorded_denial(c));
        }
        if !rec.ran("rate_limit") {
            unverified.push("rate_limit");
        }
        Ok(())
    })();
    d.outcome = match out {
        Ok(()) => Outcome::Allow,
        Err(den) => Outcome::Deny(den),
    };
    if !d.allowed() {
        // A denial is backed by the stage that denied: nothing after it matters.
        unverified.clear();
    } else if rec.allowed() {
        // Allowed then and now: every stage ran when recorded.
        unverified.clear();
    }
    Ok(Redecision {
        decision: d,
        unverified,
    })
}

/// The candidate's route for a recorded decision and the path's `{tenant}`: the recorded
/// `route_id` if the candidate still has it for the method, else the recorded template path
/// matched against the candidate's routes.
fn find_route<'s>(
    snap: &'s PolicySnapshot,
    rec: &RecordedDecision,
    by_id: Option<&HashMap<&str, &'s Route>>,
) -> Option<(&'s Route, Option<String>)> {
    let segments: Vec<String> = rec
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let tenant_at = |route: &Route| -> Option<String> {
        let tpl: Vec<&str> = route.path.split('/').filter(|s| !s.is_empty()).collect();
        let i = tpl.iter().position(|s| *s == "{tenant}")?;
        let seg = if tpl.len() == segments.len() {
            segments.get(i).map(String::as_str)
        } else {
            None
        };
        Some(match seg {
            Some(s) if !s.starts_with('{') => s.to_owned(),
            // The recorded path kept no tenant there: one the recording policy did not know.
            _ => rec.target_tenant_id.as_deref().unwrap_or("{?}").to_owned(),
        })
    };
    if let Some(id) = rec.route_id.as_deref() {
        let found = match by_id {
            Some(m) => m.get(id).copied(),
            None => snap.set.routes.iter().find(|r| r.id == id),
        };
        if let Some(r) = found.filter(|r| r.methods.iter().any(|m| *m == rec.method)) {
            return Some((r, tenant_at(r)));
        }
    }
    let m = snap.match_route(&rec.method, &segments)?;
    let t = m.param("tenant").map(str::to_owned);
    Some((m.route, t))
}

/// Totals of an impact run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ImpactTotals {
    /// Decision records read in the window.
    pub read: u64,
    /// Re-decided against the candidate (format 3).
    pub redecided: u64,
    /// Re-decided with the recorded code.
    pub unchanged: u64,
    /// Re-decided with another code.
    pub flipped: u64,
    /// Records before format 3 (no `inputs`) or unreadable: counted, not guessed.
    pub not_redecidable: u64,
}

/// One group of flips: same tenant, integration, route, recorded and candidate code, and
/// unverified stages.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FlipGroup {
    pub tenant_id: Option<String>,
    pub integration_id: Option<String>,
    /// The candidate's route (else the recorded one).
    pub route_id: Option<String>,
    /// Recorded code (`OK` for an allow).
    pub from: String,
    /// Candidate code (`OK` for an allow).
    pub to: String,
    /// Later non-policy stages that never ran when recorded and were assumed passed.
    pub unverified: Vec<String>,
    pub count: u64,
    /// Up to N decision ids, in record order.
    pub samples: Vec<String>,
}

/// The report of an impact run (see the module documentation for its JSON shape).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImpactReport {
    pub totals: ImpactTotals,
    /// Largest groups first.
    pub flips: Vec<FlipGroup>,
}

/// What makes flips one group: tenant, integration, route, from, to, unverified stages.
type FlipKey = (
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    Vec<String>,
);

/// Accumulates records into an [`ImpactReport`], deciding each input shape once.
pub struct Impact<'s> {
    snap: &'s PolicySnapshot,
    samples: usize,
    routes_by_id: HashMap<&'s str, &'s Route>,
    /// Every window boundary of the candidate's packs and deny rules, sorted: records between
    /// two boundaries in the same UTC hour of day decide alike.
    bounds: Vec<i64>,
    shapes: HashMap<Box<[u8]>, u32>,
    results: Vec<ShapeResult>,
    key: Vec<u8>,
    totals: ImpactTotals,
    groups: HashMap<(u32, bool), usize>,
    flips: Vec<FlipGroup>,
}

struct ShapeResult {
    code: &'static str,
    unverified: Vec<&'static str>,
    route_id: Option<String>,
}

impl<'s> Impact<'s> {
    /// A run against candidate `snap`, keeping up to `samples` decision ids per flip group.
    pub fn new(snap: &'s PolicySnapshot, samples: usize) -> Self {
        let mut bounds: Vec<i64> = snap.packs.window_bounds();
        for rules in snap.traffic_denies.values() {
            for r in rules {
                bounds.extend(r.from_ms);
                bounds.extend(r.until_ms);
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        Impact {
            snap,
            samples,
            routes_by_id: snap.set.routes.iter().map(|r| (r.id.as_str(), r)).collect(),
            bounds,
            shapes: HashMap::new(),
            results: Vec::new(),
            key: Vec::with_capacity(256),
            totals: ImpactTotals::default(),
            groups: HashMap::new(),
            flips: Vec::new(),
        }
    }

    /// Adds one decision body whose store `time_ms` is `time_ms` (ms since the epoch).
    pub fn add(&mut self, body: &str, time_ms: i64) {
        self.totals.read += 1;
        let Ok(rec) = RecordedDecision::parse(body) else {
            self.totals.not_redecidable += 1;
            return;
        };
        self.add_parsed(&rec, time_ms);
    }

    /// [`Self::add`] for a parsed body.
    pub fn add_parsed(&mut self, rec: &RecordedDecision, time_ms: i64) {
        if rec.inputs.is_none() && rec.format.unwrap_or(1) < 3 {
            self.totals.not_redecidable += 1;
            return;
        }
        let shape = self.shape_key(rec, time_ms);
        let idx = match self.shapes.get(shape.as_slice()).copied() {
            Some(i) => {
                self.key = shape;
                i
            }
            None => {
                let Some(time) = Utc.timestamp_millis_opt(time_ms).single() else {
                    self.totals.not_redecidable += 1;
                    return;
                };
                let r = match redecide_at(self.snap, rec, time, Some(&self.routes_by_id)) {
                    Ok(r) => r,
                    Err(_) => {
                        self.totals.not_redecidable += 1;
                        return;
                    }
                };
                let res = ShapeResult {
                    code: r.decision.code_str(),
                    unverified: r.unverified,
                    route_id: r.decision.route_id,
                };
                let i = self.results.len() as u32;
                self.results.push(res);
                self.shapes.insert(shape.into_boxed_slice(), i);
                i
            }
        };
        self.totals.redecided += 1;
        let res = &self.results[idx as usize];
        if res.code == rec.code {
            self.totals.unchanged += 1;
            return;
        }
        self.totals.flipped += 1;
        let g = *self.groups.entry((idx, false)).or_insert_with(|| {
            self.flips.push(FlipGroup {
                tenant_id: rec.tenant_id.as_deref().map(str::to_owned),
                integration_id: rec.integration_id.as_deref().map(str::to_owned),
                route_id: res
                    .route_id
                    .clone()
                    .or_else(|| rec.route_id.as_deref().map(str::to_owned)),
                from: rec.code.to_string(),
                to: res.code.to_owned(),
                unverified: res.unverified.iter().map(|s| (*s).to_owned()).collect(),
                count: 0,
                samples: Vec::new(),
            });
            self.flips.len() - 1
        });
        let f = &mut self.flips[g];
        f.count += 1;
        if f.samples.len() < self.samples {
            f.samples.push(rec.decision_id.to_string());
        }
    }

    fn shape_key(&mut self, rec: &RecordedDecision, time_ms: i64) -> Vec<u8> {
        let mut k = std::mem::take(&mut self.key);
        k.clear();
        let mut put = |s: &str| {
            k.extend_from_slice(s.as_bytes());
            k.push(0);
        };
        put(rec.tenant_id.as_deref().unwrap_or("\u{1}"));
        put(rec.target_tenant_id.as_deref().unwrap_or("\u{1}"));
        put(rec.integration_id.as_deref().unwrap_or("\u{1}"));
        put(rec.client_id.as_deref().unwrap_or("\u{1}"));
        put(&rec.method);
        put(&rec.path);
        put(rec.route_id.as_deref().unwrap_or("\u{1}"));
        put(&rec.code);
        for s in &rec.stages {
            put(s);
        }
        put("\u{2}");
        for s in &rec.verticals {
            put(s);
        }
        put("\u{2}");
        if let Some(i) = &rec.inputs {
            for s in &i.scopes {
                put(s);
            }
            put("\u{2}");
            for s in &i.verticals {
                put(s);
            }
        }
        put("\u{3}");
        let hour = time_ms.div_euclid(3_600_000).rem_euclid(24);
        let epoch = self.bounds.partition_point(|b| *b <= time_ms);
        k.extend_from_slice(&(rec.persons as u64).to_le_bytes());
        k.extend_from_slice(&hour.to_le_bytes());
        k.extend_from_slice(&(epoch as u64).to_le_bytes());
        k
    }

    /// Distinct input shapes decided so far.
    pub fn shapes(&self) -> usize {
        self.results.len()
    }

    /// The report: totals and flip groups, largest first (ties by tenant, integration, route,
    /// codes).
    pub fn finish(self) -> ImpactReport {
        let mut flips = self.flips;
        flips.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.tenant_id.cmp(&b.tenant_id))
                .then_with(|| a.integration_id.cmp(&b.integration_id))
                .then_with(|| a.route_id.cmp(&b.route_id))
                .then_with(|| a.from.cmp(&b.from))
                .then_with(|| a.to.cmp(&b.to))
        });
        // Several shapes can flip alike: merge groups with the same key.
        let mut merged: Vec<FlipGroup> = Vec::new();
        let mut at: HashMap<FlipKey, usize> = HashMap::new();
        for f in flips {
            let key = (
                f.tenant_id.clone(),
                f.integration_id.clone(),
                f.route_id.clone(),
                f.from.clone(),
                f.to.clone(),
                f.unverified.clone(),
            );
            match at.get(&key) {
                Some(&i) => {
                    let g = &mut merged[i];
                    g.count += f.count;
                    for s in f.samples {
                        if g.samples.len() < self.samples {
                            g.samples.push(s);
                        }
                    }
                }
                None => {
                    at.insert(key, merged.len());
                    merged.push(f);
                }
            }
        }
        merged.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.samples.cmp(&b.samples))
        });
        ImpactReport {
            totals: self.totals,
            flips: merged,
        }
    }
}

/// Reads the decision records with `from_ms <= time_ms < to_ms` (of `tenant` when given, else of
/// every tenant) from the audit store, tenant by tenant in `time_ms` order over the
/// `(tenant_id, time_ms)` index, streaming (bodies are parsed one at a time), and re-decides them
/// against `snap` (ADM-6). `samples`: decision ids kept per flip group.
///
/// Returns the report and the time spent reading+parsing vs re-deciding is not split here (see
/// the benchmark). Errors: the store's.
pub async fn from_store(
    store: &crate::store::Store,
    snap: &PolicySnapshot,
    from_ms: i64,
    to_ms: i64,
    tenant: Option<&str>,
    samples: usize,
) -> Result<ImpactReport, crate::store::StoreError> {
    use crate::store::Store;
    use futures_util::TryStreamExt;
    use sqlx::Row;
    let tenants: Vec<String> = match (tenant, store) {
        (Some(t), _) => vec![t.to_owned()],
        (None, Store::Sqlite(p)) => {
            sqlx::query_scalar("SELECT DISTINCT tenant_id FROM audit_records")
                .fetch_all(p)
                .await?
        }
        (None, Store::Postgres(p)) => {
            sqlx::query_scalar("SELECT DISTINCT tenant_id FROM audit_records")
                .fetch_all(p)
                .await?
        }
    };
    const SQL: &str = "SELECT time_ms, body FROM audit_records \
                       WHERE tenant_id = $1 AND time_ms >= $2 AND time_ms < $3 AND kind = 'decision' \
                       ORDER BY time_ms";
    let mut impact = Impact::new(snap, samples);
    for t in &tenants {
        match store {
            Store::Sqlite(p) => {
                let mut rows = sqlx::query(SQL).bind(t).bind(from_ms).bind(to_ms).fetch(p);
                while let Some(row) = rows.try_next().await? {
                    let time_ms: i64 = row.try_get(0)?;
                    let body: &str = row.try_get(1)?;
                    impact.add(body, time_ms);
                }
            }
            Store::Postgres(p) => {
                let mut rows = sqlx::query(SQL).bind(t).bind(from_ms).bind(to_ms).fetch(p);
                while let Some(row) = rows.try_next().await? {
                    let time_ms: i64 = row.try_get(0)?;
                    let body: &str = row.try_get(1)?;
                    impact.add(body, time_ms);
                }
            }
        }
    }
    Ok(impact.finish())
}

/// The candidate of policy change `change_id` (ADM-6): [`candidate_with_change`] of the stored
/// change. Errors: `(code, message)`: `NOT_FOUND` (no such change or its pack is gone), `STORE`
/// (the store failed or holds an invalid policy).
pub async fn candidate_from_change(
    store: &crate::store::Store,
    change_id: &str,
    default_audience: &str,
) -> Result<(PolicySnapshot, crate::admin::packs::PolicyChange), (&'static str, String)> {
    use crate::store::DocKind;
    let doc = store
        .document(DocKind::PolicyChange, change_id)
        .await
        .map_err(|e| ("STORE", e.to_string()))?
        .ok_or_else(|| ("NOT_FOUND", format!("no policy change `{change_id}`")))?;
    let change: crate::admin::packs::PolicyChange =
        serde_json::from_str(&doc.doc).map_err(|e| ("STORE", e.to_string()))?;
    let snap = candidate_with_change(store, &change, default_audience).await?;
    Ok((snap, change))
}

/// The candidate of `change` (ADM-6): the store's current policy with the change's rules as its
/// pack's `policies`, the pack enforced (`active`; a `restricted` pack stays restricted), in the
/// change's `mode` when it sets one (a promotion from shadow deprecates the enforced pack of the
/// same tenant and vertical, as the activation will), and without a window (the preview asks what the rules would have decided over a past window,
/// whatever their planned activation time). `default_audience`: `auth.audience`.
///
/// Errors: `(code, message)` as [`candidate_from_change`].
pub async fn candidate_with_change(
    store: &crate::store::Store,
    change: &crate::admin::packs::PolicyChange,
    default_audience: &str,
) -> Result<PolicySnapshot, (&'static str, String)> {
    let (version, mut set) = store.load().await.map_err(|e| ("STORE", e.to_string()))?;
    let pack = set
        .policy_packs
        .iter_mut()
        .find(|p| p.id == change.policy_pack_id)
        .ok_or_else(|| {
            (
                "NOT_FOUND",
                format!(
                    "policy pack `{}` of the change is gone",
                    change.policy_pack_id
                ),
            )
        })?;
    pack.policies = change.policies.clone();
    if pack.status != crate::policy::PackStatus::Restricted {
        pack.status = crate::policy::PackStatus::Active;
    }
    pack.active_from = None;
    pack.active_until = None;
    // A change may promote a shadow pack (or demote one): the candidate is what its activation
    // would enforce, so the previously enforced pack of the (tenant, vertical) steps aside.
    if let Some(mode) = change.mode {
        pack.mode = mode;
    }
    let (id, tenant, vertical, mode) = (
        pack.id.clone(),
        pack.tenant.clone(),
        pack.vertical.clone(),
        pack.mode,
    );
    for other in set.policy_packs.iter_mut().filter(|p| {
        p.id != id
            && p.tenant == tenant
            && p.vertical == vertical
            && p.mode == mode
            && matches!(
                p.status,
                crate::policy::PackStatus::Active | crate::policy::PackStatus::Restricted
            )
    }) {
        other.status = crate::policy::PackStatus::Deprecated;
    }
    Ok(PolicySnapshot::compile(set, version, default_audience))
}

/// Flip groups a stored impact summary keeps (the largest).
pub const SUMMARY_FLIPS: usize = 10;

/// The impact summary a policy change stores (ADM-6; `GET /v1/policies/changes/{id}` shows
/// it): `window` (`from`, `to`), `tenant`, `computed_at` (RFC 3339), `rules_sha256` (hex
/// SHA-256 of the rules it was computed for: a summary of other rules is stale), `totals` and
/// the [`SUMMARY_FLIPS`] largest `flips`.
pub fn summary(
    r: &ImpactReport,
    from_ms: i64,
    to_ms: i64,
    tenant: Option<&str>,
    rules: &str,
) -> serde_json::Value {
    let mut v = report_json(r, from_ms, to_ms, tenant);
    if let Some(f) = v.get_mut("flips").and_then(|f| f.as_array_mut()) {
        f.truncate(SUMMARY_FLIPS);
    }
    v["computed_at"] = crate::audit::record::format_time(Utc::now()).into();
    v["rules_sha256"] = rules_digest(rules).into();
    v
}

/// Hex SHA-256 of a change's rules text.
pub fn rules_digest(rules: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(rules.as_bytes()))
}

/// `scp-pep policy impact` arguments.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("candidate_source").required(true).args(["candidate", "change"])))]
pub struct ImpactArgs {
    /// Candidate policy directory (validated like `policy validate`).
    #[arg(long)]
    pub candidate: Option<std::path::PathBuf>,
    /// A stored policy change: the stored policy with the change's rules applied to its pack.
    #[arg(long)]
    pub change: Option<String>,
    /// Window start (inclusive): RFC 3339 or `YYYY-MM-DD` (UTC). Default: 7 days before `--to`.
    #[arg(long)]
    pub from: Option<String>,
    /// Window end (exclusive): RFC 3339 or `YYYY-MM-DD` (UTC). Default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Only the records of this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Sample decision ids per flip group.
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: crate::audit::cmd::StoreArgs,
}

/// The JSON answer of an impact run: window, tenant filter, totals, flips.
pub fn report_json(
    r: &ImpactReport,
    from_ms: i64,
    to_ms: i64,
    tenant: Option<&str>,
) -> serde_json::Value {
    let t = |ms: i64| {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(crate::audit::record::format_time)
    };
    serde_json::json!({
        "window": {"from": t(from_ms), "to": t(to_ms)},
        "tenant": tenant,
        "totals": r.totals,
        "flips": r.flips,
    })
}

/// `scp-pep policy impact` (ADM-6): exit 0 with the report, 1 for an invalid candidate or an
/// unknown change, 2 for bad flags, configuration or store.
pub async fn cmd(a: ImpactArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let to_ms = match a.to.as_deref().map(crate::time::parse_instant).transpose() {
        Ok(v) => v.unwrap_or_else(|| Utc::now().timestamp_millis()),
        Err(e) => {
            eprintln!("error: --to: {e}");
            return ExitCode::from(2);
        }
    };
    let from_ms = match a
        .from
        .as_deref()
        .map(crate::time::parse_instant)
        .transpose()
    {
        Ok(v) => v.unwrap_or(to_ms - 7 * 86_400_000),
        Err(e) => {
            eprintln!("error: --from: {e}");
            return ExitCode::from(2);
        }
    };
    if from_ms >= to_ms {
        eprintln!("error: --from: must be before --to");
        return ExitCode::from(2);
    }
    let (cfg, store) = match crate::audit::cmd::connect(&a.store).await {
        Ok(x) => x,
        Err(c) => return c,
    };
    let snap = if let Some(dir) = &a.candidate {
        match crate::policy::PolicySet::load_dir(dir) {
            Ok(set) => PolicySnapshot::compile(set, 0, &cfg.auth.audience),
            Err(e) => {
                eprintln!("{e}");
                println!("{}", serde_json::json!({"valid": false, "errors": e.0}));
                return ExitCode::from(1);
            }
        }
    } else {
        let id = a.change.as_deref().unwrap_or_default();
        match candidate_from_change(&store, id, &cfg.auth.audience).await {
            Ok((s, _)) => s,
            Err((code, msg)) => {
                eprintln!("error: --change: {msg}");
                return ExitCode::from(if code == "NOT_FOUND" { 1 } else { 2 });
            }
        }
    };
    let report = match from_store(
        &store,
        &snap,
        from_ms,
        to_ms,
        a.tenant.as_deref(),
        a.samples,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: store: {e}");
            return ExitCode::from(2);
        }
    };
    store.close().await;
    let text = if a.json {
        format!(
            "{}\n",
            report_json(&report, from_ms, to_ms, a.tenant.as_deref())
        )
    } else {
        render(&report)
    };
    crate::cli::write_stdout(&text);
    ExitCode::SUCCESS
}

/// The human form of a report: one line of totals, then one line per flip group.
pub fn render(r: &ImpactReport) -> String {
    use std::fmt::Write as _;
    let t = &r.totals;
    let mut out = format!(
        "decisions read {}, re-decided {}, unchanged {}, flipped {}, not re-decidable {}\n",
        t.read, t.redecided, t.unchanged, t.flipped, t.not_redecidable
    );
    let code = |c: &str| {
        if c == "OK" {
            "allow".to_owned()
        } else {
            format!("deny {c}")
        }
    };
    for f in &r.flips {
        let _ = write!(out, "{:>7}  {} → {}", f.count, code(&f.from), code(&f.to));
        if !f.unverified.is_empty() {
            let _ = write!(out, " (unverified: {})", f.unverified.join(", "));
        }
        let _ = writeln!(
            out,
            "  tenant {} integration {} route {}  e.g. {}",
            f.tenant_id.as_deref().unwrap_or("-"),
            f.integration_id.as_deref().unwrap_or("-"),
            f.route_id.as_deref().unwrap_or("-"),
            f.samples.join(", ")
        );
    }
    out
}
