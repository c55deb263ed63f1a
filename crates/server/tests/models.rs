//! Models and training requests: model types with their templates, and a training request that
//! is validated in full — each problem a 400 naming its field — before anything is queued.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// An app with a dataset version: 6 cats, 6 dogs, 1 lonely bird (too few to train).
async fn app_with_version(s: &TestServer) {
    s.create_app("a").await;
    let mut inputs = Vec::new();
    for i in 0..6u8 {
        inputs.push((format!("cat{i}"), png(8, 8, i), vec![("cat", 1.0)]));
        inputs.push((format!("dog{i}"), png(8, 8, 50 + i), vec![("dog", 1.0)]));
    }
    inputs.push(("bird0".to_string(), png(8, 8, 99), vec![("bird", 1.0)]));
    let refs: Vec<Upload> = inputs.iter().map(|(id, b, c)| (id.as_str(), b.clone(), c.clone())).collect();
    let (status, body) = s.upload("a", refs).await;
    assert_eq!(status, 200, "{body}");
    s.dataset_of_every_input("a", "ds", "v1").await;
    let (status, body) = s
        .post("/v2/users/me/apps/a/models", json!({"model": {"id": "pets", "model_type_id": "visual-classifier"}}))
        .await;
    assert_eq!(status, 200, "{body}");
}

fn train_request(params: Value, concepts: &[&str], exclusive: bool) -> Value {
    let concepts: Vec<Value> = concepts.iter().map(|c| json!({"id": c})).collect();
    json!({"model_versions": [{
        "train_info": {"params": params},
        "output_info": {"data": {"concepts": concepts}, "output_config": {"concepts_mutually_exclusive": exclusive}}
    }]})
}

#[tokio::test]
async fn model_types_list_templates_with_their_hyperparameters() {
    let s = TestServer::start().await;
    s.create_app("a").await;
    let (status, body) = s.get("/v2/users/me/apps/a/models/types").await;
    assert_eq!(status, 200, "{body}");
    let types = body["model_types"].as_array().unwrap();
    assert_eq!(types[0]["id"], "visual-classifier");
    let templates = types[0]["templates"].as_array().unwrap();
    assert_eq!(templates[0]["recommended"], true);
    let rsb = templates
        .iter()
        .find(|t| t["aliases"].as_array().unwrap().contains(&json!("MMClassification_ResNet_50_RSB_A1")))
        .unwrap();
    let batch = rsb["params"].as_array().unwrap().iter().find(|p| p["name"] == "batch_size").unwrap();
    assert_eq!(
        (batch["default"].as_i64(), batch["min"].as_i64(), batch["max"].as_i64()),
        (Some(64), Some(1), Some(256))
    );
    assert!(batch["description"].as_str().unwrap().len() > 10);
    assert!(templates.iter().any(|t| {
        t["params"].as_array().unwrap().iter().any(|p| p["name"] == "freeze_backbone" && p["default"] == true)
    }));
}

