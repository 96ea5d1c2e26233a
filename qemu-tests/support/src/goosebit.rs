//! A real goosebit server (hawkBit DDI) on 127.0.0.1, from the venv that
//! `.ci/install-deps` prepares, with device authentication on (`strict`).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn venv() -> PathBuf {
    std::env::var_os("SWITCHBACK_GOOSEBIT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/switchback/goosebit-0.2.12")
        })
}

pub struct Goosebit {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
    child: Option<Child>,
    admin: String,
    /// The server's log so far (stdout and stderr).
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a device reports and where its update stands, in the server's
/// view of it: (`sw_version`, `last_state`).
pub fn version_and_state(d: &Value) -> (Option<&str>, Option<&str>) {
    (d["sw_version"].as_str(), d["last_state"].as_str())
}

impl Goosebit {
    pub fn start() -> Goosebit {
        let venv = venv();
        assert!(
            venv.join("bin/uvicorn").exists(),
            "goosebit is not installed in {}: run `bash .ci/install-deps`",
            venv.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("goosebit.yaml"),
            format!(
                "secret_key: \"test-only-{}\"\ndb_uri: \"sqlite:///{}/db.sqlite3\"\nartifacts_dir: \"{}/artifacts\"\npoll_time: \"00:00:01\"\ndevice_auth:\n  enable: true\n  mode: strict\n",
                std::process::id(),
                d.display(),
                d.display()
            ),
        )
        .unwrap();
        let site = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import goosebit, os; print(os.path.dirname(goosebit.__file__))",
            ])
            .output()
            .unwrap();
        let site = String::from_utf8(site.stdout).unwrap();
        std::fs::write(
            d.join("pyproject.toml"),
            format!(
                "[tool.aerich]\ntortoise_orm = \"goosebit.db.config.TORTOISE_CONF\"\nlocation = \"{}/db/migrations\"\nsrc_folder = \"./.\"\n",
                site.trim()
            ),
        )
        .unwrap();
        let out = Command::new(venv.join("bin/aerich"))
            .arg("upgrade")
            .current_dir(d)
            .env("GOOSEBIT_SETTINGS", d.join("goosebit.yaml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "aerich upgrade: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut g = Goosebit {
            port,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child: None,
            admin: String::new(),
            log: Default::default(),
        };
        g.run();
        let body = "username=admin%40lab&password=lab-password-1";
        let reply: Value = ureq::post(format!("{}/setup", g.url))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body)
            .unwrap()
            .body_mut()
            .read_to_string()
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap();
        g.admin = format!("Bearer {}", reply["access_token"].as_str().unwrap());
        g
    }

    fn run(&mut self) {
        let mut child = Command::new(venv().join("bin/uvicorn"))
            .args([
                "goosebit:app",
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
            ])
            .current_dir(self.dir.path())
            .env("GOOSEBIT_SETTINGS", self.dir.path().join("goosebit.yaml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "goosebit did not start: {}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server and starts it again on the same port and database.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/api/v1/{path}", self.url);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let resp = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &self.admin).call(),
            (m, body) => {
                let req = if m == "PUT" {
                    agent.put(&url)
                } else {
                    agent.patch(&url)
                };
                req.header("Authorization", &self.admin)
                    .header("Content-Type", "application/json")
                    .send(body.unwrap_or(Value::Null).to_string())
            }
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let text = resp.body_mut().read_to_string().unwrap();
        if !resp.status().is_success() {
            let log = self.log.lock().unwrap();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{method} {url}: {}: {text}\nserver log, last lines first:\n{}",
                resp.status(),
                tail.join("\n")
            );
        }
        serde_json::from_str(&text).unwrap()
    }

    /// Registers a device with its token (strict mode needs both).
    pub fn add_device(&self, id: &str, token: &str) {
        self.api(
            "PUT",
            "devices",
            Some(serde_json::json!({"devices": [id], "auth_token": token})),
        );
    }

    /// Uploads a software file; returns its id.
    pub fn upload(&self, file: &Path) -> u64 {
        let boundary = "switchback-test-boundary-7f3a";
        let name = file.file_name().unwrap().to_string_lossy();
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend(std::fs::read(file).unwrap());
        body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
        let mut resp = ureq::put(format!("{}/api/v1/software", self.url))
            .header("Authorization", &self.admin)
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .send(&body[..])
            .unwrap_or_else(|e| panic!("uploading {name}: {e}"));
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        v["id"].as_u64().unwrap()
    }

    /// Gives `software` to `device` (goosebit's per-device assignment).
    pub fn assign(&self, device: &str, software: u64) {
        self.api(
            "PATCH",
            "devices",
            Some(serde_json::json!({"devices": [device], "software": software.to_string()})),
        );
    }

    /// The server's view of one device (from the list: goosebit 0.2.12's
    /// single-device GET fails once software is assigned).
    pub fn device(&self, id: &str) -> Value {
        let all = self.api("GET", "devices", None);
        all["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no device {id} in {all}"))
    }

    /// Waits until the server's view of device `id` satisfies `ok`, and
    /// returns it; panics with the last view after `timeout`.
    pub fn wait_device(&self, id: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let d = self.device(id);
            if ok(&d) {
                return d;
            }
            assert!(
                start.elapsed() < timeout,
                "device {id} not as expected within {timeout:?}: {d}\nits log:\n{}",
                self.device_log(id)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// How many times the server has taken attributes (`configData`)
    /// from device `id` so far, as its own log says.
    pub fn attribute_updates(&self, id: &str) -> usize {
        let needle = format!("Updating config data, device={id}");
        self.log.lock().unwrap().matches(&needle).count()
    }

    pub fn device_log(&self, id: &str) -> String {
        self.api("GET", &format!("devices/{id}/log"), None)["log"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Goosebit {
    fn drop(&mut self) {
        self.stop();
    }
}
