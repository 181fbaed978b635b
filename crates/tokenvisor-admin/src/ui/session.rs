//! Operator sessions of the dashboard: a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` when the public URL is HTTPS), kept in memory as its
//! SHA-256 digest with a CSRF token that every action form carries. Signing out forgets
//! the session at once. Sessions live in the process that created them: behind a load
//! balancer over several replicas, the dashboard needs sticky sessions (or signs in again
//! on another replica).

use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq as _;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "tokenvisor_session";
/// How long a session lasts without signing in again.
const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// At most this many sessions at once; the oldest goes first.
const MAX_SESSIONS: usize = 1_000;

struct Session {
    csrf: String,
    /// Who signed in: the API key's id, or `admin` for the admin token.
    key_id: String,
    created: Instant,
}

/// The signed-in operators' sessions of this process.
#[derive(Default)]
pub(crate) struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// A new session of `key_id`: the cookie value (given to the browser only) and its
    /// CSRF token.
    pub(crate) fn create(&self, key_id: &str) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let mut sessions = self.lock();
        sessions.retain(|_, session| session.created.elapsed() < LIFETIME);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            crate::auth::digest(id.as_bytes()),
            Session {
                csrf: csrf.clone(),
                key_id: key_id.to_owned(),
                created: Instant::now(),
            },
        );
        (id, csrf)
    }

    /// The CSRF token and the signed-in key of a live session.
    fn find(&self, id: &str) -> Option<(String, String)> {
        let sessions = self.lock();
        sessions
            .get(&crate::auth::digest(id.as_bytes()))
            .filter(|session| session.created.elapsed() < LIFETIME)
            .map(|session| (session.csrf.clone(), session.key_id.clone()))
    }

    /// Forgets a session (sign-out).
    pub(crate) fn end(&self, id: &str) {
        self.lock().remove(&crate::auth::digest(id.as_bytes()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that stores (or, with `None`, clears) the session.
pub(crate) fn set_cookie(state: &AppState, id: Option<&str>) -> String {
    let path = format!("{}/ui", state.options.base_path);
    let secure = if state.options.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path={path}; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// A signed-in operator (the request carries a live session cookie); any other request
/// is sent to the sign-in page.
pub(crate) struct Operator {
    /// The session id from the cookie.
    pub(crate) session: String,
    /// The CSRF token every action form of this session carries.
    pub(crate) csrf: String,
    /// Who signed in (for the audit trail).
    pub(crate) key_id: String,
    /// The client's address, when the server recorded it.
    pub(crate) address: Option<std::net::IpAddr>,
}

impl Operator {
    /// Whether a submitted form carries this session's CSRF token (constant time).
    pub(crate) fn csrf_matches(&self, submitted: &str) -> bool {
        !submitted.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(submitted.as_bytes()))
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let session = cookie(&parts.headers, COOKIE).filter(|id| !id.is_empty());
        match session.and_then(|id| state.sessions.find(id).map(|found| (id, found))) {
            Some((id, (csrf, key_id))) => Ok(Self {
                session: id.to_owned(),
                csrf,
                key_id,
                address: parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|info| info.0.ip()),
            }),
            None => Err(Redirect::to(&format!("{}/ui/sign-in", state.options.base_path)).into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_ends() {
        let sessions = Sessions::default();
        let (id, csrf) = sessions.create("admin");
        assert_eq!(sessions.find(&id), Some((csrf.clone(), "admin".to_owned())));
        assert_eq!(sessions.find("another"), None);
        sessions.end(&id);
        assert_eq!(sessions.find(&id), None);
        assert_ne!(id, csrf);
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "other=1; tokenvisor_session_x=2; tokenvisor_session=abc"
                .parse()
                .expect("header"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
