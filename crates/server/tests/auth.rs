//! Personal access tokens: missing 401, wrong 401, insufficient scope or other app 403 — and a
//! refused request changes nothing.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn make_key(s: &TestServer, scopes: &[&str], app: Option<&str>) -> String {
    let (status, body) =
        s.post("/v2/users/me/keys", json!({"keys": [{"scopes": scopes, "app_id": app, "description": "t"}]})).await;
    assert_eq!(status, 200, "{body}");
    body["keys"][0]["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn first_start_writes_an_owner_only_admin_token_and_stores_only_its_hash() {
    let s = TestServer::start().await;
    let path = s.data_dir().join("admin-token");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert_eq!(on_disk.trim(), s.token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let db = std::fs::read(s.data_dir().join("deeptune.db")).unwrap();
    let wal = std::fs::read(s.data_dir().join("deeptune.db-wal")).unwrap_or_default();
    let needle = s.token.as_bytes();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "the secret is stored in clear");
    }
    // Listing keys never shows secrets.
    let (_, keys) = s.get("/v2/users/me/keys").await;
    assert!(keys["keys"][0].get("token").is_none(), "{keys}");
}

#[tokio::test]
async fn missing_or_wrong_tokens_are_401() {
    let s = TestServer::start().await;
    let response = s.http.post(s.url("/v2/users/me/apps")).json(&json!({"apps": [{"id": "x"}]})).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(code(&body), 11009);
    let (status, body) = s.call_as("dt_not-a-real-token", Method::GET, "/v2/users/me/apps", None).await;
    assert_eq!((status, code(&body)), (401, 11008));
    let response = s.http.get(s.url("/v2/users/me/apps")).header("Authorization", "Basic abc").send().await.unwrap();
    assert_eq!(response.status(), 401);
    let (_, apps) = s.get("/v2/users/me/apps").await;
    assert_eq!(apps["apps"], json!([]));
}

