//! A DDI server in Eclipse hawkBit's shapes and status codes, every body
//! the device sends checked against hawkBit's OpenAPI description
//! (`hawkbit/README.md`), run from goosebit's venv on 127.0.0.1.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// How the server knows devices.
#[derive(Default)]
pub struct Auth {
    pub target_tokens: Vec<String>,
    pub gateway_tokens: Vec<String>,
    /// TLS (certificate, key), and the CA a client certificate must come
    /// from to be let in without a token.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub client_ca: Option<PathBuf>,
}

pub struct Hawkbit {
    child: Child,
    /// Where the device polls: `{url}/DEFAULT/controller/v1/{id}`.
    pub url: String,
    admin: String,
    log: Arc<Mutex<String>>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hawkbit")
}

impl Hawkbit {
    pub fn start(auth: Auth) -> Hawkbit {
        let python = crate::goosebit::venv().join("bin/python");
        assert!(
            python.exists(),
            "no venv at {}: run .ci/install-deps",
            python.display()
        );
        let mut cmd = Command::new(python);
        cmd.arg(dir().join("ddi_server.py"))
            .arg("--spec")
            .arg(dir().join("ddi-openapi.json"));
        for t in &auth.target_tokens {
            cmd.args(["--target-token", t]);
        }
        for t in &auth.gateway_tokens {
            cmd.args(["--gateway-token", t]);
        }
        if let Some((cert, key)) = &auth.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        if let Some(ca) = &auth.client_ca {
            cmd.arg("--client-ca").arg(ca);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 for the hawkBit-shaped server");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let ports: Vec<&str> = first.split_whitespace().collect();
        let [_, port, _, admin] = ports[..] else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the hawkBit-shaped server did not start: {first:?} {}",
                log.lock().unwrap()
            );
        };
        let scheme = if auth.tls.is_some() { "https" } else { "http" };
        Hawkbit {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin}/_admin"),
            log,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let text = ureq::post(format!("{}/{path}", self.admin))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{path}: {e} {}", self.log.lock().unwrap()))
            .body_mut()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// A distribution set `name` `version` of one module per entry of
    /// `modules` (`{"name", "version", "type"?, "artifacts": [{"path",
    /// "filename"?, "sha256"? (what the server announces instead),
    /// "links"?}]}`); returns its id.
    pub fn distribution(&self, name: &str, version: &str, modules: Value) -> u64 {
        self.post(
            "distribution",
            json!({"name": name, "version": version, "modules": modules}),
        )["id"]
            .as_u64()
            .unwrap()
    }

    /// Assigns distribution set `ds`: `how` adds `type` (forced, soft,
    /// downloadonly), `window` (available, unavailable) and `confirm`.
    /// Returns the action's id.
    pub fn assign(&self, ds: u64, how: Value) -> u64 {
        let mut body = how;
        body["distribution"] = json!(ds);
        self.post("assign", body)["id"].as_u64().unwrap()
    }

    /// Changes action `id`: `{"window": ...}`, `{"cancel": true}`.
    pub fn action(&self, id: u64, change: Value) {
        self.post(&format!("action/{id}"), change);
    }

    /// `{"sleep": "PT36H"}`, `{"cut_after": bytes}` (the next artifact
    /// download ends after that many bytes).
    pub fn configure(&self, change: Value) {
        self.post("config", change);
    }

    /// Actions (each with its feedback), attributes, the installed
    /// release, what was refused and why, and every request.
    pub fn state(&self) -> Value {
        let text = ureq::get(format!("{}/state", self.admin))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The statuses the server answered, in order, for requests whose
    /// path contains `part`.
    pub fn answered(&self, part: &str) -> Vec<u64> {
        self.state()["log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["path"].as_str().unwrap().contains(part))
            .map(|r| r["status"].as_u64().unwrap())
            .collect()
    }

    /// What the server refused, and why (`[]` when it took everything).
    pub fn refused(&self) -> Vec<Value> {
        self.state()["refused"].as_array().unwrap().clone()
    }
}

impl Drop for Hawkbit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
