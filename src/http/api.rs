//! The `/api` routes: each is one command through the shop, or one read of a read model.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::stream;
use serde::Serialize;
use serde_json::{Number, json};

use super::dto;
use super::{ApiError, Class, State};
use crate::domain::shop::{
    Address, CardNumber, CartId, CustomerId, Money, OrderId, ProductId, Quantity,
};
use crate::shop::{ShopError, View};

type Answer = Result<HttpResponse, ApiError>;

fn ok_at<T: Serialize>(position: u64, body: &T) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("X-Position", position.to_string()))
        .json(body)
}

/// An id in a path: one that cannot exist is simply not found.
fn path_id<T: TryFrom<String>>(raw: &str) -> Result<T, ApiError> {
    T::try_from(raw.to_owned()).map_err(|_| ApiError::not_found())
}

/// A bounded whole number from any JSON number: anything else breaks the rule (422 `code`).
fn whole(number: &Number, code: &'static str, what: &str) -> Result<i64, ApiError> {
    number
        .as_i64()
        .ok_or_else(|| ApiError::invalid(code, format!("{what} must be a whole number in range")))
}

fn quantity(number: &Number) -> Result<Quantity, ApiError> {
    let n = whole(number, "invalid_quantity", "quantity")?;
    Quantity::parse(n).map_err(|e| ApiError::from(ShopError::from(e)))
}

fn accepted(accepted: crate::shop::Accepted) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::ACCEPTED,
        json!(dto::Accepted {
            command_id: accepted.command_id.to_string(),
            position: accepted.position,
        }),
    )
}

/// Opens a session for a customer.
#[utoipa::path(post, path = "/api/sessions", tag = "identity",
    request_body = dto::SessionRequest,
    responses(
        (status = 201, description = "A signed token for the customer", body = dto::SessionCreated),
        (status = 400, description = "Malformed request", body = dto::ErrorBody),
        (status = 415, description = "Not JSON", body = dto::ErrorBody),
        (status = 422, description = "Not a valid customer id", body = dto::ErrorBody),
    ))]
pub async fn create_session(
    state: web::Data<State>,
    req: HttpRequest,
    payload: web::Payload,
) -> Answer {
    state.serves(Class::Command)?;
    let (body, _): (dto::SessionRequest, _) = state.json(&req, payload, false).await?;
    let customer = CustomerId::parse(body.customer.trim())
        .map_err(|e| ApiError::invalid("invalid_input", e.to_string()))?;
    let token = state
        .tokens
        .issue(&customer, chrono::Utc::now().timestamp());
    Ok(HttpResponse::Created().json(dto::SessionCreated {
        token,
        customer_id: customer.to_string(),
    }))
}

/// The catalog, with availability.
#[utoipa::path(get, path = "/api/products", tag = "catalog",
    params(("min_position" = Option<u64>, Query, description = "Wait until the catalog has applied this position")),
    responses(
        (status = 200, description = "Every product", body = [dto::Product],
            headers(("X-Position" = u64, description = "The catalog's position"))),
        (status = 400, description = "Bad min_position", body = dto::ErrorBody),
        (status = 504, description = "The catalog did not reach min_position in time", body = dto::ErrorBody),
    ))]
pub async fn list_products(state: web::Data<State>, req: HttpRequest) -> Answer {
    state.serves(Class::Query)?;
    let position = state.read_at(&req, View::Catalog).await?;
    let products: Vec<dto::Product> = state
        .shop
        .products()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(ok_at(position, &products))
}

/// One product.
#[utoipa::path(get, path = "/api/products/{product_id}", tag = "catalog",
    params(("product_id" = String, Path, description = "The product"),
           ("min_position" = Option<u64>, Query, description = "Wait until the catalog has applied this position")),
    responses(
        (status = 200, description = "The product", body = dto::Product),
        (status = 404, description = "No such product", body = dto::ErrorBody),
        (status = 504, description = "The catalog did not reach min_position in time", body = dto::ErrorBody),
    ))]
pub async fn get_product(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    state.serves(Class::Query)?;
    let id: ProductId = path_id(&path)?;
    let position = state.read_at(&req, View::Catalog).await?;
    match state.shop.product(&id).await {
        Ok(view) => Ok(ok_at(position, &dto::Product::from(view))),
        Err(ShopError::UnknownProduct) => Err(ApiError::not_found()),
        Err(error) => Err(error.into()),
    }
}

