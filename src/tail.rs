//! The live decision-log tail: `scp.pep.v1.DecisionLog/Tail` and `scp-pep audit tail`
//! (EXT-6-1, INT-8-1).
//!
//! Security staff follow the audit log as it is committed. The server side ([`service`]) reads the
//! audit log's broadcast feed ([`AuditLog::subscribe`]); every subscriber has its own forwarding
//! task and a small send buffer, and neither ever makes the audit writer or a decision wait:
//!
//! - a subscriber that falls more than `audit.tail_capacity` records behind the broadcast, or whose
//!   gRPC send buffer is full, loses records (for that subscriber only; the log keeps them). The
//!   loss is counted in `scp_pep_audit_tail_dropped_total` and announced to the subscriber by a
//!   marker [`TailEvent`] whose `dropped` is the number of records lost;
//! - the forwarding task ends as soon as the client goes away.
//!
//! Authorization (EXT-6-1): an admin bearer token checked by [`Access`], the same check as every
//! REST surface. A caller holding `audit.read` for a tenant (the audit roles' claim mapping or a
//! role assignment) tails that tenant; root tails any tenant or all of them, recorded as a
//! `root_bypass` event; every tail opened is
//! recorded as an `audit_access` event first, and a tail whose access cannot be recorded is
//! refused (`UNAVAILABLE`). Both events go to the chain of the tailed tenant (of the caller's own
//! tenant for an all-tenant root tail), actor = the token's subject, detail = the filters.
//!
//! The client side is [`run_cli`] (`scp-pep audit tail`, arguments [`TailArgs`]).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::admin::access::{Access, Caller, Target, Via};
use crate::api::ApiError;
use crate::audit::{AuditEvent, AuditLog, RecordKind, TailItem};
use crate::proto::scp::pep::v1::decision_log_client::DecisionLogClient;
use crate::proto::scp::pep::v1::decision_log_server::{DecisionLog, DecisionLogServer};
use crate::proto::scp::pep::v1::{TailEvent, TailRequest};

/// Events buffered per subscriber between its forwarding task and gRPC; when full, records are
/// dropped for that subscriber (and counted) instead of waiting.
const SEND_BUFFER: usize = 64;
/// At most this many `codes` in a request.
const MAX_CODES: usize = 64;
/// Longest tenant, integration or code accepted in a request.
const MAX_FILTER_LEN: usize = 256;

/// The `scp.pep.v1.DecisionLog` service.
///
/// Built by [`service`]; [`DecisionLogService::with_shutdown`] additionally ends every open tail
/// when the server shuts down (otherwise a tail ends only when its client leaves).
#[derive(Clone)]
pub struct DecisionLogService {
    audit: Arc<AuditLog>,
    access: Access,
    dropped: metrics::Counter,
    shutdown: Option<watch::Receiver<bool>>,
}

/// The live-tail gRPC service over `audit`, authorizing callers with `access` (EXT-6-1, INT-8-1).
///
/// Input: the audit log whose committed records are streamed, and the admin-token check.
/// Output: a tonic server to add to the gRPC listener
/// (`Server::builder().add_service(..)`). Records reach the tail only after their commit.
pub fn service(audit: Arc<AuditLog>, access: Access) -> DecisionLogServer<DecisionLogService> {
    DecisionLogServer::new(DecisionLogService::new(audit, access))
}

impl DecisionLogService {
    /// The service over `audit`, authorizing callers with `access`.
    pub fn new(audit: Arc<AuditLog>, access: Access) -> Self {
        DecisionLogService {
            audit,
            access,
            dropped: metrics::counter!("scp_pep_audit_tail_dropped_total"),
            shutdown: None,
        }
    }

    /// Ends every open tail (the stream completes normally) once `shutdown` becomes `true`, so a
    /// connected tail does not hold up a graceful shutdown.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> DecisionLogServer<DecisionLogService> {
        DecisionLogServer::new(self)
    }
}

/// The gRPC status of a refused admin call (401 → `UNAUTHENTICATED`, 403 → `PERMISSION_DENIED`,
/// else `UNAVAILABLE`). The message never contains the token.
fn api_status(e: ApiError) -> Status {
    match e.status().as_u16() {
        401 => Status::unauthenticated(e.message),
        403 => Status::permission_denied(e.message),
        _ => Status::unavailable(e.message),
    }
}

/// A validated request: what one subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    /// `None`: every tenant (root only).
    tenant: Option<String>,
    integration: Option<String>,
    route: Option<String>,
    outcome: Option<&'static str>,
    codes: Vec<String>,
    include_events: bool,
    /// Only decisions with shadow findings (issue 16).
    shadow_only: bool,
    /// Allowed by the ROOT role only (all tenants, or a tenant the caller holds no
    /// `audit.read` for): recorded as `root_bypass`.
    root_bypass: bool,
}

