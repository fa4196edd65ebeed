//! The HTTP facade (actix-web, on the same actix system as the actors): every route of
//! `API.md`, thin: each one is one command through the shop (and so the gateway) or one read of
//! a read model. Also the web page, `/metrics`, `/health`, `/ready` and the OpenAPI document.
//!
//! Must not touch: the store, the actors or the read models directly; it talks to the shop.

mod api;
mod auth;
mod dto;
mod error;
mod limits;
mod openapi;
mod ops;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, HttpServer};
use chrono::Utc;
use futures_util::StreamExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use uuid::Uuid;

pub use auth::{TokenError, Tokens};
pub use error::ApiError;
pub use openapi::{ApiDoc, openapi_json};

use crate::config::{Role, Settings};
use crate::domain::shop::CustomerId;
use crate::projections::StoredResponse;
use crate::shop::{Nursery, ShopOptions, View};
use limits::RateLimiter;

/// How long an idempotency key is remembered.
const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;

/// The longest idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// What every request handler shares.
pub struct State {
    /// The shop.
    pub shop: Nursery,
    tokens: Tokens,
    admin_token: Option<String>,
    role: Role,
    body_limit: usize,
    limiter: RateLimiter,
}

/// Which processes serve a route (`NURSERY_ROLE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// POST and DELETE under `/api/`: `all` and `command`.
    Command,
    /// GET under `/api/` and the page: `all` and `query`.
    Query,
}

impl State {
    /// The state of a facade over `shop` with `settings`.
    pub fn new(shop: Nursery, settings: &Settings) -> Self {
        let key = match settings.secret.as_ref().filter(|s| !s.trim().is_empty()) {
            Some(secret) => secret.as_bytes().to_vec(),
            None => {
                warn!(
                    "NURSERY_SECRET is not set: tokens are signed with a random key and die with the process"
                );
                let mut key = Uuid::new_v4().as_bytes().to_vec();
                key.extend_from_slice(Uuid::new_v4().as_bytes());
                key
            }
        };
        if settings.admin_token.is_none() {
            warn!("NURSERY_ADMIN_TOKEN is not set: the admin routes answer 403");
        }
        Self {
            shop,
            tokens: Tokens::new(&key, settings.token_ttl_seconds),
            admin_token: settings.admin_token.clone(),
            role: settings.role,
            body_limit: settings.body_limit,
            limiter: RateLimiter::new(settings.rate_limit, settings.rate_burst),
        }
    }

