//! Every bad input gets a clear error with a stable code, and nothing changes: no input row,
//! no blob on disk, no label.

mod common;

use common::*;
use deeptune_server::ConfigLayer;
use reqwest::Method;
use serde_json::json;

/// A PNG signature and IHDR chunk declaring `width`×`height`, with a correct CRC: a tiny file
/// that asks for an enormous image.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc.to_be_bytes());
    // An (empty) IDAT and IEND, so that the file is structured like a real one.
    for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(&crc32(chunk).to_be_bytes());
    }
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

async fn server_with_one_input() -> TestServer {
    let s = TestServer::start().await;
    s.create_app("a").await;
    let (status, body) = s.upload("a", vec![("existing", png(12, 12, 9), vec![("cat", 1.0)])]).await;
    assert_eq!(status, 200, "{body}");
    s
}

/// Uploads one bad image and checks its code, the HTTP status, and that nothing changed.
async fn assert_refused(s: &TestServer, bytes: Vec<u8>, expected_code: u64, words: &str) {
    let before = s.snapshot("a").await;
    let (status, body) = s.upload("a", vec![("bad", bytes, vec![("dog", 1.0)])]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body), expected_code, "{body}");
    assert_eq!(body["inputs"][0]["status"]["code"], expected_code, "{body}");
    let details = body["inputs"][0]["status"]["details"].as_str().unwrap().to_lowercase();
    assert!(details.contains(words), "{details:?} should mention {words:?}");
    assert_eq!(s.snapshot("a").await, before, "a refused upload changed state");
    let (status, _) = s.get("/v2/users/me/apps/a/concepts/dog").await;
    assert_eq!(status, 404, "a refused upload must not create its concepts");
}

#[tokio::test]
async fn undecodable_truncated_and_unsupported_images_are_refused() {
    let s = server_with_one_input().await;
    assert_refused(&s, b"this is a text file, not an image".to_vec(), 30101, "").await;
    let whole = png(64, 64, 1);
    assert_refused(&s, whole[..whole.len() / 2].to_vec(), 30101, "").await;
    let photo = jpeg(64, 64, 2);
    assert_refused(&s, photo[..photo.len() / 2].to_vec(), 30101, "").await;
    // PNM is an image format, but not one we accept.
    let mut pnm = b"P6\n4 4\n255\n".to_vec();
    pnm.extend(std::iter::repeat_n(7u8, 48));
    assert_refused(&s, pnm, 30101, "").await;
}

