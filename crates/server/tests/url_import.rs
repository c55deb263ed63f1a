//! Images by URL and CSV/TSV bulk import. URL fetching refuses loopback, private, link-local and
//! metadata addresses (also through redirects and odd spellings) unless the allowlist permits
//! them; these tests use the allowlist against a loopback file server.

mod common;

use axum::response::Redirect;
use axum::routing::get;
use common::*;
use deeptune_server::ConfigLayer;
use serde_json::json;

/// Serves the fixture photos at /NAME, a non-image at /text, and redirects at /to/PORT/NAME.
async fn file_server() -> String {
    let app = axum::Router::new()
        .route(
            "/photo/{name}",
            get(|axum::extract::Path(name): axum::extract::Path<String>| async move {
                match std::fs::read(photos_dir().join(&name)) {
                    Ok(bytes) => Ok(([("content-type", "image/png")], bytes)),
                    Err(_) => Err(axum::http::StatusCode::NOT_FOUND),
                }
            }),
        )
        .route("/text", get(|| async { "not an image" }))
        .route(
            "/redirect",
            get(
                |axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                    Redirect::temporary(&q["to"])
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn post_urls(s: &TestServer, urls: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let inputs: Vec<_> = urls.iter().map(|(id, url)| json!({"id": id, "data": {"image": {"url": url}}})).collect();
    s.post("/v2/users/me/apps/a/inputs", json!({"inputs": inputs})).await
}

#[tokio::test]
async fn without_the_allowlist_local_and_metadata_addresses_are_refused() {
    let files = file_server().await;
    let port = files.rsplit(':').next().unwrap().to_string();
    let s = TestServer::start().await;
    s.create_app("a").await;
    let before = s.snapshot("a").await;
    let urls = [
        format!("{files}/photo/chelsea.png"),
        format!("http://localhost:{port}/photo/chelsea.png"),
        format!("http://2130706433:{port}/photo/chelsea.png"),
        format!("http://0x7f.0.0.1:{port}/photo/chelsea.png"),
        format!("http://017700000001:{port}/photo/chelsea.png"),
        format!("http://127.1:{port}/photo/chelsea.png"),
        format!("http://[::1]:{port}/photo/chelsea.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/photo/chelsea.png"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/x.png".to_string(),
        "http://192.168.1.1/x.png".to_string(),
        "http://0.0.0.0/x.png".to_string(),
    ];
    for url in &urls {
        let (status, body) = post_urls(&s, &[("x", url)]).await;
        assert_eq!((status, code(&body)), (400, 30106), "{url}: {body}");
        assert!(body["inputs"][0]["status"]["details"].as_str().unwrap().contains("allowlist"), "{url}: {body}");
    }
    let (status, body) = post_urls(&s, &[("x", "ftp://example.com/x.png")]).await;
    assert_eq!((status, code(&body)), (400, 30106), "{body}");
    assert_eq!(s.snapshot("a").await, before);
}

#[tokio::test]
async fn allowlisted_urls_import_and_redirects_are_checked_at_every_hop() {
    let files = file_server().await;
    let port = files.rsplit(':').next().unwrap().to_string();
    let s =
        TestServer::start_with(ConfigLayer { url_allowlist: Some(vec!["127.0.0.1/32".into()]), ..Default::default() })
            .await;
    s.create_app("a").await;
    let (status, body) = post_urls(&s, &[("cat", &format!("{files}/photo/chelsea.png"))]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["inputs"][0]["data"]["image"]["url"], format!("{files}/photo/chelsea.png"));
    assert_eq!(body["inputs"][0]["data"]["image"]["image_info"]["width"], 451);

    // A redirect to an allowed address works; one to a loopback address outside the allowlist doesn't.
    let allowed = format!("{files}/redirect?to={files}/photo/coffee.png");
    let (status, body) = post_urls(&s, &[("coffee", &allowed)]).await;
    assert_eq!(status, 200, "{body}");
    let sneaky = format!("{files}/redirect?to=http://127.0.0.2:{port}/photo/rocket.png");
    let (status, body) = post_urls(&s, &[("rocket", &sneaky)]).await;
    assert_eq!((status, code(&body)), (400, 30106), "{body}");
    let metadata = format!("{files}/redirect?to=http://169.254.169.254/latest/meta-data/");
    let (status, _) = post_urls(&s, &[("meta", &metadata)]).await;
    assert_eq!(status, 400);

    // Not found, and not an image.
    let (status, body) = post_urls(&s, &[("missing", &format!("{files}/photo/nope.png"))]).await;
    assert_eq!((status, code(&body)), (400, 39996), "{body}");
    let (status, body) = post_urls(&s, &[("text", &format!("{files}/text"))]).await;
    assert_eq!((status, code(&body)), (400, 30101), "{body}");
    assert_eq!(s.input_ids("a").await, vec!["cat", "coffee"]);
}

#[tokio::test]
async fn csv_and_tsv_imports_report_each_row_and_are_idempotent() {
    let files = file_server().await;
    let s =
        TestServer::start_with(ConfigLayer { url_allowlist: Some(vec!["127.0.0.1/32".into()]), ..Default::default() })
            .await;
    s.create_app("a").await;
    let csv = format!(
        "input.id,input.data.image.url,input.data.concepts[0].id,input.data.concepts[0].value,input.data.concepts[1].id,input.data.concepts[1].value,input.data.metadata\n\
         chelsea,{files}/photo/chelsea.png,cat,,indoor,0,\"{{\"\"source\"\": \"\"skimage\"\"}}\"\n\
         ,{files}/photo/coffee.png,cup,1,,,\n\
         missing,{files}/photo/nope.png,cat,1,,,\n\
         badvalue,{files}/photo/rocket.png,rocket,2,,,\n\
         badjson,{files}/photo/rocket.png,rocket,1,,,{{not json\n"
    );
    let import = |body: String, content_type: &'static str| {
        let s = &s;
        async move {
            let response = s
                .http
                .post(s.url("/v2/users/me/apps/a/inputs/import"))
                .header("Authorization", format!("Key {}", s.token))
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = import(csv.clone(), "text/csv").await;
    assert_eq!((status, code(&body)), (207, 10010), "{body}");
    assert_eq!((body["imported"].as_u64(), body["failed"].as_u64()), (Some(2), Some(3)), "{body}");
    let lines: Vec<(u64, u64)> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["status"]["code"].as_u64().unwrap()))
        .collect();
    assert_eq!(lines[0], (2, 30000));
    assert_eq!(lines[1], (3, 30000));
    assert_eq!(lines[2], (4, 39996));
    assert_eq!(lines[3].0, 5);
    assert_eq!(lines[4].0, 6);
    assert!(body["rows"][3]["status"]["details"].as_str().unwrap().contains("line 5"), "{body}");

    let (_, chelsea) = s.get("/v2/users/me/apps/a/inputs/chelsea").await;
    let concepts = &chelsea["input"]["data"]["concepts"];
    assert_eq!(concepts.as_array().unwrap().len(), 2, "{chelsea}");
    assert!(concepts.as_array().unwrap().iter().any(|c| c["id"] == "cat" && c["value"] == 1.0));
    assert!(concepts.as_array().unwrap().iter().any(|c| c["id"] == "indoor" && c["value"] == 0.0));
    assert_eq!(chelsea["input"]["data"]["metadata"]["source"], "skimage");

    // Again: nothing new, the good rows are reported as already present.
    let before = s.snapshot("a").await;
    let (_, body) = import(csv, "text/csv").await;
    assert_eq!((body["imported"].as_u64(), body["already_present"].as_u64()), (Some(0), Some(2)), "{body}");
    assert_eq!(s.snapshot("a").await, before);

    // TSV.
    let tsv = format!(
        "input.id\tinput.data.image.url\tinput.data.concepts[0].id\nrocket\t{files}/photo/rocket.png\trocket\n"
    );
    let (status, body) = import(tsv, "text/tab-separated-values").await;
    assert_eq!((status, body["imported"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(s.input_ids("a").await.len(), 3);

    // A file without a URL column is refused as a whole.
    let (status, body) = import("id,name\n1,2\n".into(), "text/csv").await;
    assert_eq!((status, code(&body)), (400, 11100), "{body}");
}
