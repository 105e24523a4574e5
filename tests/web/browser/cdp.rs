//! A headless Chromium driven over the DevTools protocol (one WebSocket to the browser, with
//! tungstenite's client): tabs opened and attached in "flat" mode, JavaScript evaluated in them,
//! keys typed as real input events, screenshots. No chromedriver and no Selenium: the protocol
//! is the browser's own, and Chromium writes the port it chose into `DevToolsActivePort` in its
//! profile, which is the readiness signal for the start.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). The profile is a fresh temporary
//! directory; every network feature that would reach out is off (the machine's network is
//! closed, and the test must depend on nothing but chatd).

use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tungstenite::Message;
use tungstenite::protocol::WebSocket;

use super::super::common::*;

/// A running headless Chromium, killed on drop.
pub struct Browser {
    _process: Process,
    socket: WebSocket<TcpStream>,
    next_id: u64,
    /// Events received so far (`method`, `params`, `sessionId`), for checks such as "no dialog".
    pub events: Vec<Value>,
}

/// A tab attached to the browser connection.
#[derive(Clone, Debug)]
pub struct Tab {
    session: String,
}

impl Browser {
    /// Starts Chromium with a window of `width`×`height` CSS pixels.
    pub fn start(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("create a browser profile dir");
        let child = Command::new("chromium")
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
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the drop ends the renderers and helpers with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run chromium (Debian package chromium): {e}"));
        let mut browser = Browser::connect(Process { child, profile });
        browser.call(None, "Target.setDiscoverTargets", json!({ "discover": false }));
        browser
    }

    fn connect(mut process: Process) -> Browser {
        let port_file = process.profile.path().join("DevToolsActivePort");
        let endpoint = wait_until(START_TIMEOUT, "chromium's DevToolsActivePort", || {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("chromium exited with {status} before it listened");
            }
            let text = fs::read_to_string(&port_file).ok()?;
            let mut lines = text.lines();
            let (port, path) = (lines.next()?.trim().parse::<u16>().ok()?, lines.next()?);
            Some(format!("ws://127.0.0.1:{port}{path}"))
        });
        let addr = endpoint["ws://".len()..].split('/').next().unwrap().to_string();
        let stream = TcpStream::connect(addr.as_str()).expect("connect to chromium's DevTools");
        stream.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
        let (socket, _) = tungstenite::client::client(endpoint.as_str(), stream)
            .unwrap_or_else(|e| panic!("DevTools handshake: {e}"));
        // Short reads from now on, so each wait checks its own deadline.
        socket.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Browser { _process: process, socket, next_id: 0, events: Vec::new() }
    }

    /// Sends one command (to a tab's session, or to the browser) and returns its result.
    pub fn call(&mut self, tab: Option<&Tab>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(tab) = tab {
            command["sessionId"] = json!(tab.session);
        }
        self.socket.send(Message::text(command.to_string())).expect("send a DevTools command");
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let message = match self.socket.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(Instant::now() < deadline, "no answer to {method} in {LINE_TIMEOUT:?}");
                    continue;
                }
                Err(e) => panic!("DevTools connection lost during {method}: {e}"),
            };
            let value: Value = serde_json::from_str(&message).expect("DevTools JSON");
            if value["id"] == json!(id) {
                if let Some(error) = value.get("error") {
                    panic!("{method} failed: {error}");
                }
                return value["result"].clone();
            }
            if value.get("method").is_some() {
                self.events.push(value);
            }
        }
    }

    /// A new tab at `url`, with its page events on (dialogs among them).
    pub fn open(&mut self, url: &str) -> Tab {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].clone();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        let tab = Tab { session: attached["sessionId"].as_str().expect("sessionId").to_string() };
        self.call(Some(&tab), "Page.enable", json!({}));
        self.call(Some(&tab), "Page.navigate", json!({ "url": url }));
        tab
    }

    /// Evaluates `expression` in the tab; returns its value (JSON-serialisable results only).
    pub fn eval(&mut self, tab: &Tab, expression: &str) -> Value {
        let result = self.call(
            Some(tab),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the tab, up to [`LINE_TIMEOUT`]; returns its value.
    pub fn wait_for(&mut self, tab: &Tab, expression: &str, what: &str) -> Value {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let value = self.eval(tab, expression);
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {LINE_TIMEOUT:?} waiting for {what} ({expression})");
            }
            // Polled, like common::wait_until; never a synchronisation by itself.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `text` into the focused element as the keyboard would, then presses Enter.
    pub fn type_line(&mut self, tab: &Tab, text: &str) {
        self.call(Some(tab), "Input.insertText", json!({ "text": text }));
        for kind in ["keyDown", "keyUp"] {
            let mut key = json!({
                "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13,
            });
            if kind == "keyDown" {
                key["text"] = json!("\r");
            }
            self.call(Some(tab), "Input.dispatchKeyEvent", key);
        }
    }

    /// A PNG of the tab's viewport.
    pub fn screenshot(&mut self, tab: &Tab) -> Vec<u8> {
        let shot = self.call(Some(tab), "Page.captureScreenshot", json!({ "format": "png" }));
        let data = shot["data"].as_str().expect("screenshot data");
        data_encoding::BASE64.decode(data.as_bytes()).expect("base64 screenshot")
    }

    /// The JavaScript dialogs (alert, confirm, prompt) any tab tried to open so far.
    pub fn dialogs(&self) -> Vec<&Value> {
        self.events.iter().filter(|e| e["method"] == "Page.javascriptDialogOpening").collect()
    }
}

/// Chromium's process group and its profile: killed and removed on drop, whatever failed.
struct Process {
    child: Child,
    profile: TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
