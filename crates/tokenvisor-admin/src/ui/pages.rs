//! The dashboard's pages as maud templates: every value is HTML-escaped by the template
//! engine; no page carries a token or a secret (only the connection's token preview).

use crate::views::ConnectionView;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use tokenvisor_core::{ConnectionSort, ConnectionStatus, RefreshAttempt, RefreshOutcomeKind};
use tokenvisor_store::{ConnectionSummary, MinuteCount};

/// Every status, in the order the pages show them.
pub(crate) const STATUSES: [ConnectionStatus; 4] = [
    ConnectionStatus::Active,
    ConnectionStatus::Degraded,
    ConnectionStatus::NeedsReauth,
    ConnectionStatus::Disabled,
];

/// What every page shares: where the routes are and the session's CSRF token.
pub(crate) struct Chrome<'a> {
    /// The admin routes' base path (`""` or `/tokenvisor`).
    pub(crate) base: &'a str,
    /// The signed-in session's CSRF token (`None` on the sign-in page).
    pub(crate) csrf: Option<&'a str>,
}

/// The page frame: title, navigation, sign-out.
pub(crate) fn layout(chrome: &Chrome<'_>, title: &str, body: Markup) -> Markup {
    let base = chrome.base;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tokenvisor" }
                link rel="stylesheet" href={ (base) "/ui/assets/app.css" };
                script src={ (base) "/ui/assets/app.js" } defer {}
            }
            body {
                header {
                    nav aria-label="Main" {
                        a.brand href={ (base) "/ui" } { "tokenvisor" }
                        @if let Some(csrf) = chrome.csrf {
                            a href={ (base) "/ui" } { "Overview" }
                            a href={ (base) "/ui/connections" } { "Connections" }
                            a href={ (base) "/ui/integrations" } { "Integrations" }
                            form.inline method="post" action={ (base) "/ui/sign-out" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A status as a labelled badge.
pub(crate) fn badge(status: &str) -> Markup {
    html! { span class={ "badge " (status) } { (status.replace('_', " ")) } }
}

/// A time shown relative to now (updated by the page's script), the exact time in its
/// `datetime` and title.
pub(crate) fn moment(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => {
            let exact = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            html! { time datetime=(exact) title=(exact) data-relative { (relative(at, Utc::now())) } }
        }
        None => html! { "—" },
    }
}

/// `in 12 min`, `3 h ago`.
pub(crate) fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    let magnitude = seconds.unsigned_abs();
    let amount = match magnitude {
        0..60 => format!("{magnitude} s"),
        60..3600 => format!("{} min", magnitude / 60),
        3600..172_800 => format!("{} h", magnitude / 3600),
        _ => format!("{} d", magnitude / 86_400),
    };
    if seconds >= 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// The sign-in form, with an optional error.
pub(crate) fn sign_in(base: &str, error: Option<&str>) -> Markup {
    let chrome = Chrome { base, csrf: None };
    layout(
        &chrome,
        "Sign in",
        html! {
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.card method="post" action={ (base) "/ui/sign-in" } {
                label for="token" { "Admin token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// One integration's row of the overview: its name and the count of each status.
pub(crate) struct IntegrationCounts {
    pub(crate) id: tokenvisor_core::IntegrationId,
    pub(crate) name: String,
    pub(crate) provider: String,
    pub(crate) client_id: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) counts: [u64; 4],
}

/// The status counts per integration as a table.
pub(crate) fn counts_table(base: &str, rows: &[IntegrationCounts]) -> Markup {
    html! {
        table {
            caption { "Connections by status" }
            thead { tr {
                th scope="col" { "Integration" }
                @for status in STATUSES { th scope="col" { (status.as_str().replace('_', " ")) } }
            } }
            tbody {
                @for row in rows {
                    tr {
                        th scope="row" { a href={ (base) "/ui/connections?integration=" (urlencode(&row.name)) } { (row.name) } }
                        @for (status, count) in STATUSES.iter().zip(row.counts) {
                            td {
                                @if count > 0 {
                                    a href={ (base) "/ui/connections?integration=" (urlencode(&row.name)) "&status=" (status.as_str()) } { (count) }
                                } @else { "0" }
                            }
                        }
                    }
                }
                @if rows.is_empty() { tr { td colspan="5" { "No integration registered yet." } } }
            }
        }
    }
}

/// What the overview shows.
pub(crate) struct Figures<'a> {
    /// Counts per integration and status.
    pub(crate) rows: &'a [IntegrationCounts],
    /// Expiring tokens and degraded connections by error.
    pub(crate) summary: &'a ConnectionSummary,
    /// Refreshes per minute by outcome since `since`.
    pub(crate) minutes: &'a [MinuteCount],
    pub(crate) since: DateTime<Utc>,
    pub(crate) now: DateTime<Utc>,
    /// Each integration's limiter now (absent: not used by this process yet).
    pub(crate) limits: &'a [(tokenvisor_core::IntegrationId, tokenvisor_supervisor::LimiterSnapshot)],
}

/// The overview: counts per integration, tokens expiring within the hour against the
/// refreshes planned, degraded connections by error, and the refreshes per minute by
/// outcome.
pub(crate) fn overview(chrome: &Chrome<'_>, figures: &Figures<'_>) -> Markup {
    let rows = figures.rows;
    let summary = figures.summary;
    let totals: [u64; 4] = std::array::from_fn(|i| rows.iter().map(|row| row.counts[i]).sum());
    let unplanned = summary.expiring.saturating_sub(summary.expiring_planned);
    let degraded: u64 = summary.degraded_by_error.iter().map(|(_, count)| count).sum();
    layout(
        chrome,
        "Overview",
        html! {
            section.tiles aria-label="Totals" {
                @for (status, total) in STATUSES.iter().zip(totals) {
                    a class={ "tile " (status.as_str()) } href={ (chrome.base) "/ui/connections?status=" (status.as_str()) } {
                        span.count { (total) } span.label { (status.as_str().replace('_', " ")) }
                    }
                }
            }
            section #expiring aria-label="Expiring within the hour" {
                h2 { "Tokens expiring within the hour" }
                p {
                    span.expiring { (summary.expiring) } " active connections' tokens expire within the hour; "
                    span.planned { (summary.expiring_planned) } " have a refresh planned before their expiry"
                    @if unplanned > 0 { ", " strong.unplanned { (unplanned) } " do not" }
                    "."
                }
            }
            section #throttled aria-label="Throttled or backing off" {
                h2 { "Provider calls throttled or backing off now" }
                @if degraded == 0 {
                    p { "No connection is degraded: no refresh is being retried." }
                } @else {
                    table {
                        caption { "Degraded connections (retrying with backoff) by their last error" }
                        thead { tr { th scope="col" { "Last error" } th scope="col" { "Connections" } } }
                        tbody {
                            @for (code, count) in &summary.degraded_by_error {
                                tr {
                                    th scope="row" { code { (code.as_deref().unwrap_or("none recorded")) } }
                                    td { (count) }
                                }
                            }
                        }
                    }
                }
                p.note { "Counted from the stored connections: a degraded connection waits for its next retry; a rate-limited one (429 or the provider's throttling error) waits at least a minute." }
                table #provider-calls {
                    caption { "Provider calls per integration right now (this process)" }
                    thead { tr {
                        th scope="col" { "Integration" }
                        th scope="col" { "Waiting on tokenvisor's rate or concurrency limit" }
                        th scope="col" { "Calling the provider" }
                        th scope="col" { "Backing off (degraded)" }
                    } }
                    tbody {
                        @for row in figures.rows {
                            @let now = figures.limits.iter().find(|(id, _)| *id == row.id).map(|(_, snapshot)| *snapshot).unwrap_or_default();
                            tr {
                                th scope="row" { (row.name) }
                                td.waiting { (now.waiting) }
                                td.in-flight { (now.in_flight) @if now.max_concurrent > 0 { " of " (now.max_concurrent) } }
                                td.backing-off { (row.counts[1]) }
                            }
                        }
                    }
                }
            }
            (counts_table(chrome.base, rows))
            section {
                h2 { "Refreshes per minute, last " ((figures.now - figures.since).num_hours()) " hours" }
                (refresh_plot(figures.minutes, figures.since, figures.now))
            }
        },
    )
}

/// The colour class of an outcome in the plot.
fn outcome_class(outcome: RefreshOutcomeKind) -> &'static str {
    match outcome {
        RefreshOutcomeKind::Success => "ok",
        _ => "failed",
    }
}

/// An SVG bar per minute, stacked by outcome (successes below, failures above), with a
/// legend of the totals and each bar's counts in its title.
fn refresh_plot(minutes: &[MinuteCount], since: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    const WIDTH: i64 = 720;
    const HEIGHT: u64 = 120;
    let span = (now - since).num_minutes().max(1);
    let mut per_minute: std::collections::BTreeMap<i64, Vec<&MinuteCount>> = Default::default();
    for count in minutes {
        per_minute
            .entry((count.minute - since).num_minutes())
            .or_default()
            .push(count);
    }
    let highest = per_minute
        .values()
        .map(|counts| counts.iter().map(|c| c.count).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut totals: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for count in minutes {
        *totals.entry(count.outcome.as_str()).or_default() += count.count;
    }
    let bar = (WIDTH / span).max(1);
    html! {
        figure {
            svg.plot viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-labelledby="plot-caption" {
                @for (offset, counts) in &per_minute {
                    @let mut top = HEIGHT;
                    @for count in counts.iter() {
                        @let height = (count.count * HEIGHT).div_ceil(highest);
                        @let y = { top = top.saturating_sub(height); top };
                        rect class=(outcome_class(count.outcome)) x=((offset * WIDTH) / span) y=(y) width=(bar) height=(height) {
                            title { ((count.minute).format("%H:%M")) " UTC: " (count.count) " " (count.outcome.as_str()) }
                        }
                    }
                }
            }
            figcaption #plot-caption {
                @if totals.is_empty() { "No refresh in this period." }
                @for (outcome, total) in &totals { span.legend { (outcome) ": " (total) } " " }
            }
        }
    }
}

/// The filters of the connections table.
pub(crate) struct TableFilters<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) integration: &'a str,
    pub(crate) status: &'a str,
    /// The search (a prefix).
    pub(crate) search: &'a str,
    pub(crate) sort: ConnectionSort,
    pub(crate) descending: bool,
    pub(crate) integrations: Vec<String>,
}

/// The orders of the connections table, with their labels.
const SORTS: [(ConnectionSort, &str); 4] = [
    (ConnectionSort::Id, "created"),
    (ConnectionSort::ExpiresAt, "expiry"),
    (ConnectionSort::Failures, "failures in a row"),
    (ConnectionSort::LastError, "last error"),
];

/// The connections table: filters, one page of rows, a link to the next page.
pub(crate) fn connections(
    chrome: &Chrome<'_>,
    filters: &TableFilters<'_>,
    rows: &[ConnectionView],
    next: Option<String>,
) -> Markup {
    let base = chrome.base;
    let direction = if filters.descending { "descending" } else { "ascending" };
    let sorted = |column: ConnectionSort| (column == filters.sort).then_some(direction);
    layout(
        chrome,
        "Connections",
        html! {
            form.filters method="get" action={ (base) "/ui/connections" } role="search" {
                label { "Search " input type="search" name="q" value=(filters.search) placeholder="start of tenant, key or integration" size="28"; }
                label { "Tenant " input type="search" name="tenant" value=(filters.tenant) placeholder="exact tenant id"; }
                label { "Integration "
                    select name="integration" {
                        option value="" { "any" }
                        @for name in &filters.integrations {
                            option value=(name) selected[name == filters.integration] { (name) }
                        }
                    }
                }
                label { "Status "
                    select name="status" {
                        option value="" { "any" }
                        @for status in STATUSES {
                            option value=(status.as_str()) selected[status.as_str() == filters.status] { (status.as_str().replace('_', " ")) }
                        }
                    }
                }
                label { "Sort "
                    select name="sort" {
                        @for (sort, label) in SORTS {
                            option value=(sort.as_str()) selected[sort == filters.sort] { (label) }
                        }
                    }
                }
                label { "Order "
                    select name="order" {
                        option value="asc" selected[!filters.descending] { "ascending" }
                        option value="desc" selected[filters.descending] { "descending" }
                    }
                }
                button type="submit" { "Filter" }
            }
            @let ids = rows.iter().map(|row| row.id.to_string()).collect::<Vec<_>>().join(",");
            table #connections data-live-events=[(!rows.is_empty()).then(|| format!("{base}/ui/events?ids={ids}"))] {
                thead { tr {
                    th scope="col" { "Tenant" } th scope="col" { "Integration" } th scope="col" { "Key" }
                    th scope="col" { "Status" }
                    th scope="col" aria-sort=[sorted(ConnectionSort::ExpiresAt)] { "Expires" }
                    th scope="col" { "Next refresh" }
                    th scope="col" aria-sort=[sorted(ConnectionSort::Failures)] { "Failures (in a row)" }
                    th scope="col" aria-sort=[sorted(ConnectionSort::LastError)] { "Last error" }
                } }
                tbody {
                    @for row in rows {
                        tr data-connection=(row.id) data-status-url={ (base) "/ui/connections/" (row.id) "/status" } {
                            th scope="row" { a href={ (base) "/ui/connections/" (row.id) } { (row.tenant_id) } }
                            td { (row.integration) } td { (row.connection_key) }
                            td.status { (badge(row.status.as_str())) }
                            td.expires { (moment(Some(row.expires_at))) } td.next-refresh { (moment(row.next_refresh_at)) }
                            td { (row.refresh_failures) " (" (row.consecutive_failures) ")" }
                            td { @if let Some(error) = &row.last_error { code { (error.code) } " " (moment(Some(error.at))) } }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="8" { "No connection matches." } } }
                }
            }
            @if let Some(next) = next { p { a rel="next" href=(next) { "Next page →" } } }
        },
    )
}