    /// Refuses a route this process's role does not serve (421 `wrong_role`).
    pub(crate) fn serves(&self, class: Class) -> Result<(), ApiError> {
        let ok = matches!(
            (self.role, class),
            (Role::All, _) | (Role::Command, Class::Command) | (Role::Query, Class::Query)
        );
        if ok {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "wrong_role",
                format!("this process serves the {:?} role", self.role).to_lowercase(),
            ))
        }
    }

    fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
        let unauthorized = |message: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned())
        };
        let header = req
            .headers()
            .get("Authorization")
            .ok_or_else(|| unauthorized("an Authorization: Bearer token is needed"))?;
        let value = header
            .to_str()
            .map_err(|_| unauthorized("the token is not valid"))?;
        value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("an Authorization: Bearer token is needed"))
    }

    /// The customer a request's token names (401 otherwise).
    pub(crate) fn customer(&self, req: &HttpRequest) -> Result<CustomerId, ApiError> {
        let token = Self::bearer(req)?;
        self.tokens
            .verify(token, Utc::now().timestamp())
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))
    }

    /// The customer of a command: role, token, then the customer's rate limit (429).
    pub(crate) fn commanding(&self, req: &HttpRequest) -> Result<CustomerId, ApiError> {
        self.serves(Class::Command)?;
        let customer = self.customer(req)?;
        self.limit(customer.as_str())?;
        Ok(customer)
    }

    /// The customer of a query: role, then token.
    pub(crate) fn querying(&self, req: &HttpRequest) -> Result<CustomerId, ApiError> {
        self.serves(Class::Query)?;
        self.customer(req)
    }

    fn limit(&self, who: &str) -> Result<(), ApiError> {
        self.limiter.take(who).map_err(|seconds| ApiError {
            retry_after: Some(seconds),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; slow down",
            )
        })
    }

    /// Checks the admin token: 401 without a valid token, 403 with a customer's.
    pub(crate) fn admin(&self, req: &HttpRequest, class: Class) -> Result<(), ApiError> {
        self.serves(class)?;
        let token = Self::bearer(req)?;
        if let Some(admin) = &self.admin_token {
            if auth::same_secret(token, admin) {
                return Ok(());
            }
        }
        match self.tokens.verify(token, Utc::now().timestamp()) {
            Ok(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this route needs the admin token",
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                e.to_string(),
            )),
        }
    }

    /// Reads a JSON body: 415 unless it is JSON, 413 over the limit, 400 if it does not parse
    /// into `T` (bad JSON, wrong types, unknown fields). An empty body reads as `{}` when
    /// `empty_ok`. Answers the body too, for idempotency fingerprints.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        req: &HttpRequest,
        mut payload: web::Payload,
        empty_ok: bool,
    ) -> Result<(T, Bytes), ApiError> {
        let declared = req
            .headers()
            .get("Content-Length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is over {} bytes", self.body_limit),
            )
        };
        if declared.is_some_and(|n| n > self.body_limit) {
            return Err(too_large());
        }
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| ApiError::malformed("the body could not be read"))?;
            if body.len() + chunk.len() > self.body_limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let body = body.freeze();
        if body.is_empty() && empty_ok {
            let value =
                serde_json::from_str("{}").map_err(|e| ApiError::malformed(e.to_string()))?;
            return Ok((value, body));
        }
        let is_json = req
            .headers()
            .get("Content-Type")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ));
        }
        let value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::malformed(format!("the body is not what this route takes: {e}"))
        })?;
        Ok((value, body))
    }

    /// Waits for `view` to reach the `min_position` a request asks for (query or
    /// `X-Min-Position`), up to 5 s (then 504); answers the view's position, for `X-Position`.
    pub(crate) async fn read_at(&self, req: &HttpRequest, view: View) -> Result<u64, ApiError> {
        let from_query =
            web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
                .ok()
                .and_then(|q| q.get("min_position").cloned());
        let from_header = req
            .headers()
            .get("X-Min-Position")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(raw) = from_query.or(from_header) {
            let wanted: u64 = raw
                .trim()
                .parse()
                .map_err(|_| ApiError::malformed("min_position must be a whole number"))?;
            self.shop
                .wait_for(view, wanted)
                .await
                .map_err(ApiError::from)?;
        }
        Ok(self.shop.position(view))
    }

    /// Runs a command once per `Idempotency-Key` (scoped to `scope`, the customer): the same
    /// key with the same request within 24 h answers the first answer again and changes
    /// nothing; with another request it is a 422. Without a key, runs it.
    pub(crate) async fn idempotent<F, Fut>(
        &self,
        req: &HttpRequest,
        scope: &str,
        body: &[u8],
        run: F,
    ) -> Result<HttpResponse, ApiError>
    where
        F: FnOnce(Option<Uuid>) -> Fut,
        Fut: Future<Output = Result<(StatusCode, Value), ApiError>>,
    {
        let Some(key) = req.headers().get("Idempotency-Key") else {
            let (status, body) = run(None).await?;
            return Ok(HttpResponse::build(status).json(body));
        };
        let key = key
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
            .ok_or_else(|| {
                ApiError::malformed(format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ))
            })?;
        let mut digest = Sha256::new();
        digest.update(req.method().as_str());
        digest.update(b"\n");
        digest.update(req.path());
        digest.update(b"?");
        digest.update(req.query_string());
        digest.update(b"\n");
        digest.update(body);
        let fingerprint: String = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let store = self.shop.read_store();
        // To the microsecond, as the stores keep it, so the first answer is recognised as ours.
        let now = chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
            .unwrap_or_else(Utc::now);
        let window_start = now - chrono::Duration::hours(IDEMPOTENCY_WINDOW_HOURS);
        let replay = |stored: StoredResponse| -> Result<HttpResponse, ApiError> {
            if stored.fingerprint != fingerprint {
                return Err(ApiError::invalid(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for another request",
                ));
            }
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            Ok(HttpResponse::build(status)
                .insert_header(("Idempotent-Replayed", "true"))
                .content_type("application/json")
                .body(stored.body))
        };
        if let Some(stored) = store
            .recall_response(scope, key)
            .await
            .map_err(|e| ApiError::from(crate::shop::ShopError::from(e)))?
            .filter(|s| s.created_at >= window_start)
        {
            return replay(stored);
        }
        // The request's fingerprint is part of the command id: the same key on another request
        // (after the window, or if remembering failed) is another command, never a no-op.
        let command_id = Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("{scope}\n{key}\n{fingerprint}").as_bytes(),
        );
        let (status, body) = match run(Some(command_id)).await {
            Ok(answer) => answer,
            // A refusal is an answer too (the same request would be refused the same way);
            // a 5xx or a 429 is not: the client retries.
            Err(error)
                if error.status.is_client_error()
                    && error.status != StatusCode::TOO_MANY_REQUESTS =>
            {
                (error.status, error.body())
            }
            Err(error) => return Err(error),
        };
        let response = StoredResponse {
            fingerprint: fingerprint.clone(),
            status: status.as_u16(),
            body: body.to_string(),
            created_at: now,
        };
        match store
            .remember_response(scope, key, &response, window_start)
            .await
        {
            Ok(stored) if stored.created_at == now && stored.fingerprint == fingerprint => {
                Ok(HttpResponse::build(status).json(body))
            }
            Ok(stored) => replay(stored),
            Err(error) => {
                warn!(%error, "cannot remember an idempotent response; answering it anyway");
                Ok(HttpResponse::build(status).json(body))
            }
        }
    }
}

