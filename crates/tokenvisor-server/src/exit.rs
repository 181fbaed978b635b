//! The exit codes, stable for scripts, and the error type that carries one.

use std::fmt;

/// `--help` text listing the exit codes (also in the README).
pub const HELP: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage: bad flags or values, invalid configuration, or the API refused the input
  3  not found (connection, integration; `status` without a database)
  4  needs re-authorization: send the tenant through `tokenvisor authorize`
  5  unavailable, retry later: the service is unreachable or busy, the database or provider is down
  6  unauthorized: wrong or missing admin token or API key, or the key may not do this
  7  disabled: the connection is deactivated (`tokenvisor connections activate`)
  8  conflict: it already exists";

/// Why the command failed, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 1: any other error.
    Error = 1,
    /// 2: usage or configuration.
    Usage = 2,
    /// 3: not found.
    NotFound = 3,
    /// 4: the connection needs re-authorization.
    NeedsReauth = 4,
    /// 5: unavailable, retry later.
    Unavailable = 5,
    /// 6: unauthorized.
    Unauthorized = 6,
    /// 7: the connection is disabled.
    Disabled = 7,
    /// 8: conflict.
    Conflict = 8,
}

impl Exit {
    /// The exit code for an admin API error `code` answered with HTTP `status`.
    pub fn from_api(code: &str, status: u16) -> Exit {
        match code {
            "not_found" => Exit::NotFound,
            "needs_reauth" => Exit::NeedsReauth,
            "disabled" => Exit::Disabled,
            "unauthorized" | "forbidden" => Exit::Unauthorized,
            "too_many_attempts" => Exit::Unavailable,
            "conflict" => Exit::Conflict,
            "store_unavailable"
            | "provider_unavailable"
            | "timeout"
            | "shutting_down"
            | "owner_unavailable"
            | "not_ready"
            | "upstream_unreachable" => Exit::Unavailable,
            "integration_misconfigured" | "internal" => Exit::Error,
            "malformed_json"
            | "unsupported_media_type"
            | "payload_too_large"
            | "no_api_base"
            | "bad_request"
            | "missing_token_url"
            | "insecure_url"
            | "unknown_provider"
            | "unknown_data_center" => Exit::Usage,
            code if code.starts_with("invalid_") => Exit::Usage,
            _ => match status {
                404 => Exit::NotFound,
                401 => Exit::Unauthorized,
                409 => Exit::Conflict,
                502..=504 => Exit::Unavailable,
                400 | 422 => Exit::Usage,
                _ => Exit::Error,
            },
        }
    }

    /// This code with `error`.
    pub fn with(self, error: impl Into<anyhow::Error>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            exit: self,
            error: error.into(),
        })
    }

    /// This code with a message.
    pub fn msg(self, message: impl fmt::Display) -> anyhow::Error {
        self.with(anyhow::anyhow!("{message}"))
    }
}

/// An error with its exit code (found anywhere in an error's chain).
#[derive(Debug)]
pub struct Failure {
    exit: Exit,
    error: anyhow::Error,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Failure {}

/// The exit code of `error`: its [`Failure`]'s, else 1.
pub fn code_of(error: &anyhow::Error) -> Exit {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Failure>())
        .map_or(Exit::Error, |failure| failure.exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_codes_map_to_exit_codes() {
        assert_eq!(Exit::from_api("not_found", 404), Exit::NotFound);
        assert_eq!(Exit::from_api("needs_reauth", 409), Exit::NeedsReauth);
        assert_eq!(Exit::from_api("store_unavailable", 503), Exit::Unavailable);
        assert_eq!(Exit::from_api("invalid_input", 422), Exit::Usage);
        assert_eq!(Exit::from_api("something_new", 503), Exit::Unavailable);
        let error = Exit::NotFound.msg("gone").context("while showing");
        assert_eq!(code_of(&error), Exit::NotFound);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), Exit::Error);
    }
}
