//! The recent events, numbered, so an SSE client that reconnects with `Last-Event-ID`
//! gets what it missed. A task copies the event bus into a ring of the last
//! [`JOURNAL_CAPACITY`] events and re-broadcasts them with their numbers; the numbers
//! carry a per-process epoch, so an id from before a restart is recognised as such.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokenvisor_core::Event;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events kept for resuming clients.
pub(crate) const JOURNAL_CAPACITY: usize = 10_000;

/// A numbered event.
pub(crate) type Numbered = (u64, Event);

/// What a (re)connecting client gets: the events it missed that are still kept, how many
/// it missed that are not (`None`: unknown, its id is from another process), and the
/// live stream from right after the backlog.
pub(crate) struct Resume {
    pub backlog: Vec<Numbered>,
    pub missed: Option<Option<u64>>,
    pub live: broadcast::Receiver<Numbered>,
}

pub(crate) struct Journal {
    epoch: String,
    inner: Mutex<Inner>,
    live: broadcast::Sender<Numbered>,
}

struct Inner {
    next: u64,
    events: VecDeque<Numbered>,
}

impl Journal {
    /// Starts copying `events` until `cancel`.
    pub(crate) fn start(mut events: broadcast::Receiver<Event>, cancel: CancellationToken) -> Arc<Self> {
        let (live, _) = broadcast::channel(4096);
        let journal = Arc::new(Self {
            epoch: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            inner: Mutex::new(Inner {
                next: 1,
                events: VecDeque::new(),
            }),
            live,
        });
        let writer = journal.clone();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = cancel.cancelled() => return,
                    received = events.recv() => received,
                };
                match received {
                    Ok(event) => writer.append(event),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // The numbers skip what was lost, so resuming clients see a gap.
                        if let Ok(mut inner) = writer.inner.lock() {
                            inner.next += missed;
                        }
                        tracing::warn!(missed, "the event journal fell behind the event stream");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        journal
    }

    fn append(&self, event: Event) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let number = inner.next;
        inner.next += 1;
        inner.events.push_back((number, event.clone()));
        if inner.events.len() > JOURNAL_CAPACITY {
            inner.events.pop_front();
        }
        // Sent under the lock: a client subscribing meanwhile gets each event exactly once.
        let _ = self.live.send((number, event));
    }

    /// The SSE id of event `number`.
    pub(crate) fn id(&self, number: u64) -> String {
        format!("{}-{number}", self.epoch)
    }

    /// What a client gets that last saw `last_event_id` (none: a new client, live only).
    pub(crate) fn resume(&self, last_event_id: Option<&str>) -> Resume {
        let inner = match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        let live = self.live.subscribe();
        let Some(last) = last_event_id else {
            return Resume {
                backlog: Vec::new(),
                missed: None,
                live,
            };
        };
        let seen = last
            .split_once('-')
            .filter(|(epoch, _)| *epoch == self.epoch)
            .and_then(|(_, number)| number.parse::<u64>().ok());
        let Some(seen) = seen else {
            // From before a restart (or not ours): everything kept, and an unknown gap.
            return Resume {
                backlog: inner.events.iter().cloned().collect(),
                missed: Some(None),
                live,
            };
        };
        let backlog: Vec<Numbered> = inner.events.iter().filter(|(n, _)| *n > seen).cloned().collect();
        let first_kept = backlog.first().map_or(inner.next, |(n, _)| *n);
        let lost = first_kept.saturating_sub(seen + 1);
        Resume {
            backlog,
            missed: (lost > 0).then_some(Some(lost)),
            live,
        }
    }
}