/// Puts a new product on the shelf (admin).
#[utoipa::path(post, path = "/api/admin/products", tag = "admin",
    request_body = dto::NewProduct,
    responses(
        (status = 202, description = "Created", body = dto::Accepted),
        (status = 400, description = "Malformed request", body = dto::ErrorBody),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 403, description = "Not the admin token", body = dto::ErrorBody),
        (status = 409, description = "The id exists", body = dto::ErrorBody),
        (status = 422, description = "A value breaks a rule", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn create_product(
    state: web::Data<State>,
    req: HttpRequest,
    payload: web::Payload,
) -> Answer {
    state.admin(&req, Class::Command)?;
    let (body, raw): (dto::NewProduct, Bytes) = state.json(&req, payload, false).await?;
    let shop = state.shop.clone();
    state
        .idempotent(&req, "admin:", &raw, |command_id| async move {
            let id = ProductId::parse(body.id)
                .map_err(|e| ApiError::invalid("invalid_input", e.to_string()))?;
            let price = Money::price(whole(&body.price_cents, "invalid_price", "price_cents")?)
                .map_err(|e| ApiError::invalid("invalid_price", e.to_string()))?;
            let stock = u32::try_from(whole(&body.stock, "invalid_quantity", "stock")?)
                .ok()
                .filter(|s| *s <= crate::domain::shop::product::MAX_RESTOCK)
                .ok_or_else(|| {
                    ApiError::invalid("invalid_quantity", "stock must be from 0 to 1000000")
                })?;
            let created = shop
                .create_product_as(command_id, id, &body.name, &body.description, price, stock)
                .await?;
            Ok(accepted(created))
        })
        .await
}

/// Adds items to a product's shelf (admin).
#[utoipa::path(post, path = "/api/admin/products/{product_id}/restock", tag = "admin",
    params(("product_id" = String, Path, description = "The product")),
    request_body = dto::Restock,
    responses(
        (status = 202, description = "Restocked", body = dto::Accepted),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 403, description = "Not the admin token", body = dto::ErrorBody),
        (status = 404, description = "No such product", body = dto::ErrorBody),
        (status = 422, description = "Quantity out of range", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn restock(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Answer {
    state.admin(&req, Class::Command)?;
    let id: ProductId = path_id(&path)?;
    let (body, raw): (dto::Restock, Bytes) = state.json(&req, payload, false).await?;
    let shop = state.shop.clone();
    state
        .idempotent(&req, "admin:", &raw, |command_id| async move {
            let quantity = u32::try_from(whole(&body.quantity, "invalid_quantity", "quantity")?)
                .ok()
                .filter(|q| (1..=crate::domain::shop::product::MAX_RESTOCK).contains(q))
                .ok_or_else(|| {
                    ApiError::invalid("invalid_quantity", "quantity must be from 1 to 1000000")
                })?;
            match shop.restock(&id, quantity, command_id).await {
                Ok(done) => Ok(accepted(done)),
                Err(ShopError::UnknownProduct) => Err(ApiError::not_found()),
                Err(error) => Err(error.into()),
            }
        })
        .await
}

/// Opens a cart for the caller.
#[utoipa::path(post, path = "/api/carts", tag = "carts",
    request_body(content = Option<dto::NewCart>, description = "Nothing, or {}"),
    responses(
        (status = 201, description = "The cart, the caller's", body = dto::CartCreated),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 429, description = "Too many requests", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn open_cart(state: web::Data<State>, req: HttpRequest, payload: web::Payload) -> Answer {
    let customer = state.commanding(&req)?;
    let (_, raw): (dto::NewCart, Bytes) = state.json(&req, payload, true).await?;
    let scope = format!("customer:{customer}");
    let shop = state.shop.clone();
    state
        .idempotent(&req, &scope, &raw, |command_id| async move {
            let opened = shop.open_cart(&customer, command_id).await?;
            Ok((
                StatusCode::CREATED,
                json!(dto::CartCreated {
                    cart_id: opened.cart_id.to_string(),
                    position: opened.position,
                }),
            ))
        })
        .await
}

/// The caller's carts.
#[utoipa::path(get, path = "/api/carts", tag = "carts",
    params(("min_position" = Option<u64>, Query, description = "Wait until the carts view has applied this position")),
    responses(
        (status = 200, description = "The caller's carts", body = [dto::Cart]),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 504, description = "The view did not reach min_position in time", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn list_carts(state: web::Data<State>, req: HttpRequest) -> Answer {
    let customer = state.querying(&req)?;
    let position = state.read_at(&req, View::Carts).await?;
    let carts: Vec<dto::Cart> = state
        .shop
        .carts(&customer)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(ok_at(position, &carts))
}

/// One of the caller's carts.
#[utoipa::path(get, path = "/api/carts/{cart_id}", tag = "carts",
    params(("cart_id" = String, Path, description = "The cart"),
           ("min_position" = Option<u64>, Query, description = "Wait until the carts view has applied this position")),
    responses(
        (status = 200, description = "The cart", body = dto::Cart),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 404, description = "No such cart, or another customer's", body = dto::ErrorBody),
        (status = 504, description = "The view did not reach min_position in time", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn get_cart(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let customer = state.querying(&req)?;
    let cart: CartId = path_id(&path)?;
    let position = state.read_at(&req, View::Carts).await?;
    let view = state.shop.cart(&customer, &cart).await?;
    Ok(ok_at(position, &dto::Cart::from(view)))
}

/// Adds items to a cart, holding their stock.
#[utoipa::path(post, path = "/api/carts/{cart_id}/items", tag = "carts",
    params(("cart_id" = String, Path, description = "The cart")),
    request_body = dto::AddItem,
    responses(
        (status = 202, description = "Added; the stock is held for the cart", body = dto::Accepted),
        (status = 400, description = "Malformed request", body = dto::ErrorBody),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 404, description = "No such cart, or another customer's", body = dto::ErrorBody),
        (status = 409, description = "Already checked out", body = dto::ErrorBody),
        (status = 413, description = "Body over the limit", body = dto::ErrorBody),
        (status = 415, description = "Not JSON", body = dto::ErrorBody),
        (status = 422, description = "insufficient_stock (details.available), unknown_product, invalid_quantity, cart_limit", body = dto::ErrorBody),
        (status = 429, description = "Too many requests", body = dto::ErrorBody),
        (status = 503, description = "The store is unavailable", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn add_item(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Answer {
    let customer = state.commanding(&req)?;
    let cart: CartId = path_id(&path)?;
    let (body, raw): (dto::AddItem, Bytes) = state.json(&req, payload, false).await?;
    let scope = format!("customer:{customer}");
    let shop = state.shop.clone();
    state
        .idempotent(&req, &scope, &raw, |command_id| async move {
            let product = ProductId::parse(body.product_id)
                .map_err(|_| ApiError::from(ShopError::UnknownProduct))?;
            let quantity = quantity(&body.quantity)?;
            let done = shop
                .add_item(&customer, &cart, &product, quantity, command_id)
                .await?;
            Ok(accepted(done))
        })
        .await
}

/// Empties a cart, releasing all its stock.
#[utoipa::path(delete, path = "/api/carts/{cart_id}/items", tag = "carts",
    params(("cart_id" = String, Path, description = "The cart")),
    responses(
        (status = 202, description = "Emptied", body = dto::Accepted),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 404, description = "No such cart, or another customer's", body = dto::ErrorBody),
        (status = 409, description = "Already checked out", body = dto::ErrorBody),
        (status = 429, description = "Too many requests", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn empty_cart(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let customer = state.commanding(&req)?;
    let cart: CartId = path_id(&path)?;
    let scope = format!("customer:{customer}");
    let shop = state.shop.clone();
    state
        .idempotent(&req, &scope, b"", |command_id| async move {
            Ok(accepted(
                shop.empty_cart(&customer, &cart, command_id).await?,
            ))
        })
        .await
}

/// Removes some (`?quantity=n`) or all of a line, releasing its stock.
#[utoipa::path(delete, path = "/api/carts/{cart_id}/items/{product_id}", tag = "carts",
    params(("cart_id" = String, Path, description = "The cart"),
           ("product_id" = String, Path, description = "The product"),
           ("quantity" = Option<i64>, Query, description = "How many; the whole line without it")),
    responses(
        (status = 202, description = "Removed; the stock is released", body = dto::Accepted),
        (status = 400, description = "quantity is not a number", body = dto::ErrorBody),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 404, description = "No such cart, or another customer's", body = dto::ErrorBody),
        (status = 409, description = "Already checked out", body = dto::ErrorBody),
        (status = 422, description = "not_in_cart, invalid_quantity", body = dto::ErrorBody),
        (status = 429, description = "Too many requests", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn remove_item(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Answer {
    let customer = state.commanding(&req)?;
    let (cart, product) = path.into_inner();
    let cart: CartId = path_id(&cart)?;
    let query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .map_err(|_| ApiError::malformed("the query string does not parse"))?;
    let quantity = match query.get("quantity") {
        None => None,
        Some(raw) => {
            let n: i64 = raw
                .trim()
                .parse()
                .map_err(|_| ApiError::malformed("quantity must be a whole number"))?;
            Some(Quantity::parse(n).map_err(|e| ApiError::from(ShopError::from(e)))?)
        }
    };
    let scope = format!("customer:{customer}");
    let shop = state.shop.clone();
    state
        .idempotent(&req, &scope, b"", |command_id| async move {
            // A product id that cannot exist is not in the cart either.
            let product = ProductId::parse(product.clone()).map_err(|_| {
                ApiError::from(ShopError::NotInCart {
                    product,
                    in_cart: 0,
                })
            })?;
            let done = shop
                .remove_item(&customer, &cart, &product, quantity, command_id)
                .await?;
            Ok(accepted(done))
        })
        .await
}

/// Checks a cart out: the order is placed and paid for by the purchase saga.
#[utoipa::path(post, path = "/api/carts/{cart_id}/checkout", tag = "carts",
    params(("cart_id" = String, Path, description = "The cart")),
    request_body = dto::Checkout,
    responses(
        (status = 202, description = "Checked out; follow the order", body = dto::CheckedOut),
        (status = 400, description = "Malformed request", body = dto::ErrorBody),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 404, description = "No such cart, or another customer's", body = dto::ErrorBody),
        (status = 409, description = "already_checked_out", body = dto::ErrorBody),
        (status = 422, description = "empty_cart, invalid_address, invalid_card", body = dto::ErrorBody),
        (status = 429, description = "Too many requests", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn checkout(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Answer {
    let customer = state.commanding(&req)?;
    let cart: CartId = path_id(&path)?;
    let (body, raw): (dto::Checkout, Bytes) = state.json(&req, payload, false).await?;
    let scope = format!("customer:{customer}");
    let shop = state.shop.clone();
    state
        .idempotent(&req, &scope, &raw, |command_id| async move {
            let a = &body.delivery_address;
            let address = Address::parse(&a.name, &a.street, &a.city, &a.postcode, &a.country)
                .map_err(|e| ApiError::from(ShopError::from(e)))?;
            let card = CardNumber::parse(&body.payment.card_number)
                .map_err(|e| ApiError::from(ShopError::from(e)))?;
            let command_id = command_id.unwrap_or_else(crate::store::ids::fresh);
            let done = shop
                .checkout(&customer, &cart, address, &card, Some(command_id))
                .await?;
            Ok((
                StatusCode::ACCEPTED,
                json!(dto::CheckedOut {
                    order_id: done.order_id.to_string(),
                    position: done.position,
                    command_id: command_id.to_string(),
                }),
            ))
        })
        .await
}

/// A cart's events, in order, from the event store.
#[utoipa::path(get, path = "/api/carts/{cart_id}/history", tag = "carts",
    params(("cart_id" = String, Path, description = "The cart")),
    responses(
        (status = 200, description = "The cart's events", body = [dto::HistoryEntry]),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 404, description = "No such cart, or another customer's", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn cart_history(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let customer = state.querying(&req)?;
    let cart: CartId = path_id(&path)?;
    let history: Vec<dto::HistoryEntry> = state
        .shop
        .cart_history(&customer, &cart)
        .await?
        .into_iter()
        .map(|h| dto::HistoryEntry {
            sequence: h.sequence,
            position: h.position,
            kind: h.kind,
            timestamp: h.timestamp,
            data: h.data,
            metadata: h.metadata,
        })
        .collect();
    let head = history.last().map_or(0, |h| h.position);
    Ok(ok_at(head, &history))
}

/// The cart's view as a stream: one `cart` event now, then one per change.
#[utoipa::path(get, path = "/api/carts/{cart_id}/stream", tag = "carts",
    params(("cart_id" = String, Path, description = "The cart")),
    responses(
        (status = 200, description = "text/event-stream: `event: cart` with the cart view as data, on every change", content_type = "text/event-stream", body = String),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 404, description = "No such cart, or another customer's", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn cart_stream(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let customer = state.querying(&req)?;
    let cart: CartId = path_id(&path)?;
    state.read_at(&req, View::Carts).await?;
    let first = state.shop.cart(&customer, &cart).await?;
    let watch = state.shop.watch(View::Carts);
    let shop = state.shop.clone();
    let frame = |view: &crate::projections::shop::CartView| -> Bytes {
        let body = serde_json::to_string(&dto::Cart::from(view.clone())).unwrap_or_default();
        Bytes::from(format!(
            "event: cart\nid: {}\ndata: {body}\n\n",
            view.version
        ))
    };
    let opening = frame(&first);
    let updates = stream::unfold(
        (watch, first.version, shop, customer, cart),
        move |(mut watch, mut version, shop, customer, cart)| async move {
            loop {
                let changed = tokio::select! {
                    changed = tokio::time::timeout(Duration::from_secs(15), watch.changed()) => changed,
                    () = shop.closing() => return None, // the server is stopping
                };
                match changed {
                    Err(_) => {
                        let ping = Bytes::from_static(b": keep-alive\n\n");
                        return Some((
                            Ok::<_, actix_web::Error>(ping),
                            (watch, version, shop, customer, cart),
                        ));
                    }
                    Ok(Err(_)) => return None, // the read model stopped
                    Ok(Ok(())) => {}
                }
                match shop.cart(&customer, &cart).await {
                    Ok(view) if view.version != version => {
                        version = view.version;
                        let body = serde_json::to_string(&dto::Cart::from(view.clone()))
                            .unwrap_or_default();
                        let bytes =
                            Bytes::from(format!("event: cart\nid: {version}\ndata: {body}\n\n"));
                        return Some((Ok(bytes), (watch, version, shop, customer, cart)));
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        },
    );
    let body = futures_util::StreamExt::chain(stream::once(async move { Ok(opening) }), updates);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        // Never compressed: a compressor buffers small chunks, and events must go out at once.
        .insert_header(("Content-Encoding", "identity"))
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// The caller's orders.
#[utoipa::path(get, path = "/api/orders", tag = "orders",
    params(("min_position" = Option<u64>, Query, description = "Wait until the orders view has applied this position")),
    responses(
        (status = 200, description = "The caller's orders", body = [dto::Order]),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 504, description = "The view did not reach min_position in time", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn list_orders(state: web::Data<State>, req: HttpRequest) -> Answer {
    let customer = state.querying(&req)?;
    let position = state.read_at(&req, View::Orders).await?;
    let orders: Vec<dto::Order> = state
        .shop
        .orders(&customer)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(ok_at(position, &orders))
}

/// One of the caller's orders, with its invoice, delivery and timeline.
#[utoipa::path(get, path = "/api/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, description = "The order"),
           ("min_position" = Option<u64>, Query, description = "Wait until the orders view has applied this position")),
    responses(
        (status = 200, description = "The order", body = dto::Order),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 404, description = "No such order, or another customer's", body = dto::ErrorBody),
        (status = 504, description = "The view did not reach min_position in time", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn get_order(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    let customer = state.querying(&req)?;
    let order: OrderId = path_id(&path)?;
    let position = state.read_at(&req, View::Orders).await?;
    let view = state.shop.order(&customer, &order).await?;
    Ok(ok_at(position, &dto::Order::from(view)))
}

/// The caller's notifications, newest first.
#[utoipa::path(get, path = "/api/notifications", tag = "orders",
    params(("min_position" = Option<u64>, Query, description = "Wait until the notifications view has applied this position")),
    responses(
        (status = 200, description = "Newest first", body = [dto::Notification]),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 504, description = "The view did not reach min_position in time", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn list_notifications(state: web::Data<State>, req: HttpRequest) -> Answer {
    let customer = state.querying(&req)?;
    let position = state.read_at(&req, View::Notifications).await?;
    let notes: Vec<dto::Notification> = state
        .shop
        .notifications(&customer)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(ok_at(position, &notes))
}

/// Every read model and saga: position, lag, status (admin).
#[utoipa::path(get, path = "/api/admin/projections", tag = "admin",
    responses(
        (status = 200, description = "Each processor", body = [dto::Processor]),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 403, description = "Not the admin token", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn list_projections(state: web::Data<State>, req: HttpRequest) -> Answer {
    state.admin(&req, Class::Query)?;
    let all: Vec<dto::Processor> = state
        .shop
        .processors()
        .await
        .into_iter()
        .map(|s| dto::Processor {
            status: format!("{:?}", s.state).to_lowercase(),
            name: s.name,
            position: s.position,
            head: s.head,
            lag: s.lag,
            generation: s.generation,
            rebuild_position: s.rebuild_position,
            last_error: s.last_error,
        })
        .collect();
    Ok(HttpResponse::Ok().json(all))
}

/// Rebuilds a read model from position 0 while the current one keeps serving (admin).
#[utoipa::path(post, path = "/api/admin/projections/{name}/rebuild", tag = "admin",
    params(("name" = String, Path, description = "catalog, carts, orders or notifications")),
    responses(
        (status = 202, description = "The rebuild started"),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 403, description = "Not the admin token", body = dto::ErrorBody),
        (status = 404, description = "No such read model", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn rebuild_projection(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    state.admin(&req, Class::Command)?;
    let name = path.into_inner();
    if !state.shop.view_names().contains(&name) {
        return Err(ApiError::not_found());
    }
    let shop = state.shop.clone();
    let rebuilding = name.clone();
    actix_rt::spawn(async move {
        if let Err(error) = shop.rebuild(&rebuilding).await {
            tracing::warn!(projection = %rebuilding, %error, "rebuild failed");
        }
    });
    Ok(HttpResponse::Accepted().json(json!({ "projection": name, "status": "rebuilding" })))
}

/// The parked events of every read model (admin).
#[utoipa::path(get, path = "/api/admin/dead-letters", tag = "admin",
    responses(
        (status = 200, description = "Oldest first", body = [dto::DeadLetter]),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 403, description = "Not the admin token", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn list_dead_letters(state: web::Data<State>, req: HttpRequest) -> Answer {
    state.admin(&req, Class::Query)?;
    let letters: Vec<dto::DeadLetter> = state
        .shop
        .dead_letters()
        .await?
        .into_iter()
        .map(|d| dto::DeadLetter {
            id: d.id,
            processor: d.processor,
            position: d.position,
            aggregate_type: d.stream.aggregate_type,
            aggregate_id: d.stream.aggregate_id,
            event_type: d.event_type,
            error: d.error,
            attempts: d.attempts,
            parked: d.parked,
            skipped: d.skipped,
            parked_at: d.parked_at.to_rfc3339(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(letters))
}

/// Applies a parked event again, and those of its aggregate waiting behind it (admin).
#[utoipa::path(post, path = "/api/admin/dead-letters/{id}/retry", tag = "admin",
    params(("id" = i64, Path, description = "The dead letter")),
    responses(
        (status = 202, description = "Retried", body = dto::Retried),
        (status = 401, description = "No valid token", body = dto::ErrorBody),
        (status = 403, description = "Not the admin token", body = dto::ErrorBody),
        (status = 404, description = "No such dead letter", body = dto::ErrorBody),
        (status = 422, description = "It failed again", body = dto::ErrorBody),
    ), security(("bearer" = [])))]
pub async fn retry_dead_letter(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Answer {
    state.admin(&req, Class::Command)?;
    let id: i64 = path.parse().map_err(|_| ApiError::not_found())?;
    let applied = state.shop.retry_dead_letter(id).await?;
    Ok(HttpResponse::Accepted().json(dto::Retried { applied }))
}
