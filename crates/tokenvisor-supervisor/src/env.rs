//! [`TokenvisorConfig::from_env`]: the library's settings from the same `TOKENVISOR_*`
//! variables the `tokenvisor` binary reads, so an embedded and a standalone tokenvisor
//! are configured alike.

use crate::config::TokenvisorConfig;
use std::time::Duration;
use tokenvisor_core::SchedulePolicy;

/// A setting that could not be used; `variable` names it (`TOKENVISOR_MIN_VALIDITY`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {variable}: {reason}")]
pub struct ConfigError {
    /// The variable (or, from the binary's file, the key and file) that is wrong.
    pub variable: String,
    /// Why.
    pub reason: String,
}

impl ConfigError {
    fn new(variable: &str, reason: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The variables [`TokenvisorConfig::from_env`] reads, with what they set.
pub const ENV_VARIABLES: &[(&str, &str)] = &[
    ("TOKENVISOR_REFRESH_LEAD", "schedule.lead (15m)"),
    ("TOKENVISOR_MIN_VALIDITY", "schedule.min_validity (60s)"),
    ("TOKENVISOR_MIN_SPACING", "schedule.min_spacing (10s)"),
    ("TOKENVISOR_RETRY_BASE", "schedule.retry_base (2s)"),
    ("TOKENVISOR_RETRY_CAP", "schedule.retry_cap (5m)"),
    ("TOKENVISOR_STARTUP_SPREAD", "schedule.startup_spread (10s)"),
    ("TOKENVISOR_CLUSTER_LEASE", "cluster_lease (off; 1s to 10m)"),
    ("TOKENVISOR_TOKEN_WAIT", "token_wait (5s)"),
    ("TOKENVISOR_RETRY_AFTER_CAP", "retry_after_cap (15m)"),
    ("TOKENVISOR_PROBE_INTERVAL", "probe_interval (3s)"),
    (
        "TOKENVISOR_REQUEST_TIMEOUT",
        "client.request_timeout (20s; 1s to 5m): a token request, connection included",
    ),
    (
        "TOKENVISOR_ALLOW_INSECURE_ENDPOINTS",
        "allow_insecure_hosts (comma-separated host names)",
    ),
];

impl TokenvisorConfig {
    /// The defaults, overridden by the `TOKENVISOR_*` variables that are set (see
    /// [`ENV_VARIABLES`]). Durations take a unit: `500ms`, `90s`, `15m`, `1h`, `2d`.
    /// Every error names the variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name).map(|value| value.into_string().map_err(|_| ())))
    }

    /// Like [`TokenvisorConfig::from_env`], with the values from `lookup` (variable name →
    /// value, `Err(())` for a value that is not UTF-8). The binary uses this to put its
    /// configuration file under the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<Result<String, ()>>) -> Result<Self, ConfigError> {
        let get = |name: &str| -> Result<Option<String>, ConfigError> {
            match lookup(name) {
                None => Ok(None),
                Some(Ok(value)) if value.trim().is_empty() => Ok(None),
                Some(Ok(value)) => Ok(Some(value)),
                Some(Err(())) => Err(ConfigError::new(name, "is not valid UTF-8")),
            }
        };
        let duration = |name: &str, default: Duration| -> Result<Duration, ConfigError> {
            match get(name)? {
                Some(text) => parse_duration(&text)
                    .map_err(|reason| ConfigError::new(name, reason))?
                    .to_std()
                    .map_err(|_| ConfigError::new(name, "must not be negative")),
                None => Ok(default),
            }
        };
        let positive = |name: &str, default: Duration| -> Result<Duration, ConfigError> {
            match duration(name, default)? {
                wait if !wait.is_zero() => Ok(wait),
                _ => Err(ConfigError::new(name, "must be positive")),
            }
        };

        let library = TokenvisorConfig::default();
        let defaults = SchedulePolicy::default();
        let schedule = SchedulePolicy {
            lead: duration("TOKENVISOR_REFRESH_LEAD", defaults.lead)?,
            min_validity: duration("TOKENVISOR_MIN_VALIDITY", defaults.min_validity)?,
            min_spacing: duration("TOKENVISOR_MIN_SPACING", defaults.min_spacing)?,
            retry_base: duration("TOKENVISOR_RETRY_BASE", defaults.retry_base)?,
            retry_cap: duration("TOKENVISOR_RETRY_CAP", defaults.retry_cap)?,
            startup_spread: duration("TOKENVISOR_STARTUP_SPREAD", defaults.startup_spread)?,
            ..defaults
        };
        if schedule.lead.is_zero() {
            return Err(ConfigError::new("TOKENVISOR_REFRESH_LEAD", "must be positive"));
        }
        if schedule.retry_base.is_zero() {
            return Err(ConfigError::new("TOKENVISOR_RETRY_BASE", "must be positive"));
        }
        if schedule.retry_cap < schedule.retry_base {
            return Err(ConfigError::new(
                "TOKENVISOR_RETRY_CAP",
                "must be at least TOKENVISOR_RETRY_BASE",
            ));
        }
        let cluster_lease = match get("TOKENVISOR_CLUSTER_LEASE")? {
            None => None,
            Some(text) => {
                let name = "TOKENVISOR_CLUSTER_LEASE";
                let lease = parse_duration(&text).map_err(|reason| ConfigError::new(name, reason))?;
                if lease < chrono::Duration::seconds(1) || lease > chrono::Duration::minutes(10) {
                    return Err(ConfigError::new(
                        name,
                        "must be between 1s and 10m (longer than a refresh takes)",
                    ));
                }
                lease.to_std().ok()
            }
        };
        let allow_insecure_hosts: Vec<String> = get("TOKENVISOR_ALLOW_INSECURE_ENDPOINTS")?
            .map(|list| {
                list.split(',')
                    .map(|host| host.trim().to_owned())
                    .filter(|host| !host.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for host in &allow_insecure_hosts {
            if host.contains(['/', ':', ' ']) && !host.starts_with('[') {
                return Err(ConfigError::new(
                    "TOKENVISOR_ALLOW_INSECURE_ENDPOINTS",
                    format!("{host:?} is not a host name (no scheme, port or path)"),
                ));
            }
        }
        let request_timeout = positive("TOKENVISOR_REQUEST_TIMEOUT", library.client.request_timeout)?;
        if request_timeout < Duration::from_secs(1) || request_timeout > Duration::from_secs(300) {
            return Err(ConfigError::new(
                "TOKENVISOR_REQUEST_TIMEOUT",
                "must be between 1s and 5m",
            ));
        }
        let client = tokenvisor_provider::TokenClientOptions {
            request_timeout,
            connect_timeout: library.client.connect_timeout.min(request_timeout),
            ..library.client.clone()
        };
        Ok(TokenvisorConfig {
            schedule,
            cluster_lease,
            client,
            allow_insecure_hosts,
            token_wait: positive("TOKENVISOR_TOKEN_WAIT", library.token_wait)?,
            retry_after_cap: positive("TOKENVISOR_RETRY_AFTER_CAP", library.retry_after_cap)?,
            probe_interval: positive("TOKENVISOR_PROBE_INTERVAL", library.probe_interval)?,
            ..library
        })
    }
}

/// Parses a duration with humantime: `500ms`, `90s`, `15m`, `1h 30m`, `2d` (at most a
/// year). A number without a unit is refused: `90` could mean seconds or minutes.
pub fn parse_duration(text: &str) -> Result<chrono::Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("{text:?} has no unit (write it like 60s, 15m or 1h 30m)"));
    }
    let duration = humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration like 60s, 15m or 1h 30m ({error})"))?;
    if duration > Duration::from_secs(366 * 24 * 3600) {
        return Err(format!("{text:?} is too long (at most a year)"));
    }
    chrono::Duration::from_std(duration).map_err(|_| format!("{text:?} is too long (at most a year)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<TokenvisorConfig, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TokenvisorConfig::from_lookup(|name| vars.get(name).cloned().map(Ok))
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("15m"), Ok(chrono::Duration::minutes(15)));
        assert_eq!(parse_duration("60s"), Ok(chrono::Duration::seconds(60)));
        assert_eq!(parse_duration("250ms"), Ok(chrono::Duration::milliseconds(250)));
        assert_eq!(parse_duration("2d"), Ok(chrono::Duration::days(2)));
        assert!(parse_duration("90").expect_err("no unit").contains("no unit"));
        assert!(parse_duration("-5m").is_err());
        assert_eq!(parse_duration("1h 30m"), Ok(chrono::Duration::minutes(90)));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("400d").is_err());
    }

    #[test]
    fn no_variables_give_the_defaults() {
        let config = from(&[]).expect("defaults");
        let defaults = TokenvisorConfig::default();
        assert_eq!(config.schedule.lead, defaults.schedule.lead);
        assert_eq!(config.token_wait, defaults.token_wait);
        assert_eq!(config.cluster_lease, None);
        assert!(config.allow_insecure_hosts.is_empty());
    }

    #[test]
    fn every_variable_sets_its_field() {
        let config = from(&[
            ("TOKENVISOR_REFRESH_LEAD", "10m"),
            ("TOKENVISOR_MIN_VALIDITY", "30s"),
            ("TOKENVISOR_MIN_SPACING", "5s"),
            ("TOKENVISOR_RETRY_BASE", "1s"),
            ("TOKENVISOR_RETRY_CAP", "1m"),
            ("TOKENVISOR_STARTUP_SPREAD", "2s"),
            ("TOKENVISOR_CLUSTER_LEASE", "40s"),
            ("TOKENVISOR_TOKEN_WAIT", "2s"),
            ("TOKENVISOR_RETRY_AFTER_CAP", "10m"),
            ("TOKENVISOR_PROBE_INTERVAL", "500ms"),
            ("TOKENVISOR_ALLOW_INSECURE_ENDPOINTS", "127.0.0.1, localhost"),
        ])
        .expect("valid");
        assert_eq!(config.schedule.lead, Duration::from_secs(600));
        assert_eq!(config.schedule.min_validity, Duration::from_secs(30));
        assert_eq!(config.schedule.min_spacing, Duration::from_secs(5));
        assert_eq!(config.schedule.retry_base, Duration::from_secs(1));
        assert_eq!(config.schedule.retry_cap, Duration::from_secs(60));
        assert_eq!(config.schedule.startup_spread, Duration::from_secs(2));
        assert_eq!(config.cluster_lease, Some(Duration::from_secs(40)));
        assert_eq!(config.token_wait, Duration::from_secs(2));
        assert_eq!(config.retry_after_cap, Duration::from_secs(600));
        assert_eq!(config.probe_interval, Duration::from_millis(500));
        assert_eq!(config.allow_insecure_hosts, vec!["127.0.0.1", "localhost"]);
    }

    #[test]
    fn errors_name_the_variable() {
        let cases = [
            ("TOKENVISOR_MIN_VALIDITY", "soon"),
            ("TOKENVISOR_TOKEN_WAIT", "5"),
            ("TOKENVISOR_TOKEN_WAIT", "0s"),
            ("TOKENVISOR_REFRESH_LEAD", "0s"),
            ("TOKENVISOR_CLUSTER_LEASE", "1h"),
            ("TOKENVISOR_RETRY_CAP", "1s"),
            ("TOKENVISOR_ALLOW_INSECURE_ENDPOINTS", "http://127.0.0.1:8080"),
        ];
        for (variable, value) in cases {
            let error = from(&[(variable, value)]).expect_err(variable);
            assert_eq!(error.variable, variable, "{error}");
            assert!(
                error.to_string().starts_with(&format!("invalid {variable}: ")),
                "{error}"
            );
        }
        let error = TokenvisorConfig::from_lookup(|name| (name == "TOKENVISOR_RETRY_BASE").then_some(Err(())))
            .expect_err("not UTF-8");
        assert_eq!(error.variable, "TOKENVISOR_RETRY_BASE");
    }
}
