//! The `nursery` command line, run as a process: help for each command, `history`, `projections
//! rebuild` (with its progress bar), `migrate`.

use std::process::Command;
use std::time::Duration;

use nursery::domain::shop::{CustomerId, ProductId, Quantity};
use nursery::shop::Nursery;

fn nursery(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_nursery"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["history", "--help"],
        vec!["projections", "rebuild", "--help"],
    ] {
        let (ok, out, _) = nursery(&args);
        assert!(ok && out.contains("Usage"), "{args:?}: {out}");
    }
    let (ok, _, err) = nursery(&["serve", "--role", "boss"]);
    assert!(!ok && err.contains("boss"), "{err}");
}

#[test]
fn history_prints_an_aggregates_events_and_rebuild_shows_its_progress() {
    let dir = tempfile::TempDir::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shop.db").display());
    let (ok, _, err) = nursery(&["migrate", "--database-url", &url]);
    assert!(ok, "{err}");
    let cart = actix_rt::System::new().block_on(async {
        let shop = Nursery::builder()
            .database_url(url.clone())
            .start()
            .await
            .unwrap();
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
        shop.shutdown(Duration::from_secs(5)).await.unwrap();
        cart
    });
    let (ok, out, err) = nursery(&["history", cart.as_str(), "--database-url", &url]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("#1")
            && lines[0].contains("CartCreated")
            && lines[0].contains(r#""owner":"alice""#),
        "{out}"
    );
    assert!(
        lines[1].contains("#2")
            && lines[1].contains("ItemAdded")
            && lines[1].contains(r#""quantity":2"#),
        "{out}"
    );
    let (ok, out, _) = nursery(&[
        "history",
        "monstera",
        "--type",
        "Product",
        "--database-url",
        &url,
    ]);
    assert!(
        ok && out.contains("ProductCreated") && out.contains("StockReserved"),
        "{out}"
    );
    let (ok, _, err) = nursery(&["history", "no-such-thing", "--database-url", &url]);
    assert!(!ok && err.contains("no aggregate"), "{err}");
    let (ok, _, err) = nursery(&["projections", "rebuild", "carts", "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(err.contains("100%") && err.contains("rebuilt"), "{err}");
    let (ok, _, err) = nursery(&["projections", "rebuild", "nothing", "--database-url", &url]);
    assert!(!ok && err.contains("unknown read model"), "{err}");
    // The rebuilt view still shows the cart.
    actix_rt::System::new().block_on(async {
        let shop = Nursery::builder()
            .database_url(url.clone())
            .start()
            .await
            .unwrap();
        let view = shop
            .cart(&CustomerId::parse("alice").unwrap(), &cart)
            .await
            .unwrap();
        assert_eq!(view.lines[0].quantity, 2);
    });
}