#[tokio::test]
async fn scopes_limit_what_a_token_may_do_and_refusals_change_nothing() {
    let s = TestServer::start().await;
    s.create_app("a").await;
    s.upload("a", vec![("i1", png(8, 8, 1), vec![("cat", 1.0)])]).await;
    let reader = make_key(&s, &["read"], None).await;
    let writer = make_key(&s, &["read", "write"], None).await;
    let before = s.snapshot("a").await;

    let (status, _) = s.call_as(&reader, Method::GET, "/v2/users/me/apps/a/inputs", None).await;
    assert_eq!(status, 200);
    let upload = json!({"inputs": [{"id": "i2", "data": {"image": {"base64": b64(&png(8, 8, 2))}}}]});
    let refusals = [
        (Method::POST, "/v2/users/me/apps/a/inputs", Some(upload.clone())),
        (Method::DELETE, "/v2/users/me/apps/a/inputs/i1", None),
        (Method::POST, "/v2/users/me/apps", Some(json!({"apps": [{"id": "b"}]}))),
        (Method::DELETE, "/v2/users/me/apps/a", None),
        (Method::POST, "/v2/users/me/apps/a/concepts", Some(json!({"concepts": [{"id": "z"}]}))),
        (Method::POST, "/v2/users/me/keys", Some(json!({"keys": [{"scopes": ["admin"]}]}))),
    ];
    for (method, path, body) in refusals.clone() {
        let (status, response) = s.call_as(&reader, method.clone(), path, body).await;
        assert_eq!((status, code(&response)), (403, 11007), "{method} {path}: {response}");
        assert!(response["status"]["details"].as_str().unwrap().contains("scope"), "{response}");
    }
    // A writer can write but cannot manage keys.
    let (status, _) =
        s.call_as(&writer, Method::POST, "/v2/users/me/keys", Some(json!({"keys": [{"scopes": ["admin"]}]}))).await;
    assert_eq!(status, 403);
    assert_eq!(s.snapshot("a").await, before);
    let (_, apps) = s.get("/v2/users/me/apps").await;
    assert_eq!(apps["apps"].as_array().unwrap().len(), 1);
    let (_, keys) = s.get("/v2/users/me/keys").await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 3);

    let (status, _) = s.call_as(&writer, Method::POST, "/v2/users/me/apps/a/inputs", Some(upload)).await;
    assert_eq!(status, 200);

    // A revoked key stops working.
    let id = keys["keys"].as_array().unwrap().iter().find(|k| k["scopes"] == json!(["read"])).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = s.call(Method::DELETE, &format!("/v2/users/me/keys/{id}"), None).await;
    assert_eq!(status, 200);
    let (status, _) = s.call_as(&reader, Method::GET, "/v2/users/me/apps/a/inputs", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_app_restricted_token_sees_only_its_app() {
    let s = TestServer::start().await;
    s.create_app("a").await;
    s.create_app("b").await;
    let only_a = make_key(&s, &["read", "write"], Some("a")).await;
    let (status, _) = s.call_as(&only_a, Method::GET, "/v2/users/me/apps/a/inputs", None).await;
    assert_eq!(status, 200);
    let (status, body) = s.call_as(&only_a, Method::GET, "/v2/users/me/apps/b/inputs", None).await;
    assert_eq!((status, code(&body)), (403, 11007), "{body}");
    let (status, _) = s.call_as(&only_a, Method::DELETE, "/v2/users/me/apps/b", None).await;
    assert_eq!(status, 403);
    let (status, _) = s.call_as(&only_a, Method::POST, "/v2/users/me/apps", Some(json!({"apps": [{"id": "c"}]}))).await;
    assert_eq!(status, 403);
    let (_, apps) = s.call_as(&only_a, Method::GET, "/v2/users/me/apps", None).await;
    let ids: Vec<&str> = apps["apps"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["a"]);
    let (_, all) = s.get("/v2/users/me/apps").await;
    assert_eq!(all["apps"].as_array().unwrap().len(), 2);
    // A key for an app that does not exist is refused.
    let (status, _) = s.post("/v2/users/me/keys", json!({"keys": [{"scopes": ["read"], "app_id": "nope"}]})).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_token_acts_only_for_its_own_user() {
    let s = TestServer::start().await;
    let writer = make_key(&s, &["read", "write"], None).await;
    let (status, body) =
        s.call_as(&writer, Method::POST, "/v2/users/someone-else/apps", Some(json!({"apps": [{"id": "x"}]}))).await;
    assert_eq!((status, code(&body)), (403, 11007), "{body}");
    // `me` and the token's own user id name the same apps.
    s.call_as(&writer, Method::POST, "/v2/users/me/apps", Some(json!({"apps": [{"id": "mine"}]}))).await;
    let (status, _) = s.call_as(&writer, Method::GET, "/v2/users/me/apps/mine", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_portal_cookie_authorizes_reads_only() {
    let s = TestServer::start().await;
    s.create_app("a").await;
    let cookie = format!("deeptune_key={}", s.token);
    // A read (what an <img> or a download link does) works with the cookie alone.
    let read = s.http.get(s.url("/v2/users/me/apps/a")).header("Cookie", &cookie).send().await.unwrap();
    assert_eq!(read.status(), 200);
    // A write with the cookie alone is refused and changes nothing: no cross-site form can write.
    let write = s
        .http
        .post(s.url("/v2/users/me/apps"))
        .header("Cookie", &cookie)
        .json(&json!({"apps": [{"id": "b"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 401);
    let body: Value = write.json().await.unwrap();
    assert_eq!(code(&body), 11009, "{body}");
    let (_, apps) = s.get("/v2/users/me/apps").await;
    assert_eq!(apps["apps"].as_array().unwrap().len(), 1, "{apps}");
    // A wrong cookie is a clear 401.
    let wrong = s.http.get(s.url("/v2/users/me/apps/a")).header("Cookie", "deeptune_key=nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    // The portal itself is served at / and /portal/.
    let page = s.http.get(s.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("/portal/app.js"), "{html}");
    let script = s.http.get(s.url("/portal/app.js")).send().await.unwrap();
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
}