/// The Prometheus recorder, installed once per process.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("nursery_command_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Prefix("nursery_journal_batch".into()),
                    &[
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
                    ],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(error) => {
                    warn!(%error, "cannot install the Prometheus recorder; /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

macro_rules! routes {
    ($( $method:ident $path:literal => $handler:path ),* $(,)?) => {
        /// Every route the facade serves, as (method, path): the same table registers the
        /// routes and is checked against the OpenAPI document.
        pub const ROUTES: &[(&str, &str)] = &[ $( (stringify!($method), $path) ),* ];

        fn routes() -> Vec<(&'static str, actix_web::Route)> {
            vec![ $( ($path, web::$method().to($handler)) ),* ]
        }
    };
}

routes! {
    get "/" => ops::page,
    get "/health" => ops::health,
    get "/ready" => ops::ready,
    get "/metrics" => ops::metrics,
    get "/api/openapi.json" => ops::openapi,
    post "/api/sessions" => api::create_session,
    get "/api/products" => api::list_products,
    get "/api/products/{product_id}" => api::get_product,
    post "/api/admin/products" => api::create_product,
    post "/api/admin/products/{product_id}/restock" => api::restock,
    post "/api/carts" => api::open_cart,
    get "/api/carts" => api::list_carts,
    get "/api/carts/{cart_id}" => api::get_cart,
    post "/api/carts/{cart_id}/items" => api::add_item,
    delete "/api/carts/{cart_id}/items" => api::empty_cart,
    delete "/api/carts/{cart_id}/items/{product_id}" => api::remove_item,
    post "/api/carts/{cart_id}/checkout" => api::checkout,
    get "/api/carts/{cart_id}/history" => api::cart_history,
    get "/api/carts/{cart_id}/stream" => api::cart_stream,
    get "/api/orders" => api::list_orders,
    get "/api/orders/{order_id}" => api::get_order,
    get "/api/notifications" => api::list_notifications,
    get "/api/admin/projections" => api::list_projections,
    post "/api/admin/projections/{name}/rebuild" => api::rebuild_projection,
    get "/api/admin/dead-letters" => api::list_dead_letters,
    post "/api/admin/dead-letters/{id}/retry" => api::retry_dead_letter,
}

/// Registers every route, the JSON 404 for the rest, on `state`.
pub fn configure(state: web::Data<State>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(state);
        let mut grouped: Vec<(&'static str, Vec<actix_web::Route>)> = Vec::new();
        for (path, route) in routes() {
            match grouped.iter_mut().find(|(p, _)| *p == path) {
                Some((_, list)) => list.push(route),
                None => grouped.push((path, vec![route])),
            }
        }
        for (path, list) in grouped {
            let mut resource = web::resource(path).default_service(web::to(method_not_allowed));
            for route in list {
                resource = resource.route(route);
            }
            cfg.service(resource);
        }
        cfg.default_service(web::to(not_found));
    }
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route",
    ))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not served here", req.method()),
    ))
}

/// The shop's options as the settings give them.
pub fn shop_options(settings: &Settings) -> ShopOptions {
    ShopOptions {
        hold_seconds: settings.hold_seconds,
        payment_timeout_seconds: settings.payment_timeout_seconds,
        ..ShopOptions::default()
    }
}

