//! The plant shop embedded in a Rust program: one purchase from an empty cart to a confirmed
//! order, and one declined card compensated, without HTTP.
//!
//! ```sh
//! cargo run --example embedded                      # in memory
//! cargo run --example embedded -- sqlite://shop.db   # on a SQLite file
//! ```

use std::time::Duration;

use nursery::domain::shop::{Address, CardNumber, CustomerId, ProductId, Quantity};
use nursery::shop::Nursery;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    actix_rt::System::new().block_on(async move {
        let shop = Nursery::builder().database_url(url).start().await?;
        let alice = CustomerId::parse("alice")?;
        let address = Address::parse("Alice Liddell", "1 Rabbit Hole", "Oxford", "OX1", "UK")?;

        for card in ["4242 4242 4242 4242", "4000 0000 0000 0002"] {
            let cart = shop.open_cart(&alice, None).await?.cart_id;
            let monstera = ProductId::parse("monstera")?;
            shop.add_item(&alice, &cart, &monstera, Quantity::parse(2)?, None)
                .await?;
            let card = CardNumber::parse(card)?;
            let order = shop
                .checkout(&alice, &cart, address.clone(), &card, None)
                .await?;
            let order = shop
                .order_outcome(&alice, &order.order_id, Duration::from_secs(10))
                .await?;
            println!("order {} is {}:", order.order_id, order.status);
            for entry in &order.timeline {
                println!("  {}  {}", entry.at, entry.text);
            }
        }
        shop.settle(Duration::from_secs(5)).await?;
        for product in shop.products().await? {
            println!(
                "{:<15} {} available, {} held, {} sold",
                product.name, product.available, product.reserved, product.sold
            );
        }
        for note in shop.notifications(&alice).await? {
            println!("notification: {}", note.text);
        }
        shop.shutdown(Duration::from_secs(5)).await?;
        Ok(())
    })
}
