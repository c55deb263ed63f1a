//! A small client of the v2 API: where the server is, who we are, and requests that turn a
//! non-success `status` into an error a person can read.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use serde::Deserialize;
use serde_json::Value;

/// `~/.config/deeptune/cli.toml` (or `--cli-config`): defaults for the client flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    pub server: Option<String>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub app: Option<String>,
}

impl ClientFile {
    pub fn load(explicit: Option<&PathBuf>) -> anyhow::Result<ClientFile> {
        let path = match explicit {
            Some(p) => p.clone(),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".config/deeptune/cli.toml"),
                None => return Ok(ClientFile::default()),
            },
        };
        if !path.exists() {
            if explicit.is_some() {
                return Err(anyhow!("client config file {} does not exist", path.display()));
            }
            return Ok(ClientFile::default());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("client config file {}", path.display()))
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub server: String,
    token: Option<String>,
    pub user: String,
    pub app: Option<String>,
}

/// The failure of a request, as the server described it.
#[derive(Debug)]
pub struct ApiFailure {
    pub http: u16,
    pub code: u64,
    pub description: String,
    pub details: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (status {}, HTTP {})", self.description, self.code, self.http)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    pub fn new(server: String, token: Option<String>, user: String, app: Option<String>) -> Client {
        Client { http: reqwest::Client::new(), server: server.trim_end_matches('/').to_string(), token, user, app }
    }

    pub fn app(&self) -> anyhow::Result<&str> {
        self.app.as_deref().ok_or_else(|| anyhow!("no app given: pass --app APP_ID or set DEEPTUNE_APP"))
    }

    pub fn user_path(&self, rest: &str) -> String {
        format!("/v2/users/{}{rest}", self.user)
    }

    pub fn app_path(&self, rest: &str) -> anyhow::Result<String> {
        Ok(format!("/v2/users/{}/apps/{}{rest}", self.user, self.app()?))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut builder = self.http.request(method, format!("{}{path}", self.server));
        if let Some(token) = &self.token {
            builder = builder.header("Authorization", format!("Key {token}"));
        }
        builder
    }

    /// Sends and decodes; returns the body whatever its status (for batch outcomes) with the
    /// HTTP status.
    pub async fn send_raw(&self, builder: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let response =
            builder.send().await.with_context(|| format!("cannot reach the deeptune server at {}", self.server))?;
        let http = response.status().as_u16();
        let text = response.text().await?;
        let body: Value = serde_json::from_str(&text).map_err(|_| {
            anyhow!(
                "the server answered HTTP {http} with a body that is not JSON: {}",
                text.chars().take(200).collect::<String>()
            )
        })?;
        Ok((http, body))
    }

    /// Sends and fails unless the status is a success (10000) or, with `allow_mixed`, a batch
    /// in which some items failed (10010).
    pub async fn send(&self, builder: reqwest::RequestBuilder, allow_mixed: bool) -> anyhow::Result<Value> {
        let (http, body) = self.send_raw(builder).await?;
        let code = body["status"]["code"].as_u64().unwrap_or(0);
        if code == 10000 || (allow_mixed && code == 10010) {
            return Ok(body);
        }
        Err(ApiFailure {
            http,
            code,
            description: body["status"]["description"].as_str().unwrap_or("request failed").to_string(),
            details: body["status"]["details"].as_str().unwrap_or("").to_string(),
        }
        .into())
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path).query(query), false).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::POST, path).json(body), false).await
    }

    pub async fn post_batch(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.send_raw(self.request(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::PATCH, path).json(body), false).await
    }

    pub async fn delete(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut builder = self.request(reqwest::Method::DELETE, path);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        self.send(builder, false).await
    }

    /// A download (not JSON): the body as text, or the server's error.
    pub async fn download(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<String> {
        let bytes = self.download_raw(path, query).await?;
        String::from_utf8(bytes).map_err(|e| anyhow!("the download is not text: {e}"))
    }

    /// A binary download, or the server's error.
    pub async fn download_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        self.download_raw(path, &[]).await
    }

    async fn download_raw(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Vec<u8>> {
        let response = self
            .request(reqwest::Method::GET, path)
            .query(query)
            .send()
            .await
            .with_context(|| format!("cannot reach the deeptune server at {}", self.server))?;
        if response.status().is_success() {
            return Ok(response.bytes().await?.to_vec());
        }
        let http = response.status().as_u16();
        let body: Value = serde_json::from_str(&response.text().await?).unwrap_or(Value::Null);
        Err(ApiFailure {
            http,
            code: body["status"]["code"].as_u64().unwrap_or(0),
            description: body["status"]["description"].as_str().unwrap_or("request failed").to_string(),
            details: body["status"]["details"].as_str().unwrap_or("").to_string(),
        }
        .into())
    }
}
