//! Bulk imports from the command line: a CSV/TSV file of URLs, or a folder of labeled files.
//! Both send batches and report every row's or file's outcome; ids are derived from the row or
//! the file's path, so running an import again finds what is already there instead of copying it.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use base64::Engine;
use deeptune_core::ids::{id_for_url, path_id, slug_id};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::client::Client;
use crate::output::Output;

pub(crate) const URL_BATCH: usize = 16;
pub(crate) const FILE_BATCH: usize = 16;

#[derive(Default)]
struct Tally {
    imported: u64,
    present: u64,
    failed: Vec<String>,
}

impl Tally {
    fn record(&mut self, name: &str, input: &Value) {
        match input["status"]["code"].as_u64().unwrap_or(0) {
            30000 => self.imported += 1,
            30100 => self.present += 1,
            code => self.failed.push(format!(
                "{name}: {} ({code})",
                input["status"]["details"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .or(input["status"]["description"].as_str())
                    .unwrap_or("failed")
            )),
        }
    }

    fn finish(self, out: &Output, what: &str) -> anyhow::Result<()> {
        if out.json {
            out.print_json(&json!({
                "imported": self.imported, "already_present": self.present,
                "failed": self.failed.len(), "failures": self.failed,
            }))?;
        } else {
            for failure in &self.failed {
                println!("failed  {failure}");
            }
            println!(
                "{what}: {} imported, {} already present, {} failed",
                self.imported,
                self.present,
                self.failed.len()
            );
        }
        if self.failed.is_empty() { Ok(()) } else { Err(anyhow!("{} item(s) failed", self.failed.len())) }
    }
}

pub fn progress(len: u64, out: &Output) -> ProgressBar {
    if out.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar
}

/// Posts one batch; a whole-request failure marks each item failed with that reason.
async fn post_batch(client: &Client, inputs: Vec<Value>) -> anyhow::Result<Vec<Value>> {
    let n = inputs.len();
    let (_, body) = client.post_batch(&client.app_path("/inputs")?, &json!({"inputs": inputs})).await?;
    match body["inputs"].as_array() {
        Some(items) if items.len() == n => Ok(items.clone()),
        _ => Ok(vec![json!({"status": body["status"].clone()}); n]),
    }
}

async fn flush(
    client: &Client,
    bar: &ProgressBar,
    batch: &mut Vec<(String, Value)>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let (names, inputs): (Vec<String>, Vec<Value>) = std::mem::take(batch).into_iter().unzip();
    let results = post_batch(client, inputs).await?;
    for (name, result) in names.iter().zip(&results) {
        tally.record(name, result);
    }
    bar.inc(names.len() as u64);
    Ok(())
}

pub async fn csv(client: &Client, out: &Output, file: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.file_name().and_then(|n| n.to_str());
    let delimiter = deeptune_media::detect_delimiter(name, &data);
    let rows = deeptune_media::parse_import(&data, delimiter).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let bar = progress(rows.len() as u64, out);
    let mut tally = Tally::default();
    let mut batch: Vec<(String, Value)> = Vec::new();
    for row in rows {
        match row {
            Err(e) => {
                tally.failed.push(format!("line {}: {}", e.line, e.message));
                bar.inc(1);
            }
            Ok(row) => {
                let url = row.url.clone().unwrap_or_default();
                let id = row.input_id.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| id_for_url(&url));
                let concepts: Vec<Value> = row.concepts.iter().map(|c| json!({"id": c.id, "value": c.value})).collect();
                let mut data = json!({"image": {"url": url}, "concepts": concepts});
                if let Some(metadata) = &row.metadata {
                    data["metadata"] = metadata.clone();
                }
                batch.push((format!("line {} ({id})", row.line), json!({"id": id, "data": data})));
                if batch.len() == URL_BATCH {
                    flush(client, &bar, &mut batch, &mut tally).await?;
                }
            }
        }
    }
    if !batch.is_empty() {
        flush(client, &bar, &mut batch, &mut tally).await?;
    }
    bar.finish_and_clear();
    tally.finish(out, &format!("import of {}", file.display()))
}

/// Extensions of the image formats the server reads; other files (a LICENSE, a README) are
/// left out of a folder import.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp"];

pub fn named_like_an_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|known| known.eq_ignore_ascii_case(e)))
}

/// Image-looking files under `dir`: (concept or None, path), in a stable order.
fn folder_files(dir: &Path) -> anyhow::Result<Vec<(Option<String>, PathBuf)>> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            let concept = entry.file_name().to_string_lossy().into_owned();
            let mut inner: Vec<_> = std::fs::read_dir(&path)?.collect::<Result<_, _>>()?;
            inner.sort_by_key(|e| e.file_name());
            for file in inner {
                if file.file_type()?.is_file()
                    && !file.file_name().to_string_lossy().starts_with('.')
                    && named_like_an_image(&file.path())
                {
                    files.push((Some(concept.clone()), file.path()));
                }
            }
        } else if entry.file_type()?.is_file()
            && !entry.file_name().to_string_lossy().starts_with('.')
            && named_like_an_image(&path)
        {
            files.push((None, path));
        }
    }
    Ok(files)
}

pub async fn folder(client: &Client, out: &Output, dir: &Path) -> anyhow::Result<()> {
    let files = folder_files(dir)?;
    if files.is_empty() {
        return Err(anyhow!("{} holds no files", dir.display()));
    }
    let bar = progress(files.len() as u64, out);
    let mut tally = Tally::default();
    for chunk in files.chunks(FILE_BATCH) {
        let mut names = Vec::new();
        let mut inputs = Vec::new();
        for (concept, path) in chunk {
            let relative = path.strip_prefix(dir).unwrap_or(path).to_string_lossy().into_owned();
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) => {
                    tally.failed.push(format!("{relative}: cannot read: {e}"));
                    bar.inc(1);
                    continue;
                }
            };
            let concepts: Vec<Value> = concept.iter().map(|c| json!({"id": slug_id(c), "value": 1})).collect();
            inputs.push(json!({
                "id": path_id(&relative),
                "data": {"image": {"base64": base64::engine::general_purpose::STANDARD.encode(bytes)}, "concepts": concepts},
            }));
            names.push(relative);
        }
        if inputs.is_empty() {
            continue;
        }
        let results = post_batch(client, inputs).await?;
        for (name, result) in names.iter().zip(&results) {
            tally.record(name, result);
        }
        bar.inc(names.len() as u64);
    }
    bar.finish_and_clear();
    tally.finish(out, &format!("import of {}", dir.display()))
}
