//! The fake's synchronous state machine: token families, rotation, grace, reuse detection,
//! Zoho throttling and data centres, authorization codes, injected failures and counters.
//! Nothing here awaits; callers hold the mutex only for one call.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::{
    ATLASSIAN_ABSOLUTE_EXPIRY, ATLASSIAN_INACTIVITY_EXPIRY, Dialect, FakeConfig, IssuedTokens,
    ZOHO_MAX_ACTIVE_ACCESS_TOKENS, ZOHO_MAX_REFRESH_TOKENS_PER_USER, ZOHO_REFRESHES_PER_WINDOW, ZOHO_THROTTLE_WINDOW,
};

/// The state shared by the handle and the server routes.
pub(crate) type SharedState = Arc<Mutex<State>>;

/// Locks the state, recovering it if a panicking test poisoned the mutex.
pub(crate) fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Identifies one token family (one grant); labels may be shared by several families.
pub(crate) type FamilyId = u64;

/// Retired refresh tokens older than the previous one kept per family so that their reuse
/// is still detected; older ones are forgotten (they then answer plain `invalid_grant`).
const MAX_RETIRED_PER_FAMILY: usize = 256;

/// Refresh instants kept per family for [`State::refresh_times_for`]; the oldest go first.
const MAX_REFRESH_TIMES_PER_FAMILY: usize = 65_536;

/// Number of random characters after a token's prefix.
const TOKEN_RANDOM_CHARS: usize = 32;

/// Pending authorization codes above which expired ones are pruned.
const CODE_PRUNE_THRESHOLD: usize = 256;

/// The data centre of grants whose dialect has none, and Zoho's default.
pub(crate) const DEFAULT_DATA_CENTER: &str = "us";

/// The label of grants created by a code exchange unless
/// [`State::set_authorizing_user`] said otherwise.
pub(crate) const DEFAULT_AUTHORIZING_USER: &str = "user";

/// Returns `prefix` followed by random url-safe characters.
pub(crate) fn random_token(prefix: &str) -> String {
    let random: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(TOKEN_RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("{prefix}{random}")
}

/// A random UUID-shaped identifier (an Atlassian cloud id).
pub(crate) fn random_cloud_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The scope of grants that did not ask for one.
pub(crate) fn default_scope(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Generic | Dialect::NonRotating | Dialect::Rotating { .. } => "offline_access read write",
        Dialect::Zoho => "ZohoCRM.users.READ",
        Dialect::Atlassian { .. } => "read:jira-work read:jira-user offline_access",
    }
}

/// An injected answer for the next token requests.
#[derive(Debug, Clone)]
pub(crate) struct InjectedFailure {
    /// HTTP status to answer.
    pub status: u16,
    /// Body to answer (see `FakeProvider::fail_next`).
    pub body: serde_json::Value,
    /// `Retry-After` to attach, if any.
    pub retry_after: Option<Duration>,
}

/// What a `refresh_token` grant led to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RefreshOutcome {
    /// New tokens were issued server-side.
    Issued {
        /// The new access token.
        access_token: String,
        /// The refresh token to put in the answer; `None` omits the field.
        refresh_token: Option<String>,
        /// The access token's lifetime in seconds.
        expires_in: u64,
        /// The grant's scope.
        scope: String,
        /// The grant's data centre (Zoho; [`DEFAULT_DATA_CENTER`] otherwise).
        data_center: String,
        /// Whether the answer is to be lost (500 with an empty body).
        lose_answer: bool,
    },
    /// `invalid_grant` (Zoho: `invalid_code`), with a description.
    InvalidGrant(&'static str),
    /// Zoho's refresh throttle refused the request ("Access Denied").
    Throttled,
}

/// A PKCE code challenge (RFC 7636).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CodeChallenge {
    /// `code_challenge_method=plain` (or no method): the verifier itself.
    Plain(String),
    /// `code_challenge_method=S256`: BASE64URL-NOPAD(SHA256(verifier)).
    S256(String),
}

impl CodeChallenge {
    /// Whether `verifier` is well formed (RFC 7636 §4.1) and satisfies the challenge.
    pub fn is_satisfied_by(&self, verifier: &str) -> bool {
        let well_formed = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'));
        well_formed
            && match self {
                CodeChallenge::Plain(challenge) => verifier == challenge,
                CodeChallenge::S256(challenge) => {
                    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == *challenge
                }
            }
    }
}

/// An authorization code waiting to be exchanged.
#[derive(Debug, Clone)]
pub(crate) struct PendingCode {
    /// The `redirect_uri` of the authorization request; the exchange must repeat it.
    pub redirect_uri: String,
    /// The PKCE challenge, if one was sent.
    pub challenge: Option<CodeChallenge>,
    /// The granted scope.
    pub scope: String,
    /// The label of the grant the exchange creates.
    pub label: String,
    /// The data centre whose token endpoint must exchange the code (Zoho).
    pub data_center: String,
    /// Whether the exchange answers a refresh token.
    pub offline: bool,
    /// When the code stops being exchangeable.
    pub expires_at: Instant,
}

/// The tokens a code exchange answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CodeGrant {
    /// The first access token.
    pub access_token: String,
    /// The refresh token, when the authorization allowed one.
    pub refresh_token: Option<String>,
    /// The access token's lifetime in seconds.
    pub expires_in: u64,
    /// The granted scope.
    pub scope: String,
    /// The grant's data centre.
    pub data_center: String,
}

