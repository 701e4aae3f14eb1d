//! Traces: with an OTLP endpoint, spans reach a collector, and a delivery on another
//! instance joins the trace of its publish through the pub/sub payload.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use roomcast_shared::Role;
use serde_json::json;
use testkit::*;

/// One received span with the resource it came from.
#[derive(Clone, Debug)]
struct Received {
    node: String,
    service: String,
    version: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn attr(attrs: &[KeyValue], key: &str) -> String {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(AnyValue::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        node: attr(&attrs, "service.instance.id"),
                        service: attr(&attrs, "service.name"),
                        version: attr(&attrs, "service.version"),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    fn snapshot(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    fn has(&self, node: &str, name: &str) -> bool {
        self.snapshot()
            .iter()
            .any(|s| s.node == node && s.name == name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_instance_publish_produces_one_linked_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let redis = Redis::start();
    let otlp = [
        ("ROOMCAST_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let a = Gateway::start(
        &redis.url(),
        &[otlp[0], otlp[1], ("ROOMCAST_NODE_ID", "trace-a")],
    );
    let b = Gateway::start(
        &redis.url(),
        &[otlp[0], otlp[1], ("ROOMCAST_NODE_ID", "trace-b")],
    );
    a.wait_ready().await;
    b.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", &[Role::Controller])).await;
    let mut tv = b.connect(&token("tv", &[Role::Display])).await;
    ctl.join("traced", None).await;
    tv.join("traced", None).await;
    ctl.publish("traced", json!("follow me")).await;
    assert_eq!(tv.messages("traced", 1).await, vec![1]);
    ctl.close().await;

    wait_for(
        Duration::from_secs(10),
        "publish, deliver and connection spans",
        || async {
            collector.has("trace-a", "publish")
                && collector.has("trace-b", "deliver")
                && collector.has("trace-a", "conn")
        },
    )
    .await;
    let spans = collector.snapshot();
    let publish = spans
        .iter()
        .find(|s| s.node == "trace-a" && s.name == "publish")
        .unwrap();
    let delivers: Vec<_> = spans
        .iter()
        .filter(|s| s.node == "trace-b" && s.name == "deliver")
        .collect();
    assert!(
        delivers
            .iter()
            .any(|d| d.trace_id == publish.trace_id && d.parent_span_id == publish.span_id),
        "B's delivery is a child of A's publish: {publish:?} {delivers:?}"
    );
    // The Redis script ran inside the publish span.
    assert!(spans.iter().any(|s| s.name == "redis"
        && s.trace_id == publish.trace_id
        && s.parent_span_id == publish.span_id));
    for name in ["http", "join", "conn"] {
        assert!(spans.iter().any(|s| s.name == name), "no {name} span");
    }
    assert!(spans
        .iter()
        .all(|s| s.service == "roomcast" && !s.version.is_empty()));
}