impl Filter {
    /// Checks `req` and decides the tenant `caller` may tail. Errors: `PERMISSION_DENIED` (no
    /// `audit.read` anywhere, checked first; a tenant without `audit.read` for it and no root),
    /// `INVALID_ARGUMENT` (unknown outcome, oversized filter).
    fn authorize(req: TailRequest, caller: &Caller) -> Result<Filter, Status> {
        caller.require_some("audit.read").map_err(|_| {
            Status::permission_denied("the caller does not hold `audit.read` (EXT-6-1)")
        })?;
        let outcome = match req.outcome.trim().to_ascii_lowercase().as_str() {
            "" => None,
            "allow" => Some("allow"),
            "deny" => Some("deny"),
            _ => {
                return Err(Status::invalid_argument(
                    "outcome must be \"allow\", \"deny\" or empty",
                ));
            }
        };
        let too_long = |s: &str| s.len() > MAX_FILTER_LEN;
        if req.codes.len() > MAX_CODES
            || too_long(&req.tenant_id)
            || too_long(&req.integration_id)
            || too_long(&req.route_id)
            || req.codes.iter().any(|c| too_long(c))
        {
            return Err(Status::invalid_argument("filter too large"));
        }
        let (tenant, root_bypass) = match req.tenant_id.as_str() {
            "" if caller.principal.root => (None, true),
            t => {
                let t = if t.is_empty() { caller.tenant() } else { t };
                match caller.require("audit.read", &Target::tenant(t)) {
                    Ok(via) => (Some(t.to_owned()), via == Via::Root),
                    Err(_) => {
                        return Err(Status::permission_denied(
                            "the caller does not hold `audit.read` for this tenant (EXT-6-1)",
                        ));
                    }
                }
            }
        };
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        Ok(Filter {
            tenant,
            integration: non_empty(req.integration_id),
            route: non_empty(req.route_id),
            outcome,
            codes: req.codes.into_iter().filter(|c| !c.is_empty()).collect(),
            include_events: req.include_events,
            shadow_only: req.shadow_only,
            root_bypass,
        })
    }

    /// The filters as recorded in the `audit_access` event.
    fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "tenant_id": self.tenant.as_deref().unwrap_or("*"),
            "integration_id": self.integration,
            "route_id": self.route,
            "outcome": self.outcome,
            "codes": self.codes,
            "include_events": self.include_events,
            "shadow_only": self.shadow_only,
        })
    }

    fn matches(&self, it: &TailItem) -> bool {
        if self.tenant.as_ref().is_some_and(|t| *t != it.tenant_id) {
            return false;
        }
        if it.kind != RecordKind::Decision {
            return self.include_events;
        }
        if self
            .integration
            .as_ref()
            .is_some_and(|i| it.integration_id.as_ref() != Some(i))
        {
            return false;
        }
        if self
            .route
            .as_ref()
            .is_some_and(|r| it.route_id.as_ref() != Some(r))
        {
            return false;
        }
        if self.outcome.is_some() && it.outcome != self.outcome {
            return false;
        }
        if self.shadow_only && it.shadow.is_empty() {
            return false;
        }
        self.codes.is_empty()
            || it
                .code
                .as_deref()
                .is_some_and(|c| self.codes.iter().any(|x| x == c))
    }
}

/// The wire form of a committed record.
fn tail_event(it: &TailItem) -> TailEvent {
    TailEvent {
        chain_id: it.chain_id.to_string(),
        seq: it.seq,
        kind: it.kind.as_str().to_owned(),
        tenant_id: it.tenant_id.clone(),
        integration_id: it.integration_id.clone().unwrap_or_default(),
        outcome: it.outcome.unwrap_or_default().to_owned(),
        code: it.code.clone().unwrap_or_default(),
        time_unix_ms: it.time_ms,
        latency_us: it.latency_us.unwrap_or_default(),
        body: it.body.to_string(),
        dropped: 0,
        shadow: it
            .shadow
            .iter()
            .map(|f| crate::proto::scp::pep::v1::ShadowFinding {
                document: f.document.clone(),
                code: f.code.as_str().to_owned(),
                reasons: f.reasons.clone(),
            })
            .collect(),
    }
}

/// The marker telling a subscriber that `n` records were lost.
fn dropped_marker(n: u64) -> TailEvent {
    TailEvent {
        dropped: n,
        ..TailEvent::default()
    }
}