/// A notice shown on the connection page after an action.
pub(crate) enum Notice {
    /// Something done, in words.
    Done(String),
    /// An authorization link to send to the tenant.
    Link { url: String, expires_at: DateTime<Utc> },
}

/// One connection: its state, actions and refresh history.
pub(crate) fn connection(
    chrome: &Chrome<'_>,
    view: &ConnectionView,
    history: &[RefreshAttempt],
    notice: Option<Notice>,
) -> Markup {
    let base = chrome.base;
    let csrf = chrome.csrf.unwrap_or_default();
    let action = |name: &str, label: &str, confirm: Option<&str>| {
        html! {
            form.inline method="post" action={ (base) "/ui/connections/" (view.id) "/" (name) } data-confirm=[confirm] {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { (label) }
            }
        }
    };
    let status = view.status.as_str();
    layout(
        chrome,
        &format!("{} · {}", view.tenant_id, view.integration),
        html! {
            @match notice {
                Some(Notice::Done(text)) => p.notice role="status" { (text) },
                Some(Notice::Link { url, expires_at }) => div.notice role="status" {
                    p { "Send this link to the tenant; it works once and expires " (moment(Some(expires_at))) ":" }
                    p { input #authorize-link type="text" readonly value=(url) aria-label="Authorization link";
                        button type="button" data-copy="authorize-link" { "Copy" } }
                    p { "This page shows the connection turn active when the tenant has completed it." }
                },
                None => {},
            }
            dl.facts data-live-status={ (base) "/ui/connections/" (view.id) "/status" } data-status=(status) {
                dt { "Status" } dd #status aria-live="polite" { (badge(status)) }
                dt { "Tenant" } dd { (view.tenant_id) }
                dt { "Integration" } dd { (view.integration) " (" (view.provider) ")" }
                dt { "Key" } dd { (view.connection_key) }
                dt { "Token" } dd { code { (view.token_preview) } }
                dt { "Expires" } dd #expires { (moment(Some(view.expires_at))) }
                dt { "Next refresh" } dd #next-refresh { (moment(view.next_refresh_at)) }
                dt { "Last refresh" } dd { (moment(view.last_refresh_at)) }
                dt { "Refresh failures" } dd { (view.refresh_failures) " (consecutive " (view.consecutive_failures) ")" }
                @if let Some(error) = &view.last_error {
                    dt { "Last error" } dd { code { (error.code) } " " (error.message) }
                }
                @for (key, value) in &view.metadata {
                    dt { (key) } dd { (value.as_str().map_or_else(|| value.to_string(), str::to_owned)) }
                }
            }
            section.actions aria-label="Actions" {
                @if view.is_active {
                    (action("refresh", "Refresh now", None))
                    (action("deactivate", "Deactivate", Some("Deactivate this connection? Its tokens stop being handed out.")))
                } @else if status == "disabled" {
                    (action("activate", "Activate", Some("Activate this connection again?")))
                }
                (action("reauthorize", "Re-authorize", None))
                (action("delete", "Delete", Some("Delete this connection? Its tokens are revoked at the provider.")))
            }
            section {
                h2 #live-events-title { "Events since this page opened" }
                ol #live-events aria-labelledby="live-events-title" aria-live="polite"
                    data-live-events={ (base) "/ui/events?connection=" (view.id) } {}
                p.muted #live-events-empty { "None yet (they appear here as they happen)." }
            }
            section {
                h2 { "Refresh history" }
                table {
                    thead { tr { th scope="col" { "Started" } th scope="col" { "Reason" } th scope="col" { "Outcome" }
                        th scope="col" { "Error" } th scope="col" { "HTTP" } th scope="col" { "Duration" } } }
                    tbody {
                        @for attempt in history {
                            tr {
                                td { (moment(Some(attempt.started_at))) }
                                td { (attempt.reason.as_str()) }
                                td { span class={ "outcome " (outcome_class(attempt.outcome)) } { (attempt.outcome.as_str()) } }
                                td { @if let Some(code) = &attempt.error_code { code { (code) } } }
                                td { @if let Some(status) = attempt.http_status { (status) } }
                                td { (attempt.duration_ms) " ms" }
                            }
                        }
                        @if history.is_empty() { tr { td colspan="6" { "No refresh yet." } } }
                    }
                }
            }
        },
    )
}

