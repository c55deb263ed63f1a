//! Training from the command line: the request, its time estimate, following a run with a
//! progress bar, and reading its log.

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::client::Client;

/// What to train: shared by `models train` and `models estimate`.
#[derive(Args, Clone)]
pub struct TrainArgs {
    pub model: String,
    #[arg(long)]
    pub dataset: String,
    #[arg(long = "dataset-version")]
    pub dataset_version: String,
    /// Concepts to learn (repeatable).
    #[arg(long = "concept", required = true)]
    pub concepts: Vec<String>,
    #[arg(long, default_value = "EfficientNet_Lite0")]
    pub template: String,
    /// Each image shows exactly one of the concepts.
    #[arg(long)]
    pub exclusive: bool,
    /// Hyperparameters as name=value (repeatable), e.g. --param num_epochs=5.
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Continue from this trained version of the model (its weights instead of the template's
    /// pretrained ones; new data or more epochs, with the schedule planned over num_epochs).
    #[arg(long = "resume-from")]
    pub resume_from: Option<String>,
}

/// `name=value`, the value as JSON when it parses (numbers, booleans), else as a string.
pub fn param_arg(arg: &str) -> anyhow::Result<(String, Value)> {
    let (name, value) = arg.split_once('=').ok_or_else(|| anyhow!("{arg:?}: expected name=value"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((name.trim().to_string(), value))
}

impl TrainArgs {
    /// The body of POST .../versions (and .../versions/time_estimate).
    pub fn request(&self) -> anyhow::Result<Value> {
        let mut train_params = serde_json::Map::new();
        train_params.insert("template".into(), self.template.clone().into());
        train_params.insert("dataset_id".into(), self.dataset.clone().into());
        train_params.insert("dataset_version_id".into(), self.dataset_version.clone().into());
        for arg in &self.params {
            let (name, value) = param_arg(arg)?;
            train_params.insert(name, value);
        }
        let concepts: Vec<Value> = self.concepts.iter().map(|id| json!({"id": id})).collect();
        let mut train_info = json!({"params": train_params});
        if let Some(version) = &self.resume_from {
            train_info["resume_from_model"] = json!({"id": self.model, "model_version": {"id": version}});
        }
        Ok(json!({"model_versions": [{
            "train_info": train_info,
            "output_info": {"data": {"concepts": concepts}, "output_config": {"concepts_mutually_exclusive": self.exclusive}},
        }]}))
    }
}

/// `1 h 02 min`, `3 min 20 s`, `45 s`.
pub fn duration_text(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// Asks the server for the time estimate of a training request (a spinner shows meanwhile: the
/// first estimate of a configuration runs a short calibration).
pub async fn estimate(c: &Client, model: &str, request: &Value) -> anyhow::Result<Value> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("Estimating the training time (the first time, a few calibration steps on the server) ...");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let body = c.post(&c.app_path(&format!("/models/{model}/versions/time_estimate"))?, request).await;
    spinner.finish_and_clear();
    Ok(body?["training_time_estimates"][0].clone())
}

pub fn print_estimate(estimate: &Value) {
    let b = &estimate["breakdown"];
    println!(
        "Estimated training time: {}  ({} steps; {:.1} training img/s on this machine, {})",
        duration_text(estimate["seconds"].as_f64().unwrap_or(0.0)),
        b["steps"],
        b["train_images_per_second"].as_f64().unwrap_or(0.0),
        b["throughput_source"].as_str().unwrap_or("")
    );
}

fn is_final(code: u64) -> bool {
    matches!(code, 21100 | 21106 | 21119 | 64004)
}

/// Polls a version until it reaches a final status, showing a progress bar; returns the version.
pub async fn follow(c: &Client, model: &str, version: &str, show: bool) -> anyhow::Result<Value> {
    let path = c.app_path(&format!("/models/{model}/versions/{version}"))?;
    let bar = if show { ProgressBar::new(1000) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {percent:>3}%  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    loop {
        let body = c.get(&path, &[]).await?;
        let v = &body["model_version"];
        let code = v["status"]["code"].as_u64().unwrap_or(0);
        let p = &v["progress"];
        bar.set_position((p["percent_completed"].as_f64().unwrap_or(0.0) * 10.0) as u64);
        let message = match p["step"].as_u64() {
            Some(step) if code == 21101 => format!(
                "epoch {} step {}/{}  loss {:.3}  {:.1} img/s  ETA {}",
                p["epoch"],
                step,
                p["total_steps"],
                p["loss"].as_f64().unwrap_or(f64::NAN),
                p["images_per_second"].as_f64().unwrap_or(0.0),
                duration_text(p["time_remaining"].as_f64().unwrap_or(0.0))
            ),
            _ => v["status"]["details"].as_str().unwrap_or("").to_string(),
        };
        bar.set_message(message);
        if is_final(code) {
            bar.finish_and_clear();
            return Ok(v.clone());
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// Prints a version's log as text; with `follow`, keeps printing new lines until the version
/// reaches a final status.
pub async fn print_log(c: &Client, model: &str, version: &str, follow: bool) -> anyhow::Result<()> {
    let path = c.app_path(&format!("/models/{model}/versions/{version}/log"))?;
    let mut after = 0i64;
    loop {
        let wait = if follow { "30" } else { "0" };
        let body = c.get(&path, &[("after", after.to_string()), ("wait_seconds", wait.to_string())]).await?;
        for line in body["log_entries"].as_array().into_iter().flatten() {
            println!(
                "{} {:<5} {}",
                line["time"].as_str().unwrap_or(""),
                line["level"].as_str().unwrap_or("").to_uppercase(),
                line["message"].as_str().unwrap_or("")
            );
        }
        let next = body["next_after"].as_i64().unwrap_or(after);
        let page_empty = next == after;
        after = next;
        if body["done"] == true || (!follow && page_empty) {
            return Ok(());
        }
    }
}

/// Polls an evaluation until it has finished; returns the response.
pub async fn follow_evaluation(c: &Client, path: &str, show: bool) -> anyhow::Result<Value> {
    let spinner = if show { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    spinner.enable_steady_tick(Duration::from_millis(120));
    loop {
        let body = c.get(path, &[]).await?;
        let status = &body["eval_metrics"]["status"];
        spinner.set_message(format!("evaluating: {}", status["details"].as_str().unwrap_or("queued")));
        if !matches!(status["code"].as_u64(), Some(21310 | 21300)) {
            spinner.finish_and_clear();
            return Ok(body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints the headline metrics of a trained version's evaluation.
pub fn print_metrics(version: &Value) {
    print_evaluation("Validation", &version["metrics"]);
    if let Some(actual) = version["training_time"]["actual_seconds"].as_f64() {
        let estimated = version["training_time"]["estimated_seconds"].as_f64();
        match estimated {
            Some(e) => println!("Training took {} (estimated {}).", duration_text(actual), duration_text(e)),
            None => println!("Training took {}.", duration_text(actual)),
        }
    }
}

/// Prints an evaluation's summary and per-concept metrics.
pub fn print_evaluation(label: &str, m: &Value) {
    let s = &m["summary"];
    if s.is_null() {
        return;
    }
    let pct = |v: &Value| v.as_f64().map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "-".into());
    println!(
        "{label}: accuracy {}  top-5 {}  macro F1 {}  macro ROC AUC {}",
        pct(&s["top1_accuracy"]),
        pct(&s["top5_accuracy"]),
        pct(&s["macro_f1"]),
        s["macro_roc_auc"].as_f64().map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
    );
    let concepts = m["per_concept"].as_array().cloned().unwrap_or_default();
    if !concepts.is_empty() {
        println!("  {:<16} {:>9} {:>7} {:>6} {:>8}", "concept", "precision", "recall", "F1", "examples");
        for c in concepts {
            println!(
                "  {:<16} {:>9} {:>7} {:>6} {:>8}",
                c["concept"].as_str().unwrap_or(""),
                pct(&c["precision"]),
                pct(&c["recall"]),
                pct(&c["f1"]),
                c["positives"].as_u64().map(|n| n.to_string()).unwrap_or_default()
            );
        }
    }
}
