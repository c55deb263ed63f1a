//! Human-readable output, or the raw JSON with `--json`.

use serde_json::Value;

pub struct Output {
    pub json: bool,
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// `cat  dog(-)` for an input's labels: negatives are marked.
pub fn labels(concepts: &Value) -> String {
    concepts
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let id = c["id"].as_str().unwrap_or("");
            if c["value"].as_f64().unwrap_or(1.0) > 0.5 { id.to_string() } else { format!("{id}(-)") }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn input_line(input: &Value) -> String {
    let info = &input["data"]["image"]["image_info"];
    format!(
        "{}  {}x{} {}  {}",
        input["id"].as_str().unwrap_or(""),
        info["width"],
        info["height"],
        info["format"].as_str().unwrap_or(""),
        labels(&input["data"]["concepts"])
    )
}

pub fn print_version(version: &Value) {
    let m = &version["metrics"];
    println!(
        "dataset version {} of {}",
        version["id"].as_str().unwrap_or(""),
        version["dataset_id"].as_str().unwrap_or("")
    );
    println!(
        "  inputs: {}  unlabeled: {}  train: {}  validation: {}",
        m["inputs_count"], m["unlabeled_inputs_count"], m["train_inputs_count"], m["validation_inputs_count"]
    );
    println!("  {:<24} {:>9} {:>9} {:>7} {:>7}", "concept", "positive", "negative", "train+", "valid+");
    for c in m["concepts"].as_array().into_iter().flatten() {
        println!(
            "  {:<24} {:>9} {:>9} {:>7} {:>7}",
            c["id"].as_str().unwrap_or(""),
            c["positive_count"],
            c["negative_count"],
            c["train_positive_count"],
            c["validation_positive_count"]
        );
    }
}

impl Output {
    pub fn print_json(&self, body: &Value) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(body)?);
        Ok(())
    }

    pub fn done(&self, body: &Value, message: &str) -> anyhow::Result<()> {
        if self.json {
            self.print_json(body)
        } else {
            println!("{message}");
            Ok(())
        }
    }

    pub fn object(&self, body: &Value, key: &str) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(body);
        }
        println!("{}", serde_json::to_string_pretty(&body[key])?);
        Ok(())
    }

    pub fn list(&self, body: &Value, key: &str, columns: &[&str]) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(body);
        }
        let items = body[key].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            println!("(none)");
        }
        for item in items {
            println!("{}", columns.iter().map(|c| cell(&item[*c])).collect::<Vec<_>>().join("  "));
        }
        Ok(())
    }

    pub fn inputs(&self, body: &Value) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(body);
        }
        let items = body["inputs"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            println!("(none)");
        }
        for input in items {
            println!("{}", input_line(&input));
        }
        Ok(())
    }

    pub fn annotations(&self, body: &Value) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(body);
        }
        for a in body["annotations"].as_array().into_iter().flatten() {
            println!("{}  input {}  {}", cell(&a["id"]), cell(&a["input_id"]), labels(&a["data"]["concepts"]));
        }
        Ok(())
    }

    /// Each item's outcome of a batch upload; fails when any item failed.
    pub fn batch(&self, body: &Value, names: Vec<String>) -> anyhow::Result<()> {
        if self.json {
            self.print_json(body)?;
        }
        let mut failed = 0;
        for (i, input) in body["inputs"].as_array().into_iter().flatten().enumerate() {
            let name = names.get(i).cloned().unwrap_or_default();
            let code = input["status"]["code"].as_u64().unwrap_or(0);
            if code == 30000 {
                if !self.json {
                    println!("ok      {}  {name}", cell(&input["id"]));
                }
            } else {
                failed += 1;
                if !self.json {
                    println!(
                        "failed  {}  {name}: {} ({code})",
                        cell(&input["id"]),
                        input["status"]["details"]
                            .as_str()
                            .unwrap_or(input["status"]["description"].as_str().unwrap_or(""))
                    );
                }
            }
        }
        if body["inputs"].as_array().is_none() {
            anyhow::bail!(
                "{} (status {}): {}",
                body["status"]["description"].as_str().unwrap_or("request failed"),
                body["status"]["code"],
                body["status"]["details"].as_str().unwrap_or("")
            );
        }
        if failed > 0 {
            anyhow::bail!("{failed} input(s) failed");
        }
        Ok(())
    }
}