/// The counters a test reads.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub token_requests: u64,
    pub refreshes: u64,
    pub overlapping_refreshes: u64,
    pub reuse_events: u64,
    pub family_revocations: u64,
    pub revocation_requests: u64,
    pub code_exchanges: u64,
    pub throttled_requests: u64,
    pub refreshes_by_data_center: HashMap<String, u64>,
}

/// One grant: its refresh token history and statistics.
#[derive(Debug)]
struct Family {
    label: String,
    /// Access-token lifetime for this family, overriding the provider's.
    lifetime: Option<u64>,
    /// The data centre the grant lives in (Zoho).
    data_center: String,
    scope: String,
    /// Whether the grant has a refresh token at all (a code exchange may answer none).
    refreshable: bool,
    created_at: Instant,
    /// The last successful refresh, or the grant's creation (Atlassian inactivity expiry).
    last_used_at: Instant,
    current_refresh: String,
    /// The refresh token rotated away most recently, and when.
    previous_refresh: Option<(String, Instant)>,
    /// Older rotated-away refresh tokens, oldest first.
    retired: VecDeque<String>,
    revoked: bool,
    refreshes: u64,
    refresh_times: VecDeque<Instant>,
    /// Refresh requests of this family being processed now.
    in_flight: u32,
    /// Zoho: the access tokens minted, oldest first, for the active-token cap. Atlassian: the
    /// access tokens minted since the last rotation, revoked when its grace period ends.
    /// Empty for the other dialects.
    access_tokens: VecDeque<String>,
    /// Zoho: successful refreshes within the throttle window, oldest first.
    throttle_window: VecDeque<Instant>,
}

#[derive(Debug)]
struct AccessEntry {
    family: FamilyId,
    expires_at: Instant,
}

/// Everything the fake knows.
#[derive(Debug)]
pub(crate) struct State {
    pub dialect: Dialect,
    pub expires_in: u64,
    pub include_expires_in: bool,
    pub latency: Duration,
    pub retry_after: Option<Duration>,
    pub counters: Counters,
    /// Atlassian: answer refresh errors as `unauthorized_client` instead of `invalid_grant`.
    pub atlassian_unauthorized_client: bool,
    /// Atlassian: the gateway's status for a dead access token.
    pub gateway_expired_status: u16,
    /// Atlassian: the one site's cloud id.
    pub cloud_id: String,
    failure: Option<(u32, InjectedFailure)>,
    lose_answers: u32,
    omit_refresh_tokens: u32,
    family_latency: HashMap<String, Duration>,
    next_family_id: FamilyId,
    families: HashMap<FamilyId, Family>,
    labels: HashMap<String, Vec<FamilyId>>,
    refresh_index: HashMap<String, FamilyId>,
    access_index: HashMap<String, AccessEntry>,
    /// Size of the access index above which expired entries are pruned.
    access_prune_threshold: usize,
    /// `(label, data centre)` of whoever approves the next authorization requests.
    authorizing_user: (String, String),
    deny_next_authorization: bool,
    codes: HashMap<String, PendingCode>,
    /// Zoho: labels that already gave offline consent.
    zoho_offline_consents: HashSet<String>,
}

impl State {
    /// A fresh state with no grants.
    pub fn new(config: &FakeConfig) -> Self {
        Self {
            dialect: config.dialect,
            expires_in: config.expires_in,
            include_expires_in: config.include_expires_in,
            latency: Duration::ZERO,
            retry_after: None,
            counters: Counters::default(),
            atlassian_unauthorized_client: false,
            gateway_expired_status: 401,
            cloud_id: random_cloud_id(),
            failure: None,
            lose_answers: 0,
            omit_refresh_tokens: 0,
            family_latency: HashMap::new(),
            next_family_id: 0,
            families: HashMap::new(),
            labels: HashMap::new(),
            refresh_index: HashMap::new(),
            access_index: HashMap::new(),
            access_prune_threshold: 1024,
            authorizing_user: (DEFAULT_AUTHORIZING_USER.to_owned(), DEFAULT_DATA_CENTER.to_owned()),
            deny_next_authorization: false,
            codes: HashMap::new(),
            zoho_offline_consents: HashSet::new(),
        }
    }

    /// Creates a family labelled `label` in `data_center` (meaningful for Zoho only) and
    /// returns its first tokens.
    pub fn issue_grant(&mut self, label: &str, lifetime: Option<u64>, now: Instant) -> IssuedTokens {
        self.issue_grant_in(label, DEFAULT_DATA_CENTER, lifetime, now)
    }

    /// [`State::issue_grant`] in a given data centre.
    pub fn issue_grant_in(
        &mut self,
        label: &str,
        data_center: &str,
        lifetime: Option<u64>,
        now: Instant,
    ) -> IssuedTokens {
        let scope = default_scope(self.dialect).to_owned();
        let (access_token, refresh_token, expires_in) =
            self.create_family(label, lifetime, data_center, scope, true, now);
        IssuedTokens {
            access_token,
            refresh_token,
            expires_in,
        }
    }

