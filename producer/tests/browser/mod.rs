//! A minimal headless-Chromium driver for tests: the Chrome DevTools Protocol over
//! `--remote-debugging-pipe` (JSON messages ending in a NUL byte, read from the browser's
//! fd 4 and written to its fd 3). No websocket and no driver crate: the browser is Debian's
//! `/usr/bin/chromium` (`scripts/chromium.sh` installs it).
//!
//! The browser runs with a fresh profile, no background networking, and a host resolver
//! that resolves nothing, so it only ever reaches the loopback address the test gives it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

/// Where Debian installs Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// Debian's Chromium, or `None` when it is missing outside CI (the test is reported
/// skipped, loudly); with `CI=true` a missing browser fails the test.
pub fn chromium() -> Option<PathBuf> {
    let path = Path::new(CHROMIUM);
    if path.exists() {
        return Some(path.to_owned());
    }
    if surge_common::testing::in_ci() {
        panic!("CI=true but {CHROMIUM} is missing: run scripts/chromium.sh (as root) first");
    }
    eprintln!(
        "\n!!!!! SKIPPED: the dashboard browser test needs Debian's chromium at {CHROMIUM}; \
         install it with `scripts/chromium.sh` (as root) !!!!!\n"
    );
    None
}

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    input: tokio::sync::Mutex<ChildStdin>,
    pending: Pending,
    problems: Arc<Mutex<Vec<String>>>,
    next_id: AtomicU64,
    profile: PathBuf,
}

/// One tab, attached with a flat session.
pub struct Tab<'a> {
    browser: &'a Browser,
    session: String,
}

