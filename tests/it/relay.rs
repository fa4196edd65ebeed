//! The AMQP relay against a real RabbitMQ, in a fresh vhost: every event reaches the topic
//! exchange with its event id, routing key `<aggregate type>.<event type>` and a JSON envelope;
//! cutting the connections loses nothing (the relay reconnects and resumes from its checkpoint).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use nursery::domain::shop::{CustomerId, ProductId, Quantity};
use nursery::projections::EXCHANGE;
use nursery::shop::Nursery;
use nursery::store::{RecordedEvent, stream_all};
use serde_json::Value;

use crate::support::Vhost;

/// A durable queue bound to every event, that outlives the test consumer's connections.
async fn listen(url: &str) -> lapin::Consumer {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            "test-listener".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "test-listener".into(),
            EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer = channel
        .basic_consume(
            "test-listener".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // The connection lives as long as the consumer's channel needs it.
    std::mem::forget(connection);
    consumer
}

/// Receives messages until the event ids in `wanted` were all seen (or the connection drops).
async fn receive(
    consumer: &mut lapin::Consumer,
    seen: &mut Vec<Value>,
    wanted: &BTreeSet<String>,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ids: BTreeSet<String> = seen
            .iter()
            .map(|m| m["event_id"].as_str().unwrap().to_owned())
            .collect();
        if wanted.is_subset(&ids) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(1), consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                let body: Value = serde_json::from_slice(&delivery.data).unwrap();
                assert_eq!(
                    delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|m| m.to_string()),
                    body["event_id"].as_str().map(str::to_owned),
                    "the message id is the event id"
                );
                assert_eq!(
                    delivery.routing_key.to_string(),
                    format!(
                        "{}.{}",
                        body["aggregate_type"].as_str().unwrap(),
                        body["type"].as_str().unwrap()
                    )
                );
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                seen.push(body);
            }
            Ok(Some(Err(_)) | None) => return false,
            Err(_) => {}
        }
    }
}

async fn stored_ids(shop: &Nursery) -> BTreeSet<String> {
    let records: Vec<RecordedEvent> = stream_all(&**shop.runtime().store(), 1)
        .try_collect()
        .await
        .unwrap();
    records.iter().map(|r| r.event_id.to_string()).collect()
}

/// Waits for the relay to publish up to the head, then for a fresh consumer of the durable
/// queue to have seen (with what `seen` holds) every stored event.
async fn everything_arrives(shop: &Nursery, url: &str, seen: &mut Vec<Value>, after: &str) {
    let head = shop.runtime().store().head().await.unwrap();
    let relay = shop.relay().unwrap().clone();
    assert!(
        relay.wait_for(head, Duration::from_secs(30)).await,
        "the relay never caught up after the {after}"
    );
    let mut consumer = listen(url).await;
    let wanted = stored_ids(shop).await;
    assert!(
        receive(&mut consumer, seen, &wanted).await,
        "events were lost across the {after}"
    );
}

#[actix_rt::test]
async fn every_event_reaches_the_exchange_even_across_a_cut_connection() {
    let vhost = Vhost::new();
    let mut consumer = listen(&vhost.url).await;
    let shop = Nursery::builder()
        .database_url("memory://")
        .broker_url(Some(vhost.url.clone()))
        .start()
        .await
        .unwrap();
    let mut seen = Vec::new();
    assert!(
        receive(&mut consumer, &mut seen, &stored_ids(&shop).await).await,
        "the seed never arrived"
    );
    let created = seen.iter().find(|m| m["type"] == "ProductCreated").unwrap();
    assert_eq!(created["aggregate_type"], "Product");
    assert!(created["data"]["name"].is_string(), "{created}");
    assert!(created["position"].is_u64() && created["sequence"] == 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while shop.ready().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "not ready with the relay connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cut every connection; write while the relay is away.
    vhost.cut();
    let alice = CustomerId::parse("alice").unwrap();
    let cart = shop.open_cart(&alice, None).await.unwrap().cart_id;
    shop.add_item(
        &alice,
        &cart,
        &ProductId::parse("monstera").unwrap(),
        Quantity::parse(2).unwrap(),
        None,
    )
    .await
    .unwrap();
    everything_arrives(&shop, &vhost.url, &mut seen, "cut").await;
    let kinds: BTreeSet<&str> = seen.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert!(
        kinds.contains("ItemAdded") && kinds.contains("StockReserved"),
        "{kinds:?}"
    );
    shop.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[actix_rt::test]
async fn a_broker_restarted_mid_run_loses_nothing() {
    let vhost = Vhost::alone();
    let mut consumer = listen(&vhost.url).await;
    let shop = Nursery::builder()
        .database_url("memory://")
        .broker_url(Some(vhost.url.clone()))
        .start()
        .await
        .unwrap();
    let alice = CustomerId::parse("alice").unwrap();
    let monstera = ProductId::parse("monstera").unwrap();
    let cart = shop.open_cart(&alice, None).await.unwrap().cart_id;
    shop.add_item(&alice, &cart, &monstera, Quantity::parse(1).unwrap(), None)
        .await
        .unwrap();
    let mut seen = Vec::new();
    assert!(receive(&mut consumer, &mut seen, &stored_ids(&shop).await).await);

    // Commands go on while the broker is down: the store is the outbox.
    vhost
        .restart_broker(async {
            for _ in 0..5 {
                shop.add_item(&alice, &cart, &monstera, Quantity::parse(1).unwrap(), None)
                    .await
                    .unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while shop.ready().await.is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "ready although the broker is down"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;

    // The durable queue kept what it had not delivered; the relay sent the rest.
    everything_arrives(&shop, &vhost.url, &mut seen, "restart").await;
    let added = seen.iter().filter(|m| m["type"] == "ItemAdded").count();
    assert!(added >= 6, "{added} ItemAdded messages");
    let deadline = Instant::now() + Duration::from_secs(15);
    while shop.ready().await.is_err() {
        assert!(Instant::now() < deadline, "not ready after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shop.shutdown(Duration::from_secs(5)).await.unwrap();
}
