//! The device's half of Eclipse hawkBit's Direct Device Integration (DDI)
//! API: poll, configData, deploymentBase and its feedback, cancelAction and
//! its feedback. What the server says is untrusted: replies are bounded in
//! size and read into the few fields used; the device's token goes only to
//! the configured server, never to a link elsewhere; ids that become parts
//! of a path are checked.

use crate::config::Fleet;
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub filename: String,
    pub size: Option<u64>,
    pub href: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: String,
    /// `forced`, `attempt` or `skip` (hawkBit's handling types).
    pub download: String,
    pub update: String,
    /// `available` or `unavailable` when the server has a maintenance window.
    pub maintenance_window: Option<String>,
    /// The version the server gives the software (its chunk's `version`).
    pub version: Option<String>,
    pub artifacts: Vec<Artifact>,
    /// Artifacts passed over: no link this client can fetch.
    pub unusable: Vec<String>,
}

/// A DDI session with one server, as one device.
pub struct Ddi {
    agent: ureq::Agent,
    base: String,
    origin: String,
    authorization: String,
}

/// `scheme://host[:port]` of an http(s) URL, lower-cased; None for anything else.
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    if authority.is_empty() || authority.contains(['@', '\\']) {
        return None;
    }
    // The same server however it is written: no default port, no root dot.
    let default = if scheme == "http" { ":80" } else { ":443" };
    let authority = authority.strip_suffix(default).unwrap_or(&authority);
    let authority = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') && port.chars().all(|c| c.is_ascii_digit()) => {
            format!("{}:{port}", host.trim_end_matches('.'))
        }
        _ => authority.trim_end_matches('.').to_string(),
    };
    if authority.is_empty() || authority.starts_with(':') {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

/// hawkBit's `HH:MM:SS`.
pub fn parse_sleep(text: &str) -> Option<Duration> {
    let parts: Vec<&str> = text.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return None;
    };
    let n = |t: &str| t.parse::<u64>().ok().filter(|_| t.len() <= 4);
    let (h, m, s) = (n(h)?, n(m)?, n(s)?);
    (m < 60 && s < 60).then(|| Duration::from_secs(h * 3600 + m * 60 + s))
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

fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Ddi {
    pub fn new(fleet: &Fleet, token: &str, idle: Duration) -> anyhow::Result<Ddi> {
        // Replies are small: a whole request gets `idle` and no more, so a
        // server that dribbles cannot hold up a health check's reboot.
        let agent = crate::source::agent(idle, fleet.ca_file.as_deref(), false, Some(idle))?;
        let base = fleet.controller_url().map_err(anyhow::Error::msg)?;
        let origin = origin(&base)
            .ok_or_else(|| anyhow::anyhow!("fleet.url {} is not an http(s) URL", fleet.url))?;
        Ok(Ddi {
            agent,
            base,
            origin,
            authorization: format!("TargetToken {token}"),
        })
    }

    pub fn controller_url(&self) -> &str {
        &self.base
    }

    /// The `Authorization` value for a download from `href`: only the
    /// configured server gets the device's token.
    pub fn authorization_for(&self, href: &str) -> Option<String> {
        (origin(href).as_deref() == Some(self.origin.as_str())).then(|| self.authorization.clone())
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

    fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
        let result = match (method, body) {
            ("GET", _) => self
                .agent
                .get(url)
                .header("Authorization", &self.authorization)
                .header("Accept", "application/hal+json, application/json")
                .call(),
            (m, body) => {
                let text = body.map(Value::to_string).unwrap_or_default();
                let req = if m == "PUT" {
                    self.agent.put(url)
                } else {
                    self.agent.post(url)
                };
                req.header("Authorization", &self.authorization)
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
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| DdiError::Protocol {
            url: url.into(),
            reason: format!("not JSON: {e}"),
        })
    }

    /// One poll of the controller resource.
    pub fn poll(&self) -> Result<Polled> {
        let url = self.base.clone();
        let v = self.call("GET", &url, None)?;
        if !v.is_object() {
            return Err(DdiError::Protocol {
                url,
                reason: "the poll reply is not an object".into(),
            });
        }
        let sleep = v["config"]["polling"]["sleep"]
            .as_str()
            .and_then(parse_sleep);
        let link = |name: &str| -> Result<Option<String>> {
            match v["_links"][name]["href"].as_str() {
                Some(href) => self.own_link(href, &url).map(Some),
                None => Ok(None),
            }
        };
        Ok(Polled {
            sleep,
            deployment: link("deploymentBase")?,
            cancel: link("cancelAction")?,
            config_data: link("configData")?,
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

    pub fn deployment(&self, href: &str) -> Result<Deployment> {
        let v = self.call("GET", href, None)?;
        let bad = |reason: &str| DdiError::Protocol {
            url: href.into(),
            reason: reason.into(),
        };
        let id = id_of(&v["id"]).ok_or_else(|| bad("no action id"))?;
        let id = check_id(&id, href)?;
        let d = &v["deployment"];
        let text = |field: &str| d[field].as_str().map(str::to_string);
        let chunks = d["chunks"].as_array().ok_or_else(|| bad("no chunks"))?;
        let mut artifacts = Vec::new();
        let mut unusable = Vec::new();
        let mut version = None;
        for chunk in chunks.iter().take(16) {
            version = version.or_else(|| chunk["version"].as_str().map(str::to_string));
            for a in chunk["artifacts"].as_array().into_iter().flatten().take(16) {
                let links = &a["_links"];
                let Some(filename) = a["filename"].as_str() else {
                    continue;
                };
                // Only http(s) links can be fetched here; an artifact with
                // none (s3://, a server's own scheme) is passed over, and
                // the deployment fails only if nothing usable is left.
                let offered: Vec<&str> = ["download", "download-http"]
                    .iter()
                    .filter_map(|k| links[k]["href"].as_str())
                    .collect();
                let Some(href) = offered.iter().copied().find(|h| origin(h).is_some()) else {
                    if !offered.is_empty() {
                        let name: String = filename.chars().take(256).collect();
                        log::warn!("fleet: artifact {name:?} has no http(s) link ({offered:?}): passed over");
                        unusable.push(name);
                    }
                    continue;
                };
                artifacts.push(Artifact {
                    filename: filename.chars().take(256).collect(),
                    size: a["size"].as_u64(),
                    href: href.to_string(),
                });
            }
        }
        Ok(Deployment {
            id,
            download: text("download").unwrap_or_else(|| "forced".into()),
            update: text("update").unwrap_or_else(|| "forced".into()),
            maintenance_window: text("maintenanceWindow"),
            version,
            artifacts,
            unusable,
        })
    }

    /// Feedback on a deployment: `execution` is `proceeding`, `closed`, ...;
    /// `finished` is `none`, `success` or `failure`.
    pub fn feedback(
        &self,
        action: &str,
        execution: &str,
        finished: &str,
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
        let v = self.call("GET", href, None)?;
        let id = id_of(&v["id"]).ok_or_else(|| DdiError::Protocol {
            url: href.into(),
            reason: "no cancel id".into(),
        })?;
        let stop = id_of(&v["cancelAction"]["stopId"]).unwrap_or_else(|| id.clone());
        Ok((check_id(&id, href)?, check_id(&stop, href)?))
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
            true => ("closed", "success"),
            false => ("rejected", "failure"),
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
        for bad in [
            "",
            "1:2",
            "00:61:00",
            "-1:00:00",
            "99999:00:00",
            "a:b:c",
            "00:00:00:00",
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
        for bad in ["ftp://h/x", "http://", "http://user@evil/x", "h/x"] {
            assert_eq!(origin(bad), None, "{bad}");
        }
        assert!(check_id("42", "u").is_ok());
        for bad in ["", "../x", "1/feedback", "a b", &"9".repeat(65)] {
            assert!(check_id(bad, "u").is_err(), "{bad}");
        }
    }
}
