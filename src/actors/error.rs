//! What a command can answer besides success. Two layers: the aggregate's own refusal
//! (`Rejected`, a business rule) and the runtime's operational failures.

use std::sync::Arc;

use crate::store::StoreError;

/// Why an interceptor refused a command before any aggregate saw it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// A stable snake_case word, as `"invalid_command"` or `"forbidden"`.
    pub code: &'static str,
    /// For a person.
    pub message: String,
}

impl Refusal {
    /// A refusal with a code and a message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Why a command did not succeed. Each variant says how a caller should react.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// The aggregate refused the command: a business rule says no (a 422). Nothing was written.
    #[error("rejected: {0}")]
    Rejected(E),
    /// An interceptor refused the command (validation, authorization). Nothing was written.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// Other writers kept changing the aggregate: the command was decided again after each
    /// conflict and gave up after `attempts` tries (a 409). Nothing of it was written.
    #[error("the aggregate kept changing under the command ({attempts} attempts)")]
    Conflict {
        /// How many times the command was decided.
        attempts: u32,
    },
    /// The event store failed (a 503; retry later). Nothing of the command was written.
    #[error("event store: {0}")]
    Store(Arc<StoreError>),
    /// Deciding or applying the command panicked: a bug in the aggregate. The actor restarts and
    /// rehydrates; the command was not written. Do not retry unchanged.
    #[error("the aggregate failed on this command: {0}")]
    Crashed(String),
    /// No answer within the timeout. The command may or may not have been written: retry with
    /// the same command id, which is idempotent.
    #[error("no answer within the timeout")]
    Timeout,
    /// The runtime is shutting down or the actor's mailbox is closed (a 503).
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
}

impl<E> CommandError<E> {
    /// Whether the same command may succeed if sent again later unchanged.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Store(_) | Self::Timeout | Self::Unavailable(_) | Self::Conflict { .. }
        )
    }
}

impl<E> From<StoreError> for CommandError<E> {
    fn from(error: StoreError) -> Self {
        Self::Store(Arc::new(error))
    }
}
