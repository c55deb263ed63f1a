//! A trained model as files: `weights.safetensors` (PyTorch names) and `manifest.json`
//! (architecture, concepts in order, preprocessing, head type, lineage). [`Predictor`] loads
//! them on its own: nothing else is needed to serve predictions.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{EvalTransform, Normalization, decode_rgb};
use crate::models::{Architecture, Classifier, ImageClassifier};
use crate::torch::{KeysAllowedToDiffer, load_state_dict, to_state_dict};
use crate::train::probabilities;

pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub architecture: Architecture,
    /// Concept ids in the order of the model's outputs.
    pub concepts: Vec<String>,
    pub image_size: usize,
    pub normalization: Normalization,
    /// Softmax over concepts when true, independent sigmoids otherwise.
    pub mutually_exclusive: bool,
    pub template: String,
    pub params: serde_json::Value,
    pub dataset_hash: String,
    pub seed: u64,
    pub engine_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact I/O error at {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("artifact manifest {path} is invalid: {reason}")]
    Manifest { path: String, reason: String },
    #[error("artifact weights: {0}")]
    Weights(String),
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    let io = |source| ArtifactError::Io { path: path.display().to_string(), source };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Writes the artifact into `dir` (created if needed). The manifest is written last, so a
/// folder with a manifest always has its weights.
pub fn save(dir: &Path, model: &Classifier, manifest: &Manifest) -> Result<PathBuf, ArtifactError> {
    std::fs::create_dir_all(dir).map_err(|source| ArtifactError::Io { path: dir.display().to_string(), source })?;
    let weights = to_state_dict(model);
    deeptune_weights::save_safetensors(&weights, &dir.join(WEIGHTS_FILE))
        .map_err(|e| ArtifactError::Weights(e.to_string()))?;
    let json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    write_atomically(&dir.join(MANIFEST_FILE), &json)?;
    Ok(dir.to_path_buf())
}

/// Concept probabilities for one input, highest first.
pub type Prediction = Vec<(String, f32)>;

/// A loaded trained model, ready for batched predictions.
pub struct Predictor {
    pub manifest: Manifest,
    model: Classifier,
    transform: EvalTransform,
    device: Device,
}

/// The model and manifest of an artifact folder, in evaluation mode.
pub fn load(dir: &Path) -> Result<(Classifier, Manifest), ArtifactError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&manifest_path)
        .map_err(|source| ArtifactError::Io { path: manifest_path.display().to_string(), source })?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| ArtifactError::Manifest { path: manifest_path.display().to_string(), reason: e.to_string() })?;
    let dict =
        deeptune_weights::load_file(&dir.join(WEIGHTS_FILE)).map_err(|e| ArtifactError::Weights(e.to_string()))?;
    let model = manifest.architecture.build(manifest.concepts.len(), &Device::flex());
    let (model, _) = load_state_dict(model, &dict, &KeysAllowedToDiffer::none())
        .map_err(|e| ArtifactError::Weights(e.to_string()))?;
    Ok((model.valid(), manifest))
}

impl Predictor {
    pub fn load(dir: &Path) -> Result<Predictor, ArtifactError> {
        let (model, manifest) = load(dir)?;
        let transform = EvalTransform::new(manifest.image_size, manifest.normalization);
        Ok(Predictor { model, transform, device: Device::flex(), manifest })
    }

    /// The model's input for an encoded image (`[3, size, size]`, normalised), or why not.
    pub fn preprocess(&self, bytes: &[u8]) -> Result<Vec<f32>, String> {
        decode_rgb(bytes).map(|image| self.transform.apply(&image)).map_err(|e| e.to_string())
    }

    /// Logits (`[n, concepts]`, row-major) for `n` preprocessed images.
    pub fn logits(&self, pixels: Vec<f32>, n: usize) -> Vec<f32> {
        let size = self.manifest.image_size;
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, size, size]), &self.device);
        self.model.forward(x).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 logits")
    }

    /// Predicts a batch of encoded images. A bad image fails alone (its `Err` names why); the
    /// others are predicted together.
    pub fn predict(&self, images: &[&[u8]]) -> Vec<Result<Prediction, String>> {
        let mut out: Vec<Result<Prediction, String>> = Vec::with_capacity(images.len());
        let mut pixels = Vec::new();
        let mut good = Vec::new();
        for (i, bytes) in images.iter().enumerate() {
            match decode_rgb(bytes) {
                Ok(image) => {
                    pixels.extend(self.transform.apply(&image));
                    good.push(i);
                    out.push(Ok(Vec::new()));
                }
                Err(e) => out.push(Err(e.to_string())),
            }
        }
        if good.is_empty() {
            return out;
        }
        let size = self.manifest.image_size;
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [good.len(), 3, size, size]), &self.device);
        let probs = probabilities(self.model.forward(x), self.manifest.mutually_exclusive)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 probabilities");
        let c = self.manifest.concepts.len();
        for (row, &i) in probs.chunks(c).zip(&good) {
            let mut prediction: Prediction = self.manifest.concepts.iter().cloned().zip(row.iter().copied()).collect();
            prediction.sort_by(|a, b| b.1.total_cmp(&a.1));
            out[i] = Ok(prediction);
        }
        out
    }
}
