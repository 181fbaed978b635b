//! When to refresh: pure functions of (token, now, policy), unit-tested here and only
//! called by the connection actor.

use chrono::{DateTime, Duration, Utc};
use std::time::Duration as StdDuration;

/// Tunables of the refresh schedule. All durations are wall-clock `std::time::Duration`s,
/// the one duration type of tokenvisor's public API.
#[derive(Debug, Clone)]
pub struct SchedulePolicy {
    /// Refresh this long before expiry (capped at a quarter of the token lifetime).
    pub lead: StdDuration,
    /// A token handed out stays valid at least this long (capped at a quarter of the lifetime).
    pub min_validity: StdDuration,
    /// Two refreshes of one connection are at least this far apart, whatever callers ask.
    pub min_spacing: StdDuration,
    /// Optional window limit: at most `max` refreshes per connection within `per`.
    pub window: Option<RateWindow>,
    /// Upper bound of the random jitter that spreads refreshes of tokens minted together.
    pub jitter: StdDuration,
    /// First retry delay after a transient failure.
    pub retry_base: StdDuration,
    /// Longest retry delay after transient failures.
    pub retry_cap: StdDuration,
    /// Retry delay when the provider says the integration itself is misconfigured.
    pub misconfigured_retry: StdDuration,
    /// Lifetime assumed when a token answer has no `expires_in`.
    pub default_lifetime: StdDuration,
    /// Start-up refreshes of tokens already inside their lead are spread over this window.
    pub startup_spread: StdDuration,
}

/// At most `max` refreshes per connection within `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    /// Refreshes allowed in the window.
    pub max: u32,
    /// Window length.
    pub per: StdDuration,
}

impl Default for SchedulePolicy {
    fn default() -> Self {
        Self {
            lead: StdDuration::from_secs(15 * 60),
            min_validity: StdDuration::from_secs(60),
            min_spacing: StdDuration::from_secs(10),
            window: None,
            jitter: StdDuration::from_secs(30),
            retry_base: StdDuration::from_secs(2),
            retry_cap: StdDuration::from_secs(5 * 60),
            misconfigured_retry: StdDuration::from_secs(15 * 60),
            default_lifetime: StdDuration::from_secs(3600),
            startup_spread: StdDuration::from_secs(10),
        }
    }
}

/// A `std::time::Duration` as a `chrono` span for date arithmetic (saturating at
/// chrono's maximum, which no configured duration reaches).
pub fn span(duration: StdDuration) -> Duration {
    Duration::from_std(duration).unwrap_or(Duration::MAX)
}

/// The lead actually used for a token: `min(policy.lead, lifetime / 4)`.
pub fn effective_lead(issued_at: DateTime<Utc>, expires_at: DateTime<Utc>, policy: &SchedulePolicy) -> Duration {
    let lifetime = (expires_at - issued_at).max(Duration::zero());
    span(policy.lead).min(lifetime / 4)
}

/// How long a handed-out token must still be valid: `min(policy.min_validity, lifetime / 4)`.
pub fn validity_floor(issued_at: DateTime<Utc>, expires_at: DateTime<Utc>, policy: &SchedulePolicy) -> Duration {
    let lifetime = (expires_at - issued_at).max(Duration::zero());
    span(policy.min_validity).min(lifetime / 4)
}

/// The earliest time the next refresh is allowed, given when the recent refreshes
/// started (oldest first): the minimum spacing after the latest one, and the window
/// limit if the policy has one.
pub fn earliest_allowed(
    recent_refreshes: &[DateTime<Utc>],
    now: DateTime<Utc>,
    policy: &SchedulePolicy,
) -> DateTime<Utc> {
    let mut earliest = now;
    if let Some(last) = recent_refreshes.last() {
        earliest = earliest.max(*last + span(policy.min_spacing));
    }
    if let Some(window) = policy.window {
        let max = window.max as usize;
        if max == 0 {
            return DateTime::<Utc>::MAX_UTC;
        }
        let window_start = now - span(window.per);
        let in_window: Vec<&DateTime<Utc>> = recent_refreshes.iter().filter(|t| **t > window_start).collect();
        if in_window.len() >= max {
            // The refresh that must leave the window before another one fits.
            let blocking = in_window[in_window.len() - max];
            earliest = earliest.max(*blocking + span(window.per));
        }
    }
    earliest
}