#[tokio::test]
async fn decompression_bomb_is_refused_before_decoding() {
    let s = server_with_one_input().await;
    let started = std::time::Instant::now();
    assert_refused(&s, png_header_only(100_000, 100_000), 30105, "100000").await;
    // 10^10 pixels × 3 bytes would be 30 GB; refusing from the header is immediate. (Not a
    // timing test: a decode attempt would fail on memory long before a minute.)
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[tokio::test]
async fn a_batch_reports_each_input_and_keeps_only_the_good_ones() {
    let s = server_with_one_input().await;
    let (status, body) = s
        .upload(
            "a",
            vec![
                ("good", png(10, 10, 5), vec![("cat", 1.0)]),
                ("broken", b"garbage".to_vec(), vec![]),
                ("existing", png(10, 10, 6), vec![]),
            ],
        )
        .await;
    assert_eq!((status, code(&body)), (207, 10010), "{body}");
    let codes: Vec<u64> =
        body["inputs"].as_array().unwrap().iter().map(|i| i["status"]["code"].as_u64().unwrap()).collect();
    assert_eq!(codes, vec![30000, 30101, 30100]);
    assert_eq!(s.input_ids("a").await, vec!["existing", "good"]);
    // existing + good, each with a thumbnail; nothing from the failed ones.
    assert_eq!(s.blob_files().len(), 4);
}

#[tokio::test]
async fn duplicate_ids_are_409_and_change_nothing() {
    let s = server_with_one_input().await;
    let before = s.snapshot("a").await;
    let (status, body) = s.upload("a", vec![("existing", png(10, 10, 77), vec![("dog", 1.0)])]).await;
    assert_eq!((status, code(&body)), (409, 30100), "{body}");
    assert_eq!(s.snapshot("a").await, before);

    // The same id twice in one request: the first is stored, the second refused.
    let (status, body) = s.upload("a", vec![("twin", png(10, 10, 1), vec![]), ("twin", png(10, 10, 2), vec![])]).await;
    assert_eq!(status, 207, "{body}");
    assert_eq!(body["inputs"][1]["status"]["code"], 30100);

    // Apps, concepts and datasets: 409 with 40010, all-or-nothing.
    let (status, body) = s.post("/v2/users/me/apps", json!({"apps": [{"id": "new1"}, {"id": "a"}]})).await;
    assert_eq!((status, code(&body)), (409, 40010), "{body}");
    let (_, apps) = s.get("/v2/users/me/apps").await;
    assert_eq!(apps["apps"].as_array().unwrap().len(), 1, "new1 must not have been created: {apps}");
    let (status, body) = s.post("/v2/users/me/apps/a/concepts", json!({"concepts": [{"id": "cat"}]})).await;
    assert_eq!((status, code(&body)), (409, 40010), "{body}");
    s.post("/v2/users/me/apps/a/datasets", json!({"datasets": [{"id": "d"}]})).await;
    let (status, _) = s.post("/v2/users/me/apps/a/datasets", json!({"datasets": [{"id": "d"}]})).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn unknown_resources_are_404() {
    let s = server_with_one_input().await;
    let cases = [
        ("/v2/users/me/apps/nope", 11101),
        ("/v2/users/me/apps/nope/inputs", 11101),
        ("/v2/users/me/apps/a/concepts/nope", 11101),
        ("/v2/users/me/apps/a/inputs/nope", 30102),
        ("/v2/users/me/apps/a/inputs/nope/image", 30102),
        ("/v2/users/me/apps/a/inputs?concept_id=nope", 11101),
        ("/v2/users/me/apps/a/datasets/nope", 11101),
        ("/v2/users/me/apps/a/datasets/nope/versions", 11101),
        ("/v2/users/me/apps/a/annotations?input_id=nope", 30102),
    ];
    for (path, expected) in cases {
        let (status, body) = s.get(path).await;
        assert_eq!((status, code(&body)), (404, expected), "{path}: {body}");
        assert!(body["status"]["details"].as_str().unwrap().contains("nope"), "{path}: {body}");
    }
    // Deleting a list with one unknown id deletes nothing.
    let before = s.snapshot("a").await;
    let (status, body) =
        s.call(Method::DELETE, "/v2/users/me/apps/a/inputs", Some(json!({"ids": ["existing", "nope"]}))).await;
    assert_eq!((status, code(&body)), (404, 30102));
    assert_eq!(s.snapshot("a").await, before);
    // Annotating an unknown input, or adding it to a dataset, changes nothing.
    let (status, _) = s
        .post(
            "/v2/users/me/apps/a/annotations",
            json!({"annotations": [{"input_id": "nope", "data": {"concepts": [{"id": "x"}]}}]}),
        )
        .await;
    assert_eq!(status, 404);
    s.post("/v2/users/me/apps/a/datasets", json!({"datasets": [{"id": "d"}]})).await;
    let (status, _) = s
        .post(
            "/v2/users/me/apps/a/datasets/d/inputs",
            json!({"dataset_inputs": [{"input": {"id": "existing"}}, {"input": {"id": "nope"}}]}),
        )
        .await;
    assert_eq!(status, 404);
    let (_, d) = s.get("/v2/users/me/apps/a/datasets/d").await;
    assert_eq!(d["dataset"]["inputs_count"], 0);
    assert_eq!(s.snapshot("a").await, before);
}

#[tokio::test]
async fn malformed_requests_are_400_with_where_they_broke() {
    let s = server_with_one_input().await;
    let before = s.snapshot("a").await;
    let response = s
        .http
        .post(s.url("/v2/users/me/apps/a/inputs"))
        .header("Authorization", format!("Key {}", s.token))
        .header("content-type", "application/json")
        .body(r#"{"inputs": [{"data": {"image": {"base64": }}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(code(&body), 11100);
    assert!(body["status"]["details"].as_str().unwrap().contains("line 1"), "{body}");

    // Wrong types, bad base64, bad label values, metadata that isn't an object, no image.
    let bad_inputs = [
        (json!({"inputs": "nope"}), 11100),
        (json!({"inputs": [{"id": "x", "data": {"image": {"base64": "%%%"}}}]}), 30104),
        (
            json!({"inputs": [{"id": "x", "data": {"image": {"base64": b64(&png(4, 4, 1))}, "concepts": [{"id": "c", "value": 0.5}]}}]}),
            24155,
        ),
        (
            json!({"inputs": [{"id": "x", "data": {"image": {"base64": b64(&png(4, 4, 1))}, "metadata": [1, 2]}}]}),
            24901,
        ),
        (json!({"inputs": [{"id": "x", "data": {}}]}), 30104),
        (json!({"inputs": []}), 30104),
    ];
    for (request, expected) in bad_inputs {
        let (status, body) = s.post("/v2/users/me/apps/a/inputs", request.clone()).await;
        assert_eq!((status, code(&body)), (400, expected), "{request}: {body}");
    }
    // Over 128 inputs in one request.
    let many: Vec<_> =
        (0..129).map(|i| json!({"id": format!("m{i}"), "data": {"image": {"url": "http://x"}}})).collect();
    let (status, body) = s.post("/v2/users/me/apps/a/inputs", json!({"inputs": many})).await;
    assert_eq!((status, code(&body)), (400, 30105), "{body}");
    // Patch with an unknown action.
    let (status, _) = s
        .call(Method::PATCH, "/v2/users/me/apps/a/annotations", Some(json!({"action": "explode", "annotations": []})))
        .await;
    assert_eq!(status, 400);
    // A split fraction out of range.
    s.post("/v2/users/me/apps/a/datasets", json!({"datasets": [{"id": "d"}]})).await;
    let (status, _) = s
        .post(
            "/v2/users/me/apps/a/datasets/d/versions",
            json!({"dataset_versions": [{"split": {"train_fraction": 1.5}}]}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(s.snapshot("a").await, before);
}

#[tokio::test]
async fn path_like_ids_never_reach_the_file_system() {
    let s = server_with_one_input().await;
    let before = s.snapshot("a").await;
    for id in ["../x", "..", "a/b", "../../etc/passwd", ".hidden"] {
        let (status, body) = s.upload("a", vec![(id, png(8, 8, 3), vec![])]).await;
        assert_eq!((status, code(&body)), (400, 30104), "{id}: {body}");
        let (status, _) = s.post("/v2/users/me/apps", json!({"apps": [{"id": id}]})).await;
        assert_eq!(status, 400, "{id}");
        let (status, _) = s.post("/v2/users/me/apps/a/concepts", json!({"concepts": [{"id": id}]})).await;
        assert_eq!(status, 400, "{id}");
    }
    assert_eq!(s.snapshot("a").await, before);
    assert!(!s.dir.path().join("x").exists() && !s.data_dir().join("x").exists());
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let s = TestServer::start_with(ConfigLayer { max_body_bytes: Some(64 * 1024), ..Default::default() }).await;
    s.create_app("a").await;
    let before = s.snapshot("a").await;
    let big = vec![0u8; 100 * 1024];
    let (status, body) = s.upload("a", vec![("big", big.clone(), vec![])]).await;
    assert_eq!((status, code(&body)), (413, 40033), "{body}");
    let form =
        reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(big.clone()).file_name("big.png"));
    let response = s
        .http
        .post(s.url("/v2/users/me/apps/a/inputs"))
        .header("Authorization", format!("Key {}", s.token))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(code(&body), 40033);
    let response = s
        .http
        .post(s.url("/v2/users/me/apps/a/inputs/import"))
        .header("Authorization", format!("Key {}", s.token))
        .header("content-type", "text/csv")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(s.snapshot("a").await, before);
}