/// Resolves once `shutdown` is `true` (never, without a receiver).
async fn shut_down(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            if rx.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Moves matching records from the broadcast feed to one subscriber's send buffer. Never waits
/// for the subscriber: a lag on the feed or a full buffer drops records, counts them, and queues
/// a marker that is sent as soon as the buffer has room. Ends when the client goes away, the feed
/// closes or the server shuts down. Returns the number of records this subscriber lost.
async fn forward(
    mut feed: broadcast::Receiver<Arc<TailItem>>,
    tx: mpsc::Sender<Result<TailEvent, Status>>,
    filter: Filter,
    counter: metrics::Counter,
    mut shutdown: Option<watch::Receiver<bool>>,
) -> u64 {
    let mut pending: u64 = 0;
    let mut lost: u64 = 0;
    let mut lose = |pending: &mut u64, n: u64| {
        *pending = pending.saturating_add(n);
        lost = lost.saturating_add(n);
        counter.increment(n);
    };
    loop {
        tokio::select! {
            biased;
            _ = tx.closed() => break,
            _ = shut_down(&mut shutdown) => break,
            permit = tx.reserve(), if pending > 0 => match permit {
                Ok(p) => {
                    p.send(Ok(dropped_marker(pending)));
                    pending = 0;
                }
                Err(_) => break,
            },
            r = feed.recv() => match r {
                Ok(it) => {
                    if !filter.matches(&it) {
                        continue;
                    }
                    if pending > 0 {
                        // The marker goes first; without room for it, this record is lost too.
                        lose(&mut pending, 1);
                        continue;
                    }
                    match tx.try_send(Ok(tail_event(&it))) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => lose(&mut pending, 1),
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => lose(&mut pending, n),
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    lost
}

#[tonic::async_trait]
impl DecisionLog for DecisionLogService {
    type TailStream = ReceiverStream<Result<TailEvent, Status>>;

    /// Opens a tail (EXT-6-1, INT-8-1).
    ///
    /// Input: `authorization: Bearer <admin token>` metadata and the filters of [`TailRequest`].
    /// Output: a stream of committed records that match, with `dropped` markers when this
    /// subscriber lost records. Errors: `UNAUTHENTICATED`, `PERMISSION_DENIED`,
    /// `INVALID_ARGUMENT`, `UNAVAILABLE` (issuer keys unavailable, or the access could not be
    /// audited).
    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let header = match request.metadata().get("authorization") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| Status::unauthenticated("authorization is not ASCII"))?,
            ),
        };
        let caller = self.access.caller(header).await.map_err(api_status)?;
        self.open(&caller, request.into_inner())
            .await
            .map(|rx| Response::new(ReceiverStream::new(rx)))
    }
}

impl DecisionLogService {
    /// Opens a tail for an authenticated `caller` (EXT-6-1, INT-8-1): the one implementation
    /// behind the gRPC `Tail` and the HTTP stream of the staff view (`crate::staff`).
    ///
    /// Input: the caller (from [`Access::caller`]) and the filters of [`TailRequest`].
    /// Output: the subscriber's bounded receiver of committed records that match, with
    /// `dropped` markers when it lost records; the forwarding task ends when the receiver is
    /// dropped. Records `root_bypass` (when root) and `audit_access` first. Errors:
    /// `PERMISSION_DENIED`, `INVALID_ARGUMENT`, `UNAVAILABLE` (the access could not be audited).
    pub async fn open(
        &self,
        caller: &Caller,
        request: TailRequest,
    ) -> Result<mpsc::Receiver<Result<TailEvent, Status>>, Status> {
        let principal = &caller.principal;
        let filter = Filter::authorize(request, caller)?;
        // Subscribe before the access is recorded: nothing committed after the grant is missed.
        let feed = self.audit.subscribe();
        // The tenants whose records the tail shows: each records the access (a root tail of all
        // tenants in every tenant of the snapshot and the root's own).
        let audited: std::collections::BTreeSet<String> = match &filter.tenant {
            Some(t) => [t.clone()].into(),
            None => {
                let mut all: std::collections::BTreeSet<String> =
                    self.access.tenants().into_iter().collect();
                all.insert(principal.tenant_id.clone());
                all
            }
        };
        let subject = filter.tenant.clone().unwrap_or_else(|| "*".into());
        for tenant in &audited {
            let mut events = Vec::with_capacity(2);
            if filter.root_bypass {
                events.push(AuditEvent::new(
                    RecordKind::RootBypass,
                    Some(tenant),
                    serde_json::json!({"action": "audit_tail", "filters": filter.detail()}),
                ));
            }
            events.push(AuditEvent::new(
                RecordKind::AuditAccess,
                Some(tenant),
                serde_json::json!({"action": "tail", "filters": filter.detail()}),
            ));
            if filter.root_bypass {
                // Within an admin HTTP request: this handler wrote the bypass record itself.
                crate::admin::ledger::root_recorded(tenant);
            }
            for ev in events {
                let ev = ev.actor(principal.subject.clone()).subject(subject.clone());
                if self.audit.record_event(&ev).await.is_err() {
                    return Err(Status::unavailable(
                        "the audit log cannot record this access; tail refused",
                    ));
                }
            }
        }
        tracing::info!(
            actor = %principal.subject,
            tenant = %filter.tenant.as_deref().unwrap_or("*"),
            root = principal.root,
            "audit tail opened"
        );
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        tokio::spawn(forward(
            feed,
            tx,
            filter,
            self.dropped.clone(),
            self.shutdown.clone(),
        ));
        Ok(rx)
    }
}

// ---------------------------------------------------------------------------------------------
// Command line: `scp-pep audit tail`.

/// `scp-pep audit tail`: follow the audit log live (EXT-6-1, INT-8-1).
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// scp-pep gRPC listener, e.g. `http://127.0.0.1:9191`.
    #[arg(long, default_value = "http://127.0.0.1:9191")]
    pub server: String,
    /// Admin bearer token (auditor or root role). Prefer `--token-file` or the env var, so the
    /// token does not land in shell history.
    #[arg(long, env = "SCP_PEP_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the admin bearer token from this file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Only this tenant (default: the token's tenant; every tenant for root).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only decisions of this integration.
    #[arg(long)]
    pub integration: Option<String>,
    /// Only decisions of this route (its policy id, e.g. `health-person-record`).
    #[arg(long)]
    pub route: Option<String>,
    /// Only denied decisions.
    #[arg(long)]
    pub deny_only: bool,
    /// Only decisions with this code, e.g. `SCOPE_VIOLATION` or `OK` (repeatable).
    #[arg(long = "code")]
    pub codes: Vec<String>,
    /// Also show records that are not decisions (incidents, admin changes, audit access…).
    #[arg(long)]
    pub events: bool,
    /// One JSON object per line (the `TailEvent` fields, `body` parsed) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Instead of one line per record, one line per minute with the decisions counted per
    /// code, printed when the minute is over (and at exit).
    #[arg(long)]
    pub summary: bool,
    /// Only decisions with shadow (dry-run) findings: what a policy pack, deny rule, rate
    /// limit or quota in shadow mode would have denied (filtered by the server, issue 16).
    #[arg(long)]
    pub shadow: bool,
}

