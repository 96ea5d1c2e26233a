//! The device's half of Eclipse hawkBit's Direct Device Integration (DDI)
//! API: poll, configData, deploymentBase and its feedback, cancelAction and
//! its feedback. What the server says is untrusted: replies are bounded in
//! size and read into the few fields used; the device's token goes only to
//! the configured server, never to a link elsewhere; ids that become parts
//! of a path are checked.

use crate::config::Fleet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// Largest reply read: real ones are a few KiB.
const MAX_REPLY: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DdiError {
    #[error("{url}: the server asks the device to slow down (429)")]
    TooMany {
        url: String,
        retry_after: Option<Duration>,
    },
    #[error("{url}: the action is gone on the server ({status})")]
    Gone { url: String, status: u16 },
    #[error("{url}: the server refused the device ({status}): check fleet.token_file and that the device is registered with this token")]
    Unauthorized { url: String, status: u16 },
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {reason}")]
    Network { url: String, reason: String },
    #[error("{url}: unexpected reply: {reason}")]
    Protocol { url: String, reason: String },
}

type Result<T> = std::result::Result<T, DdiError>;

/// What a poll says: how long to wait, and what the server wants done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Polled {
    pub sleep: Option<Duration>,
    pub deployment: Option<String>,
    pub cancel: Option<String>,
    pub config_data: Option<String>,
    /// An action that waits for the device's confirmation (hawkBit's
    /// user-consent flow, when the tenant turned it on).
    pub confirmation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub filename: String,
    pub size: Option<u64>,
    /// Its http(s) links, in the order to try them: `download`, then
    /// `download-http` (hawkBit's default configuration gives only the
    /// latter; a CDN's `download` may be gone when its twin is not).
    pub hrefs: Vec<String>,
    /// Its SHA-256 as the server announces it (`hashes.sha256`), checked
    /// over the download before anything is flipped.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: String,
    pub download: Handling,
    pub update: Handling,
    /// Set when the server has a maintenance window for the action.
    pub maintenance_window: Option<Window>,
    /// The version the server gives the software (its chunk's `version`).
    pub version: Option<String>,
    pub artifacts: Vec<Artifact>,
    /// Artifacts passed over: no link this client can fetch.
    pub unusable: Vec<String>,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Finished::None => "none",
            Finished::Success => "success",
            Finished::Failure => "failure",
        })
    }
}

/// hawkBit's handling types for the download and the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handling {
    Attempt,
    #[default]
    Forced,
    Skip,
}

impl std::fmt::Display for Handling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handling::Attempt => "attempt",
            Handling::Forced => "forced",
            Handling::Skip => "skip",
        })
    }
}

/// Whether the action's maintenance window is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Available,
    Unavailable,
}

/// What a deployment's feedback says of the action's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    Proceeding,
    /// Written, not activated: what closes a download-only action.
    Downloaded,
    Closed,
    Rejected,
}

/// A feedback's result: none yet, or how the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finished {
    None,
    Success,
    Failure,
}

/// The replies as hawkBit's DDI model has them, reduced to the fields the
/// device uses; anything else in them is ignored, a field of the wrong type
/// is refused.
mod reply {
    use super::{Handling, Window};
    use serde::Deserialize;

