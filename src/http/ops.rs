//! The routes every role serves (`/health`, `/ready`, `/metrics`), the OpenAPI document and
//! the web page.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::{ApiError, Class, State, prometheus};

/// The shop's web page: plain HTML, CSS and JavaScript, embedded in the binary.
const PAGE: &str = include_str!("static/index.html");

/// The web shop.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The shop's web page", content_type = "text/html", body = String)))]
pub async fn page(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    state.serves(Class::Query)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE))
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Up", content_type = "text/plain", body = String)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// The process can serve: its event store answers (and its message broker, where one is
/// configured).
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", content_type = "text/plain", body = String),
        (status = 503, description = "The event store (or the broker) does not answer", body = super::dto::ErrorBody),
    ))]
pub async fn ready(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    match state.shop.ready().await {
        Ok(()) => Ok(HttpResponse::Ok().content_type("text/plain").body("ready")),
        Err(_) => Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event store or the message broker does not answer",
            )
        }),
    }
}

/// Prometheus metrics: commands by type and outcome, command latency, events appended, journal
/// batch sizes, projection positions and lag, live actors, passivations, restarts.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<State>) -> HttpResponse {
    for status in state.shop.processors().await {
        metrics::gauge!("nursery_projection_position", "projection" => status.name.clone())
            .set(status.position as f64);
        metrics::gauge!("nursery_projection_lag", "projection" => status.name)
            .set(status.lag as f64);
    }
    let text = prometheus().map(|p| p.render()).unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this server", content_type = "application/json", body = Object)))]
pub async fn openapi(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    state.serves(Class::Query)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(super::openapi_json()))
}