impl TailArgs {
    /// The request these arguments describe.
    pub fn request(&self) -> TailRequest {
        TailRequest {
            tenant_id: self.tenant.clone().unwrap_or_default(),
            integration_id: self.integration.clone().unwrap_or_default(),
            outcome: if self.deny_only {
                "deny".into()
            } else {
                "".into()
            },
            codes: self.codes.clone(),
            include_events: self.events,
            route_id: self.route.clone().unwrap_or_default(),
            shadow_only: self.shadow,
        }
    }
}

/// The name of a gRPC status code, as in the gRPC specification (`PERMISSION_DENIED`).
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Escapes control characters (a request path is partner input; it must not drive the terminal).
fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `2026-11-22T02:10:36.123Z`.
fn format_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// One readable line for a record (not a marker).
///
/// Decisions: `TIME OUTCOME CODE TENANT/INTEGRATION METHOD PATH route=R LATENCYµs decision=ID`;
/// other records: `TIME EVENT KIND TENANT actor=A subject=S id=ID`. Fields are taken from the
/// canonical body where the event has no column for them; control characters are escaped.
pub fn format_line(ev: &TailEvent) -> String {
    let body: serde_json::Value = serde_json::from_str(&ev.body).unwrap_or_default();
    let field = |k: &str| clean(body.get(k).and_then(|v| v.as_str()).unwrap_or("-"));
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            clean(s)
        }
    };
    let time = format_ms(ev.time_unix_ms);
    if ev.kind == RecordKind::Decision.as_str() {
        format!(
            "{time} {:<5} {:<16} {}/{} {} {} route={} {}µs decision={}",
            ev.outcome.to_ascii_uppercase(),
            or_dash(&ev.code),
            or_dash(&ev.tenant_id),
            or_dash(&ev.integration_id),
            field("method"),
            field("path"),
            field("route_id"),
            ev.latency_us,
            field("decision_id"),
        ) + &shadow_text(ev)
    } else {
        format!(
            "{time} EVENT {:<16} {} actor={} subject={} id={}",
            or_dash(&ev.kind),
            or_dash(&ev.tenant_id),
            field("actor"),
            field("subject"),
            field("event_id"),
        )
    }
}

/// The shadow findings of a decision line (issue 16): ` shadow: policy_pack/p1 POLICY_DENIED,
/// rate_limit/int-1 RATE_LIMITED`, or nothing when it has none. Control characters are escaped.
fn shadow_text(ev: &TailEvent) -> String {
    if ev.shadow.is_empty() {
        return String::new();
    }
    let items: Vec<String> = ev
        .shadow
        .iter()
        .map(|f| format!("{} {}", clean(&f.document), clean(&f.code)))
        .collect();
    format!(" shadow: {}", items.join(", "))
}