impl Browser {
    /// Starts `chromium` headless with a fresh profile under the temp folder.
    pub async fn launch(chromium: &Path) -> anyhow::Result<Browser> {
        let profile = std::env::temp_dir().join(surge_common::testing::unique_name("chromium"));
        std::fs::create_dir_all(&profile)?;
        let log = std::fs::File::create(profile.join("chromium.log"))?;
        let mut child = Command::new("sh")
            // Our stdin becomes its fd 3 (commands in), our stdout its fd 4 (answers out).
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--disable-dev-shm-usage",
                "--no-proxy-server",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--hide-scrollbars",
                "--mute-audio",
                "--window-size=1280,900",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", chromium.display()))?;
        let input = child.stdin.take().context("no pipe to chromium")?;
        let output = child.stdout.take().context("no pipe from chromium")?;
        let pending: Pending = Arc::default();
        let problems: Arc<Mutex<Vec<String>>> = Arc::default();
        let (answers, noted) = (pending.clone(), problems.clone());
        tokio::spawn(async move {
            let mut output = BufReader::new(output);
            let mut message = Vec::new();
            loop {
                message.clear();
                match output.read_until(0, &mut message).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if message.last() == Some(&0) {
                    message.pop();
                }
                let Ok(value) = serde_json::from_slice::<Value>(&message) else {
                    continue;
                };
                if let Some(id) = value.get("id").and_then(Value::as_u64) {
                    let waiter = answers.lock().unwrap().remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(value);
                    }
                } else if let Some(problem) = problem(&value) {
                    noted.lock().unwrap().push(problem);
                }
            }
            // The browser is gone: fail every waiting command.
            answers.lock().unwrap().clear();
        });
        let browser = Browser {
            child,
            input: tokio::sync::Mutex::new(input),
            pending,
            problems,
            next_id: AtomicU64::new(1),
            profile,
        };
        let version = browser.call("Browser.getVersion", json!({}), None).await?;
        eprintln!(
            "browser: {}",
            version["product"].as_str().unwrap_or("unknown")
        );
        Ok(browser)
    }

    /// Sends one command (to the browser, or to a tab's `session`) and awaits its answer.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        {
            let mut input = self.input.lock().await;
            input
                .write_all(&bytes)
                .await
                .context("writing to chromium")?;
            input.flush().await?;
        }
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, rx)
            .await
            .map_err(|_| anyhow!("{method}: no answer within {COMMAND_TIMEOUT:?}"))?
            .map_err(|_| anyhow!("{method}: chromium exited; see {}", self.log().display()))?;
        if let Some(error) = answer.get("error") {
            bail!("{method} failed: {error}");
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Opens a tab of `width` × `height` CSS pixels.
    pub async fn tab(&self, width: u32, height: u32) -> anyhow::Result<Tab<'_>> {
        let target = self
            .call("Target.createTarget", json!({ "url": "about:blank" }), None)
            .await?;
        let target_id = target["targetId"].as_str().context("no targetId")?;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
                None,
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .context("no sessionId")?
            .to_owned();
        let tab = Tab {
            browser: self,
            session,
        };
        tab.call("Runtime.enable", json!({})).await?;
        tab.call("Page.enable", json!({})).await?;
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await?;
        Ok(tab)
    }

    /// Uncaught exceptions and console errors the pages reported so far.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    /// Chromium's own log (its stderr).
    pub fn log(&self) -> PathBuf {
        self.profile.join("chromium.log")
    }

    /// Closes the browser after a scenario and returns the problems its pages reported;
    /// when the scenario failed, first prints the last lines of Chromium's log.
    pub async fn finish(self, scenario_failed: bool) -> Vec<String> {
        let problems = self.problems();
        if scenario_failed {
            let tail = std::fs::read_to_string(self.log()).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            eprintln!(
                "chromium log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
        self.close().await;
        problems
    }

    /// Closes the browser (killing it if it does not exit) and removes its profile.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.call("Browser.close", json!({}), None),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Tab<'_> {
    /// Evaluates `script` and reads its value as a `T`.
    pub async fn read<T: serde::de::DeserializeOwned>(&self, script: &str) -> anyhow::Result<T> {
        let value = self.eval(script).await?;
        serde_json::from_value(value.clone()).with_context(|| format!("reading the page: {value}"))
    }

    /// Reads the page with `script` every 100 ms until `done` holds, calling `seen` on every
    /// reading; fails after `limit`, naming `what` and showing the last reading.
    pub async fn wait_for<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        &self,
        script: &str,
        what: &str,
        limit: Duration,
        mut seen: impl FnMut(&T),
        done: impl Fn(&T) -> bool,
    ) -> anyhow::Result<T> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let shown: T = self.read(script).await?;
            seen(&shown);
            if done(&shown) {
                return Ok(shown);
            }
            if std::time::Instant::now() > deadline {
                bail!("the page did not show {what} within {limit:?}; it shows {shown:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends one command to this tab.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.browser.call(method, params, Some(&self.session)).await
    }

    /// Navigates to `url` and waits until that document has loaded.
    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        let answer = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = answer.get("errorText").and_then(Value::as_str) {
            bail!("navigating to {url}: {error}");
        }
        let loaded = format!(
            "document.readyState === 'complete' && location.href === {}",
            json!(url)
        );
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        loop {
            // While the old document goes away, evaluating may fail: try again.
            if let Ok(Value::Bool(true)) = self.eval(&loaded).await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{url} did not load within {COMMAND_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Evaluates `expression` in the page and returns its value (JSON).
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(details) = answer.get("exceptionDetails") {
            bail!("evaluating in the page threw: {details}");
        }
        Ok(answer["result"]["value"].clone())
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let answer = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let data = answer["data"].as_str().context("no screenshot data")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
    }
}

/// An uncaught exception or a console error, as text.
fn problem(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Runtime.exceptionThrown" => Some(format!(
            "uncaught exception: {}",
            params["exceptionDetails"]["exception"]["description"]
                .as_str()
                .or(params["exceptionDetails"]["text"].as_str())
                .unwrap_or("?")
        )),
        "Runtime.consoleAPICalled" if params["type"] == "error" => {
            Some(format!("console.error: {}", params["args"]))
        }
        _ => None,
    }
}
