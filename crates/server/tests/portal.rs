//! The web portal end to end, in a real headless Chromium driven through chromedriver: the whole
//! path a user takes in the browser, from an empty server to predictions, with a screenshot of
//! each page (saved under target/portal-screenshots for people to look at).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "the portal tests need Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }

    async fn browser(&self, profile: &Path) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                    "--disable-dev-shm-usage", "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browser, the test server and where screenshots go.
struct Portal {
    c: Client,
    server: TestServer,
    shots: PathBuf,
}

impl Portal {
    async fn open(&self, fragment: &str) {
        self.c.goto(&format!("{}/portal/{fragment}", self.server.base)).await.unwrap();
    }

    async fn find(&self, css: &str) -> Element {
        match self.c.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => panic!("no element {css:?} on the page ({e}); it shows:\n{}", self.page_text().await),
        }
    }

    /// What the page shows, toasts (where errors go) included, for failure messages.
    async fn page_text(&self) -> String {
        let text = self.c.execute("return document.body.innerText", vec![]).await;
        text.ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap_or_else(|e| panic!("cannot click {css:?}: {e}"));
    }

    async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    async fn select(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("cannot select {value:?} in {css:?}: {e}"));
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script failed: {script}: {e}"))
    }

    /// Waits until `script` (an expression) is truthy.
    async fn until(&self, what: &str, script: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.js(&format!("return !!({script});")).await;
            if value == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; the page shows:\n{}", self.page_text().await);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Presses a key on the keyboard (to whatever has the focus), as a user would.
    async fn press(&self, key: Key) {
        let key: char = key.into();
        let actions =
            KeyActions::new("keyboard".into()).then(KeyAction::Down { value: key }).then(KeyAction::Up { value: key });
        self.c.perform_actions(actions).await.unwrap();
    }

    async fn focused(&self) -> Value {
        self.js("const e = document.activeElement; return e ? (e.id || e.className || e.tagName) : null").await
    }

    async fn screenshot(&self, name: &str) {
        let png = self.c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// True when the page is not wider than the window (nothing to scroll sideways).
    async fn fits_width(&self) -> bool {
        self.js("return document.documentElement.scrollWidth <= window.innerWidth + 1").await == json!(true)
    }
}

/// Images of two visibly different kinds, written as files the upload dialog can take.
fn write_images(dir: &Path, prefix: &str, seeds: std::ops::Range<u8>, red: bool) -> Vec<String> {
    seeds
        .map(|seed| {
            let img = image::RgbImage::from_fn(48, 48, |x, y| {
                let noise = ((x * 31 + y * 17 + seed as u32 * 7) % 40) as u8;
                if red {
                    image::Rgb([200 + noise / 2, noise, 30])
                } else {
                    image::Rgb([noise, 60 + noise, 200 + noise / 2])
                }
            });
            let path = dir.join(format!("{prefix}-{seed}.png"));
            img.save(&path).unwrap();
            path.to_string_lossy().into_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_path_in_a_browser() {
    let driver = Driver::start();
    let work = tempfile::tempdir().unwrap();
    let shots = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/portal-screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let server = TestServer::start().await;
    let c = driver.browser(&work.path().join("profile")).await;
    let p = Portal { c, server, shots };
    let red = write_images(work.path(), "red", 0..8, true);
    let blue = write_images(work.path(), "blue", 20..28, false);

    // Signing in through the link `deeptune serve` prints; the fragment never reaches the server.
    p.open(&format!("#key={}", p.server.token)).await;
    p.find("#create-app").await;
    assert!(
        !p.c.current_url().await.unwrap().as_str().contains(&p.server.token),
        "the token is dropped from the address bar"
    );
    p.screenshot("01-apps").await;

    // Keyboard: a new page puts the focus on its content, and Tab goes on to its first field.
    assert_eq!(p.focused().await, json!("main"), "the page's content has the focus");
    p.press(Key::Tab).await;
    assert_eq!(p.js("return document.activeElement.name").await, json!("app_id"));

    // An app.
    p.fill("#create-app input[name=app_id]", "shop").await;
    p.click("#create-app button[type=submit]").await;
    p.find("#upload-button").await;
    assert!(p.c.current_url().await.unwrap().as_str().ends_with("#/apps/shop/inputs"));

    // Upload labelled images through the dialog: eight "red", eight "blue".
    for (files, concept) in [(&red, "red"), (&blue, "blue")] {
        p.click("#upload-button").await;
        p.find("#upload-form input[name=files]").await.send_keys(&files.join("\n")).await.unwrap();
        p.fill("#upload-form input[name=labels]", concept).await;
        p.click("#upload-form button[type=submit]").await;
        p.until("the upload to finish", "!document.querySelector('#upload-form')", Duration::from_secs(60)).await;
    }
    p.until("16 thumbnails", "document.querySelectorAll('#input-grid .thumb').length === 16", Duration::from_secs(30))
        .await;
    p.until(
        "the thumbnails to load (through the cookie on GET)",
        "[...document.querySelectorAll('#input-grid img')].every(i => i.complete && i.naturalWidth > 0)",
        Duration::from_secs(30),
    )
    .await;
    let (status, listed) = p.server.get("/v2/users/me/apps/shop/inputs?concept_id=red&per_page=100").await;
    assert_eq!(status, 200);
    assert_eq!(listed["inputs"].as_array().unwrap().len(), 8, "the upload labelled eight inputs red: {listed}");
    p.screenshot("02-inputs").await;

    // Label one input by hand (keyboard: Enter opens it, the dialog takes a concept).
    p.js("document.querySelector('#input-grid .thumb button.open').focus(); return null").await;
    p.press(Key::Enter).await;
    p.fill("#label-form input[name=concept]", "square").await;
    p.click("#label-form button[type=submit]").await;
    p.until(
        "the new label",
        "[...document.querySelectorAll('#input-concepts .chip')].some(c => c.textContent.includes('square'))",
        Duration::from_secs(10),
    )
    .await;
    p.screenshot("03-input-dialog").await;
    p.press(Key::Escape).await; // closes it
    p.until("the dialog to close", "!document.querySelector('dialog[open]')", Duration::from_secs(5)).await;
    // Filtering by the new concept shows that one input.
    p.select("#input-filter", "square").await;
    p.until(
        "the filter",
        "location.hash.includes('filter=square') && document.querySelectorAll('#input-grid .thumb').length === 1",
        Duration::from_secs(10),
    )
    .await;

    // A dataset with every input, and a version of it.
    p.open("#/apps/shop/datasets").await;
    p.fill("#create-dataset input[name=dataset_id]", "colors").await;
    p.click("#create-dataset button[type=submit]").await;
    p.select("#add-inputs select", ":all").await;
    p.click("#add-inputs button[type=submit]").await;
    p.until(
        "16 inputs in the dataset",
        "document.querySelector('#dataset-inputs') && document.querySelector('#dataset-inputs').textContent === '16'",
        Duration::from_secs(20),
    )
    .await;
    p.click("#create-version button[type=submit]").await;
    p.find("#version-metrics").await;
    assert!(p.text("#concept-counts").await.contains("red"), "the version lists its concepts");
    p.screenshot("04-dataset-version").await;

    // A model, configured from a template with tiny parameters, and its estimate.
    p.open("#/apps/shop/models").await;
    p.click("#add-model").await;
    p.fill("#add-model-form input[name=model_id]", "colors-clf").await;
    p.click("#add-model-form button[type=submit]").await;
    p.find("#train-form").await;
    p.select("#train-form select[name=dataset_id]", "colors").await;
    p.until(
        "the dataset's versions",
        "document.querySelectorAll('#train-concepts input').length === 3",
        Duration::from_secs(10),
    )
    .await;
    // Train on red and blue only.
    p.js("document.querySelector('#train-concepts input[value=square]').click(); return null").await;
    p.select("#train-form select[name=template]", "EfficientNet_Lite0").await;
    p.select("#train-form select[name='param-pretrained_weights']", "None").await;
    p.fill("#train-form input[name='param-image_size']", "32").await;
    p.fill("#train-form input[name='param-batch_size']", "8").await;
    p.fill("#train-form input[name='param-num_epochs']", "2").await;
    // One color per image: single-label, so every validation input lands in a confusion-matrix row.
    p.click("#train-form input[name='param-concepts_mutually_exclusive']").await;
    p.until("an estimate", "document.querySelector('#estimate-seconds')", Duration::from_secs(120)).await;
    let seconds: f64 =
        p.js("return Number(document.querySelector('#estimate-seconds').dataset.seconds)").await.as_f64().unwrap();
    assert!(seconds > 0.0, "the estimate is a duration: {seconds}");
    p.screenshot("05-train-config").await;
    p.click("#train-button").await;

    // The version page follows the run to its end, with curves.
    p.find("#version-status").await;
    p.until(
        "the run to finish",
        "document.querySelector('#version-status .badge[data-code=\"21100\"]')",
        Duration::from_secs(600),
    )
    .await;
    p.until("a loss curve", "document.querySelector('[data-chart=loss] path[stroke-width]')", Duration::from_secs(30))
        .await;
    p.screenshot("06-version-trained").await;

    // The training log in the sidebar, streamed, and its download.
    p.click("#view-log").await;
    p.until(
        "the log to stream to its end",
        "document.querySelector('#log-state') && document.querySelector('#log-state').textContent === 'finished'",
        Duration::from_secs(30),
    )
    .await;
    let log = p.text("#log-lines").await;
    assert!(log.contains("epoch 2 done"), "the streamed log shows the epochs: {log}");
    p.screenshot("07-log").await;
    let downloaded = p
        .c
        .execute_async(
            "const done = arguments[arguments.length - 1]; fetch(document.querySelector('#log-download').href).then(r => r.text()).then(done)",
            vec![],
        )
        .await
        .unwrap();
    assert!(downloaded.as_str().unwrap().contains("epoch 2 done"), "the download is the log: {downloaded}");
    p.click(".drawer header button[aria-label='Close the log']").await;

    // A long run shows its progress and stops at "Cancel training".
    p.open("#/apps/shop/models/colors-clf/train?dataset=colors").await;
    p.until(
        "the dataset's versions",
        "document.querySelectorAll('#train-concepts input').length === 3",
        Duration::from_secs(10),
    )
    .await;
    p.js("document.querySelector('#train-concepts input[value=square]').click(); return null").await;
    p.select("#train-form select[name='param-pretrained_weights']", "None").await;
    p.fill("#train-form input[name='param-image_size']", "32").await;
    p.fill("#train-form input[name='param-num_epochs']", "500").await;
    p.click("#train-button").await;
    p.until(
        "the run to train",
        "document.querySelector('#version-status .badge[data-code=\"21101\"]') && document.querySelector('#eta')",
        Duration::from_secs(120),
    )
    .await;
    p.screenshot("08-version-training").await;
    p.click("#cancel-training").await;
    p.until(
        "the run to stop",
        "document.querySelector('#version-status .badge[data-code=\"64004\"]')",
        Duration::from_secs(60),
    )
    .await;

    // The versions table.
    p.open("#/apps/shop/models/colors-clf").await;
    p.until(
        "the versions table",
        "document.querySelectorAll('#versions tbody tr[data-version-id]').length === 2",
        Duration::from_secs(10),
    )
    .await;
    assert!(p.text("#versions").await.contains("Canceled"), "the table shows the canceled run");
    p.screenshot("09-versions").await;

    // Evaluation: the run's own held-out results, then an explicit evaluation.
    let version_id: String = p
        .js("return document.querySelector('#versions tbody tr[data-code=\"21100\"]').dataset.versionId")
        .await
        .as_str()
        .unwrap()
        .into();
    p.open(&format!("#/apps/shop/models/colors-clf/versions/{version_id}/evaluation")).await;
    p.find("#evaluation-summary").await;
    p.click("#evaluate-button").await;
    p.until(
        "the new evaluation",
        "location.hash.includes('evaluation=') && document.querySelector('#per-concept')",
        Duration::from_secs(120),
    )
    .await;
    // The threshold slider moves with the keyboard and the table follows it.
    p.js("const s = document.querySelector('#threshold'); s.value = '0.5'; s.dispatchEvent(new Event('input')); s.focus(); return null").await;
    p.press(Key::Right).await;
    assert_eq!(p.text("#threshold-value").await, "0.51");
    p.click("#save-threshold").await;
    p.until(
        "the saved threshold",
        "[...document.querySelectorAll('#per-concept td')].some(td => td.textContent === '0.51')",
        Duration::from_secs(10),
    )
    .await;
    let (_, version) = p.server.get(&format!("/v2/users/me/apps/shop/models/colors-clf/versions/{version_id}")).await;
    assert_eq!(version["model_version"]["thresholds"]["concepts"]["red"], json!(0.51));
    // A confusion-matrix cell opens its inputs.
    p.click("#confusion-matrix td.cell button:not([disabled])").await;
    p.until(
        "the cell's thumbnails",
        "document.querySelectorAll('#cell-inputs .thumb').length > 0",
        Duration::from_secs(10),
    )
    .await;
    p.find("[data-chart=pr] path[stroke-width]").await;
    p.find("[data-chart=roc] path[stroke-width]").await;
    p.screenshot("10-evaluation").await;

    // Predict playground.
    p.open(&format!("#/apps/shop/predict?model=colors-clf&version={version_id}")).await;
    p.find("#predict-file").await.send_keys(&red[0]).await.unwrap();
    p.until("predictions", "document.querySelectorAll('#predictions .bar').length === 2", Duration::from_secs(60))
        .await;
    p.screenshot("11-predict").await;

    // A workflow built in the page, and run.
    p.open("#/apps/shop/workflows/new").await;
    p.fill("#workflow-form input[name=workflow_id]", "colors-wf").await;
    // model-1 → a filter passing only "blue" → model-3 on what passed (each node runs on the one before).
    p.click("#add-filter-node").await;
    p.fill("#workflow-nodes li[data-kind=filter] input[data-role=concepts]", "blue").await;
    p.fill("#workflow-nodes li[data-kind=filter] input[data-role=threshold]", "0").await;
    p.click("#add-model-node").await;
    p.click("#workflow-form button[type=submit]").await;
    p.find("#workflow-result").await;
    let (_, saved) = p.server.get("/v2/users/me/apps/shop/workflows/colors-wf").await;
    let nodes = &saved["workflow"]["nodes"];
    assert_eq!(nodes.as_array().unwrap().len(), 3, "{saved}");
    assert_eq!(nodes[1]["node_inputs"][0]["node_id"], "model-1", "{saved}");
    assert_eq!(nodes[2]["node_inputs"][0]["node_id"], nodes[1]["id"], "{saved}");
    p.find("input[type=file]").await.send_keys(&blue[0]).await.unwrap();
    p.until(
        "every node's output",
        "document.querySelectorAll('#workflow-result [data-node]').length === 3 \
         && document.querySelectorAll('#workflow-result [data-node=model-3] .bar').length === 2",
        Duration::from_secs(60),
    )
    .await;
    p.screenshot("12-workflow").await;

    // Every page fits a phone's width.
    p.c.set_window_size(390, 844).await.unwrap();
    for fragment in [
        "#/apps".to_string(),
        "#/apps/shop/inputs".into(),
        "#/apps/shop/models/colors-clf".into(),
        format!("#/apps/shop/models/colors-clf/versions/{version_id}"),
        format!("#/apps/shop/models/colors-clf/versions/{version_id}/evaluation"),
        "#/apps/shop/models/colors-clf/train".into(),
    ] {
        p.open(&fragment).await;
        p.find("main h1").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(p.fits_width().await, "{fragment} is wider than a phone");
    }
    p.open("#/apps/shop/inputs").await;
    p.find("#input-grid .thumb").await;
    p.screenshot("13-phone-inputs").await;

    p.c.close().await.unwrap();
}