/// The registered OAuth apps (never their secrets) with their connections' health.
pub(crate) fn integrations(chrome: &Chrome<'_>, rows: &[IntegrationCounts]) -> Markup {
    layout(
        chrome,
        "Integrations",
        html! {
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Provider" } th scope="col" { "Client id" }
                    th scope="col" { "Scopes" } th scope="col" { "Health" } } }
                tbody {
                    @for row in rows {
                        tr {
                            th scope="row" { a href={ (chrome.base) "/ui/connections?integration=" (urlencode(&row.name)) } { (row.name) } }
                            td { (row.provider) } td { code { (row.client_id) } } td { (row.scopes.join(" ")) }
                            td {
                                @for (status, count) in STATUSES.iter().zip(row.counts) {
                                    @if count > 0 { (badge(status.as_str())) " " (count) " " }
                                }
                            }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="5" { "No integration registered yet." } } }
                }
            }
        },
    )
}

/// A page with one message (errors of the dashboard's own).
pub(crate) fn message(chrome: &Chrome<'_>, title: &str, text: &str) -> Markup {
    layout(chrome, title, html! { p role="alert" { (text) } })
}

/// The tenant's page at the end of an authorization (without `return_to`): the outcome in
/// words, styled with the dashboard's stylesheet, no script, no secret (the tenant id, or
/// the error's code).
pub(crate) fn callback(base: &str, outcome: Result<&str, (&str, &str)>) -> Markup {
    let title = if outcome.is_ok() { "Connected" } else { "Not connected" };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href={ (base) "/ui/assets/app.css" };
            }
            body {
                main.outcome {
                    @match outcome {
                        Ok(tenant) => div.card.succeeded role="status" {
                            h1 { span aria-hidden="true" { "✓ " } (title) }
                            p { "Tenant " b { (tenant) } " is connected. You can close this window." }
                        },
                        Err((message, code)) => div.card.failed role="alert" {
                            h1 { span aria-hidden="true" { "✗ " } (title) }
                            p { (message) }
                            p.code { "Reference: " code { (code) } }
                        },
                    }
                }
            }
        }
    }
}

/// Percent-encodes a query value.
pub(crate) fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The stylesheet (served from the binary).
pub(crate) const CSS: &str = include_str!("assets/app.css");
/// The script: relative times, confirmations, copy buttons, the live status (served from
/// the binary; no inline script, so the content security policy forbids all others).
pub(crate) const JS: &str = include_str!("assets/app.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        assert_eq!(relative(now + chrono::Duration::seconds(30), now), "in 30 s");
        assert_eq!(relative(now - chrono::Duration::minutes(5), now), "5 min ago");
        assert_eq!(relative(now + chrono::Duration::hours(3), now), "in 3 h");
        assert_eq!(relative(now - chrono::Duration::days(4), now), "4 d ago");
    }

    #[test]
    fn values_are_escaped() {
        let page = message(&Chrome { base: "", csrf: None }, "t", "<script>alert(1)</script>").into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
    }
}