/// The `--json` form of an event: the [`TailEvent`] fields, `body` parsed as JSON.
pub fn json_line(ev: &TailEvent) -> serde_json::Value {
    let body = serde_json::from_str::<serde_json::Value>(&ev.body)
        .unwrap_or_else(|_| serde_json::Value::String(ev.body.clone()));
    serde_json::json!({
        "chain_id": ev.chain_id,
        "seq": ev.seq,
        "kind": ev.kind,
        "tenant_id": ev.tenant_id,
        "integration_id": ev.integration_id,
        "outcome": ev.outcome,
        "code": ev.code,
        "time_unix_ms": ev.time_unix_ms,
        "latency_us": ev.latency_us,
        "body": body,
        "dropped": ev.dropped,
        "shadow": ev.shadow.iter().map(|f| serde_json::json!({
            "document": f.document, "code": f.code, "reasons": f.reasons,
        })).collect::<Vec<_>>(),
    })
}

/// Opens a tail on `server` with `token` and `request`. Errors are one-line messages naming the
/// gRPC status; they never contain the token.
pub async fn open(
    server: &str,
    token: &str,
    request: TailRequest,
) -> Result<tonic::Streaming<TailEvent>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
        .map_err(|e| format!("invalid --server `{server}`: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {server}: {e}"))?;
    let mut req = Request::new(request);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the admin token contains characters not allowed in a header".to_owned())?;
    req.metadata_mut().insert("authorization", value);
    DecisionLogClient::new(channel)
        .tail(req)
        .await
        .map(Response::into_inner)
        .map_err(|s| {
            format!(
                "tail refused by {server}: {} ({})",
                code_name(s.code()),
                s.message()
            )
        })
}

/// Decisions counted per code for one UTC minute (`audit tail --summary`).
#[derive(Debug, Default)]
pub struct MinuteCounts {
    /// The minute being counted, Unix minutes; `None` before the first decision.
    minute: Option<i64>,
    counts: std::collections::BTreeMap<String, u64>,
}

impl MinuteCounts {
    /// Counts one record (decisions only; markers and events are ignored). Returns the line of
    /// the previous minute when `ev` belongs to a later one.
    pub fn add(&mut self, ev: &TailEvent, json: bool) -> Option<String> {
        if ev.dropped > 0 || ev.kind != RecordKind::Decision.as_str() {
            return None;
        }
        let minute = ev.time_unix_ms.div_euclid(60_000);
        let done = match self.minute {
            Some(m) if minute > m => self.line(json),
            _ => None,
        };
        if self.minute.is_none_or(|m| minute > m) {
            self.minute = Some(minute);
            self.counts.clear();
        }
        let code = if ev.code.is_empty() { "-" } else { &ev.code };
        *self.counts.entry(clean(code)).or_default() += 1;
        done
    }

    /// The line of the minute being counted when the wall clock (`now_ms`, Unix ms) has left
    /// it, or unconditionally with `now_ms = i64::MAX` (at exit); the counts start over.
    pub fn flush(&mut self, now_ms: i64, json: bool) -> Option<String> {
        let m = self.minute?;
        if now_ms.div_euclid(60_000) <= m {
            return None;
        }
        let line = self.line(json);
        self.minute = None;
        self.counts.clear();
        line
    }

    /// `2026-12-06T21:30Z decisions=123 OK=120 SCOPE_VIOLATION=3`, or with `json`
    /// `{"minute":"2026-12-06T21:30Z","decisions":123,"codes":{"OK":120,…}}`.
    fn line(&self, json: bool) -> Option<String> {
        let m = self.minute?;
        let minute = chrono::DateTime::from_timestamp(m * 60, 0)?
            .format("%Y-%m-%dT%H:%MZ")
            .to_string();
        let total: u64 = self.counts.values().sum();
        Some(if json {
            serde_json::json!({"minute": minute, "decisions": total, "codes": self.counts})
                .to_string()
        } else {
            let codes: Vec<String> = self
                .counts
                .iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect();
            format!("{minute} decisions={total} {}", codes.join(" "))
        })
    }
}

