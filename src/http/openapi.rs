//! The OpenAPI document, generated from the handlers' annotations and the DTOs' types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{api, dto, ops};

/// The API's document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Nursery",
        description = "An online plant shop on event-sourced CQRS. Commands answer 202 once their events are durable, with the global position of the last one; queries accept ?min_position=N (or X-Min-Position) and answer X-Position. Every error is {\"error\": {\"code\", \"message\", \"details\"}}."
    ),
    paths(
        ops::page, ops::health, ops::ready, ops::metrics, ops::openapi,
        api::create_session, api::list_products, api::get_product, api::create_product,
        api::restock, api::open_cart, api::list_carts, api::get_cart, api::add_item,
        api::empty_cart, api::remove_item, api::checkout, api::cart_history, api::cart_stream,
        api::list_orders, api::get_order, api::list_notifications, api::list_projections,
        api::rebuild_projection, api::list_dead_letters, api::retry_dead_letter,
    ),
    components(schemas(
        dto::SessionRequest, dto::SessionCreated, dto::NewProduct, dto::Restock, dto::NewCart,
        dto::AddItem, dto::DeliveryAddress, dto::PaymentDetails, dto::Checkout, dto::Accepted,
        dto::CartCreated, dto::CheckedOut, dto::Product, dto::CartLine, dto::Cart, dto::Invoice,
        dto::Delivery, dto::TimelineEntry, dto::Order, dto::Notification, dto::EventMetadata,
        dto::HistoryEntry, dto::Processor, dto::DeadLetter, dto::Retried, dto::ErrorBody,
        dto::ErrorDetail,
    )),
    modifiers(&Bearer),
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // The answers every route of a kind can give, whatever its own annotations say.
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/api/");
            let operations = [
                (false, item.get.as_mut()),
                (true, item.post.as_mut()),
                (true, item.delete.as_mut()),
            ];
            for (command, operation) in operations {
                let Some(operation) = operation else { continue };
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let has_body = operation.request_body.is_some();
                let mut add = |status: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(description));
                };
                if api {
                    add(
                        "421",
                        "wrong_role: this process's role does not serve the route",
                    );
                }
                if secured {
                    add("401", "unauthorized: no valid token");
                }
                if api && command {
                    add(
                        "503",
                        "unavailable: the store is unavailable or did not answer in time (Retry-After)",
                    );
                    if has_body {
                        add(
                            "400",
                            "malformed_request: bad JSON, wrong types, unknown fields",
                        );
                        add("413", "payload_too_large: the body is over the limit");
                        add("415", "unsupported_media_type: the body is not JSON");
                    }
                    if secured && !path.starts_with("/api/admin/") {
                        add(
                            "429",
                            "rate_limited: too many requests from this customer (Retry-After)",
                        );
                    }
                }
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// The document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_owned())
}