    /// An action id: hawkBit sends a string, some servers a number.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Id {
        Text(String),
        Number(serde_json::Number),
    }

    impl Id {
        pub fn text(&self) -> String {
            match self {
                Id::Text(t) => t.clone(),
                Id::Number(n) => n.to_string(),
            }
        }
    }

    #[derive(Deserialize)]
    pub struct Link {
        pub href: String,
    }

    #[derive(Deserialize)]
    pub struct Poll {
        pub config: Option<PollConfig>,
        #[serde(rename = "_links", default)]
        pub links: PollLinks,
    }

    #[derive(Deserialize)]
    pub struct PollConfig {
        pub polling: Option<Polling>,
    }

    #[derive(Deserialize)]
    pub struct Polling {
        pub sleep: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct PollLinks {
        pub deployment_base: Option<Link>,
        pub cancel_action: Option<Link>,
        pub config_data: Option<Link>,
        pub confirmation_base: Option<Link>,
    }

    #[derive(Deserialize)]
    pub struct Confirmation {
        pub id: Option<Id>,
        pub confirmation: Option<ConfirmationBody>,
    }

    #[derive(Deserialize)]
    pub struct ConfirmationBody {
        pub chunks: Option<Vec<Chunk>>,
    }

    #[derive(Deserialize)]
    pub struct Deployment {
        pub id: Option<Id>,
        pub deployment: Option<DeploymentBody>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct DeploymentBody {
        #[serde(default)]
        pub download: Handling,
        #[serde(default)]
        pub update: Handling,
        pub maintenance_window: Option<Window>,
        pub chunks: Option<Vec<Chunk>>,
    }

    #[derive(Deserialize)]
    pub struct Chunk {
        pub version: Option<String>,
        #[serde(default)]
        pub artifacts: Vec<Artifact>,
    }

    #[derive(Deserialize)]
    pub struct Artifact {
        pub filename: Option<String>,
        pub size: Option<u64>,
        #[serde(default)]
        pub hashes: Hashes,
        #[serde(rename = "_links", default)]
        pub links: ArtifactLinks,
    }

    #[derive(Deserialize, Default)]
    pub struct Hashes {
        pub sha256: Option<String>,
    }

    #[derive(Deserialize, Default)]
    pub struct ArtifactLinks {
        pub download: Option<Link>,
        #[serde(rename = "download-http")]
        pub download_http: Option<Link>,
    }

    #[derive(Deserialize)]
    pub struct Cancel {
        pub id: Option<Id>,
        #[serde(rename = "cancelAction")]
        pub cancel_action: Option<CancelBody>,
    }

    #[derive(Deserialize)]
    pub struct CancelBody {
        #[serde(rename = "stopId")]
        pub stop_id: Option<Id>,
    }
}

/// What a GET came back with.
enum Reply {
    /// The JSON body (`null` when empty), and its ETag when it had one.
    Body(Value, Option<String>),
    /// 304: what was sent with that ETag still holds.
    NotModified,
}

/// The last poll reply that had an ETag, kept across cycles so that the
/// next poll can ask whether it changed (`If-None-Match`).
#[derive(Debug, Default)]
pub struct PollCache(std::sync::Mutex<Option<(String, Value)>>);

/// A DDI session with one server, as one device.
pub struct Ddi {
    agent: ureq::Agent,
    base: String,
    origin: String,
    authorization: Option<String>,
}

/// `scheme://host[:port]` of an http(s) URL, lower-cased, without the
/// default port or a root dot (the same server however it is written);
/// None for anything else, and for a URL with user information, which
/// could make one server look like another.
pub fn origin(url: &str) -> Option<String> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    // What follows the host: nothing, or `:port`. The http crate takes a
    // port no u16 holds and then reports none: that is no URL of ours.
    let rest = authority.as_str().get(authority.host().len()..)?;
    let port = match rest.strip_prefix(':') {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None if rest.is_empty() => None,
        None => return None,
    };
    Some(match port.filter(|p| *p != default) {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// A short text the server names something by (a release's version):
/// printed on a terminal and kept in the state file, so without control
/// characters (a newline would forge a line of `updater status`, an
/// escape sequence would drive the terminal) and at most 128 characters.
fn server_text(text: String) -> String {
    text.chars().filter(|c| !c.is_control()).take(128).collect()
}

/// Longest attribute key or value hawkBit stores
/// (`Target.CONTROLLER_ATTRIBUTE_MAX_VALUE_SIZE`).
pub const MAX_ATTRIBUTE: usize = 128;

/// Whether hawkBit takes `c` in an attribute: its
/// `JpaControllerManagement` refuses every attribute of a request (400)
/// when one has another character, `~` and anything not ASCII included.
fn attribute_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || c.is_ascii_whitespace()
        || "_-!@#$%^&*()+=[]{}|;:'\",.<>/\\?".contains(c)
}

/// Why hawkBit would refuse `value` as an attribute, if it would: for
/// configured values, checked when the config is read.
pub fn attribute_problem(value: &str) -> Option<String> {
    if let Some(c) = value.chars().find(|c| !attribute_char(*c)) {
        return Some(format!("has {c:?}, which hawkBit refuses in attributes (it takes ASCII letters, digits, spaces and _-!@#$%^&*()+=[]{{}}|;:'\",.<>/\\?)"));
    }
    (value.len() > MAX_ATTRIBUTE).then(|| {
        format!(
            "is {} characters long; hawkBit takes at most {MAX_ATTRIBUTE}",
            value.len()
        )
    })
}

/// `text` as hawkBit takes it: other characters become `?`, and it is cut
/// to [`MAX_ATTRIBUTE`]. For values the device makes up (a reason, a
/// version), which must never cost it all its attributes.
pub fn fit_attribute(text: &str) -> String {
    text.chars()
        .map(|c| if attribute_char(c) { c } else { '?' })
        .take(MAX_ATTRIBUTE)
        .collect()
}

/// hawkBit's `HH:MM:SS`, or an ISO-8601 duration (`PT36H`, `P1DT12H`),
/// which is how a sleep of a day or more comes. Hours stay below 10,000
/// either way (a year is 8,760).
pub fn parse_sleep(text: &str) -> Option<Duration> {
    if let Some(iso) = text.strip_prefix('P') {
        return parse_iso_duration(iso);
    }
    let parts: Vec<&str> = text.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return None;
    };
    let n = |t: &str| t.parse::<u64>().ok().filter(|_| t.len() <= 4);
    let (h, m, s) = (n(h)?, n(m)?, n(s)?);
    (m < 60 && s < 60).then(|| Duration::from_secs(h * 3600 + m * 60 + s))
}

/// The part of an ISO-8601 duration after its `P`: whole days, then after
/// `T` whole hours, minutes and seconds (a fraction of a second is dropped),
/// each at most once and in that order; weeks, months and years, whose
/// length varies, are refused.
fn parse_iso_duration(text: &str) -> Option<Duration> {
    let (date, time) = match text.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (text, None),
    };
    let mut secs = 0u64;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, u64)]| -> Option<()> {
        let mut rest = part;
        let mut next = 0;
        while !rest.is_empty() {
            let end = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
            let (number, unit) = (&rest[..end], rest[end..].chars().next()?);
            let at = units[next..].iter().position(|(u, _)| *u == unit)? + next;
            let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
            let fraction_ok = unit == 'S' && fraction.bytes().all(|b| b.is_ascii_digit());
            if whole.is_empty() || whole.len() > 7 || !(fraction == "0" || fraction_ok) {
                return None;
            }
            secs = secs.checked_add(whole.parse::<u64>().ok()?.checked_mul(units[at].1)?)?;
            any = true;
            next = at + 1;
            rest = &rest[end + unit.len_utf8()..];
        }
        Some(())
    };
    take(date, &[('D', 86_400)])?;
    if let Some(time) = time {
        take(time, &[('H', 3_600), ('M', 60), ('S', 1)])?;
    }
    (any && secs < 10_000 * 3_600).then(|| Duration::from_secs(secs))
}