    /// Creates a family and its first access token: `(access token, refresh token,
    /// expires_in)`. A family that is not `refreshable` has a refresh token nobody knows.
    fn create_family(
        &mut self,
        label: &str,
        lifetime: Option<u64>,
        data_center: &str,
        scope: String,
        refreshable: bool,
        now: Instant,
    ) -> (String, String, u64) {
        if self.dialect == Dialect::Zoho && refreshable {
            let live: Vec<FamilyId> = self
                .family_ids(label)
                .iter()
                .copied()
                .filter(|family_id| {
                    self.families
                        .get(family_id)
                        .is_some_and(|family| family.refreshable && !family.revoked)
                })
                .collect();
            let excess = (live.len() + 1).saturating_sub(ZOHO_MAX_REFRESH_TOKENS_PER_USER);
            for family_id in live.into_iter().take(excess) {
                self.revoke_family_id(family_id);
            }
        }
        let family_id = self.next_family_id;
        self.next_family_id += 1;
        let refresh_token = random_token("rt_");
        if refreshable {
            self.refresh_index.insert(refresh_token.clone(), family_id);
        }
        self.families.insert(
            family_id,
            Family {
                label: label.to_owned(),
                lifetime,
                data_center: data_center.to_owned(),
                scope,
                refreshable,
                created_at: now,
                last_used_at: now,
                current_refresh: refresh_token.clone(),
                previous_refresh: None,
                retired: VecDeque::new(),
                revoked: false,
                refreshes: 0,
                refresh_times: VecDeque::new(),
                in_flight: 0,
                access_tokens: VecDeque::new(),
                throttle_window: VecDeque::new(),
            },
        );
        self.labels.entry(label.to_owned()).or_default().push(family_id);
        let expires_in = lifetime.unwrap_or(self.expires_in);
        let access_token = self.issue_access_token(family_id, expires_in, now);
        (access_token, refresh_token, expires_in)
    }

    fn issue_access_token(&mut self, family_id: FamilyId, expires_in: u64, now: Instant) -> String {
        if self.access_index.len() >= self.access_prune_threshold {
            self.access_index.retain(|_, entry| entry.expires_at > now);
            self.access_prune_threshold = (self.access_index.len() * 2).max(1024);
        }
        let access_token = random_token("at_");
        let expires_at = now
            .checked_add(Duration::from_secs(expires_in))
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        self.access_index.insert(
            access_token.clone(),
            AccessEntry {
                family: family_id,
                expires_at,
            },
        );
        let tracked = matches!(self.dialect, Dialect::Zoho | Dialect::Atlassian { .. });
        if let Some(family) = self.families.get_mut(&family_id).filter(|_| tracked) {
            if self.dialect == Dialect::Zoho {
                let access_index = &mut self.access_index;
                family
                    .access_tokens
                    .retain(|token| access_index.get(token).is_some_and(|entry| entry.expires_at > now));
                while family.access_tokens.len() >= ZOHO_MAX_ACTIVE_ACCESS_TOKENS {
                    if let Some(oldest) = family.access_tokens.pop_front() {
                        access_index.remove(&oldest);
                    }
                }
            }
            family.access_tokens.push_back(access_token.clone());
        }
        access_token
    }

    /// Takes one injected failure, if any is pending.
    pub fn take_failure(&mut self) -> Option<InjectedFailure> {
        let (remaining, failure) = self.failure.as_mut()?;
        let taken = InjectedFailure {
            retry_after: self.retry_after,
            ..failure.clone()
        };
        *remaining -= 1;
        if *remaining == 0 {
            self.failure = None;
        }
        Some(taken)
    }

    /// Makes the next `count` token requests answer `status` with `body`.
    pub fn fail_next(&mut self, count: u32, status: u16, body: serde_json::Value) {
        self.failure = (count > 0).then_some((
            count,
            InjectedFailure {
                status,
                body,
                retry_after: None,
            },
        ));
    }

    /// Makes the next `count` successful refreshes lose their answer.
    pub fn lose_next_answers(&mut self, count: u32) {
        self.lose_answers = count;
    }

    /// Makes the next `count` successful refreshes answer without a refresh token (and,
    /// in rotating dialects, not rotate).
    pub fn omit_next_refresh_tokens(&mut self, count: u32) {
        self.omit_refresh_tokens = count;
    }

    /// Sets the extra latency of one label's refreshes; zero removes it.
    pub fn set_family_latency(&mut self, label: &str, latency: Duration) {
        if latency.is_zero() {
            self.family_latency.remove(label);
        } else {
            self.family_latency.insert(label.to_owned(), latency);
        }
    }

    /// Marks a refresh of the family owning `refresh_token` as in progress, counting an
    /// overlap if another one already is. Returns the family and its extra latency, or
    /// `None` if the token belongs to no family.
    pub fn begin_refresh(&mut self, refresh_token: &str) -> Option<(FamilyId, Duration)> {
        let family_id = *self.refresh_index.get(refresh_token)?;
        let family = self.families.get_mut(&family_id)?;
        if family.in_flight > 0 {
            self.counters.overlapping_refreshes += 1;
        }
        family.in_flight = family.in_flight.saturating_add(1);
        let latency = self.family_latency.get(&family.label).copied().unwrap_or_default();
        Some((family_id, latency))
    }

    /// Ends a refresh started with [`State::begin_refresh`].
    pub fn end_refresh(&mut self, family_id: FamilyId) {
        if let Some(family) = self.families.get_mut(&family_id) {
            family.in_flight = family.in_flight.saturating_sub(1);
        }
    }

