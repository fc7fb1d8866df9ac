//! OpenTelemetry tracing against a real OTLP/gRPC receiver (the collector's
//! `opentelemetry.proto.collector.trace.v1.TraceService`, served by this test) and the real
//! `scp-pep serve` binary: a decision's span joins the request's W3C trace, its I/O stages are
//! child spans, sampling follows the request's `traceparent`, and the trace id is in the
//! decision log line and the audit record. No span carries a path, token or person id.

use crate::common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Idp, Keys};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use scp_pep::check::{CheckInput, build_request};

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    s.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(v) => Some(v.clone()),
            Value::BoolValue(b) => Some(b.to_string()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

/// Issue 14 (tracing), SEC-09 (no personal data in traces): see the module comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_spans_join_the_request_trace() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let r = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            // Collectors accept gzip; scp-pep sends it.
            .add_service(
                TraceServiceServer::new(r)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let keys = Arc::new(Keys::generate());
    let idp = Idp::start(keys.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("policies");
    common::write_policies(&idp.base, &pol);
    let (grpc, http) = (common::free_port(), common::free_port());
    let db = dir.path().join("s.db");
    let log = dir.path().join("d.jsonl");
    let cfg = dir.path().join("scp-pep.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\ndrain_s = 0\n\
             [store]\nurl = \"sqlite:{}\"\n[policy]\ndir = \"{}\"\n[decision_log]\noutput = \"{}\"\n\
             [auth]\njwks_refetch_min_interval_s = 1\n[tracing]\notlp_endpoint = \"http://{otlp}\"\nsample_ratio = 0.0\n",
            db.display(),
            pol.display(),
            log.display()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scp-pep"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .env("OTEL_BSP_SCHEDULE_DELAY", "300")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::wait_ready(http).await;

    // A key the server has not fetched yet: the first decision fetches the JWKS again.
    let fresh =
        scp_pep::signer::SigningKey::generate(jsonwebtoken::Algorithm::RS256, "ke-otel").unwrap();
    let token = fresh.sign(&idp.claims("ke", "int-ke-moh", &["health"], "health:person:read"));
    idp.add_key("ke", fresh);
    // Past the least refetch interval since the start's fetch.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://127.0.0.1:{grpc}"),
    )
    .await
    .unwrap();
    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let mut ids = Vec::new();
    for (trace, flags) in [(Some(sampled), "01"), (Some(unsampled), "00"), (None, "")] {
        let mut headers = vec![("authorization".into(), format!("Bearer {token}"))];
        if let Some(t) = trace {
            headers.push((
                "traceparent".into(),
                format!("00-{t}-00f067aa0ba902b7-{flags}"),
            ));
        }
        let input = CheckInput {
            method: "GET".into(),
            path: "/v1/tenants/ke/health/persons/p-1/record".into(),
            headers,
            source_ip: Some("192.0.2.1".into()),
            peer_certificate: None,
            body: None,
        };
        let resp = client
            .check(build_request(&input))
            .await
            .unwrap()
            .into_inner();
        let v = scp_pep::check::response_json(&resp);
        ids.push(v["decision_id"].as_str().unwrap().to_owned());
    }

    // Exported while running (the batch interval, shortened here by OTEL_BSP_SCHEDULE_DELAY),
    // not only when the queue fills or the process exits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.spans.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no span exported within 10 s while running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM flushes the exporter before the process exits.
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let st = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("scp-pep exits after SIGTERM")
        .unwrap();
    assert!(st.success(), "{st}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.spans.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = receiver.spans.lock().unwrap().clone();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let decisions: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "ext_authz.check")
        .collect();
    // Parent-based sampling with ratio 0: only the sampled traceparent's decision is exported.
    assert_eq!(
        decisions.len(),
        1,
        "{spans:?}\n{}",
        std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
    );
    let d = decisions[0];
    assert_eq!(hex(&d.trace_id), sampled);
    assert_eq!(
        hex(&d.parent_span_id),
        "00f067aa0ba902b7",
        "child of the request's span"
    );
    assert_eq!(attr(d, "decision_id").as_deref(), Some(ids[0].as_str()));
    assert_eq!(attr(d, "tenant_id").as_deref(), Some("ke"));
    assert!(attr(d, "code").is_some());
    // The I/O stages of that decision are its children (cold JWKS fetch, consent miss, audit).
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == d.span_id)
        .map(|s| s.name.as_str())
        .collect();
    for want in ["jwks.fetch", "consent.lookup", "audit.commit"] {
        assert!(children.contains(&want), "{want} missing: {children:?}");
    }
    // Nothing personal or secret in any span.
    let text = format!("{spans:?}");
    for secret in ["p-1", token.as_str(), "/v1/tenants"] {
        assert!(!text.contains(secret), "a span carries `{secret}`");
    }

    // The trace id is in the decision log line and the audit record, sampled or not.
    let lines = std::fs::read_to_string(&log).unwrap();
    for (id, trace) in ids.iter().zip([Some(sampled), Some(unsampled), None]) {
        let line: serde_json::Value = lines
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .find(|v: &serde_json::Value| v["decision_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no log line for {id}"));
        assert_eq!(line["trace_id"].as_str(), trace, "{line}");
    }
    let store = scp_pep::store::Store::connect(
        &format!("sqlite:{}", db.display()),
        1,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let scp_pep::store::Store::Sqlite(pool) = &store else {
        unreachable!()
    };
    let body: String = sqlx::query_scalar("SELECT body FROM audit_records WHERE event_id = ?")
        .bind(&ids[0])
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(
        body.contains(&format!("\"trace_id\":\"{sampled}\"")),
        "{body}"
    );
}