/// A `Retry-After` value (RFC 9110 §10.2.3): seconds, or an HTTP date,
/// taken relative to `now` (a date already past means now). A device's
/// clock may be wrong; the caller clamps what this gives.
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An action id goes into a path: digits, letters, `-` and `_` only.
fn check_id(id: &str, url: &str) -> Result<String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(id.to_string())
    } else {
        Err(DdiError::Protocol {
            url: url.into(),
            reason: format!("action id {id:?} is not an id"),
        })
    }
}

/// `v`, a reply of `url`, read as `T`.
fn read<T: serde::de::DeserializeOwned>(v: Value, url: &str) -> Result<T> {
    serde_json::from_value(v).map_err(|e| DdiError::Protocol {
        url: url.into(),
        reason: e.to_string(),
    })
}

impl Ddi {
    /// A session as `fleet` says: its server, its TLS files, and the
    /// `authorization` value (none: the client certificate alone).
    pub fn new(
        fleet: &Fleet,
        authorization: Option<String>,
        idle: Duration,
    ) -> anyhow::Result<Ddi> {
        // Replies are small: a whole request gets `idle` and no more, so a
        // server that dribbles cannot hold up a health check's reboot.
        let agent = crate::source::agent(idle, &fleet.tls(), false, Some(idle))?;
        let base = fleet.controller_url().map_err(anyhow::Error::msg)?;
        let origin = origin(&base)
            .ok_or_else(|| anyhow::anyhow!("fleet.url {} is not an http(s) URL", fleet.url))?;
        Ok(Ddi {
            agent,
            base,
            origin,
            authorization,
        })
    }