/// When the next refresh of a token should start.
///
/// `expires_at - min(lead, lifetime / 4)`, moved earlier by `jitter_fraction` (in `[0, 1)`)
/// of the jitter bound (at most an eighth of the lead, so it never reaches into the
/// validity floor), and never before [`earliest_allowed`]. A result in the past means "now".
pub fn next_refresh_at(
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    recent_refreshes: &[DateTime<Utc>],
    now: DateTime<Utc>,
    policy: &SchedulePolicy,
    jitter_fraction: f64,
) -> DateTime<Utc> {
    let lead = effective_lead(issued_at, expires_at, policy);
    let jitter_bound = span(policy.jitter).min(lead / 8);
    let jitter = scale(jitter_bound, jitter_fraction);
    let target = expires_at - lead - jitter;
    target.max(earliest_allowed(recent_refreshes, now, policy))
}

/// Delay before retry number `consecutive_failures` (1 for the first failure):
/// capped exponential backoff with equal jitter, and never shorter than the
/// provider's `Retry-After`.
pub fn retry_delay(
    consecutive_failures: u32,
    retry_after: Option<Duration>,
    policy: &SchedulePolicy,
    jitter_fraction: f64,
) -> Duration {
    let exponent = consecutive_failures.saturating_sub(1).min(30);
    let uncapped = span(policy.retry_base)
        .checked_mul(1i32 << exponent.min(30))
        .unwrap_or(span(policy.retry_cap));
    let capped = uncapped.min(span(policy.retry_cap));
    let jittered = capped / 2 + scale(capped / 2, jitter_fraction);
    match retry_after {
        Some(retry_after) => jittered.max(retry_after),
        None => jittered,
    }
}

fn scale(duration: Duration, fraction: f64) -> Duration {
    let fraction = fraction.clamp(0.0, 1.0);
    let millis = duration.num_milliseconds() as f64 * fraction;
    Duration::milliseconds(millis as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(seconds)
    }

    #[test]
    fn an_hour_long_token_refreshes_fifteen_minutes_before_expiry() {
        let policy = SchedulePolicy::default();
        let next = next_refresh_at(at(0), at(3600), &[], at(0), &policy, 0.0);
        assert_eq!(next, at(3600 - 900));
    }

    #[test]
    fn short_lived_tokens_use_a_quarter_of_their_lifetime_as_lead() {
        let policy = SchedulePolicy::default();
        let next = next_refresh_at(at(0), at(400), &[], at(0), &policy, 0.0);
        assert_eq!(next, at(300));
    }

    #[test]
    fn jitter_moves_the_refresh_earlier_and_stays_bounded() {
        let policy = SchedulePolicy::default();
        let without = next_refresh_at(at(0), at(3600), &[], at(0), &policy, 0.0);
        let with = next_refresh_at(at(0), at(3600), &[], at(0), &policy, 0.999);
        assert!(with < without);
        assert!(without - with <= span(policy.jitter));
    }

    #[test]
    fn a_token_inside_its_lead_is_due_now() {
        let policy = SchedulePolicy::default();
        let next = next_refresh_at(at(0), at(3600), &[], at(3000), &policy, 0.5);
        assert_eq!(next, at(3000));
    }

    #[test]
    fn minimum_spacing_holds_even_when_the_token_is_due() {
        let policy = SchedulePolicy::default();
        let next = next_refresh_at(at(0), at(3600), &[at(2995)], at(3000), &policy, 0.0);
        assert_eq!(next, at(2995 + 10));
    }

    #[test]
    fn the_window_limit_blocks_the_eleventh_refresh_in_ten_minutes() {
        let policy = SchedulePolicy {
            min_spacing: StdDuration::ZERO,
            window: Some(RateWindow {
                max: 10,
                per: StdDuration::from_secs(600),
            }),
            ..SchedulePolicy::default()
        };
        let recent: Vec<_> = (0..10).map(|i| at(i * 10)).collect();
        assert_eq!(earliest_allowed(&recent, at(100), &policy), at(600));
        assert_eq!(earliest_allowed(&recent[..9], at(100), &policy), at(100));
    }

    #[test]
    fn validity_floor_is_capped_by_a_quarter_of_the_lifetime() {
        let policy = SchedulePolicy::default();
        assert_eq!(validity_floor(at(0), at(3600), &policy), Duration::seconds(60));
        assert_eq!(validity_floor(at(0), at(100), &policy), Duration::seconds(25));
    }

    #[test]
    fn retry_delay_grows_exponentially_up_to_the_cap_and_honours_retry_after() {
        let policy = SchedulePolicy::default();
        assert_eq!(retry_delay(1, None, &policy, 1.0), Duration::seconds(2));
        assert_eq!(retry_delay(3, None, &policy, 1.0), Duration::seconds(8));
        assert_eq!(retry_delay(40, None, &policy, 1.0), Duration::minutes(5));
        assert!(retry_delay(3, None, &policy, 0.0) >= Duration::seconds(4));
        assert_eq!(
            retry_delay(1, Some(Duration::seconds(120)), &policy, 1.0),
            Duration::seconds(120)
        );
    }
}
