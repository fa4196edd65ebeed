//! Settings of a Nursery process, read from the environment (and the command line).
//!
//! Must not touch: anything but reading settings. Defaults are the embedded, one-process shop.

/// The default address the HTTP facade listens on.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

/// The default event store: an SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://nursery.db";