    pub fn controller_url(&self) -> &str {
        &self.base
    }

    /// The `Authorization` value for a download from `href`: only the
    /// configured server gets the device's token.
    pub fn authorization_for(&self, href: &str) -> Option<String> {
        (origin(href).as_deref() == Some(self.origin.as_str()))
            .then(|| self.authorization.clone())
            .flatten()
    }

    /// A link from a reply that the device will call with its token: it
    /// must point at the configured server.
    fn own_link(&self, href: &str, url: &str) -> Result<String> {
        if origin(href).as_deref() == Some(self.origin.as_str()) {
            Ok(href.to_string())
        } else {
            Err(DdiError::Protocol {
                url: url.into(),
                reason: format!("link {href:?} leads away from {}", self.origin),
            })
        }
    }

    /// `req` with the device's `Authorization`, when it has one.
    fn authorized<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(a) => req.header("Authorization", a),
            None => req,
        }
    }

    fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
        match self.request(method, url, body, None)? {
            Reply::Body(value, _) => Ok(value),
            // Only asked for with an ETag.
            Reply::NotModified => Ok(Value::Null),
        }
    }

    /// `call`, with `If-None-Match: etag` when one is given: a 304 is
    /// [`Reply::NotModified`], and a reply carries its own ETag.
    fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        etag: Option<&str>,
    ) -> Result<Reply> {
        let result = match (method, body) {
            ("GET", _) => {
                let req = self
                    .authorized(self.agent.get(url))
                    .header("Accept", "application/hal+json, application/json");
                match etag {
                    Some(e) => req.header("If-None-Match", e),
                    None => req,
                }
                .call()
            }
            (m, body) => {
                let text = body.map(Value::to_string).unwrap_or_default();
                let req = if m == "PUT" {
                    self.agent.put(url)
                } else {
                    self.agent.post(url)
                };
                self.authorized(req)
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json")
                    .send(text.as_bytes())
            }
        };
        let mut resp = result.map_err(|e| DdiError::Network {
            url: url.into(),
            reason: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        match status {
            304 if etag.is_some() => return Ok(Reply::NotModified),
            200..=299 => {}
            429 => {
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, std::time::SystemTime::now()));
                return Err(DdiError::TooMany {
                    url: url.into(),
                    retry_after,
                });
            }
            401 | 403 => {
                return Err(DdiError::Unauthorized {
                    url: url.into(),
                    status,
                })
            }
            410 => {
                return Err(DdiError::Gone {
                    url: url.into(),
                    status,
                })
            }
            _ => {
                return Err(DdiError::Status {
                    url: url.into(),
                    status,
                })
            }
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_REPLY)
            .read_to_vec()
            .map_err(|e| DdiError::Network {
                url: url.into(),
                reason: format!("reading the reply: {e}"),
            })?;
        // What a server answers to a report or the attributes is not used.
        if method != "GET" || bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Reply::Body(Value::Null, None));
        }
        // Only a strong validator, short and printable, is sent back.
        let tag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .filter(|t| t.starts_with('"') && t.len() <= 256)
            .map(str::to_string);
        let value = serde_json::from_slice(&bytes).map_err(|e| DdiError::Protocol {
            url: url.into(),
            reason: format!("not JSON: {e}"),
        })?;
        Ok(Reply::Body(value, tag))
    }

    /// One poll of the controller resource. With the ETag of the last
    /// reply in `cache`, the server may answer 304 (nothing changed), and
    /// the cached reply is read again.
    pub fn poll(&self, cache: &PollCache) -> Result<Polled> {
        let url = self.base.clone();
        let mut cached = cache
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let etag = cached.as_ref().map(|(tag, _)| tag.clone());
        let value = match self.request("GET", &url, None, etag.as_deref())? {
            Reply::NotModified => cached
                .as_ref()
                .map(|(_, v)| v.clone())
                .unwrap_or(Value::Null),
            Reply::Body(value, tag) => {
                *cached = tag.map(|t| (t, value.clone()));
                value
            }
        };
        drop(cached);
        let reply: reply::Poll = read(value, &url)?;
        let sleep = reply
            .config
            .and_then(|c| c.polling)
            .and_then(|p| p.sleep)
            .and_then(|s| parse_sleep(&s));
        let link = |l: Option<reply::Link>| -> Result<Option<String>> {
            l.map(|l| self.own_link(&l.href, &url)).transpose()
        };
        Ok(Polled {
            sleep,
            deployment: link(reply.links.deployment_base)?,
            cancel: link(reply.links.cancel_action)?,
            config_data: link(reply.links.config_data)?,
            confirmation: link(reply.links.confirmation_base)?,
        })
    }

    /// Sends the device's attributes (merged into what the server has).
    pub fn config_data(
        &self,
        href: Option<&str>,
        attributes: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let url = href.map_or_else(|| format!("{}/configData", self.base), str::to_string);
        let body = json!({"mode": "merge", "data": attributes});
        self.call("PUT", &url, Some(&body)).map(drop)
    }

    /// Tells the server which release the device runs when it was put
    /// there another way (a technician's USB stick, the local page):
    /// hawkBit's `installedBase` records it as an action closed at once,
    /// for a distribution set it knows by `name` and `version` (404 when
    /// it knows none).
    pub fn installed_base(&self, name: &str, version: &str) -> Result<()> {
        let url = format!("{}/installedBase", self.base);
        let body = json!({"name": name, "version": version});
        self.call("PUT", &url, Some(&body)).map(drop)
    }

    pub fn deployment(&self, href: &str) -> Result<Deployment> {
        let reply: reply::Deployment = read(self.call("GET", href, None)?, href)?;
        let bad = |reason: &str| DdiError::Protocol {
            url: href.into(),
            reason: reason.into(),
        };
        let id = reply.id.ok_or_else(|| bad("no action id"))?.text();
        let id = check_id(&id, href)?;
        let d = reply.deployment.ok_or_else(|| bad("no chunks"))?;
        let chunks = d.chunks.ok_or_else(|| bad("no chunks"))?;
        let mut artifacts = Vec::new();
        let mut unusable = Vec::new();
        let mut version = None;
        for chunk in chunks.into_iter().take(16) {
            version = version.or(chunk.version.map(server_text));
            for a in chunk.artifacts.into_iter().take(16) {
                let Some(filename) = a.filename else {
                    continue;
                };
                let filename: String = filename.chars().take(256).collect();
                // Only http(s) links can be fetched here; an artifact with
                // none (s3://, a server's own scheme) is passed over, and
                // the deployment fails only if nothing usable is left.
                let offered: Vec<String> = [a.links.download, a.links.download_http]
                    .into_iter()
                    .flatten()
                    .map(|l| l.href)
                    .collect();
                let hrefs: Vec<String> = offered
                    .iter()
                    .filter(|h| origin(h).is_some())
                    .cloned()
                    .collect();
                if hrefs.is_empty() {
                    if !offered.is_empty() {
                        log::warn!("fleet: artifact {filename:?} has no http(s) link ({offered:?}): passed over");
                        unusable.push(filename);
                    }
                    continue;
                }
                artifacts.push(Artifact {
                    filename,
                    size: a.size,
                    hrefs,
                    sha256: a.hashes.sha256,
                });
            }
        }
        Ok(Deployment {
            id,
            download: d.download,
            update: d.update,
            maintenance_window: d.maintenance_window,
            version,
            artifacts,
            unusable,
        })
    }

    /// Feedback on a deployment.
    pub fn feedback(
        &self,
        action: &str,
        execution: Execution,
        finished: Finished,
        progress: Option<(u64, u64)>,
        details: &[String],
    ) -> Result<()> {
        let url = format!(
            "{}/deploymentBase/{}/feedback",
            self.base,
            check_id(action, &self.base)?
        );
        let mut result = json!({"finished": finished});
        if let Some((cnt, of)) = progress {
            result["progress"] = json!({"cnt": cnt, "of": of});
        }
        let body = json!({
            "id": action,
            "status": {"execution": execution, "result": result, "details": details},
        });
        self.call("POST", &url, Some(&body)).map(drop)
    }

    /// The action a `cancelAction` link asks to stop: (cancel id, stop id).
    pub fn cancel_action(&self, href: &str) -> Result<(String, String)> {
        let reply: reply::Cancel = read(self.call("GET", href, None)?, href)?;
        let id = reply
            .id
            .map(|i| i.text())
            .ok_or_else(|| DdiError::Protocol {
                url: href.into(),
                reason: "no cancel id".into(),
            })?;
        let stop = reply
            .cancel_action
            .and_then(|c| c.stop_id)
            .map_or_else(|| id.clone(), |i| i.text());
        Ok((check_id(&id, href)?, check_id(&stop, href)?))
    }

    /// The action waiting for confirmation at `href`: its id and the
    /// version its first chunk names (for the console and the operator).
    pub fn confirmation(&self, href: &str) -> Result<(String, Option<String>)> {
        let reply: reply::Confirmation = read(self.call("GET", href, None)?, href)?;
        let id = reply
            .id
            .map(|i| i.text())
            .ok_or_else(|| DdiError::Protocol {
                url: href.into(),
                reason: "no action id".into(),
            })?;
        let version = reply
            .confirmation
            .and_then(|c| c.chunks)
            .and_then(|c| c.into_iter().find_map(|c| c.version))
            .map(server_text);
        Ok((check_id(&id, href)?, version))
    }

    /// Confirms action `id`, or denies it, with `details`.
    pub fn confirm(&self, id: &str, confirmed: bool, details: &[String]) -> Result<()> {
        let url = format!(
            "{}/confirmationBase/{}/feedback",
            self.base,
            check_id(id, &self.base)?
        );
        let body = json!({
            "confirmation": if confirmed { "confirmed" } else { "denied" },
            "details": details,
        });
        self.call("POST", &url, Some(&body)).map(drop)
    }

    /// Answers a cancel request: accepted (`closed`) or `rejected`.
    pub fn cancel_feedback(
        &self,
        cancel_id: &str,
        accepted: bool,
        details: &[String],
    ) -> Result<()> {
        let url = format!(
            "{}/cancelAction/{}/feedback",
            self.base,
            check_id(cancel_id, &self.base)?
        );
        let (execution, finished) = match accepted {
            true => (Execution::Closed, Finished::Success),
            false => (Execution::Rejected, Finished::Failure),
        };
        let body = json!({
            "id": cancel_id,
            "status": {"execution": execution, "result": {"finished": finished}, "details": details},
        });
        self.call("POST", &url, Some(&body)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example date.
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let at = |v| retry_after(v, now);
        assert_eq!(at(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            at("Sun, 06 Nov 1994 08:50:07 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(at("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        for bad in ["", "-5", "soon", "1.5", "Sun, 06 Nov 1994 25:00:00 GMT"] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sleeps_origins_and_ids_from_a_hostile_server() {
        assert_eq!(parse_sleep("00:01:30"), Some(Duration::from_secs(90)));
        assert_eq!(parse_sleep("12:00:00"), Some(Duration::from_secs(43200)));
        // A day or more comes as ISO-8601.
        assert_eq!(parse_sleep("PT36H"), Some(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_sleep("P1DT12H"), Some(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_sleep("P2D"), Some(Duration::from_secs(2 * 86400)));
        assert_eq!(
            parse_sleep("PT1H30M5.250S"),
            Some(Duration::from_secs(5405))
        );
        for bad in [
            "",
            "1:2",
            "00:61:00",
            "-1:00:00",
            "99999:00:00",
            "a:b:c",
            "00:00:00:00",
            "P",
            "PT",
            "P1W",
            "P1M",
            "PT1M1H",
            "PT1H1H",
            "PT-1H",
            "PT1.5H",
            "P1H",
            "PT.5S",
            "P999999D",
            "PT36",
            "PT36h",
        ] {
            assert_eq!(parse_sleep(bad), None, "{bad}");
        }
        assert_eq!(
            origin("HTTP://Host:8080/a?b").as_deref(),
            Some("http://host:8080")
        );
        assert_eq!(origin("https://h"), Some("https://h".into()));
        assert_eq!(origin("https://H.:443/x"), origin("https://h/y"));
        assert_eq!(origin("http://h:80"), origin("http://h"));
        assert_ne!(origin("http://h:8080"), origin("http://h"));
        assert_eq!(
            origin("http://[::1]:8080/x").as_deref(),
            Some("http://[::1]:8080")
        );
        for bad in [
            "ftp://h/x",
            "http://",
            "http://user@evil/x",
            "http://good@evil/x",
            "h/x",
            "http://h\\@evil/",
            "http://h:99999/",
        ] {
            assert_eq!(origin(bad), None, "{bad}");
        }
        assert!(check_id("42", "u").is_ok());
        for bad in ["", "../x", "1/feedback", "a b", &"9".repeat(65)] {
            assert!(check_id(bad, "u").is_err(), "{bad}");
        }
    }

    /// hawkBit's shapes are read into types; a field of the wrong type or
    /// an unknown handling type is refused, not guessed.
    #[test]
    fn replies_are_read_as_hawkbits_model_has_them() {
        let d: reply::Deployment = read(
            json!({"id": 42, "deployment": {"download": "forced", "update": "skip",
                "maintenanceWindow": "unavailable", "chunks": [{"part": "os", "version": "2.0.0",
                "artifacts": [{"filename": "r.swu", "size": 7, "hashes": {"sha1": "x"},
                "_links": {"download-http": {"href": "http://h/r"}}}]}]},
                "actionHistory": {"status": "running"}}),
            "u",
        )
        .unwrap();
        assert_eq!(d.id.unwrap().text(), "42");
        let body = d.deployment.unwrap();
        assert_eq!(
            (body.download, body.update),
            (Handling::Forced, Handling::Skip)
        );
        assert_eq!(body.maintenance_window, Some(Window::Unavailable));
        let chunk = &body.chunks.unwrap()[0];
        assert_eq!(chunk.version.as_deref(), Some("2.0.0"));
        assert_eq!(
            chunk.artifacts[0]
                .links
                .download_http
                .as_ref()
                .unwrap()
                .href,
            "http://h/r"
        );
        let refused = [
            json!({"config": {"polling": {"sleep": 60}}}),
            json!({"_links": {"deploymentBase": "http://h/x"}}),
            json!([]),
        ];
        for v in refused {
            assert!(read::<reply::Poll>(v.clone(), "u").is_err(), "{v}");
        }
        let odd = json!({"id": "6", "deployment": {"download": "later", "chunks": []}});
        let e = read::<reply::Deployment>(odd, "u").err().unwrap();
        assert!(e.to_string().contains("unknown variant `later`"), "{e}");
        let fb = json!({"status": {"execution": Execution::Closed, "result": {"finished": Finished::Failure}}});
        assert_eq!(fb["status"]["execution"], "closed");
        assert_eq!(fb["status"]["result"]["finished"], "failure");
    }

    #[test]
    fn attributes_are_held_to_hawkbits_rules() {
        assert_eq!(
            attribute_problem("rev 2 (B), \"x\" [a/b]; 50% +1 {q}"),
            None
        );
        assert!(attribute_problem("rev~2").unwrap().contains("'~'"));
        assert!(attribute_problem("révision").unwrap().contains("'é'"));
        assert!(attribute_problem(&"x".repeat(129)).unwrap().contains("129"));
        assert_eq!(attribute_problem(&"x".repeat(128)), None);
        let fitted = fit_attribute(&format!("2.0.0~rc1 `é` {}", "y".repeat(200)));
        assert!(fitted.starts_with("2.0.0?rc1 ??? yy"), "{fitted}");
        assert_eq!(
            (fitted.chars().count(), attribute_problem(&fitted)),
            (128, None)
        );
    }
}