    /// Performs a `refresh_token` grant with `presented` at `now`, at no particular data
    /// centre.
    #[cfg(test)]
    pub fn refresh(&mut self, presented: &str, now: Instant) -> RefreshOutcome {
        self.refresh_at(presented, None, now)
    }

    /// Performs a `refresh_token` grant with `presented` at `now`, received by the token
    /// endpoint of `data_center` (Zoho) or the single token endpoint (`None`).
    pub fn refresh_at(&mut self, presented: &str, data_center: Option<&str>, now: Instant) -> RefreshOutcome {
        let Some(&family_id) = self.refresh_index.get(presented) else {
            return RefreshOutcome::InvalidGrant("unknown refresh token");
        };
        let dialect = self.dialect;
        let Some(family) = self.families.get_mut(&family_id) else {
            return RefreshOutcome::InvalidGrant("unknown refresh token");
        };
        if family.revoked {
            return RefreshOutcome::InvalidGrant("the grant was revoked");
        }
        if data_center.is_some_and(|data_center| data_center != family.data_center) {
            return RefreshOutcome::InvalidGrant("the grant belongs to another data centre");
        }
        let omit = self.omit_refresh_tokens > 0;
        let answered_refresh_token = match dialect {
            Dialect::Generic | Dialect::NonRotating => {
                if family.current_refresh != presented {
                    return RefreshOutcome::InvalidGrant("unknown refresh token");
                }
                (dialect == Dialect::Generic).then(|| family.current_refresh.clone())
            }
            Dialect::Zoho => {
                if family.current_refresh != presented {
                    return RefreshOutcome::InvalidGrant("unknown refresh token");
                }
                while family
                    .throttle_window
                    .front()
                    .is_some_and(|at| now.duration_since(*at) >= ZOHO_THROTTLE_WINDOW)
                {
                    family.throttle_window.pop_front();
                }
                if family.throttle_window.len() >= ZOHO_REFRESHES_PER_WINDOW {
                    self.counters.throttled_requests += 1;
                    return RefreshOutcome::Throttled;
                }
                family.throttle_window.push_back(now);
                None
            }
            Dialect::Rotating { grace } | Dialect::Atlassian { grace } => {
                let atlassian = matches!(dialect, Dialect::Atlassian { .. });
                if atlassian
                    && (now.duration_since(family.created_at) >= ATLASSIAN_ABSOLUTE_EXPIRY
                        || now.duration_since(family.last_used_at) >= ATLASSIAN_INACTIVITY_EXPIRY)
                {
                    return RefreshOutcome::InvalidGrant("the refresh token expired");
                }
                if family.current_refresh == presented {
                    if omit {
                        Some(family.current_refresh.clone())
                    } else {
                        let new_refresh = random_token("rt_");
                        let old_refresh = std::mem::replace(&mut family.current_refresh, new_refresh.clone());
                        if let Some((older, _)) = family.previous_refresh.replace((old_refresh, now)) {
                            family.retired.push_back(older);
                        }
                        let overflow = family.retired.len().saturating_sub(MAX_RETIRED_PER_FAMILY);
                        for forgotten in family.retired.drain(..overflow) {
                            self.refresh_index.remove(&forgotten);
                        }
                        if atlassian {
                            // The access tokens of the previous refresh token die when the
                            // grace period of this rotation ends.
                            let cutoff = now.checked_add(grace).unwrap_or(now);
                            for old_access in family.access_tokens.drain(..) {
                                if let Some(entry) = self.access_index.get_mut(&old_access) {
                                    entry.expires_at = entry.expires_at.min(cutoff);
                                }
                            }
                        }
                        self.refresh_index.insert(new_refresh.clone(), family_id);
                        Some(new_refresh)
                    }
                } else {
                    self.counters.reuse_events += 1;
                    let within_grace = family.previous_refresh.as_ref().is_some_and(|(previous, retired_at)| {
                        previous == presented && now.duration_since(*retired_at) <= grace
                    });
                    if !within_grace {
                        self.revoke_family_id(family_id);
                        return RefreshOutcome::InvalidGrant("refresh token reuse detected; the grant was revoked");
                    }
                    Some(family.current_refresh.clone())
                }
            }
        };
        let answered_refresh_token = answered_refresh_token.filter(|_| !omit);
        if omit {
            self.omit_refresh_tokens -= 1;
        }
        // Re-borrow: the rotation branch above may have touched the index.
        let Some(family) = self.families.get_mut(&family_id) else {
            return RefreshOutcome::InvalidGrant("unknown refresh token");
        };
        family.refreshes += 1;
        family.last_used_at = now;
        if family.refresh_times.len() >= MAX_REFRESH_TIMES_PER_FAMILY {
            family.refresh_times.pop_front();
        }
        family.refresh_times.push_back(now);
        let expires_in = family.lifetime.unwrap_or(self.expires_in);
        let scope = family.scope.clone();
        let family_data_center = family.data_center.clone();
        self.counters.refreshes += 1;
        if dialect == Dialect::Zoho {
            *self
                .counters
                .refreshes_by_data_center
                .entry(family_data_center.clone())
                .or_default() += 1;
        }
        let access_token = self.issue_access_token(family_id, expires_in, now);
        let lose_answer = self.lose_answers > 0;
        if lose_answer {
            self.lose_answers -= 1;
        }
        RefreshOutcome::Issued {
            access_token,
            refresh_token: answered_refresh_token,
            expires_in,
            scope,
            data_center: family_data_center,
            lose_answer,
        }
    }

