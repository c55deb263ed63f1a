//! A real server on a random loopback port with a temporary data directory, and helpers to talk
//! to it and to look at what it stored.

#![allow(dead_code)]

pub mod training;

use std::path::{Path, PathBuf};

use base64::Engine;
use deeptune_server::{Config, ConfigLayer, Server};
use serde_json::{Value, json};

/// (input id, image bytes, labels as (concept, value)).
pub type Upload<'a> = (&'a str, Vec<u8>, Vec<(&'a str, f32)>);

pub struct TestServer {
    pub base: String,
    pub token: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(ConfigLayer::default()).await
    }

    pub async fn start_with(layer: ConfigLayer) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let base_layer = ConfigLayer {
            data_dir: Some(dir.path().join("data")),
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let config = Config::from_layer(base_layer.merge(layer)).unwrap();
        let server = Server::bind(&config).await.unwrap();
        let token = server.new_admin_token.clone().expect("first start creates an admin token");
        let addr = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        TestServer { base: format!("http://{addr}"), token, dir, http: reqwest::Client::new(), shutdown: Some(tx) }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.token.clone(), method, path, body).await
    }

    pub async fn call_as(&self, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path)).header("Authorization", format!("Key {token}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON (HTTP {status}): {text}")))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn create_app(&self, id: &str) {
        let (status, body) = self.post("/v2/users/me/apps", json!({"apps": [{"id": id}]})).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Uploads images as base64; returns the HTTP status and body.
    pub async fn upload(&self, app: &str, inputs: Vec<Upload<'_>>) -> (u16, Value) {
        let inputs: Vec<Value> = inputs
            .into_iter()
            .map(|(id, bytes, concepts)| {
                let concepts: Vec<Value> = concepts.into_iter().map(|(c, v)| json!({"id": c, "value": v})).collect();
                json!({"id": id, "data": {"image": {"base64": b64(&bytes)}, "concepts": concepts}})
            })
            .collect();
        self.post(&format!("/v2/users/me/apps/{app}/inputs"), json!({"inputs": inputs})).await
    }

    pub async fn input_ids(&self, app: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/v2/users/me/apps/{app}/inputs?per_page=1000")).await;
        assert_eq!(status, 200, "{body}");
        let mut ids: Vec<String> =
            body["inputs"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    }

    /// A dataset of every input in the app, and one version of it.
    pub async fn dataset_of_every_input(&self, app: &str, dataset: &str, version: &str) {
        let (status, body) =
            self.post(&format!("/v2/users/me/apps/{app}/datasets"), json!({"datasets": [{"id": dataset}]})).await;
        assert_eq!(status, 200, "{body}");
        let ids = self.input_ids(app).await;
        let dataset_inputs: Vec<Value> = ids.iter().map(|id| json!({"input": {"id": id}})).collect();
        let (status, body) = self
            .post(
                &format!("/v2/users/me/apps/{app}/datasets/{dataset}/inputs"),
                json!({"dataset_inputs": dataset_inputs}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = self
            .post(
                &format!("/v2/users/me/apps/{app}/datasets/{dataset}/versions"),
                json!({"dataset_versions": [{"id": version}]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// The blob files on disk (not counting temporaries).
    pub fn blob_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.data_dir().join("blobs");
        walk(&root, &mut out);
        let temporaries = root.join("tmp").to_string_lossy().into_owned();
        out.retain(|p| !p.starts_with(&temporaries));
        out.sort();
        out
    }

    /// A snapshot of everything a failed request must leave alone.
    pub async fn snapshot(&self, app: &str) -> (Vec<String>, Vec<String>, Value) {
        let (_, annotations) = self.get(&format!("/v2/users/me/apps/{app}/annotations?per_page=1000")).await;
        (self.input_ids(app).await, self.blob_files(), annotations["annotations"].clone())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path.to_string_lossy().into_owned());
        }
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A small PNG whose content depends on `seed`, so different seeds are different files.
pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([seed, (x * 7 % 256) as u8, (y * 13 % 256) as u8 ^ seed.wrapping_mul(31)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn jpeg(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([seed, (x % 256) as u8, (y % 256) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

pub fn photos_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/photos"))
}

pub fn code(body: &Value) -> u64 {
    body["status"]["code"].as_u64().unwrap_or_else(|| panic!("no status.code in {body}"))
}
