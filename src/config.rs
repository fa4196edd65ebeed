//! Settings of a Nursery process: defaults, then `nursery.toml` (optional), then the
//! environment (`NURSERY_*`), the environment winning; the command line's flags win over both.
//!
//! Must not touch: anything but reading settings. Defaults are the embedded, one-process shop.

use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

/// The default address the HTTP facade listens on.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

/// The default event store: an SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://nursery.db";

/// The default settings file, read from the working directory when present.
pub const DEFAULT_CONFIG_FILE: &str = "nursery.toml";

/// What a process does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, in one process.
    #[default]
    All,
    /// The aggregates and every POST and DELETE route under `/api/`.
    Command,
    /// The read routes, the SSE streams and the web page.
    Query,
    /// The projections, the sagas and the AMQP relay; no API route.
    Events,
}

impl FromStr for Role {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(Self::All),
            "command" => Ok(Self::Command),
            "query" => Ok(Self::Query),
            "events" => Ok(Self::Events),
            other => Err(format!(
                "unknown role {other:?}: use all, command, query or events"
            )),
        }
    }
}

/// Every setting of `nursery serve`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the facade listens (`NURSERY_BIND`).
    pub bind: String,
    /// The event store (`NURSERY_DATABASE_URL`): `sqlite://FILE`, `postgres://...`, `memory://`.
    pub database_url: String,
    /// The broker (`NURSERY_BROKER_URL`): in-process when unset, `amqp://...` for RabbitMQ.
    pub broker_url: Option<String>,
    /// What this process does (`NURSERY_ROLE`).
    pub role: Role,
    /// The token of the admin routes (`NURSERY_ADMIN_TOKEN`); without one they answer 403.
    pub admin_token: Option<String>,
    /// The key customer tokens are signed with (`NURSERY_SECRET`); without one a random key is
    /// made and tokens die with the process.
    pub secret: Option<String>,
    /// How long a customer token lives, in seconds (`NURSERY_TOKEN_TTL_SECONDS`, default 1 day).
    pub token_ttl_seconds: u64,
    /// The largest request body, in bytes (`NURSERY_BODY_LIMIT`, default 64 KiB).
    pub body_limit: usize,
    /// Requests per second one customer may send, sustained (`NURSERY_RATE_LIMIT`, default 20).
    pub rate_limit: u32,
    /// Requests one customer may send in a burst (`NURSERY_RATE_BURST`, default 40).
    pub rate_burst: u32,
    /// How long an idle cart keeps its stock, in seconds (`NURSERY_HOLD_SECONDS`, default 1800).
    pub hold_seconds: u64,
    /// How long a payment may take, in seconds (`NURSERY_PAYMENT_TIMEOUT_SECONDS`, default 900).
    pub payment_timeout_seconds: u64,
    /// How long a stopping server lets requests in flight finish, in seconds
    /// (`NURSERY_SHUTDOWN_SECONDS`, default 10).
    pub shutdown_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND.to_owned(),
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            broker_url: None,
            role: Role::All,
            admin_token: None,
            secret: None,
            token_ttl_seconds: 24 * 3600,
            body_limit: 64 * 1024,
            rate_limit: 20,
            rate_burst: 40,
            hold_seconds: 30 * 60,
            payment_timeout_seconds: 15 * 60,
            shutdown_seconds: 10,
        }
    }
}

impl Settings {
    /// The defaults, then `file` (when given, or `nursery.toml` when present), then the
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let mut settings = match file {
            Some(path) => Self::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Self::default(),
        };
        settings.apply_env(|name| std::env::var(name).ok())?;
        Ok(settings)
    }

    fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Overrides what the environment sets (`var` reads one variable).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        fn number<T: FromStr>(name: &str, raw: String) -> Result<T, String> {
            raw.trim()
                .parse()
                .map_err(|_| format!("{name}={raw:?} is not a valid number"))
        }
        if let Some(v) = var("NURSERY_BIND") {
            self.bind = v;
        }
        if let Some(v) = var("NURSERY_DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = var("NURSERY_BROKER_URL") {
            self.broker_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("NURSERY_ROLE") {
            self.role = v.parse()?;
        }
        if let Some(v) = var("NURSERY_ADMIN_TOKEN") {
            self.admin_token = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("NURSERY_SECRET") {
            self.secret = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("NURSERY_TOKEN_TTL_SECONDS") {
            self.token_ttl_seconds = number("NURSERY_TOKEN_TTL_SECONDS", v)?;
        }
        if let Some(v) = var("NURSERY_BODY_LIMIT") {
            self.body_limit = number("NURSERY_BODY_LIMIT", v)?;
        }
        if let Some(v) = var("NURSERY_RATE_LIMIT") {
            self.rate_limit = number("NURSERY_RATE_LIMIT", v)?;
        }
        if let Some(v) = var("NURSERY_RATE_BURST") {
            self.rate_burst = number("NURSERY_RATE_BURST", v)?;
        }
        if let Some(v) = var("NURSERY_HOLD_SECONDS") {
            self.hold_seconds = number("NURSERY_HOLD_SECONDS", v)?;
        }
        if let Some(v) = var("NURSERY_PAYMENT_TIMEOUT_SECONDS") {
            self.payment_timeout_seconds = number("NURSERY_PAYMENT_TIMEOUT_SECONDS", v)?;
        }
        if let Some(v) = var("NURSERY_SHUTDOWN_SECONDS") {
            self.shutdown_seconds = number("NURSERY_SHUTDOWN_SECONDS", v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_environment_wins_over_the_file() -> Result<(), String> {
        let mut settings: Settings =
            toml::from_str("bind = \"0.0.0.0:1\"\nrole = \"query\"\nrate_limit = 5\n")
                .map_err(|e| e.to_string())?;
        let env: HashMap<&str, &str> =
            [("NURSERY_BIND", "127.0.0.1:9"), ("NURSERY_ROLE", "command")]
                .into_iter()
                .collect();
        settings.apply_env(|name| env.get(name).map(|v| (*v).to_owned()))?;
        assert_eq!(settings.bind, "127.0.0.1:9");
        assert_eq!(settings.role, Role::Command);
        assert_eq!(settings.rate_limit, 5);
        assert_eq!(settings.database_url, DEFAULT_DATABASE_URL);
        Ok(())
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let mut settings = Settings::default();
        let error = settings.apply_env(|name| (name == "NURSERY_ROLE").then(|| "boss".to_owned()));
        assert!(error.is_err_and(|e| e.contains("boss")));
        let error =
            settings.apply_env(|name| (name == "NURSERY_RATE_LIMIT").then(|| "lots".to_owned()));
        assert!(error.is_err_and(|e| e.contains("NURSERY_RATE_LIMIT")));
        assert!(toml::from_str::<Settings>("colour = \"green\"").is_err());
    }
}