    fn revoke_family_id(&mut self, family_id: FamilyId) {
        let Some(family) = self.families.get_mut(&family_id) else {
            return;
        };
        if !family.revoked {
            family.revoked = true;
            self.counters.family_revocations += 1;
        }
    }

    fn family_ids(&self, label: &str) -> &[FamilyId] {
        self.labels.get(label).map(Vec::as_slice).unwrap_or_default()
    }

    /// Revokes every family labelled `label`.
    pub fn revoke_label(&mut self, label: &str) {
        let family_ids = self.family_ids(label).to_vec();
        for family_id in family_ids {
            self.revoke_family_id(family_id);
        }
    }

    /// RFC 7009 revocation of one token: a refresh token revokes its family, an access
    /// token only itself; unknown tokens are ignored.
    pub fn revoke_token(&mut self, token: &str) {
        self.revoke_token_at(token, None);
    }

    /// [`State::revoke_token`] received by the endpoint of `data_center` (Zoho): tokens of
    /// another data centre are unknown there and left alone.
    pub fn revoke_token_at(&mut self, token: &str, data_center: Option<&str>) {
        self.counters.revocation_requests += 1;
        let in_data_center = |families: &HashMap<FamilyId, Family>, family_id: &FamilyId| {
            data_center.is_none_or(|data_center| {
                families
                    .get(family_id)
                    .is_some_and(|family| family.data_center == data_center)
            })
        };
        if let Some(&family_id) = self.refresh_index.get(token) {
            if in_data_center(&self.families, &family_id) {
                self.revoke_family_id(family_id);
            }
            return;
        }
        let known_here = self
            .access_index
            .get(token)
            .is_some_and(|entry| in_data_center(&self.families, &entry.family));
        if known_here {
            self.access_index.remove(token);
        }
    }

    /// Makes one access token dead at once (its family is untouched).
    pub fn revoke_access_token(&mut self, access_token: &str) {
        self.access_index.remove(access_token);
    }

    /// The label of the access token's family if the token is live: known, not expired,
    /// not revoked, family not revoked.
    pub fn live_access_token_label(&self, access_token: &str, now: Instant) -> Option<&str> {
        self.live_family(access_token, now).map(|family| family.label.as_str())
    }

    /// The `(label, scope)` of the access token's family if the token is live.
    pub fn live_access_token_grant(&self, access_token: &str, now: Instant) -> Option<(&str, &str)> {
        self.live_family(access_token, now)
            .map(|family| (family.label.as_str(), family.scope.as_str()))
    }

    fn live_family(&self, access_token: &str, now: Instant) -> Option<&Family> {
        let entry = self.access_index.get(access_token)?;
        if now >= entry.expires_at {
            return None;
        }
        let family = self.families.get(&entry.family)?;
        if family.revoked {
            return None;
        }
        Some(family)
    }

    /// Successful refreshes of every family labelled `label`.
    pub fn refreshes_for(&self, label: &str) -> u64 {
        self.family_ids(label)
            .iter()
            .filter_map(|family_id| self.families.get(family_id))
            .map(|family| family.refreshes)
            .sum()
    }

    /// When the successful refreshes of the families labelled `label` happened, in order.
    pub fn refresh_times_for(&self, label: &str) -> Vec<Instant> {
        let mut times: Vec<Instant> = self
            .family_ids(label)
            .iter()
            .filter_map(|family_id| self.families.get(family_id))
            .flat_map(|family| family.refresh_times.iter().copied())
            .collect();
        times.sort();
        times
    }

    /// The current refresh token of the newest live family labelled `label` that has one.
    pub fn current_refresh_token(&self, label: &str) -> Option<String> {
        self.family_ids(label)
            .iter()
            .rev()
            .filter_map(|family_id| self.families.get(family_id))
            .find(|family| !family.revoked && family.refreshable)
            .map(|family| family.current_refresh.clone())
    }

    /// Sets who approves the next authorization requests.
    pub fn set_authorizing_user(&mut self, label: &str, data_center: &str) {
        self.authorizing_user = (label.to_owned(), data_center.to_owned());
    }

    /// `(label, data centre)` of whoever approves authorization requests now.
    pub fn authorizing_user(&self) -> (String, String) {
        self.authorizing_user.clone()
    }

    /// Makes the next authorization request be denied.
    pub fn deny_next_authorization(&mut self) {
        self.deny_next_authorization = true;
    }

    /// Whether this authorization request is to be denied (consumes the order).
    pub fn take_authorization_denial(&mut self) -> bool {
        std::mem::take(&mut self.deny_next_authorization)
    }

    /// Zoho: records an offline consent of `label` and says whether it earns a refresh
    /// token (the first one does, later ones only with `prompt=consent`).
    pub fn zoho_offline_consent(&mut self, label: &str, prompt_consent: bool) -> bool {
        let first = self.zoho_offline_consents.insert(label.to_owned());
        first || prompt_consent
    }

