//! The happy paths of apps, concepts, inputs, annotations, datasets and versions, with the
//! request bodies Clarifai documents.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn clarifai_documented_bodies_work_unchanged() {
    let s = TestServer::start().await;
    // PostApps as in Clarifai's docs, with user_app_id and fields we don't use.
    let (status, body) = s
        .post(
            "/v2/users/me/apps",
            json!({"user_app_id": {"user_id": "me"}, "apps": [{"id": "test-application", "default_workflow_id": "General", "description": "x"}]}),
        )
        .await;
    assert_eq!((status, code(&body)), (200, 10000), "{body}");
    assert_eq!(body["apps"][0]["id"], "test-application");

    // PostConcepts.
    let (status, body) = s
        .post(
            "/v2/users/me/apps/test-application/concepts",
            json!({"user_app_id": {"user_id": "me", "app_id": "test-application"}, "concepts": [{"id": "charlie", "name": "Charlie Name"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = s.get("/v2/users/me/apps/test-application/concepts/charlie").await;
    assert_eq!(body["concept"]["name"], "Charlie Name");

    // PostInputs with bytes, concepts, metadata and allow_duplicate_url.
    let (status, body) = s
        .post(
            "/v2/users/me/apps/test-application/inputs",
            json!({
                "user_app_id": {"user_id": "me", "app_id": "test-application"},
                "inputs": [{
                    "id": "input1",
                    "data": {
                        "image": {"base64": b64(&png(40, 30, 1)), "allow_duplicate_url": true},
                        "concepts": [{"id": "charlie", "value": 1}, {"id": "our_wedding", "value": 0}],
                        "metadata": {"id": "id001", "type": "animal"}
                    }
                }]
            }),
        )
        .await;
    assert_eq!((status, code(&body)), (200, 10000), "{body}");
    let input = &body["inputs"][0];
    assert_eq!(input["status"]["code"], 30000);
    assert_eq!(input["data"]["image"]["image_info"]["width"], 40);
    assert_eq!(input["data"]["image"]["image_info"]["format"], "png");
    assert_eq!(input["data"]["metadata"]["type"], "animal");
    let labels: Vec<(String, f64)> = input["data"]["concepts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c["value"].as_f64().unwrap()))
        .collect();
    assert!(labels.contains(&("charlie".into(), 1.0)) && labels.contains(&("our_wedding".into(), 0.0)), "{labels:?}");
    // Concepts named in labels exist afterwards, as in Clarifai.
    let (status, _) = s.get("/v2/users/me/apps/test-application/concepts/our_wedding").await;
    assert_eq!(status, 200);

    // PostAnnotations.
    s.upload("test-application", vec![("input2", png(20, 20, 2), vec![])]).await;
    let (status, body) = s
        .post(
            "/v2/users/me/apps/test-application/annotations",
            json!({"annotations": [{"input_id": "input2", "data": {"concepts": [{"id": "charlie", "value": 1}]}}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["annotations"][0]["data"]["concepts"][0]["id"], "charlie");
}

#[tokio::test]
async fn inputs_are_stored_once_with_thumbnails_and_can_be_filtered_and_deleted() {
    let s = TestServer::start().await;
    s.create_app("a").await;
    let photo = std::fs::read(photos_dir().join("chelsea.png")).unwrap();
    let (status, body) = s
        .upload(
            "a",
            vec![
                ("cat1", photo.clone(), vec![("cat", 1.0)]),
                ("cat2", photo.clone(), vec![("cat", 0.0)]),
                ("plain", jpeg(64, 48, 3), vec![]),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // One image file twice: stored once. Blobs: one photo, its thumbnail, the jpeg and its thumbnail.
    assert_eq!(s.blob_files().len(), 4, "{:?}", s.blob_files());

    let (_, body) = s.get("/v2/users/me/apps/a/inputs?concept_id=cat").await;
    assert_eq!(body["inputs"].as_array().unwrap().len(), 2);
    let (_, body) = s.get("/v2/users/me/apps/a/inputs?concept_id=cat&concept_value=0").await;
    assert_eq!(body["inputs"][0]["id"], "cat2");
    let (_, body) = s.get("/v2/users/me/apps/a/inputs?unlabeled=true").await;
    assert_eq!(body["inputs"].as_array().unwrap().len(), 1);
    assert_eq!(body["inputs"][0]["id"], "plain");

    // Pagination, newest first.
    let (_, page1) = s.get("/v2/users/me/apps/a/inputs?per_page=2&page=1").await;
    let (_, page2) = s.get("/v2/users/me/apps/a/inputs?per_page=2&page=2").await;
    assert_eq!(page1["inputs"].as_array().unwrap().len(), 2);
    assert_eq!(page2["inputs"].as_array().unwrap().len(), 1);
    let mut seen: Vec<&str> = page1["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["inputs"].as_array().unwrap())
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, vec!["cat1", "cat2", "plain"]);

    // The stored image is the uploaded file; the thumbnail is a small JPEG.
    let image = s
        .http
        .get(s.url("/v2/users/me/apps/a/inputs/cat1/image"))
        .header("Authorization", format!("Key {}", s.token))
        .send()
        .await
        .unwrap();
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(image.bytes().await.unwrap().to_vec(), photo);
    let thumb = s
        .http
        .get(s.url("/v2/users/me/apps/a/inputs/cat1/thumbnail"))
        .header("Authorization", format!("Key {}", s.token))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let thumb = image::load_from_memory(&thumb).unwrap();
    assert!(thumb.width() <= 256 && thumb.height() <= 256 && thumb.width() > 100);

    // Deleting one of two inputs sharing a file keeps the file; deleting both removes it.
    let (status, _) = s.call(Method::DELETE, "/v2/users/me/apps/a/inputs/cat1", None).await;
    assert_eq!(status, 200);
    assert_eq!(s.blob_files().len(), 4);
    let (status, _) = s.call(Method::DELETE, "/v2/users/me/apps/a/inputs", Some(json!({"ids": ["cat2"]}))).await;
    assert_eq!(status, 200);
    assert_eq!(s.blob_files().len(), 2);
    assert_eq!(s.input_ids("a").await, vec!["plain"]);
}

#[tokio::test]
async fn annotations_add_patch_list_delete() {
    let s = TestServer::start().await;
    s.create_app("a").await;
    s.upload("a", vec![("i1", png(16, 16, 1), vec![])]).await;
    let (_, body) = s
        .post(
            "/v2/users/me/apps/a/annotations",
            json!({"annotations": [{"id": "ann1", "input_id": "i1", "data": {"concepts": [{"id": "dog"}, {"id": "cat", "value": 0}]}}]}),
        )
        .await;
    assert_eq!(body["annotations"][0]["data"]["concepts"][0]["value"], 1.0, "blank value means 1: {body}");

    // A second label for the same concept on the same input conflicts.
    let (status, body) = s
        .post(
            "/v2/users/me/apps/a/annotations",
            json!({"annotations": [{"input_id": "i1", "data": {"concepts": [{"id": "dog", "value": 0}]}}]}),
        )
        .await;
    assert_eq!((status, code(&body)), (409, 40010), "{body}");

    // Merge changes dog to negative; remove drops cat.
    let (status, body) = s
        .call(
            Method::PATCH,
            "/v2/users/me/apps/a/annotations",
            Some(json!({"action": "merge", "annotations": [{"id": "ann1", "data": {"concepts": [{"id": "dog", "value": 0}]}}]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = s
        .call(
            Method::PATCH,
            "/v2/users/me/apps/a/annotations",
            Some(json!({"action": "remove", "annotations": [{"id": "ann1", "data": {"concepts": [{"id": "cat"}]}}]})),
        )
        .await;
    assert_eq!(body["annotations"][0]["data"]["concepts"], json!([{"id": "dog", "name": "dog", "value": 0.0}]));
    let (_, input) = s.get("/v2/users/me/apps/a/inputs/i1").await;
    assert_eq!(input["input"]["data"]["concepts"][0]["value"], 0.0);

    let (_, list) = s.get("/v2/users/me/apps/a/annotations?input_id=i1").await;
    assert_eq!(list["annotations"].as_array().unwrap().len(), 1);
    let (status, _) = s.get("/v2/users/me/apps/a/inputs/i1/annotations/ann1").await;
    assert_eq!(status, 200);
    let (status, _) = s.call(Method::DELETE, "/v2/users/me/apps/a/inputs/i1/annotations/ann1", None).await;
    assert_eq!(status, 200);
    let (_, body) = s.get("/v2/users/me/apps/a/inputs?unlabeled=true").await;
    assert_eq!(body["inputs"][0]["id"], "i1");
}

#[tokio::test]
async fn dataset_versions_are_immutable_snapshots_with_metrics_and_a_stratified_split() {
    let s = TestServer::start().await;
    s.create_app("a").await;
    let mut inputs = Vec::new();
    for i in 0..10u8 {
        inputs.push((format!("cat{i}"), png(8, 8, i), vec![("cat", 1.0)]));
    }
    for i in 0..5u8 {
        inputs.push((format!("dog{i}"), png(8, 8, 100 + i), vec![("dog", 1.0), ("cat", 0.0)]));
    }
    inputs.push(("nolabel".to_string(), png(8, 8, 200), vec![]));
    let refs: Vec<Upload> = inputs.iter().map(|(id, b, c)| (id.as_str(), b.clone(), c.clone())).collect();
    let (status, body) = s.upload("a", refs).await;
    assert_eq!(status, 200, "{body}");

    let (status, _) =
        s.post("/v2/users/me/apps/a/datasets", json!({"datasets": [{"id": "ds", "description": "pets"}]})).await;
    assert_eq!(status, 200);
    let ids = s.input_ids("a").await;
    let dataset_inputs: Vec<_> = ids.iter().map(|id| json!({"input": {"id": id}})).collect();
    let (status, body) =
        s.post("/v2/users/me/apps/a/datasets/ds/inputs", json!({"dataset_inputs": dataset_inputs})).await;
    assert_eq!(status, 200, "{body}");
    let (_, ds) = s.get("/v2/users/me/apps/a/datasets/ds").await;
    assert_eq!(ds["dataset"]["inputs_count"], 16);

    let (status, body) =
        s.post("/v2/users/me/apps/a/datasets/ds/versions", json!({"dataset_versions": [{"id": "v1"}]})).await;
    assert_eq!(status, 200, "{body}");
    let metrics = body["dataset_versions"][0]["metrics"].clone();
    assert_eq!(metrics["inputs_count"], 16);
    assert_eq!(metrics["unlabeled_inputs_count"], 1);
    assert_eq!(metrics["train_inputs_count"], 13); // 8 cats + 4 dogs + the unlabeled one
    assert_eq!(metrics["validation_inputs_count"], 3);
    let cat = metrics["concepts"].as_array().unwrap().iter().find(|c| c["id"] == "cat").unwrap().clone();
    assert_eq!((cat["positive_count"].as_u64(), cat["negative_count"].as_u64()), (Some(10), Some(5)));
    assert_eq!((cat["train_positive_count"].as_u64(), cat["validation_positive_count"].as_u64()), (Some(8), Some(2)));
    let (_, split_before) = s.get("/v2/users/me/apps/a/datasets/ds/versions/v1/inputs?per_page=100").await;

    // Change the data under the version: relabel, delete, remove from the dataset.
    let (_, anns) = s.get("/v2/users/me/apps/a/annotations?input_id=cat0").await;
    let ann = anns["annotations"][0]["id"].as_str().unwrap().to_string();
    s.call(
        Method::PATCH,
        "/v2/users/me/apps/a/annotations",
        Some(json!({"action": "overwrite", "annotations": [{"id": ann, "data": {"concepts": [{"id": "dog"}]}}]})),
    )
    .await;
    let (status, _) = s.call(Method::DELETE, "/v2/users/me/apps/a/inputs/cat1", None).await;
    assert_eq!(status, 200);
    s.call(Method::DELETE, "/v2/users/me/apps/a/datasets/ds/inputs", Some(json!({"input_ids": ["cat2"]}))).await;

    let (_, after) = s.get("/v2/users/me/apps/a/datasets/ds/versions/v1").await;
    assert_eq!(after["dataset_version"]["metrics"], metrics);
    let (_, split_after) = s.get("/v2/users/me/apps/a/datasets/ds/versions/v1/inputs?per_page=100").await;
    assert_eq!(split_after["dataset_version_inputs"], split_before["dataset_version_inputs"]);
    // The deleted input's file stays while the version refers to it.
    let cat1 = split_after["dataset_version_inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["input_id"] == "cat1")
        .unwrap()
        .clone();
    let key = cat1["content_sha256"].as_str().unwrap();
    assert!(s.blob_files().iter().any(|f| f.ends_with(key)));

    // A new version sees the changes; the same seed on the same inputs gives the same split.
    let (_, v2) = s.post("/v2/users/me/apps/a/datasets/ds/versions", json!({"dataset_versions": [{"id": "v2"}]})).await;
    assert_eq!(v2["dataset_versions"][0]["metrics"]["inputs_count"], 14);
    let (_, v3) = s
        .post(
            "/v2/users/me/apps/a/datasets/ds/versions",
            json!({"dataset_versions": [{"id": "v3", "split": {"train_fraction": 0.8, "seed": 42}}]}),
        )
        .await;
    assert_eq!(v3["dataset_versions"][0]["metrics"], v2["dataset_versions"][0]["metrics"]);
    let (_, list) = s.get("/v2/users/me/apps/a/datasets/ds/versions").await;
    assert_eq!(list["dataset_versions"][0]["id"], "v3");
    let (_, train) = s.get("/v2/users/me/apps/a/datasets/ds/versions/v1/inputs?split=validation").await;
    assert_eq!(train["dataset_version_inputs"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn multipart_upload_labels_every_file() {
    let s = TestServer::start().await;
    s.create_app("a").await;
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(png(10, 10, 1)).file_name("../../etc/one.png"))
        .part("file", reqwest::multipart::Part::bytes(jpeg(10, 10, 2)).file_name("two.jpg"))
        .text("concepts", "cat,indoor:0")
        .text("input_ids", "one,two");
    let response = s
        .http
        .post(s.url("/v2/users/me/apps/a/inputs"))
        .header("Authorization", format!("Key {}", s.token))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["inputs"][1]["data"]["image"]["image_info"]["format"], "jpeg");
    assert_eq!(s.input_ids("a").await, vec!["one", "two"]);
    let (_, one) = s.get("/v2/users/me/apps/a/inputs/one").await;
    assert_eq!(one["input"]["data"]["concepts"].as_array().unwrap().len(), 2);
    // The client's file name never reaches the file system.
    assert!(!s.dir.path().join("etc").exists() && !std::path::Path::new("/etc/one.png").exists());
}

#[tokio::test]
async fn openapi_document_describes_exactly_the_served_routes() {
    let s = TestServer::start().await;
    let doc: serde_json::Value = s.http.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{}", paths.len());
    let mut checked = 0;
    for (path, item) in paths {
        for method in ["get", "post", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let concrete = path
                .replace("{user_id}", "me")
                .replace("{app_id}", "nosuchapp")
                .replace("{key_id}", "nosuchkey")
                .replace(['{', '}'], "");
            let (status, body) =
                s.call(method.to_uppercase().parse().unwrap(), &concrete, (method != "get").then(|| json!({}))).await;
            // The route exists (no "no such endpoint" fallback, no 405): the server answers with
            // its own validation or lookup result.
            assert_ne!(body["status"]["details"], "no such endpoint", "{method} {path}");
            assert_ne!(status, 405, "{method} {path}");
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked}");
    // And an undocumented path is the fallback.
    let (status, body) = s.get("/v2/users/me/nothing-here").await;
    assert_eq!((status, code(&body)), (404, 11101));
}
