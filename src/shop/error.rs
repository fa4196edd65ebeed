//! What a shop call can answer besides success: the shop's rules saying no (each with the
//! stable code of the HTTP contract) and the operational failures underneath.

use std::time::Duration;

use crate::actors::CommandError;
use crate::domain::shop::{CartError, InvalidValue, ProductError};
use crate::projections::Lagging;
use crate::store::StoreError;

/// Why a shop call did not succeed. [`ShopError::code`] is the contract's stable word.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// A value is malformed (a 400/422 `invalid_input`): nothing was written.
    #[error("{0}")]
    Invalid(#[from] InvalidValue),
    /// No such cart or order, or it is another customer's (a 404 `not_found`).
    #[error("not found")]
    NotFound,
    /// No such product (a 422 `unknown_product` when adding, a 404 when reading).
    #[error("no such product")]
    UnknownProduct,
    /// Not enough on the shelf (a 422 `insufficient_stock`; `available` is what there is).
    #[error("only {available} available")]
    InsufficientStock {
        /// Items on the shelf now.
        available: u32,
    },
    /// Removing more than the cart holds (a 422 `not_in_cart`).
    #[error("only {in_cart} of {product} in the cart")]
    NotInCart {
        /// The product.
        product: String,
        /// How many the cart holds.
        in_cart: u32,
    },
    /// Checking out an empty cart (a 422 `empty_cart`).
    #[error("the cart is empty")]
    EmptyCart,
    /// The cart was checked out already (a 409 `already_checked_out`).
    #[error("the cart is already checked out")]
    AlreadyCheckedOut,
    /// The id is taken (a 409 `already_exists`).
    #[error("already exists")]
    AlreadyExists,
    /// The cart holds the most lines or items it may (a 422 `cart_limit`).
    #[error("{0}")]
    CartLimit(String),
    /// Other writers kept changing the aggregate (a 409 `conflict`): retry.
    #[error("the aggregate kept changing; try again")]
    Conflict,
    /// A shop rule said no in a way not listed above (a 422 `rejected`).
    #[error("{0}")]
    Rejected(String),
    /// The event store is unavailable or the shop is shutting down (a 503 `unavailable`;
    /// retry after `retry_after`).
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why (for the log, not the client).
        reason: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// No answer in time: the command may have been written (a 503; retry with the same
    /// command id, which is idempotent).
    #[error("no answer in time")]
    Timeout,
    /// A read model did not reach the asked position in time (a 504 `projection_lagging`).
    #[error("{0}")]
    Lagging(#[from] Lagging),
    /// A bug (a 500 `internal`); the details are logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ShopError {
    /// The stable snake_case code of the HTTP contract.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_input",
            Self::NotFound => "not_found",
            Self::UnknownProduct => "unknown_product",
            Self::InsufficientStock { .. } => "insufficient_stock",
            Self::NotInCart { .. } => "not_in_cart",
            Self::EmptyCart => "empty_cart",
            Self::AlreadyCheckedOut => "already_checked_out",
            Self::AlreadyExists => "already_exists",
            Self::CartLimit(_) => "cart_limit",
            Self::Conflict => "conflict",
            Self::Rejected(_) => "rejected",
            Self::Unavailable { .. } | Self::Timeout => "unavailable",
            Self::Lagging(_) => "projection_lagging",
            Self::Internal(_) => "internal",
        }
    }

    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            retry_after: Duration::from_secs(1),
        }
    }

    /// Maps a runtime failure whose rejection has its own mapping.
    pub(crate) fn from_command<E>(error: CommandError<E>, reject: impl FnOnce(E) -> Self) -> Self {
        match error {
            CommandError::Rejected(e) => reject(e),
            CommandError::Refused(refusal) if refusal.code == "invalid_command" => {
                Self::Invalid(InvalidValue {
                    field: "command",
                    reason: refusal.message,
                })
            }
            CommandError::Refused(refusal) => Self::Rejected(refusal.to_string()),
            CommandError::Conflict { .. } => Self::Conflict,
            CommandError::Store(e) => Self::unavailable(e.to_string()),
            CommandError::Timeout => Self::Timeout,
            CommandError::Unavailable(reason) => Self::unavailable(reason),
            CommandError::Crashed(reason) => Self::Internal(reason),
        }
    }
}

impl From<StoreError> for ShopError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(reason) => Self::unavailable(reason.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<CartError> for ShopError {
    fn from(error: CartError) -> Self {
        match error {
            CartError::NotFound => Self::NotFound,
            CartError::AlreadyExists => Self::AlreadyExists,
            CartError::AlreadyCheckedOut => Self::AlreadyCheckedOut,
            CartError::NotInCart { product, in_cart } => Self::NotInCart {
                product: product.to_string(),
                in_cart,
            },
            CartError::EmptyCart => Self::EmptyCart,
            e @ (CartError::TooManyLines { .. } | CartError::TooManyItems { .. }) => {
                Self::CartLimit(e.to_string())
            }
        }
    }
}

impl From<ProductError> for ShopError {
    fn from(error: ProductError) -> Self {
        match error {
            ProductError::UnknownProduct => Self::UnknownProduct,
            ProductError::AlreadyExists => Self::AlreadyExists,
            ProductError::InsufficientStock { available } => Self::InsufficientStock { available },
            other => Self::Rejected(other.to_string()),
        }
    }
}