#[tokio::test]
async fn a_valid_request_queues_a_version_and_bad_ones_are_named() {
    // No worker: the version must stay queued for this test to look at it.
    let s = TestServer::start_with(deeptune_server::ConfigLayer { embedded_worker: Some(false), ..Default::default() })
        .await;
    app_with_version(&s).await;
    let versions = "/v2/users/me/apps/a/models/pets/versions";
    let base = json!({"template": "MMClassification_ResNet_50_RSB_A1", "dataset_id": "ds", "dataset_version_id": "v1",
                      "num_epochs": 3, "pretrained_weights": "None"});

    let (status, body) = s.post(versions, train_request(base.clone(), &["cat", "dog"], true)).await;
    assert_eq!((status, code(&body)), (200, 10000), "{body}");
    let version = &body["model_version"];
    assert_eq!(version["status"]["code"], 21103, "queued");
    let params = &version["train_info"]["params"];
    assert_eq!(
        (params["num_epochs"].as_i64(), params["batch_size"].as_i64()),
        (Some(3), Some(64)),
        "defaults filled: {params}"
    );
    assert!(params["seed"].as_i64().unwrap() >= 0, "a random seed is chosen and recorded");
    let id = version["id"].as_str().unwrap().to_string();
    let (_, model) = s.get("/v2/users/me/apps/a/models/pets").await;
    assert_eq!(model["model"]["model_version"]["id"], id.as_str());

    let with = |extra: Value| {
        let mut p = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let cases = vec![
        (train_request(with(json!({"template": "NoSuchNet"})), &["cat", "dog"], true), "train_info.params.template"),
        (train_request(with(json!({"learning_speed": 3})), &["cat", "dog"], true), "train_info.params.learning_speed"),
        (train_request(with(json!({"batch_size": 1000})), &["cat", "dog"], true), "train_info.params.batch_size"),
        (
            train_request(with(json!({"flip_direction": "sideways"})), &["cat", "dog"], true),
            "train_info.params.flip_direction",
        ),
        (
            train_request(with(json!({"dataset_version_id": "v9"})), &["cat", "dog"], true),
            "train_info.params.dataset_version_id",
        ),
        (train_request(with(json!({})), &["cat", "unicorn"], true), "output_info.data.concepts[1].id"),
        (train_request(with(json!({})), &["cat", "bird"], true), "output_info.data.concepts[1].id"),
        (train_request(with(json!({})), &[], false), "output_info.data.concepts"),
    ];
    let mut without_dataset = base.clone();
    without_dataset.as_object_mut().unwrap().remove("dataset_id");
    let mut all = cases;
    all.push((train_request(without_dataset, &["cat"], false), "train_info.params.dataset_id"));
    for (request, field) in all {
        let (status, body) = s.post(versions, request.clone()).await;
        assert_eq!((status, code(&body)), (400, 21202), "{field}: {body}");
        assert!(body["status"]["details"].as_str().unwrap().contains(field), "{field}: {body}");
        // The time estimate validates the same way.
        let (status, body) = s.post(&format!("{versions}/time_estimate"), request).await;
        assert_eq!((status, code(&body)), (400, 21202), "estimate, {field}: {body}");
        assert!(body["status"]["details"].as_str().unwrap().contains(field), "estimate, {field}: {body}");
    }
    // Nothing was queued by the refused requests.
    let (_, list) = s.get(versions).await;
    assert_eq!(list["model_versions"].as_array().unwrap().len(), 1);

    // Canceling a queued version ends it at once, and says so.
    let (status, body) = s.post(&format!("{versions}/{id}/cancel"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"]["status"]["code"], 64004, "{body}");
    assert!(body["model_version"]["status"]["details"].as_str().unwrap().contains("canceled"));

    // Deleting the version removes it.
    let (status, _) = s.call(Method::DELETE, &format!("{versions}/{id}"), None).await;
    assert_eq!(status, 200);
    let (status, _) = s.get(&format!("{versions}/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn models_are_created_once_and_need_a_trainable_type_and_scopes() {
    let s = TestServer::start().await;
    app_with_version(&s).await;
    let (status, body) = s.post("/v2/users/me/apps/a/models", json!({"model": {"id": "pets"}})).await;
    assert_eq!((status, code(&body)), (409, 40010));
    let (status, body) =
        s.post("/v2/users/me/apps/a/models", json!({"model": {"id": "x", "model_type_id": "text-to-speech"}})).await;
    assert_eq!((status, code(&body)), (400, 21202), "{body}");
    let (status, body) = s.get("/v2/users/me/apps/a/models/nope").await;
    assert_eq!((status, code(&body)), (404, 21200));
    // Training needs the train scope.
    let (_, key) = s.post("/v2/users/me/keys", json!({"keys": [{"scopes": ["read", "write"]}]})).await;
    let writer = key["keys"][0]["token"].as_str().unwrap().to_string();
    let request = train_request(
        json!({"template": "ResNet18", "dataset_id": "ds", "dataset_version_id": "v1"}),
        &["cat", "dog"],
        true,
    );
    let (status, _) = s.call_as(&writer, Method::POST, "/v2/users/me/apps/a/models/pets/versions", Some(request)).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn pretrained_weights_must_be_in_the_cache_before_anything_is_queued() {
    use deeptune_engine::burn::prelude::Device;
    use deeptune_engine::models::Architecture;
    let s = TestServer::start_with(deeptune_server::ConfigLayer {
        embedded_worker: Some(false),
        fetch_weights: Some(false),
        ..Default::default()
    })
    .await;
    app_with_version(&s).await;
    let versions = "/v2/users/me/apps/a/models/pets/versions";
    let request = train_request(
        json!({"template": "ResNet18", "dataset_id": "ds", "dataset_version_id": "v1", "pretrained_weights": "ImageNet-1k"}),
        &["cat", "dog"],
        true,
    );
    let (status, body) = s.post(versions, request.clone()).await;
    assert_eq!((status, code(&body)), (400, 21202), "{body}");
    let details = body["status"]["details"].as_str().unwrap();
    assert!(details.contains("train_info.params.pretrained_weights"), "{details}");
    assert!(details.contains("deeptune weights import ResNet18 FILE"), "says how to get them: {details}");
    assert!(details.contains("resnet18-f37072fd.pth"), "says where they are published: {details}");
    let (_, list) = s.get(versions).await;
    assert!(list["model_versions"].as_array().unwrap().is_empty(), "nothing queued: {list}");

    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    // A checkpoint of another architecture does not fit and is refused, naming what is wrong.
    let wrong = dir.path().join("lite0.safetensors");
    let lite0 = deeptune_engine::torch::to_state_dict(&Architecture::EfficientnetLite0.build(1000, &device));
    deeptune_weights::save_safetensors(&lite0, &wrong).unwrap();
    let refused = deeptune_worker::import_weights(&s.data_dir(), "ResNet18", &wrong, "test").unwrap_err().to_string();
    assert!(refused.contains("does not fit ResNet18"), "{refused}");

    // A ResNet-18 checkpoint is imported under its sha256, and the same request is accepted.
    let right = dir.path().join("resnet18.safetensors");
    let resnet = deeptune_engine::torch::to_state_dict(&Architecture::Resnet18.build(1000, &device));
    deeptune_weights::save_safetensors(&resnet, &right).unwrap();
    let record = deeptune_worker::import_weights(&s.data_dir(), "ResNet18", &right, "test").unwrap();
    use sha2::Digest;
    assert_eq!(record.sha256, hex::encode(sha2::Sha256::digest(std::fs::read(&right).unwrap())));
    assert!(s.data_dir().join("weights").join(format!("{}.safetensors", record.sha256)).exists());
    let (status, body) = s.post(versions, request).await;
    assert_eq!((status, code(&body)), (200, 10000), "{body}");
    assert_eq!(body["model_version"]["status"]["code"], 21103);

    // Weights belong to their template's architecture: MobileNetV2's are still missing.
    let mobilenet = train_request(
        json!({"template": "MobileNetV2", "dataset_id": "ds", "dataset_version_id": "v1"}),
        &["cat", "dog"],
        true,
    );
    let (status, body) = s.post(versions, mobilenet).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["status"]["details"].as_str().unwrap().contains("deeptune weights import MobileNetV2"), "{body}");
}
