//! The orchestrator's own HTTP routes: the status page and `GET /payments/<id>`.

use super::{OrchestratorError, Shared};
use crate::journal::Journal;
use crate::status_page;
use baton_ops::{AppRequest, HttpServer, Response};
use std::sync::Arc;
use tokio::sync::watch;
use uuid::Uuid;
/// What the status page (`GET /`) shows, gathered now: the journal's recent payments,
/// this replica's breakers, and the depths of the parking and operators' queues.
pub(super) async fn overview(shared: &Shared, journal: &Journal) -> status_page::Overview {
    let names = &shared.settings.names;
    let workflow = &shared.settings.workflow;
    let breakers = workflow
        .services()
        .into_iter()
        .map(|service| {
            let state = shared
                .metrics
                .breaker_state
                .with_label_values(&[service])
                .get();
            (service.to_owned(), state)
        })
        .collect();
    let mut parked = Vec::new();
    for delay_ms in workflow.parking().delays_ms() {
        let queue = names.retry_queue(delay_ms);
        let depth = shared.env.transport.queue_depth(&queue).await;
        parked.push((queue, depth));
    }
    status_page::Overview {
        instance: shared.settings.instance.clone(),
        prefix: names.prefix().to_owned(),
        recent: journal
            .recent(status_page::RECENT_PAYMENTS)
            .await
            .map_err(|e| e.to_string()),
        breakers,
        parked,
        dead: shared.env.transport.queue_depth(&names.dead_queue()).await,
        attention: shared
            .env
            .transport
            .queue_depth(&names.attention_queue())
            .await,
    }
}

/// `GET /payments/<id>`: the journal's record as JSON, or as an HTML page when a browser
/// asks for one.
pub(super) async fn payment_status(journal: &Journal, request: &AppRequest) -> Option<Response> {
    let id = request.path.strip_prefix("/payments/")?;
    let Ok(payment_id) = Uuid::try_parse(id) else {
        if request.wants_html {
            return Some(Response::text(400, "the payment id must be a UUID"));
        }
        return Some(Response::json(
            400,
            br#"{"error":"the payment id must be a UUID"}"#.to_vec(),
        ));
    };
    let loaded = journal.load(payment_id).await;
    if request.wants_html {
        return Some(match loaded {
            Ok(Some(record)) => Response::html(200, status_page::payment(&record)),
            Ok(None) => Response::text(404, "unknown payment"),
            Err(e) => Response::text(503, format!("journal unavailable: {e}")),
        });
    }
    Some(match loaded {
        Ok(Some(record)) => match serde_json::to_vec(&record) {
            Ok(body) => Response::json(200, body),
            Err(e) => Response::json(500, error_json(&e.to_string())),
        },
        Ok(None) => Response::json(404, br#"{"error":"unknown payment"}"#.to_vec()),
        Err(e) => Response::json(503, error_json(&format!("journal unavailable: {e}"))),
    })
}

pub(super) fn error_json(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

/// Starts the HTTP port if `--http-addr` asks for one: `/metrics`, `/healthz`, `/readyz`
/// (from `baton-ops`), and the routes below.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    journal: &Journal,
    stopped: &watch::Receiver<bool>,
) -> Result<Option<HttpServer>, OrchestratorError> {
    Ok(match &shared.settings.http_addr {
        Some(addr) => {
            let journal = journal.clone();
            let token = match &shared.settings.http_token_file {
                Some(path) => Some(baton_ops::BearerToken::from_file(path)?),
                None => None,
            };
            let weak = Arc::downgrade(shared);
            let handler = baton_ops::request_handler(move |request: AppRequest| {
                let journal = journal.clone();
                let shared = weak.clone();
                async move {
                    if request.path == "/" {
                        // Gone only while the process stops.
                        let shared = shared.upgrade()?;
                        let overview = overview(&shared, &journal).await;
                        let html = status_page::index(&overview, &shared.settings.workflow);
                        return Some(Response::html(200, html));
                    }
                    payment_status(&journal, &request).await
                }
            });
            let routes = baton_ops::AppRoutes::new(handler).with_token(token);
            let start_on = |addr: String| {
                let mut stop_http = stopped.clone();
                let registry = shared.metrics.registry.clone();
                let health = shared.health.clone();
                let routes = routes.clone();
                async move {
                    let stop = async move {
                        let _ = stop_http.wait_for(|s| *s).await;
                    };
                    HttpServer::start(&addr, registry, health, Some(routes), stop).await
                }
            };
            match start_on(addr.clone()).await {
                Err(e) if e.is_addr_in_use() && shared.settings.http_fallback_to_free_port => {
                    let host = addr
                        .rsplit_once(':')
                        .map_or(addr.as_str(), |(host, _)| host);
                    let server = start_on(format!("{host}:0")).await?;
                    tracing::warn!(
                        taken = %addr,
                        addr = %server.local_addr(),
                        "HTTP port taken (another baton run on this machine?): listening on a free \
                         port instead; give each replica its own with --http-addr / BATON_HTTP_ADDR"
                    );
                    Some(server)
                }
                served => Some(served?),
            }
        }
        None => None,
    })
}
