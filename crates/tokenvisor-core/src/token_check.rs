//! Validation of tokens entering the system: the one rule applied wherever an access
//! or refresh token comes in (a provider's answer, an operator replacing tokens, a
//! registered connection), so that nothing downstream ever holds a token that could
//! split a header, a log line or a stored row.

use std::fmt;

/// Longest token accepted, in bytes (16 KiB). Accepted tokens are ASCII, so this is
/// also their length in characters.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. Names the token's kind and the rule it broke, never the
/// token nor the offending character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {problem}")]
pub struct InvalidToken {
    /// What the token is (`"access token"`, `"refresh token"`...), as given to
    /// [`check_token`].
    pub kind: &'static str,
    /// The rule it broke.
    pub problem: TokenProblem,
}

/// The rule a refused token broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// The token is the empty string.
    Empty,
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    TooLong {
        /// Its length, in bytes.
        len: usize,
    },
    /// The token holds a byte outside RFC 6749's VSCHAR (`0x20..=0x7E`): a control
    /// character (CR, LF, tab, NUL, DEL...) or a non-ASCII character.
    ForbiddenCharacter {
        /// Byte offset of the first such byte.
        at: usize,
    },
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("is empty"),
            Self::TooLong { len } => write!(f, "is {len} bytes long (at most {MAX_TOKEN_BYTES})"),
            Self::ForbiddenCharacter { at } => write!(
                f,
                "holds a control or non-ASCII character at byte {at} (only 0x20..=0x7E are allowed)"
            ),
        }
    }
}

/// Checks a token before it enters the system: it must be non-empty, at most
/// [`MAX_TOKEN_BYTES`] (16 KiB) long, and made only of RFC 6749 VSCHAR characters
/// (`0x20..=0x7E`, RFC 6749 Appendix A.12/A.17), so CR, LF, every other control
/// character and anything non-ASCII are refused. `kind` names the token in the error
/// (`"access token"`, `"refresh token"`). The error never contains the token.
pub fn check_token(kind: &'static str, value: &str) -> Result<(), InvalidToken> {
    let refuse = |problem| Err(InvalidToken { kind, problem });
    if value.is_empty() {
        return refuse(TokenProblem::Empty);
    }
    if value.len() > MAX_TOKEN_BYTES {
        return refuse(TokenProblem::TooLong { len: value.len() });
    }
    match value.bytes().position(|b| !(0x20..=0x7E).contains(&b)) {
        Some(at) => refuse(TokenProblem::ForbiddenCharacter { at }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_with_cr_lf_controls_or_non_ascii_is_refused_and_a_vschar_token_passes() {
        assert!(check_token("access token", "a").is_ok());
        assert!(check_token("access token", " !~azAZ09-._~+/=").is_ok());
        assert!(check_token("access token", &"x".repeat(MAX_TOKEN_BYTES)).is_ok());
        for bad in [
            "",
            "a\r\nb",
            "a\nb",
            "a\tb",
            "a\u{0}b",
            "a\u{7f}b",
            "caf\u{e9}",
            "a\u{2028}b",
        ] {
            assert!(check_token("access token", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_token("access token", &"x".repeat(MAX_TOKEN_BYTES + 1)).is_err());
    }

    #[test]
    fn a_refused_token_is_named_by_kind_and_never_shown() {
        let err = check_token("refresh token", "secret-value\r\n").expect_err("refused");
        assert_eq!(err.problem, TokenProblem::ForbiddenCharacter { at: 12 });
        let message = err.to_string();
        assert!(message.starts_with("refresh token holds a control"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        assert_eq!(
            check_token("access token", "").expect_err("empty").to_string(),
            "access token is empty"
        );
    }
}
