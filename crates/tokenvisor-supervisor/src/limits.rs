//! Per-integration limits on provider calls: at most N refreshes in flight and at most
//! R refreshes per second (GCRA from `governor`), whatever callers and schedules ask.
//! A herd of tokens expiring together is spread over time instead of hitting the
//! provider at once, and one slow integration cannot take every refresh slot.

use governor::clock::Clock;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-integration limit settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderLimits {
    /// Refreshes of one integration in flight at once.
    pub max_concurrent: u32,
    /// Refreshes of one integration started per second (`None`: unlimited).
    pub per_second: Option<NonZeroU32>,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 32,
            per_second: None,
        }
    }
}

/// Governor's clock on tokio's clock, so paused-time tests and benchmarks agree with
/// the actors' timers.
#[derive(Debug, Clone, Copy)]
struct TokioElapsed {
    start: tokio::time::Instant,
}

impl Clock for TokioElapsed {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Limiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    TokioElapsed,
    governor::middleware::NoOpMiddleware<Duration>,
>;

/// The limits of one integration, shared by its connection actors.
#[derive(Debug)]
pub(crate) struct IntegrationLimiter {
    slots: Arc<Semaphore>,
    /// The slots there are.
    max_concurrent: usize,
    rate: Option<(Limiter, TokioElapsed)>,
    /// Refreshes waiting for a slot or for the rate limit right now.
    waiting: AtomicUsize,
}

/// What an integration's limiter holds right now (a read of two counters: cheap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterSnapshot {
    /// Refreshes waiting for a slot or for the rate limit (throttled by tokenvisor).
    pub waiting: usize,
    /// Refreshes calling the provider.
    pub in_flight: usize,
    /// The slots there are (`max_concurrent`).
    pub max_concurrent: usize,
}

/// Counts a waiter for as long as it lives (a cancelled wait counts down too).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held while a refresh may call the provider.
#[derive(Debug)]
pub(crate) struct LimitPermit {
    _slot: OwnedSemaphorePermit,
}

impl IntegrationLimiter {
    pub(crate) fn new(limits: ProviderLimits) -> Self {
        let rate = limits.per_second.map(|per_second| {
            let clock = TokioElapsed {
                start: tokio::time::Instant::now(),
            };
            // Burst of one: refreshes are spread evenly over each second.
            let quota = Quota::per_second(per_second).allow_burst(NonZeroU32::MIN);
            (RateLimiter::direct_with_clock(quota, clock), clock)
        });
        let max_concurrent = limits.max_concurrent.max(1) as usize;
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            rate,
            waiting: AtomicUsize::new(0),
        }
    }

    /// The waiting and in-flight refreshes now.
    pub(crate) fn snapshot(&self) -> LimiterSnapshot {
        LimiterSnapshot {
            waiting: self.waiting.load(Ordering::Relaxed),
            in_flight: self.max_concurrent.saturating_sub(self.slots.available_permits()),
            max_concurrent: self.max_concurrent,
        }
    }

    /// Waits for a slot and for the rate limit. `None` when shutting down.
    pub(crate) async fn acquire(&self) -> Option<LimitPermit> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        let slot = self.slots.clone().acquire_owned().await.ok()?;
        if let Some((limiter, clock)) = &self.rate {
            while let Err(not_until) = limiter.check() {
                tokio::time::sleep(not_until.wait_time_from(clock.now())).await;
            }
        }
        Some(LimitPermit { _slot: slot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_snapshot_counts_the_waiting_and_the_calls_in_flight() {
        let limiter = Arc::new(IntegrationLimiter::new(ProviderLimits {
            max_concurrent: 1,
            per_second: None,
        }));
        assert_eq!(
            limiter.snapshot(),
            LimiterSnapshot {
                waiting: 0,
                in_flight: 0,
                max_concurrent: 1
            }
        );
        let held = limiter.acquire().await.expect("a slot");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.acquire().await.is_some() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!((limiter.snapshot().waiting, limiter.snapshot().in_flight), (3, 1));
        // A cancelled wait no longer counts.
        waiters[0].abort();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(limiter.snapshot().waiting, 2);
        drop(held);
        for waiter in waiters.into_iter().skip(1) {
            assert!(waiter.await.expect("task"));
        }
        assert_eq!((limiter.snapshot().waiting, limiter.snapshot().in_flight), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spreads_a_herd_evenly() {
        let limiter = Arc::new(IntegrationLimiter::new(ProviderLimits {
            max_concurrent: 1000,
            per_second: NonZeroU32::new(10),
        }));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = limiter.acquire().await;
                start.elapsed()
            }));
        }
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.expect("task"));
        }
        times.sort();
        for window in times.windows(11) {
            assert!(
                window[10] - window[0] >= Duration::from_millis(999),
                "more than 10 in a second"
            );
        }
        assert!(
            times[49] <= Duration::from_millis(5000),
            "50 at 10/s take about 5 s: {:?}",
            times[49]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_concurrency_limit_holds() {
        let limiter = Arc::new(IntegrationLimiter::new(ProviderLimits {
            max_concurrent: 3,
            per_second: None,
        }));
        let in_flight = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (limiter, in_flight, peak) = (limiter.clone(), in_flight.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = limiter.acquire().await;
                let now = in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
