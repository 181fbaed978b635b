//! `GET /v1/events`: the event stream as server-sent events.

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use tokenvisor_core::{ConnectionId, Event, TenantId};
use tokio::sync::broadcast;
use utoipa::IntoParams;

/// Filters of the event stream.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventQuery {
    /// Only this tenant's events.
    tenant_id: Option<String>,
    /// Only this connection's events.
    connection_id: Option<String>,
}

/// Server-sent events: `event: <type>` (`refreshed`, `refresh_failed`,
/// `needs_reauthorization`, `recovered`, `deactivated`, `activated`, `reauthorized`,
/// `connected`, `removed`) with the event as JSON in `data`. A client that falls behind
/// gets `event: lagged` with `{"missed": n}`. The stream starts with a `: subscribed` comment.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(EventQuery),
    responses(
        (status = 200, description = "server-sent events", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EventQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let tenant = match query.tenant_id {
        Some(tenant) => Some(
            TenantId::parse(tenant)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.to_string()))?,
        ),
        None => None,
    };
    let connection = match query.connection_id {
        Some(id) => Some(
            id.parse::<ConnectionId>()
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "connection_id is not a UUID"))?,
        ),
        None => None,
    };
    let wanted = Arc::new(move |event: &Event| {
        tenant.as_ref().is_none_or(|t| *t == event.tenant_id) && connection.is_none_or(|c| c == event.connection_id)
    });
    let receiver = state.tokenvisor.subscribe();
    let shutdown = state.options.shutdown.clone();
    let events = futures::stream::unfold((receiver, shutdown), move |(mut receiver, shutdown)| {
        let wanted = wanted.clone();
        async move {
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    received = receiver.recv() => received,
                };
                let item = match received {
                    Ok(event) if wanted(&event) => to_sse(&event),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => SseEvent::default()
                        .event("lagged")
                        .data(serde_json::json!({ "missed": missed }).to_string()),
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(item), (receiver, shutdown)));
            }
        }
    });
    let first = futures::stream::once(async { Ok(SseEvent::default().comment("subscribed")) });
    Ok(Sse::new(futures::StreamExt::chain(first, events)).keep_alive(KeepAlive::default()))
}

fn to_sse(event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    SseEvent::default().event(event.kind.name()).data(data)
}