/// Runs `scp-pep audit tail` (EXT-6-1, INT-8-1).
///
/// Input: [`TailArgs`]; the token from `--token-file`, else `--token` / `SCP_PEP_ADMIN_TOKEN`.
/// Output: one line per record on stdout (text, or JSON with `--json`), or with `--summary`
/// one line per UTC minute with the decisions counted per code ([`MinuteCounts`]); a `# N events dropped
/// (consumer too slow)` line on stderr for every marker. Exit codes: 0 when the stream ends, the
/// `--count` is reached or stdout is closed; 2 on a missing token, connection or authorization
/// errors (the message names the gRPC status and never contains the token); 1 when stdout
/// cannot be written.
pub async fn run_cli(args: TailArgs) -> ExitCode {
    let token = match (&args.token_file, &args.token) {
        (Some(f), _) => match std::fs::read_to_string(f) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                eprintln!("error: cannot read --token-file: {e}");
                return ExitCode::from(2);
            }
        },
        (None, Some(t)) => t.trim().to_owned(),
        (None, None) => String::new(),
    };
    if token.is_empty() {
        eprintln!("error: no admin token: use --token-file or set SCP_PEP_ADMIN_TOKEN");
        return ExitCode::from(2);
    }
    let mut stream = match open(&args.server, &token, args.request()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut seen: u64 = 0;
    if args.count == Some(0) {
        return ExitCode::SUCCESS;
    }
    if args.summary {
        return run_summary(&args, stream).await;
    }
    loop {
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return ExitCode::SUCCESS,
            Err(s) => {
                eprintln!(
                    "error: tail ended: {} ({})",
                    code_name(s.code()),
                    s.message()
                );
                return ExitCode::from(2);
            }
        };
        let mut out = std::io::stdout().lock();
        let written = if ev.dropped > 0 {
            eprintln!("# {} events dropped (consumer too slow)", ev.dropped);
            if args.json {
                writeln!(out, "{}", json_line(&ev))
            } else {
                Ok(())
            }
        } else if args.json {
            writeln!(out, "{}", json_line(&ev))
        } else {
            writeln!(out, "{}", format_line(&ev))
        };
        match written.and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write output: {e}");
                return ExitCode::from(1);
            }
        }
        if ev.dropped == 0 {
            seen += 1;
            if args.count.is_some_and(|n| seen >= n) {
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// `audit tail --summary`: counts decisions per code per UTC minute and prints each minute's
/// line once it is over (checked every second, so a quiet minute still closes) and the last one
/// at exit. `--count` still ends the tail after that many records. Exit codes as [`run_cli`].
async fn run_summary(args: &TailArgs, mut stream: tonic::Streaming<TailEvent>) -> ExitCode {
    let mut counts = MinuteCounts::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seen: u64 = 0;
    let print = |line: Option<String>| -> Result<(), ExitCode> {
        let Some(line) = line else { return Ok(()) };
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("error: cannot write output: {e}");
                Err(ExitCode::from(1))
            }
        }
    };
    let end = |counts: &mut MinuteCounts, code: ExitCode| match print(
        counts.flush(i64::MAX, args.json),
    ) {
        Ok(()) => code,
        Err(c) => c,
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = chrono::Utc::now().timestamp_millis();
                if let Err(c) = print(counts.flush(now, args.json)) {
                    return c;
                }
            }
            msg = stream.message() => match msg {
                Ok(Some(ev)) => {
                    if ev.dropped > 0 {
                        eprintln!("# {} events dropped (consumer too slow)", ev.dropped);
                        continue;
                    }
                    if let Err(c) = print(counts.add(&ev, args.json)) {
                        return c;
                    }
                    seen += 1;
                    if args.count.is_some_and(|n| seen >= n) {
                        return end(&mut counts, ExitCode::SUCCESS);
                    }
                }
                Ok(None) => return end(&mut counts, ExitCode::SUCCESS),
                Err(s) => {
                    eprintln!("error: tail ended: {} ({})", code_name(s.code()), s.message());
                    return end(&mut counts, ExitCode::from(2));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision_at(time_ms: i64, code: &str) -> TailEvent {
        TailEvent {
            kind: "decision".into(),
            code: code.into(),
            time_unix_ms: time_ms,
            ..Default::default()
        }
    }

    /// EXT-6-1 (security staff view): `--summary` counts decisions per code per UTC minute,
    /// closes a minute when a later record arrives or the clock leaves it, ignores events and
    /// drop markers.
    #[test]
    fn summary_counts_per_code_per_minute() {
        let t0 = 1_796_000_400_000; // a whole minute
        let mut m = MinuteCounts::default();
        assert_eq!(m.add(&decision_at(t0, "OK"), false), None);
        assert_eq!(m.add(&decision_at(t0 + 1_000, "OK"), false), None);
        assert_eq!(
            m.add(&decision_at(t0 + 2_000, "SCOPE_VIOLATION"), false),
            None
        );
        let event = TailEvent {
            kind: "security_incident".into(),
            time_unix_ms: t0 + 3_000,
            ..Default::default()
        };
        assert_eq!(m.add(&event, false), None);
        assert_eq!(m.flush(t0 + 59_999, false), None, "the minute is not over");
        let line = m
            .add(&decision_at(t0 + 60_000, "RATE_LIMITED"), false)
            .unwrap();
        assert!(
            line.ends_with("Z decisions=3 OK=2 SCOPE_VIOLATION=1"),
            "{line}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&m.flush(t0 + 120_000, true).unwrap()).unwrap();
        assert_eq!(json["decisions"], 1);
        assert_eq!(json["codes"]["RATE_LIMITED"], 1);
        assert_eq!(m.flush(i64::MAX, false), None, "nothing left to print");
    }

    /// A caller of `tenant`; an auditor holds `audit.read` there (the audit roles' claim mapping).
    fn caller(tenant: &str, auditor: bool, root: bool) -> Caller {
        let grants = if auditor {
            vec![crate::admin::access::Grant {
                permission: "audit.read".into(),
                scope: crate::admin::access::Scope {
                    tenant_id: Some(tenant.into()),
                    ..Default::default()
                },
                via: "claim:scp-auditor".into(),
            }]
        } else {
            vec![]
        };
        Caller {
            principal: crate::admin::AdminPrincipal {
                subject: "alice".into(),
                tenant_id: tenant.into(),
                roles: vec![],
                root,
            },
            grants,
            denies: vec![],
        }
    }

    fn item(tenant: &str, kind: RecordKind, integration: &str, outcome: &'static str) -> TailItem {
        TailItem {
            chain_id: Arc::from("c"),
            seq: 1,
            kind,
            tenant_id: tenant.into(),
            integration_id: Some(integration.into()),
            route_id: Some("r-1".into()),
            outcome: Some(outcome),
            code: Some(
                if outcome == "allow" {
                    "OK"
                } else {
                    "SCOPE_VIOLATION"
                }
                .into(),
            ),
            time_ms: 0,
            latency_us: Some(5),
            body: Arc::from("{}"),
            shadow: Vec::new(),
        }
    }

    /// EXT-6-1: an auditor is confined to its tenant; root is not, and that is a bypass.
    #[test]
    fn authorize_confines_auditors_to_their_tenant() {
        let aud = caller("ke", true, false);
        let f = Filter::authorize(TailRequest::default(), &aud).unwrap();
        assert_eq!(f.tenant.as_deref(), Some("ke"));
        assert!(!f.root_bypass);
        let other = TailRequest {
            tenant_id: "ug".into(),
            ..Default::default()
        };
        assert_eq!(
            Filter::authorize(other.clone(), &aud).unwrap_err().code(),
            Code::PermissionDenied
        );
        let nobody = caller("ke", false, false);
        assert_eq!(
            Filter::authorize(TailRequest::default(), &nobody)
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        let root = caller("ke", false, true);
        let f = Filter::authorize(TailRequest::default(), &root).unwrap();
        assert_eq!(f.tenant, None);
        assert!(f.root_bypass);
        assert!(Filter::authorize(other.clone(), &root).unwrap().root_bypass);
        // A root who audits its own tenant tails it as an auditor, not as root.
        let root_auditor = caller("ke", true, true);
        let own = TailRequest {
            tenant_id: "ke".into(),
            ..Default::default()
        };
        assert!(!Filter::authorize(own, &root_auditor).unwrap().root_bypass);
        assert!(Filter::authorize(other, &root_auditor).unwrap().root_bypass);
        let bad = TailRequest {
            outcome: "maybe".into(),
            ..Default::default()
        };
        assert_eq!(
            Filter::authorize(bad, &aud).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    /// INT-8-1, EXT-6-1: the filters (tenant, integration, route, outcome, codes) select
    /// decisions; events only on request.
    #[test]
    fn filters_select_records() {
        let f = Filter {
            tenant: Some("ke".into()),
            integration: Some("int-a".into()),
            route: None,
            outcome: Some("deny"),
            codes: vec![],
            include_events: false,
            shadow_only: false,
            root_bypass: false,
        };
        assert!(f.matches(&item("ke", RecordKind::Decision, "int-a", "deny")));
        assert!(!f.matches(&item("ke", RecordKind::Decision, "int-a", "allow")));
        assert!(!f.matches(&item("ke", RecordKind::Decision, "int-b", "deny")));
        assert!(!f.matches(&item("ug", RecordKind::Decision, "int-a", "deny")));
        assert!(!f.matches(&item("ke", RecordKind::AuditAccess, "int-a", "deny")));
        let f = Filter {
            include_events: true,
            codes: vec!["OK".into()],
            outcome: None,
            ..f
        };
        assert!(f.matches(&item("ke", RecordKind::AuditAccess, "x", "deny")));
        assert!(f.matches(&item("ke", RecordKind::Decision, "int-a", "allow")));
        assert!(!f.matches(&item("ke", RecordKind::Decision, "int-a", "deny")));
        // By route (the test items are of route `r-1`); events are not filtered by route.
        let by_route = |r: &str| Filter {
            route: Some(r.into()),
            ..f.clone()
        };
        assert!(by_route("r-1").matches(&item("ke", RecordKind::Decision, "int-a", "allow")));
        assert!(!by_route("r-2").matches(&item("ke", RecordKind::Decision, "int-a", "allow")));
        assert!(by_route("r-2").matches(&item("ke", RecordKind::AuditAccess, "x", "deny")));
    }

    /// Issue 16: `shadow_only` keeps only decisions with shadow findings (events still follow
    /// `include_events`), and the text line names each finding.
    #[test]
    fn shadow_filter_selects_decisions_with_findings() {
        let f = Filter {
            tenant: None,
            integration: None,
            route: None,
            outcome: None,
            codes: vec![],
            include_events: true,
            shadow_only: true,
            root_bypass: true,
        };
        let plain = item("ke", RecordKind::Decision, "int-a", "allow");
        assert!(!f.matches(&plain));
        let mut shadowed = plain.clone();
        shadowed.shadow = vec![crate::decision::ShadowFinding {
            code: crate::decision::DenyCode::PolicyDenied,
            document: "policy_pack/p1".into(),
            reasons: vec!["p1/no-night".into()],
        }];
        assert!(f.matches(&shadowed));
        assert!(f.matches(&item("ke", RecordKind::AuditAccess, "x", "deny")));
        let line = format_line(&tail_event(&shadowed));
        assert!(
            line.ends_with(" shadow: policy_pack/p1 POLICY_DENIED"),
            "{line}"
        );
        assert!(!format_line(&tail_event(&plain)).contains("shadow"));

        // `--shadow` asks the server for the filter.
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            args: TailArgs,
        }
        use clap::Parser as _;
        let with = Cmd::try_parse_from(["tail", "--shadow"]).unwrap().args;
        assert!(with.request().shadow_only);
        let without = Cmd::try_parse_from(["tail"]).unwrap().args;
        assert!(!without.request().shadow_only);
    }

    /// INT-8-1: a subscriber that does not read loses records (each one counted) while the feed
    /// never waits for it; once it reads again, a marker reports the loss before newer records.
    #[tokio::test]
    async fn forward_never_waits_and_reports_losses() {
        let (feed_tx, feed_rx) = broadcast::channel(16);
        let (tx, mut rx) = mpsc::channel(SEND_BUFFER);
        let f = Filter {
            tenant: None,
            integration: None,
            route: None,
            outcome: None,
            codes: vec![],
            include_events: false,
            shadow_only: false,
            root_bypass: true,
        };
        let task = tokio::spawn(forward(feed_rx, tx, f, metrics::Counter::noop(), None));
        let total = 1000u64;
        for i in 0..total {
            // Broadcast send is synchronous: the producer cannot wait for the subscriber.
            let _ = feed_tx.send(Arc::new(item("ke", RecordKind::Decision, "i", "allow")));
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        // Let the forwarding task take the last records off the feed.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let mut records = 0u64;
        for _ in 0..SEND_BUFFER {
            let ev = rx.recv().await.unwrap().unwrap();
            assert_eq!(ev.dropped, 0);
            records += 1;
        }
        let marker = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            marker.dropped,
            total - records,
            "every record is delivered or counted"
        );
        let _ = feed_tx.send(Arc::new(item("ke", RecordKind::Decision, "i", "allow")));
        let next = rx.recv().await.unwrap().unwrap();
        assert_eq!((next.dropped, next.kind.as_str()), (0, "decision"));
        drop(feed_tx);
        assert_eq!(task.await.unwrap(), total - records);
    }

    #[test]
    fn readable_line_escapes_control_characters() {
        let ev = TailEvent {
            kind: "decision".into(),
            outcome: "deny".into(),
            code: "SCOPE_VIOLATION".into(),
            tenant_id: "ke".into(),
            integration_id: "int-ke-moh".into(),
            time_unix_ms: 1_795_313_436_123,
            latency_us: 412,
            body:
                r#"{"method":"GET","path":"/v1/a\u001b[31m","route_id":"r1","decision_id":"0193"}"#
                    .into(),
            ..Default::default()
        };
        let line = format_line(&ev);
        assert!(
            line.starts_with("2026-11-22T") && line.contains("DENY  SCOPE_VIOLATION "),
            "{line}"
        );
        assert!(line.contains("ke/int-ke-moh GET /v1/a\\u{1b}[31m route=r1 412µs decision=0193"));
        assert!(!line.contains('\u{1b}'));
    }
}