    /// Stores an authorization code and returns it.
    pub fn issue_code(&mut self, pending: PendingCode, now: Instant) -> String {
        if self.codes.len() >= CODE_PRUNE_THRESHOLD {
            self.codes.retain(|_, code| code.expires_at > now);
        }
        let code = random_token("code_");
        self.codes.insert(code.clone(), pending);
        code
    }

    /// Exchanges an authorization code at the token endpoint of `data_center` (Zoho) or
    /// the single token endpoint (`None`). A code presented at the right endpoint is
    /// consumed whatever the outcome; at another data centre it is unknown and stays.
    pub fn exchange_code(
        &mut self,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
        data_center: Option<&str>,
        now: Instant,
    ) -> Result<CodeGrant, &'static str> {
        let pending = self.codes.get(code).ok_or("unknown or used authorization code")?;
        if data_center.is_some_and(|data_center| data_center != pending.data_center) {
            return Err("unknown or used authorization code");
        }
        let pending = self.codes.remove(code).ok_or("unknown or used authorization code")?;
        if now >= pending.expires_at {
            return Err("the authorization code expired");
        }
        if redirect_uri != Some(pending.redirect_uri.as_str()) {
            return Err("redirect_uri does not match the authorization request");
        }
        if let Some(challenge) = &pending.challenge {
            let verifier = verifier.ok_or("code_verifier is missing")?;
            if !challenge.is_satisfied_by(verifier) {
                return Err("code_verifier does not match the code challenge");
            }
        }
        let (access_token, refresh_token, expires_in) = self.create_family(
            &pending.label,
            None,
            &pending.data_center,
            pending.scope.clone(),
            pending.offline,
            now,
        );
        self.counters.code_exchanges += 1;
        Ok(CodeGrant {
            access_token,
            refresh_token: pending.offline.then_some(refresh_token),
            expires_in,
            scope: pending.scope,
            data_center: pending.data_center,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(dialect: Dialect) -> State {
        State::new(&FakeConfig {
            dialect,
            ..FakeConfig::default()
        })
    }

    fn issued(outcome: RefreshOutcome) -> (String, Option<String>) {
        match outcome {
            RefreshOutcome::Issued {
                access_token,
                refresh_token,
                ..
            } => (access_token, refresh_token),
            RefreshOutcome::InvalidGrant(description) => panic!("refresh refused: {description}"),
            RefreshOutcome::Throttled => panic!("refresh throttled"),
        }
    }

    #[test]
    fn random_tokens_carry_their_prefix_and_differ() {
        let first = random_token("rt_");
        let second = random_token("rt_");
        assert!(first.starts_with("rt_"));
        assert_eq!(first.len(), 3 + TOKEN_RANDOM_CHARS);
        assert!(first.chars().skip(3).all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(first, second);
    }

    #[test]
    fn generic_refresh_answers_the_same_refresh_token() {
        let now = Instant::now();
        let mut state = state_with(Dialect::Generic);
        let grant = state.issue_grant("tenant", None, now);
        let (access_token, refresh_token) = issued(state.refresh(&grant.refresh_token, now));
        assert_eq!(refresh_token.as_deref(), Some(grant.refresh_token.as_str()));
        assert_ne!(access_token, grant.access_token);
        assert_eq!(state.refreshes_for("tenant"), 1);
    }

    #[test]
    fn non_rotating_refresh_omits_the_refresh_token() {
        let now = Instant::now();
        let mut state = state_with(Dialect::NonRotating);
        let grant = state.issue_grant("tenant", None, now);
        let (_, refresh_token) = issued(state.refresh(&grant.refresh_token, now));
        assert_eq!(refresh_token, None);
        let (_, again) = issued(state.refresh(&grant.refresh_token, now));
        assert_eq!(again, None);
        assert_eq!(state.counters.reuse_events, 0);
    }

    #[test]
    fn rotating_grace_allows_the_previous_token_then_older_ones_revoke_the_family() {
        let start = Instant::now();
        let grace = Duration::from_secs(600);
        let mut state = state_with(Dialect::Rotating { grace });
        let grant = state.issue_grant("tenant", None, start);
        let (_, second) = issued(state.refresh(&grant.refresh_token, start));
        let second = second.expect("rotating answers carry a refresh token");
        assert_ne!(second, grant.refresh_token);

        let within = start + grace;
        let (_, answered) = issued(state.refresh(&grant.refresh_token, within));
        assert_eq!(answered.as_deref(), Some(second.as_str()));
        assert_eq!(state.counters.reuse_events, 1);

        let (_, third) = issued(state.refresh(&second, within));
        let third = third.expect("rotating answers carry a refresh token");
        assert_eq!(
            state.refresh(&grant.refresh_token, within),
            RefreshOutcome::InvalidGrant("refresh token reuse detected; the grant was revoked")
        );
        assert_eq!(state.counters.reuse_events, 2);
        assert_eq!(state.counters.family_revocations, 1);
        assert!(matches!(state.refresh(&third, within), RefreshOutcome::InvalidGrant(_)));
        assert_eq!(state.current_refresh_token("tenant"), None);
    }

    #[test]
    fn rotating_previous_token_after_grace_revokes_the_family() {
        let start = Instant::now();
        let grace = Duration::from_secs(10);
        let mut state = state_with(Dialect::Rotating { grace });
        let grant = state.issue_grant("tenant", None, start);
        let (access_token, _) = issued(state.refresh(&grant.refresh_token, start));
        let late = start + grace + Duration::from_millis(1);
        assert!(matches!(
            state.refresh(&grant.refresh_token, late),
            RefreshOutcome::InvalidGrant(_)
        ));
        assert_eq!(state.live_access_token_label(&access_token, late), None);
        assert_eq!(state.counters.family_revocations, 1);
    }

    #[test]
    fn retired_tokens_beyond_the_cap_are_forgotten() {
        let now = Instant::now();
        let mut state = state_with(Dialect::Rotating { grace: Duration::ZERO });
        let grant = state.issue_grant("tenant", None, now);
        let mut current = grant.refresh_token.clone();
        for _ in 0..(MAX_RETIRED_PER_FAMILY + 5) {
            current = issued(state.refresh(&current, now))
                .1
                .expect("rotating answers carry a refresh token");
        }
        assert!(state.refresh_index.len() <= MAX_RETIRED_PER_FAMILY + 2);
        assert_eq!(
            state.refresh(&grant.refresh_token, now),
            RefreshOutcome::InvalidGrant("unknown refresh token")
        );
        assert_eq!(state.counters.family_revocations, 0);
    }

    #[test]
    fn expired_access_tokens_are_pruned_once_the_index_grows() {
        let start = Instant::now();
        let mut state = state_with(Dialect::Generic);
        let grant = state.issue_grant("tenant", Some(1), start);
        for _ in 0..2000 {
            state.refresh(&grant.refresh_token, start);
        }
        let later = start + Duration::from_secs(2);
        let (fresh, _) = issued(state.refresh(&grant.refresh_token, later));
        for _ in 0..1100 {
            state.refresh(&grant.refresh_token, later);
        }
        assert!(state.access_index.len() < 2000, "{}", state.access_index.len());
        assert_eq!(state.live_access_token_label(&fresh, later), Some("tenant"));
    }

    #[test]
    fn overlapping_refreshes_are_counted_per_family() {
        let now = Instant::now();
        let mut state = state_with(Dialect::Generic);
        let first = state.issue_grant("a", None, now);
        let second = state.issue_grant("b", None, now);
        let (family_a, _) = state.begin_refresh(&first.refresh_token).expect("known token");
        let (family_b, _) = state.begin_refresh(&second.refresh_token).expect("known token");
        assert_eq!(state.counters.overlapping_refreshes, 0);
        let (again_a, _) = state.begin_refresh(&first.refresh_token).expect("known token");
        assert_eq!(state.counters.overlapping_refreshes, 1);
        state.end_refresh(family_a);
        state.end_refresh(again_a);
        state.end_refresh(family_b);
        state.begin_refresh(&first.refresh_token);
        assert_eq!(state.counters.overlapping_refreshes, 1);
        assert_eq!(state.begin_refresh("rt_unknown"), None);
    }

    #[test]
    fn injected_failures_run_out() {
        let mut state = state_with(Dialect::Generic);
        state.fail_next(2, 503, serde_json::Value::Null);
        assert!(state.take_failure().is_some());
        assert!(state.take_failure().is_some());
        assert!(state.take_failure().is_none());
        state.fail_next(0, 503, serde_json::Value::Null);
        assert!(state.take_failure().is_none());
    }

    #[test]
    fn revoking_a_refresh_token_revokes_its_family_and_an_access_token_only_itself() {
        let now = Instant::now();
        let mut state = state_with(Dialect::Generic);
        let first = state.issue_grant("a", None, now);
        let second = state.issue_grant("b", None, now);
        state.revoke_token(&second.access_token);
        assert_eq!(state.live_access_token_label(&second.access_token, now), None);
        assert_eq!(state.current_refresh_token("b"), Some(second.refresh_token));
        state.revoke_token(&first.refresh_token);
        assert_eq!(state.live_access_token_label(&first.access_token, now), None);
        assert_eq!(state.current_refresh_token("a"), None);
        state.revoke_token("unknown");
        assert_eq!(state.counters.revocation_requests, 3);
        assert_eq!(state.counters.family_revocations, 1);
    }

    #[test]
    fn a_label_reissued_after_revocation_has_a_live_family_again() {
        let now = Instant::now();
        let mut state = state_with(Dialect::Generic);
        state.issue_grant("tenant", None, now);
        state.revoke_label("tenant");
        assert_eq!(state.current_refresh_token("tenant"), None);
        let again = state.issue_grant("tenant", None, now);
        assert_eq!(state.current_refresh_token("tenant"), Some(again.refresh_token));
    }

    #[test]
    fn pkce_s256_matches_the_rfc_7636_example() {
        let challenge = CodeChallenge::S256("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned());
        assert!(challenge.is_satisfied_by("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        assert!(!challenge.is_satisfied_by("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK"));
        let plain = CodeChallenge::Plain("a".repeat(43));
        assert!(plain.is_satisfied_by(&"a".repeat(43)));
        let short = CodeChallenge::Plain("a".repeat(42));
        assert!(
            !short.is_satisfied_by(&"a".repeat(42)),
            "verifiers have at least 43 characters"
        );
        let odd = CodeChallenge::Plain(format!("{}!", "a".repeat(43)));
        assert!(
            !odd.is_satisfied_by(&format!("{}!", "a".repeat(43))),
            "only unreserved characters"
        );
    }

    #[test]
    fn revoking_one_access_token_leaves_the_family_alone() {
        let now = Instant::now();
        let mut state = state_with(Dialect::Generic);
        let grant = state.issue_grant("a", None, now);
        let (second, _) = issued(state.refresh(&grant.refresh_token, now));
        state.revoke_access_token(&grant.access_token);
        assert_eq!(state.live_access_token_label(&grant.access_token, now), None);
        assert_eq!(state.live_access_token_label(&second, now), Some("a"));
        assert_eq!(state.counters.revocation_requests, 0);
        assert_eq!(state.counters.family_revocations, 0);
    }

    #[test]
    fn cloud_ids_are_uuid_shaped() {
        let cloud_id = random_cloud_id();
        let groups: Vec<usize> = cloud_id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(cloud_id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn zoho_keeps_at_most_twenty_refresh_tokens_per_user() {
        let now = Instant::now();
        let mut state = state_with(Dialect::Zoho);
        let grants: Vec<IssuedTokens> = (0..=ZOHO_MAX_REFRESH_TOKENS_PER_USER)
            .map(|_| state.issue_grant("user", None, now))
            .collect();
        assert_eq!(state.counters.family_revocations, 1);
        assert_eq!(
            state.refresh(&grants[0].refresh_token, now),
            RefreshOutcome::InvalidGrant("the grant was revoked")
        );
        issued(state.refresh(&grants[1].refresh_token, now));
        state.issue_grant("someone-else", None, now);
        assert_eq!(state.counters.family_revocations, 1);
    }

    #[test]
    fn zoho_throttles_per_refresh_token_in_a_sliding_window() {
        let start = Instant::now();
        let mut state = state_with(Dialect::Zoho);
        let grant = state.issue_grant("user", None, start);
        for second in 0..ZOHO_REFRESHES_PER_WINDOW as u64 {
            issued(state.refresh(&grant.refresh_token, start + Duration::from_secs(second)));
        }
        let window_end = start + ZOHO_THROTTLE_WINDOW;
        assert_eq!(
            state.refresh(&grant.refresh_token, window_end - Duration::from_millis(1)),
            RefreshOutcome::Throttled
        );
        issued(state.refresh(&grant.refresh_token, window_end));
        assert_eq!(
            state.refresh(&grant.refresh_token, window_end),
            RefreshOutcome::Throttled,
            "the second refresh is still in the window"
        );
        issued(state.refresh(&grant.refresh_token, window_end + Duration::from_secs(1)));
        assert_eq!(state.counters.throttled_requests, 2);
    }

    fn pending(label: &str, data_center: &str, offline: bool, now: Instant) -> PendingCode {
        PendingCode {
            redirect_uri: "https://app.example/cb".to_owned(),
            challenge: None,
            scope: "read".to_owned(),
            label: label.to_owned(),
            data_center: data_center.to_owned(),
            offline,
            expires_at: now + Duration::from_secs(60),
        }
    }

    #[test]
    fn codes_are_single_use_bound_to_their_data_center_and_may_grant_no_refresh_token() {
        let now = Instant::now();
        let mut state = state_with(Dialect::Zoho);
        let code = state.issue_code(pending("acme", "eu", false, now), now);
        let redirect_uri = Some("https://app.example/cb");
        assert!(state.exchange_code(&code, redirect_uri, None, Some("us"), now).is_err());
        let grant = state
            .exchange_code(&code, redirect_uri, None, Some("eu"), now)
            .expect("the code is still valid in its data centre");
        assert_eq!(grant.refresh_token, None);
        assert_eq!(grant.data_center, "eu");
        assert_eq!(state.live_access_token_label(&grant.access_token, now), Some("acme"));
        assert_eq!(state.current_refresh_token("acme"), None);
        assert!(state.exchange_code(&code, redirect_uri, None, Some("eu"), now).is_err());
        assert_eq!(state.counters.code_exchanges, 1);

        let expired = state.issue_code(pending("acme", "us", true, now), now);
        let later = now + Duration::from_secs(60);
        assert_eq!(
            state.exchange_code(&expired, redirect_uri, None, None, later),
            Err("the authorization code expired")
        );
    }

    #[test]
    fn zoho_offline_consent_earns_a_refresh_token_once_unless_prompted() {
        let mut state = state_with(Dialect::Zoho);
        assert!(state.zoho_offline_consent("acme", false));
        assert!(!state.zoho_offline_consent("acme", false));
        assert!(state.zoho_offline_consent("acme", true));
        assert!(state.zoho_offline_consent("other", false));
    }

    #[test]
    fn atlassian_rotation_cuts_the_old_access_tokens_at_the_end_of_grace() {
        let start = Instant::now();
        let grace = Duration::from_secs(600);
        let mut state = state_with(Dialect::Atlassian { grace });
        let grant = state.issue_grant("acme", None, start);
        let (new_access, _) = issued(state.refresh(&grant.refresh_token, start));
        let just_before = start + grace - Duration::from_millis(1);
        assert_eq!(
            state.live_access_token_label(&grant.access_token, just_before),
            Some("acme")
        );
        assert_eq!(state.live_access_token_label(&grant.access_token, start + grace), None);
        assert_eq!(state.live_access_token_label(&new_access, start + grace), Some("acme"));
    }
}
