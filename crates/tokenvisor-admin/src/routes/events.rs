//! `GET /v1/events`: the event stream as server-sent events.

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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
/// `connected`, `removed`) with the event as JSON in `data` and an `id`. A client that
/// reconnects with `Last-Event-ID` first gets the events it missed (the last 10,000 are
/// kept); one that falls behind, or asks for more than is kept, gets `event: lagged` with
/// `{"missed": n}` (`null` when its id is from before a restart). The stream starts with
/// a `: subscribed` comment.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    operation_id = "stream_events",
    params(EventQuery),
    responses(
        (status = 200, description = "server-sent events", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
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
    Ok(relay(&state, &headers, wanted))
}

/// What a subscriber wants of the event stream.
pub(crate) type Wanted = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// The event stream as server-sent events, the events `wanted` keeps, resumed after the
/// request's `Last-Event-ID` (also the dashboard's `/ui/events`).
pub(crate) fn relay(
    state: &AppState,
    headers: &HeaderMap,
    wanted: Wanted,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + use<>> {
    let last_event_id = headers.get("last-event-id").and_then(|value| value.to_str().ok());
    let resume = state.journal.resume(last_event_id);
    let journal = state.journal.clone();
    let mut head = vec![Ok(SseEvent::default().comment("subscribed"))];
    if let Some(missed) = resume.missed {
        head.push(Ok(lagged(missed)));
    }
    head.extend(
        resume
            .backlog
            .iter()
            .filter(|(_, event)| wanted(event))
            .map(|(number, event)| Ok(to_sse(event).id(journal.id(*number)))),
    );
    let shutdown = state.options.shutdown.clone();
    let live = futures::stream::unfold((resume.live, shutdown), move |(mut receiver, shutdown)| {
        let wanted = wanted.clone();
        let journal = journal.clone();
        async move {
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    received = receiver.recv() => received,
                };
                let item = match received {
                    Ok((number, event)) if wanted(&event) => to_sse(&event).id(journal.id(number)),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => lagged(Some(missed)),
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(item), (receiver, shutdown)));
            }
        }
    });
    Sse::new(futures::StreamExt::chain(futures::stream::iter(head), live)).keep_alive(KeepAlive::default())
}

/// `event: lagged` with how many events the client missed (`null`: unknown, it last
/// saw an event of an earlier run).
fn lagged(missed: Option<u64>) -> SseEvent {
    SseEvent::default()
        .event("lagged")
        .data(serde_json::json!({ "missed": missed }).to_string())
}

fn to_sse(event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    SseEvent::default().event(event.kind.name()).data(data)
}
