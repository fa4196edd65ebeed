//! The OpenAPI document, generated from the handlers' annotations and the DTOs' types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
    }
}

/// The document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_owned())
}
