//! Issue 15, item 3: `hf:owner/name[@revision]` models, against a local HTTP server on 127.0.0.1
//! that serves the Hub's file layout (`/<owner>/<name>/resolve/<revision>/<file>`, with the
//! `ETag`, `X-Repo-Commit` and `Content-Range` headers the Hub sends). No internet: HF_ENDPOINT
//! points at the server, HF_HOME at a scratch folder.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// The files of the served repository `test/tiny-mc-bert`: laid out as freedomking/mc-bert.
fn repository() -> HashMap<String, Vec<u8>> {
    let folder = common::tiny_bert_dir("hub-source");
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files = HashMap::new();
    for (name, path) in [
        ("config.json", folder.join("config.json")),
        ("vocab.txt", folder.join("vocab.txt")),
        (
            "pytorch_model.bin",
            fixtures.join("torch/pytorch_model.bin"),
        ),
    ] {
        files.insert(name.to_string(), std::fs::read(path).unwrap());
    }
    files
}

/// A Hub-like server on 127.0.0.1; every request line is recorded.
struct Hub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    fn start(files: HashMap<String, Vec<u8>>) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = Some(v.trim().to_string());
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(path.clone());
                let _ = stream.write_all(&respond(&files, &path, range.as_deref()));
            }
        });
        Hub { endpoint, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// The Hub's answer to GET `path` (with an optional `a-b` or `a-` byte range).
fn respond(files: &HashMap<String, Vec<u8>>, path: &str, range: Option<&str>) -> Vec<u8> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let found = match parts.as_slice() {
        ["test", "tiny-mc-bert", "resolve", "main" | "v1", file]
        | ["tiny-mc-bert", "resolve", "main", file] => files.get(*file),
        _ => None,
    };
    let Some(body) = found else {
        return b"HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
    };
    let (start, end) = match range.and_then(|r| r.split_once('-')) {
        Some((a, b)) => (
            a.parse().unwrap_or(0),
            b.parse().unwrap_or(body.len() - 1).min(body.len() - 1),
        ),
        None => (0, body.len() - 1),
    };
    let etag: u64 = body.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let mut head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{}\r\nContent-Length: {}\r\nETag: \"{etag:016x}\"\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\nConnection: close\r\n\r\n",
        body.len(),
        end + 1 - start
    )
    .into_bytes();
    head.extend_from_slice(&body[start..=end]);
    head
}

/// emrclass with the Hub environment; (success, stderr).
fn emrclass(hub: &str, home: &Path, offline: bool, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emrclass"));
    c.args(["--device", "simt"])
        .args(args)
        .env("HF_ENDPOINT", hub)
        .env("HF_HOME", home)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("HF_TOKEN");
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    } else {
        c.env_remove("HF_HUB_OFFLINE");
    }
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-hub-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn encode(hub: &str, home: &Path, offline: bool, model: &str, out: &Path) -> (bool, String) {
    let texts = home.parent().unwrap().join("texts.txt");
    std::fs::write(&texts, "患者胸闷\n头晕发热\n").unwrap();
    emrclass(
        hub,
        home,
        offline,
        &[
            "encode",
            "--model",
            model,
            "--texts",
            texts.to_str().unwrap(),
            "--max-len",
            "16",
            "--output",
            out.to_str().unwrap(),
        ],
    )
}

