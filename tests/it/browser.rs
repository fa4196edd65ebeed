//! The web page in a real browser: headless Chromium driven through ChromeDriver (WebDriver
//! over HTTP). It signs in, chooses a plant with + and −, adds it to the cart, fills in payment
//! and delivery, confirms, and sees the order confirmed live; then saves a screenshot.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer, web};
use base64::Engine;
use nursery::config::Settings;
use nursery::http::{State, configure};
use nursery::projections::SagaConfig;
use nursery::shop::{Nursery, ShopOptions};
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    process: Child,
    base: String,
    session: String,
    http: awc::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver must be installed (scripts/test installs Debian's chromium-driver)",
            );
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"]
            }
        }}});
        let mut driver = Self {
            process,
            base,
            session: String::new(),
            http,
        };
        let answer = driver.call("POST", "/session", Some(capabilities)).await;
        driver.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_owned();
        driver
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "POST" => self.http.post(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        let mut response = match body {
            Some(body) => request.send_json(&body).await.unwrap(),
            None if method == "POST" => request.send_json(&json!({})).await.unwrap(),
            None => request.send().await.unwrap(),
        };
        let answer: Value = response.json().limit(50 << 20).await.unwrap();
        answer["value"].clone()
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .call(
                "POST",
                &self.at("/element"),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits for an element to exist.
    async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(element) = self.find(css).await {
                return element;
            }
            assert!(Instant::now() < deadline, "{css} never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let element = self.wait_for(css).await;
        self.call("POST", &self.at(&format!("/element/{element}/click")), None)
            .await;
    }

    async fn text(&self, css: &str) -> String {
        let element = self.wait_for(css).await;
        self.call("GET", &self.at(&format!("/element/{element}/text")), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the text of `css` satisfies `check`.
    async fn wait_text(&self, css: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.text(css).await;
            if check(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{css} stayed {text:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, file: &std::path::Path) {
        let png = self.call("GET", &self.at("/screenshot"), None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .unwrap();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
}

#[actix_rt::test]
async fn a_customer_buys_a_plant_in_the_browser_and_sees_the_order_confirmed() {
    let shop = Nursery::builder()
        .database_url("memory://")
        .options(ShopOptions {
            sagas: SagaConfig {
                tick: Duration::from_millis(20),
                ..SagaConfig::default()
            },
            ..ShopOptions::default()
        })
        .start()
        .await
        .unwrap();
    let settings = Settings {
        secret: Some("browser-test".into()),
        ..Settings::default()
    };
    let state = web::Data::new(State::new(shop.clone(), &settings));
    let server = HttpServer::new(move || App::new().configure(configure(state.clone())))
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
    let site = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);

    let browser = Driver::start().await;
    browser
        .call("POST", &browser.at("/url"), Some(json!({ "url": site })))
        .await;
    browser.click("#login").await;
    let monstera = ".product[data-id='monstera']";
    assert!(
        browser
            .text(&format!("{monstera} p"))
            .await
            .contains("Swiss cheese plant")
    );
    assert_eq!(browser.text(&format!("{monstera} .price")).await, "10.00 €");
    assert_eq!(
        browser.text(&format!("{monstera} .available")).await,
        "10 available"
    );
    browser.click(&format!("{monstera} .plus")).await;
    browser.click(&format!("{monstera} .plus")).await;
    browser.click(&format!("{monstera} .minus")).await;
    assert_eq!(browser.text(&format!("{monstera} .qty")).await, "2");
    browser.click(&format!("{monstera} .add")).await;
    browser.wait_text("#cart-total", |t| t == "20.00 €").await;
    browser
        .wait_text(&format!("{monstera} .available"), |t| t == "8 available")
        .await;
    browser.click("#confirm").await;
    browser
        .wait_text("#order-status", |t| {
            let t = t.to_lowercase(); // the page capitalizes it
            t == "confirmed" || t == "cancelled"
        })
        .await;
    assert_eq!(
        browser.text("#order-status").await.to_lowercase(),
        "confirmed"
    );
    assert!(
        browser
            .text("#order-timeline")
            .await
            .contains("Order confirmed")
    );
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("screenshots/purchase-confirmed.png");
    browser.screenshot(&file).await;
    assert!(
        std::fs::metadata(&file).unwrap().len() > 10_000,
        "the screenshot is empty"
    );
    browser
        .call("DELETE", &format!("/session/{}", browser.session), None)
        .await;
    drop(browser);
    handle.stop(false).await;
}
