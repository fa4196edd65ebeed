//! The one error shape of the API: `{"error": {"code", "message", "details"}}`, with the status
//! code of the contract for each failure. Internal errors are logged, never shown.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Value, json};
use tracing::error;

use crate::shop::ShopError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable snake_case code.
    pub code: &'static str,
    /// For a person.
    pub message: String,
    /// What else the client may use (`available` for `insufficient_stock`).
    pub details: Value,
    /// Seconds before a retry makes sense (503, 429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    /// The same, with details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 400: the request is malformed.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_request", message)
    }

    /// 404: no such resource (or someone else's).
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    /// 422: a value breaks a rule.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// The body, as a JSON value.
    pub fn body(&self) -> Value {
        json!({ "error": { "code": self.code, "message": self.message, "details": self.details } })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        response.json(self.body())
    }
}

impl From<ShopError> for ApiError {
    fn from(error: ShopError) -> Self {
        let code = error.code();
        match error {
            ShopError::Invalid(invalid) => {
                let code = match invalid.field {
                    "quantity" => "invalid_quantity",
                    field if field.starts_with("delivery_address") => "invalid_address",
                    field if field.starts_with("payment") => "invalid_card",
                    _ => "invalid_input",
                };
                Self::invalid(code, invalid.to_string())
                    .with_details(json!({ "field": invalid.field }))
            }
            ShopError::NotFound => Self::not_found(),
            ShopError::UnknownProduct => Self::invalid(code, "no such product"),
            ShopError::InsufficientStock { available } => {
                Self::invalid(code, format!("not enough stock: {available} available"))
                    .with_details(json!({ "available": available }))
            }
            ShopError::NotInCart { product, in_cart } => {
                Self::invalid(code, format!("the cart holds {in_cart} of {product}"))
                    .with_details(json!({ "product_id": product, "in_cart": in_cart }))
            }
            ShopError::EmptyCart => Self::invalid(code, "the cart is empty"),
            ShopError::CartLimit(message) => Self::invalid(code, message).with_details(json!({
                "max_lines": crate::domain::shop::cart::MAX_LINES,
                "max_quantity": crate::domain::shop::values::MAX_QUANTITY,
            })),
            ShopError::Rejected(message) => Self::invalid(code, message),
            ShopError::AlreadyCheckedOut => Self::new(
                StatusCode::CONFLICT,
                code,
                "the cart is already checked out",
            ),
            ShopError::AlreadyExists => Self::new(StatusCode::CONFLICT, code, "it exists already"),
            ShopError::Conflict => Self::new(
                StatusCode::CONFLICT,
                code,
                "the resource kept changing; try again",
            ),
            ShopError::Unavailable {
                reason,
                retry_after,
            } => {
                error!(%reason, "answering 503");
                Self {
                    retry_after: Some(retry_after.as_secs().max(1)),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        code,
                        "the shop is unavailable; try again shortly",
                    )
                }
            }
            ShopError::Timeout => Self {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "no answer in time; retrying with the same Idempotency-Key is safe",
                )
            },
            ShopError::Lagging(lagging) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                code,
                format!("the view has not reached position {} yet", lagging.wanted),
            )
            .with_details(json!({ "position": lagging.position, "wanted": lagging.wanted })),
            ShopError::Internal(reason) => {
                error!(%reason, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    code,
                    "something went wrong on our side",
                )
            }
        }
    }
}