#[test]
fn a_model_by_name_is_fetched_into_the_cache_then_used_offline() {
    let hub = Hub::start(repository());
    let dir = scratch("fetch");
    let home = dir.join("hf-home");
    let by_name = dir.join("by-name.safetensors");
    let (ok, err) = encode(
        &hub.endpoint,
        &home,
        false,
        "hf:test/tiny-mc-bert",
        &by_name,
    );
    assert!(ok, "{err}");
    let fetched: Vec<String> = hub.requests();
    for f in ["config.json", "vocab.txt", "pytorch_model.bin"] {
        assert!(
            fetched
                .iter()
                .any(|r| r.ends_with(&format!("/resolve/main/{f}"))),
            "{f} not requested: {fetched:?}"
        );
    }
    // The standard cache layout, holding the folder the engine used.
    let snapshot = home
        .join("hub/models--test--tiny-mc-bert/snapshots/0123456789abcdef0123456789abcdef01234567");
    assert!(snapshot.join("pytorch_model.bin").exists(), "{err}");
    assert!(err.contains(&snapshot.display().to_string()), "{err}");
    // The same outputs as from the folder itself.
    let folder = common::tiny_bert_dir("hub-folder");
    std::fs::remove_file(folder.join("model.safetensors")).unwrap();
    std::fs::write(
        folder.join("pytorch_model.bin"),
        &repository()["pytorch_model.bin"],
    )
    .unwrap();
    let by_folder = dir.join("by-folder.safetensors");
    let (ok, err) = encode(
        &hub.endpoint,
        &home,
        false,
        folder.to_str().unwrap(),
        &by_folder,
    );
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&by_name).unwrap(),
        std::fs::read(&by_folder).unwrap()
    );
    // A second run offline: from the cache, no request at all.
    let before = hub.requests().len();
    let again = dir.join("again.safetensors");
    let (ok, err) = encode(&hub.endpoint, &home, true, "hf:test/tiny-mc-bert", &again);
    assert!(ok, "{err}");
    assert_eq!(hub.requests().len(), before, "offline made requests");
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&by_name).unwrap()
    );
    // Online again: the cached files are not fetched twice.
    let (ok, err) = encode(&hub.endpoint, &home, false, "hf:test/tiny-mc-bert", &again);
    assert!(ok, "{err}");
    let weights = |r: &Vec<String>| {
        r.iter()
            .filter(|p| p.ends_with("pytorch_model.bin"))
            .count()
    };
    assert_eq!(weights(&hub.requests()), weights(&fetched));
    // A model without an owner (as `hf:bert-base-chinese`, which transformers accepts): fetched
    // from /<name>/resolve/..., the same outputs.
    let ownerless = dir.join("ownerless.safetensors");
    let (ok, err) = encode(&hub.endpoint, &home, false, "hf:tiny-mc-bert", &ownerless);
    assert!(ok, "{err}");
    assert!(
        hub.requests()
            .iter()
            .any(|r| r == "/tiny-mc-bert/resolve/main/pytorch_model.bin"),
        "{:?}",
        hub.requests()
    );
    assert_eq!(
        std::fs::read(&ownerless).unwrap(),
        std::fs::read(&by_name).unwrap()
    );
}

#[test]
fn a_revision_plan_needing_only_the_config_and_named_failures() {
    let hub = Hub::start(repository());
    let dir = scratch("fail");
    let home = dir.join("hf-home");
    // plan reads config.json only, at the revision asked.
    let (ok, err) = emrclass(
        &hub.endpoint,
        &home,
        false,
        &[
            "plan",
            "--model",
            "hf:test/tiny-mc-bert@v1",
            "--no-table",
            "--classes",
            "4",
            "--seq",
            "16",
            "--batch",
            "2",
        ],
    );
    assert!(ok, "{err}");
    // (metadata with a 1-byte range, then the body: both for config.json of revision v1)
    let asked = hub.requests();
    assert!(
        !asked.is_empty()
            && asked
                .iter()
                .all(|r| r == "/test/tiny-mc-bert/resolve/v1/config.json"),
        "{asked:?}"
    );
    // A repository the Hub does not have: a 404, named, with what to do.
    let (ok, err) = encode(
        &hub.endpoint,
        &home,
        false,
        "hf:test/missing",
        &dir.join("o"),
    );
    assert!(!ok);
    assert!(
        err.contains("hf:test/missing")
            && err.contains("has no config.json")
            && err.contains("by hand"),
        "{err}"
    );
    // Offline with nothing cached.
    let (ok, err) = encode(
        &hub.endpoint,
        &dir.join("empty"),
        true,
        "hf:test/tiny-mc-bert",
        &dir.join("o"),
    );
    assert!(!ok);
    assert!(
        err.contains("not in the cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    // No server: the network failure is named.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (ok, err) = encode(
        &gone,
        &dir.join("gone"),
        false,
        "hf:test/tiny-mc-bert",
        &dir.join("o"),
    );
    assert!(!ok);
    assert!(
        err.contains("fetching config.json") && err.contains("No network?"),
        "{err}"
    );
    // A malformed name.
    let (ok, err) = encode(&hub.endpoint, &home, false, "hf:a/b/c", &dir.join("o"));
    assert!(!ok && err.contains("hf:owner/name"), "{err}");
    assert!(!dir.join("o").exists());
}
