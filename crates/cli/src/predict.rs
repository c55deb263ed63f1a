//! `deeptune predict`: concepts for image files, folders and URLs from a trained model.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use base64::Engine;
use clap::Args;
use serde_json::{Value, json};

use crate::client::Client;
use crate::import::{named_like_an_image, progress};
use crate::output::Output;

/// Inputs per request (the server's limit).
const BATCH: usize = 128;

#[derive(Args)]
pub struct PredictArgs {
    model: String,
    /// Image files, folders (every image in them, recursively) and http(s) URLs.
    #[arg(required = true)]
    sources: Vec<String>,
    /// A model version (default: the newest trained one).
    #[arg(long)]
    version: Option<String>,
    /// Concepts shown per image, highest first.
    #[arg(long, default_value_t = 5)]
    top: u32,
    /// Only concepts with at least this probability.
    #[arg(long)]
    min_value: Option<f32>,
}

/// A folder's images, recursively, in a stable order.
fn folder_images(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            folder_images(&path, out)?;
        } else if named_like_an_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// (name shown, request input) for every source.
pub fn inputs(sources: &[String]) -> anyhow::Result<Vec<(String, Value)>> {
    let mut items = Vec::new();
    for source in sources {
        if source.starts_with("http://") || source.starts_with("https://") {
            items.push((source.clone(), json!({"data": {"image": {"url": source}}})));
            continue;
        }
        let path = PathBuf::from(source);
        let files = if path.is_dir() {
            let mut files = Vec::new();
            folder_images(&path, &mut files)?;
            files
        } else {
            vec![path]
        };
        for file in files {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            items.push((file.display().to_string(), json!({"data": {"image": {"base64": b64}}})));
        }
    }
    if items.is_empty() {
        return Err(anyhow!("no images found in {}", sources.join(", ")));
    }
    Ok(items)
}

pub async fn run(c: &Client, out: &Output, args: PredictArgs) -> anyhow::Result<()> {
    let items = inputs(&args.sources)?;
    let path = match &args.version {
        Some(v) => c.app_path(&format!("/models/{}/versions/{v}/outputs", args.model))?,
        None => c.app_path(&format!("/models/{}/outputs", args.model))?,
    };
    let mut config = json!({"max_concepts": args.top});
    if let Some(min) = args.min_value {
        config["min_value"] = json!(min);
    }
    let bar = progress(items.len() as u64, out);
    let mut outputs = Vec::new();
    let mut failed = 0;
    for chunk in items.chunks(BATCH) {
        let (names, batch): (Vec<&String>, Vec<Value>) = chunk.iter().map(|(n, v)| (n, v.clone())).unzip();
        let body = json!({"inputs": batch, "model": {"output_info": {"output_config": config}}});
        let (_, response) = c.post_batch(&path, &body).await?;
        let Some(results) = response["outputs"].as_array().filter(|r| r.len() == names.len()) else {
            bar.finish_and_clear();
            let status = &response["status"];
            return Err(anyhow!(
                "{} (status {}): {}",
                status["description"].as_str().unwrap_or("prediction failed"),
                status["code"],
                status["details"].as_str().unwrap_or("")
            ));
        };
        for (name, output) in names.iter().zip(results) {
            bar.inc(1);
            if output["status"]["code"] != 10000 {
                failed += 1;
            }
            if !out.json {
                bar.suspend(|| print_output(name, output));
            }
            outputs.push(output.clone());
        }
    }
    bar.finish_and_clear();
    if out.json {
        out.print_json(&json!({"outputs": outputs}))?;
    }
    if failed > 0 { Err(anyhow!("{failed} of {} image(s) could not be predicted", outputs.len())) } else { Ok(()) }
}

fn print_output(name: &str, output: &Value) {
    if output["status"]["code"] != 10000 {
        println!("{name}  failed: {}", output["status"]["details"].as_str().unwrap_or(""));
        return;
    }
    println!("{name}  {}", concept_values(output));
}

/// `sneaker 0.931  trouser 0.069`: an output's concepts with their values, as returned.
pub fn concept_values(output: &Value) -> String {
    let concepts: Vec<String> = output["data"]["concepts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} {:.3}", c["id"].as_str().unwrap_or(""), c["value"].as_f64().unwrap_or(0.0)))
        .collect();
    concepts.join("  ")
}
