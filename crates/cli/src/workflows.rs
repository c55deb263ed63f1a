//! `deeptune workflows`: create from a JSON file, list, get, delete, and run on images.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::Client;
use crate::output::Output;

/// Inputs per request (the server's limit).
const BATCH: usize = 32;

#[derive(Subcommand)]
pub enum WorkflowsCmd {
    /// Create a workflow from a JSON file: one workflow object
    /// (`{"id": ..., "nodes": [...]}`) or the request body (`{"workflows": [...]}`).
    Create {
        file: PathBuf,
    },
    List,
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Run a workflow on image files, folders and URLs; prints every node's output.
    Run {
        id: String,
        #[arg(required = true)]
        sources: Vec<String>,
    },
}

pub async fn run(c: &Client, out: &Output, cmd: WorkflowsCmd) -> anyhow::Result<()> {
    match cmd {
        WorkflowsCmd::Create { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let body: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            let body = if body.get("workflows").is_some() { body } else { json!({"workflows": [body]}) };
            let response = c.post(&c.app_path("/workflows")?, &body).await?;
            let id = response["workflow"]["id"].as_str().unwrap_or("").to_string();
            out.done(&response, &format!("created workflow {id}"))
        }
        WorkflowsCmd::List => {
            let body = c.get(&c.app_path("/workflows")?, &[]).await?;
            out.list(&body, "workflows", &["id", "description", "created_at"])
        }
        WorkflowsCmd::Get { id } => {
            let body = c.get(&c.app_path(&format!("/workflows/{id}"))?, &[]).await?;
            out.print_json(&body["workflow"])
        }
        WorkflowsCmd::Delete { id } => {
            let body = c.delete(&c.app_path(&format!("/workflows/{id}"))?, None).await?;
            out.done(&body, &format!("deleted workflow {id}"))
        }
        WorkflowsCmd::Run { id, sources } => {
            let items = crate::predict::inputs(&sources)?;
            let path = c.app_path(&format!("/workflows/{id}/results"))?;
            let mut all = Vec::new();
            let mut failed = 0;
            for chunk in items.chunks(BATCH) {
                let (names, inputs): (Vec<&String>, Vec<Value>) = chunk.iter().map(|(n, v)| (n, v.clone())).unzip();
                let (_, response) = c.post_batch(&path, &json!({"inputs": inputs})).await?;
                let Some(results) = response["results"].as_array().filter(|r| r.len() == names.len()) else {
                    let status = &response["status"];
                    return Err(anyhow!(
                        "{} (status {}): {}",
                        status["description"].as_str().unwrap_or("the workflow failed"),
                        status["code"],
                        status["details"].as_str().unwrap_or("")
                    ));
                };
                for (name, result) in names.iter().zip(results) {
                    if result["status"]["code"] != 10000 {
                        failed += 1;
                    }
                    if !out.json {
                        print_result(name, result);
                    }
                    all.push(result.clone());
                }
            }
            if out.json {
                out.print_json(&json!({"results": all}))?;
            }
            if failed > 0 { Err(anyhow!("{failed} of {} input(s) failed", all.len())) } else { Ok(()) }
        }
    }
}

fn print_result(name: &str, result: &Value) {
    if result["status"]["code"] != 10000 {
        println!("{name}  failed: {}", result["status"]["details"].as_str().unwrap_or(""));
        return;
    }
    println!("{name}");
    for output in result["outputs"].as_array().into_iter().flatten() {
        let node = output["node_id"].as_str().unwrap_or("");
        if output["status"]["code"] != 10000 {
            println!("  {node:<20} {}", output["status"]["details"].as_str().unwrap_or(""));
            continue;
        }
        println!("  {node:<20} {}", crate::predict::concept_values(output));
    }
}