/// Runs `nursery serve`: starts the shop and the facade, serves until SIGTERM or SIGINT, then
/// stops taking requests, lets those in flight finish (their commands answered, so the journal
/// has flushed them), lets the read side catch up, and returns.
pub async fn serve(settings: Settings) -> Result<(), String> {
    let _ = prometheus();
    // An events process may wait a long time for the lead (another process holds it): it
    // answers /health meanwhile (alive) and /ready with 503 (standing by).
    let standby = match settings.role {
        Role::Events => Some(standby_server(&settings.bind)?),
        _ => None,
    };
    let shop = Nursery::builder()
        .database_url(settings.database_url.clone())
        .role(settings.role)
        .broker_url(settings.broker_url.clone())
        .options(shop_options(&settings))
        .start()
        .await
        .map_err(|e| format!("cannot start the shop on {}: {e}", settings.database_url))?;
    if let Some(standby) = standby {
        standby.stop(false).await;
    }
    let state = web::Data::new(State::new(shop.clone(), &settings));
    let grace = Duration::from_secs(settings.shutdown_seconds);
    let server = HttpServer::new(move || {
        actix_web::App::new()
            .wrap(actix_web::middleware::Compress::default())
            .configure(configure(state.clone()))
    })
    .disable_signals()
    .shutdown_timeout(settings.shutdown_seconds)
    .bind(&settings.bind)
    .map_err(|e| format!("cannot listen on {}: {e}", settings.bind))?;
    let addresses = server.addrs();
    info!(?addresses, role = ?settings.role, database = %settings.database_url, "serving");
    let server = server.run();
    let handle = server.handle();
    let stopping = shop.clone();
    let lead_lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost = Arc::clone(&lead_lost);
    // Dropped when `serve` returns, which calls the watchdog off.
    let (stopped, stop_watched) = std::sync::mpsc::channel::<()>();
    let (asked, stop_asked) = tokio::sync::oneshot::channel::<()>();
    actix_rt::spawn(async move {
        tokio::select! {
            signal = stop_signal() => {
                info!(%signal, "stopping: no new requests; those in flight finish");
            }
            () = stopping.lead_lost() => {
                // Another events process leads now: this one stops, to wait its turn again.
                warn!("lost the lead over the event processors; stopping");
                lost.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        stopping.begin_shutdown();
        watchdog(grace, stop_watched);
        let _ = asked.send(());
        handle.stop(true).await;
    });
    // The HTTP server stops once its connections are done, within its grace. A stop asked
    // while its workers are still starting can leave it waiting for a worker that never
    // answers (seen with a SIGTERM 50 ms after start): past the grace and a second, the shop
    // stops anyway; every request has been answered or cut off by then.
    let mut server = std::pin::pin!(server);
    let overdue = async move {
        match stop_asked.await {
            Ok(()) => tokio::time::sleep(grace.saturating_add(Duration::from_secs(1))).await,
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        outcome = &mut server => outcome.map_err(|e| e.to_string())?,
        () = overdue => warn!(seconds = grace.as_secs(), "the HTTP server did not stop within its grace; stopping the shop anyway"),
    }
    if lead_lost.load(std::sync::atomic::Ordering::SeqCst) {
        return Err("lost the lead over the event processors".into());
    }
    shop.shutdown(grace).await.map_err(|e| e.to_string())?;
    info!("stopped");
    drop(stopped);
    Ok(())
}

/// Ends the process if a graceful stop has not finished well after its grace time: the HTTP
/// server's grace, the commands' and the read side's each (every answered command is durable
/// by then, so nothing acknowledged is lost). A stop that hangs becomes a failed exit an
/// orchestrator sees, not a process that never goes away. `serve` returning (its end of
/// `stopped` dropped) calls it off, so a host that embeds `serve` carries on.
fn watchdog(grace: Duration, stopped: std::sync::mpsc::Receiver<()>) {
    let limit = grace
        .saturating_mul(4)
        .saturating_add(Duration::from_secs(5));
    let spawned = std::thread::Builder::new()
        .name("stop-watchdog".into())
        .spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(limit) {
                tracing::error!(seconds = limit.as_secs(), "stopping took too long; exiting");
                std::process::exit(3);
            }
        });
    if let Err(error) = spawned {
        warn!(%error, "no stop watchdog");
    }
}

/// A server for the wait before the shop runs: `/health` answers 200, everything else 503.
fn standby_server(bind: &str) -> Result<actix_web::dev::ServerHandle, String> {
    let server = HttpServer::new(|| {
        actix_web::App::new()
            .route("/health", web::get().to(ops::health))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "standing_by",
                        "this events process waits for the lead over the event processors",
                    )
                })
            }))
    })
    .workers(1)
    .disable_signals()
    .bind(bind)
    .map_err(|e| format!("cannot listen on {bind}: {e}"))?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}

/// Waits for SIGTERM or SIGINT; answers which.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Whether `method` is one of the table's.
pub fn method_of(name: &str) -> Option<Method> {
    match name {
        "get" => Some(Method::GET),
        "post" => Some(Method::POST),
        "delete" => Some(Method::DELETE),
        _ => None,
    }
}
