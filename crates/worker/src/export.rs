//! Exporting a trained version to ONNX, with an automatic parity check: the exported file runs
//! under tract (a pure-Rust ONNX runtime) on evaluation images and its logits are compared with
//! the engine's. The report sits beside the file: an export that disagrees says so.

use std::io::Write;
use std::path::Path;

use deeptune_engine::artifact::{self, Predictor};
use deeptune_engine::data::Normalization;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

/// Where an export lives inside the version's artifact folder.
pub const EXPORT_DIR: &str = "export";
pub const ONNX_FILE: &str = "model.onnx";
pub const REPORT_FILE: &str = "export.json";

/// Agreement of the exported model with the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parity {
    /// Images both ran on.
    pub inputs: usize,
    /// Share of them with the same top concept.
    pub top1_agreement: f64,
    pub max_abs_logit_difference: f64,
    /// All top-1 agree and no logit differs by more than `TOLERANCE`.
    pub agrees: bool,
    pub tolerance: f64,
}

/// Largest logit difference still counted as agreement (float32 reassociation in folded batch
/// norms and another runtime's kernels).
pub const TOLERANCE: f64 = 1e-3;

/// What a user needs to run the file: input, preprocessing, outputs, concepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportManifest {
    pub format: String,
    pub input: String,
    /// `[N, 3, size, size]`, RGB, channels first.
    pub input_shape: [String; 4],
    /// Resize the shorter side, center-crop to `image_size`, scale to 0–1, then `(x - mean) / std`.
    pub image_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub outputs: [String; 2],
    /// Output columns, in order.
    pub concepts: Vec<String>,
    pub mutually_exclusive: bool,
    pub architecture: String,
    pub template: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportReport {
    pub format: String,
    pub file: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub manifest: ExportManifest,
    pub parity: Parity,
    pub created_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportFailure {
    #[error(transparent)]
    Unsupported(#[from] deeptune_engine::export::ExportError),
    #[error("{0}")]
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> ExportFailure {
    ExportFailure::Failed(e.to_string())
}

fn normalization(n: Normalization) -> ([f32; 3], [f32; 3]) {
    match n {
        Normalization::ImageNet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        // (x·255 − 127) / 128 = (x − 127/255) / (128/255)
        Normalization::MinusOneToOne127 => ([127.0 / 255.0; 3], [128.0 / 255.0; 3]),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes `<artifact>/export/model.onnx` and its report, checking it on `images` (encoded
/// files; undecodable ones are left out). Blocking: CPU-heavy.
pub fn export_onnx(artifact_dir: &Path, images: &[Vec<u8>]) -> Result<ExportReport, ExportFailure> {
    let (model, manifest) = artifact::load(artifact_dir).map_err(failed)?;
    let onnx = deeptune_engine::export::to_onnx(&model, &manifest)?;
    drop(model);
    let dir = artifact_dir.join(EXPORT_DIR);
    std::fs::create_dir_all(&dir).map_err(failed)?;
    write_atomically(&dir.join(ONNX_FILE), &onnx).map_err(failed)?;

    // Parity: the engine's logits against tract's, image by image.
    let predictor = Predictor::load(artifact_dir).map_err(failed)?;
    let samples: Vec<(Vec<f32>, Vec<f32>)> = images
        .iter()
        .filter_map(|bytes| predictor.preprocess(bytes).ok())
        .map(|pixels| {
            let logits = predictor.logits(pixels.clone(), 1);
            (pixels, logits)
        })
        .collect();
    let parity = tract_parity(&onnx, manifest.image_size, &samples)?;
    let size = manifest.image_size;
    let (mean, std) = normalization(manifest.normalization);
    let report = ExportReport {
        format: "onnx".into(),
        file: ONNX_FILE.into(),
        size_bytes: onnx.len() as u64,
        sha256: hex::encode(Sha256::digest(&onnx)),
        manifest: ExportManifest {
            format: "onnx (opset 13)".into(),
            input: "input".into(),
            input_shape: ["N".into(), "3".into(), size.to_string(), size.to_string()],
            image_size: size,
            mean,
            std,
            outputs: ["logits".into(), "probabilities".into()],
            concepts: manifest.concepts.clone(),
            mutually_exclusive: manifest.mutually_exclusive,
            architecture: serde_json::to_value(manifest.architecture)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            template: manifest.template.clone(),
        },
        parity,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let json = serde_json::to_vec_pretty(&report).expect("report serialises");
    write_atomically(&dir.join(REPORT_FILE), &json).map_err(failed)?;
    Ok(report)
}

/// Runs the ONNX file under tract on each sample's pixels (`[3, size, size]`) and compares its
/// logits with the sample's (the engine's).
pub fn tract_parity(onnx: &[u8], size: usize, samples: &[(Vec<f32>, Vec<f32>)]) -> Result<Parity, ExportFailure> {
    let runnable = tract_onnx::onnx()
        .model_for_read(&mut &onnx[..])
        .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, size, size]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| failed(format!("tract cannot run the exported model: {e:#}")))?;
    let (mut same_top, mut max_difference) = (0usize, 0f64);
    for (pixels, ours) in samples {
        let input = tract_ndarray::Array4::from_shape_vec((1, 3, size, size), pixels.clone()).map_err(failed)?;
        let outputs = runnable.run(tvec!(Tensor::from(input).into())).map_err(failed)?;
        let theirs: Vec<f32> = outputs[0].to_plain_array_view::<f32>().map_err(failed)?.iter().copied().collect();
        if theirs.len() != ours.len() {
            return Err(failed(format!("the exported model gave {} logits, expected {}", theirs.len(), ours.len())));
        }
        let top = |v: &[f32]| v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0;
        same_top += (top(ours) == top(&theirs)) as usize;
        for (a, b) in ours.iter().zip(&theirs) {
            max_difference = max_difference.max((*a as f64 - *b as f64).abs());
        }
    }
    let compared = samples.len();
    Ok(Parity {
        inputs: compared,
        top1_agreement: if compared == 0 { 0.0 } else { same_top as f64 / compared as f64 },
        max_abs_logit_difference: max_difference,
        agrees: compared > 0 && same_top == compared && max_difference <= TOLERANCE,
        tolerance: TOLERANCE,
    })
}

/// The report of the version's last export, if any.
pub fn export_report(artifact_dir: &Path) -> Option<ExportReport> {
    let bytes = std::fs::read(artifact_dir.join(EXPORT_DIR).join(REPORT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deeptune_engine::artifact::Manifest;
    use deeptune_engine::burn::prelude::{Device, Module, Tensor as BurnTensor, TensorData};
    use deeptune_engine::models::vit::VitConfig;
    use deeptune_engine::models::{Architecture, Classifier, ImageClassifier};
    use rand::{Rng, SeedableRng};

    /// A small ViT (the export of the big one is the same graph, just larger) runs under tract
    /// like under the engine.
    #[test]
    fn a_vision_transformer_export_agrees_with_the_engine() {
        let device = Device::flex();
        let model = Classifier::Vit(VitConfig::new(32, 8, 2, 2, 32, 64, 3).init(&device)).valid();
        let manifest = Manifest {
            architecture: Architecture::VitB16,
            concepts: vec!["a".into(), "b".into(), "c".into()],
            image_size: 32,
            normalization: Normalization::ImageNet,
            mutually_exclusive: true,
            template: "test".into(),
            params: serde_json::Value::Null,
            dataset_hash: String::new(),
            seed: 0,
            engine_version: String::new(),
        };
        let onnx = deeptune_engine::export::to_onnx(&model, &manifest).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let samples: Vec<(Vec<f32>, Vec<f32>)> = (0..4)
            .map(|_| {
                let pixels: Vec<f32> = (0..3 * 32 * 32).map(|_| rng.random_range(-2.0..2.0)).collect();
                let x = BurnTensor::<4>::from_data(TensorData::new(pixels.clone(), [1, 3, 32, 32]), &device);
                let logits = model.forward(x).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
                (pixels, logits)
            })
            .collect();
        let parity = tract_parity(&onnx, 32, &samples).unwrap();
        assert!(parity.agrees, "{parity:?}");
        assert!(parity.max_abs_logit_difference < 1e-4, "{parity:?}");
    }
}
