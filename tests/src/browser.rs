//! Debian's Chromium, headless, driven over WebDriver (chromedriver, plain HTTP on loopback),
//! for the tests of the upload page. chromedriver is started on a free port and stopped by its
//! PID; every wait is bounded. Without `chromium` and `chromedriver` the tests skip with a
//! message, unless `FERRY_REQUIRE_BROWSER=1` (CI sets it, after installing both).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The key WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
}

/// The chromium binary (Debian's wrapper script if its program is elsewhere).
fn chromium() -> Option<&'static str> {
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Whether the browser tests can run here; if not, why, and whether that is an error
/// (`FERRY_REQUIRE_BROWSER=1`).
pub fn available() -> Result<(), String> {
    let missing = match (chromium(), which("chromedriver")) {
        (Some(_), true) => return Ok(()),
        (None, _) => "chromium is not installed",
        (_, false) => "chromedriver is not installed",
    };
    let why = format!("{missing} (apt-get install chromium chromium-driver)");
    if std::env::var("FERRY_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("FERRY_REQUIRE_BROWSER=1 but {why}");
    }
    Err(why)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `base64(SHA-256(SubjectPublicKeyInfo))` of the key in `key_pem`: what Chromium's
/// `--ignore-certificate-errors-spki-list` takes, to trust one self-signed certificate.
pub fn spki_hash(key_pem: &str) -> String {
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::from_pem(key_pem).expect("a PEM key");
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(key.subject_public_key_info()))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with its profile in `profile` (kept there,
    /// so a second session on the same folder finds the first one's IndexedDB), trusting the
    /// certificate whose key has SPKI hash `spki`.
    pub fn start(profile: &Path, spki: &str) -> Self {
        Self::start_with(profile, spki, &[])
    }

    /// Like `start`, with more Chromium flags (`--disable-quic`, say).
    pub fn start_with(profile: &Path, spki: &str, flags: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            agent,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let ready = browser
                .agent
                .get(format!("{}/status", browser.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=900,700".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!("--ignore-certificate-errors-spki-list={spki}"),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium().expect("chromium"), "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let reply = browser.call("POST", "/session", Some(capabilities));
        browser.session = reply["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a WebDriver session: {reply}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let reply = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut reply = reply.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let value: Value = reply.body_mut().read_json().unwrap_or(Value::Null);
        value.get("value").cloned().unwrap_or(value)
    }

    pub fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn element(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Chooses `files` on the file input `css`, as a person would.
    pub fn set_files(&self, css: &str, files: &[&Path]) {
        let element = self.element(css);
        let text: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text.join("\n") })),
        );
    }

    /// Runs `script` in every page opened from now on, before the page's own scripts (through
    /// the DevTools protocol, which chromedriver relays).
    pub fn before_each_page(&self, script: &str) {
        self.call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({
                "cmd": "Page.addScriptToEvaluateOnNewDocument",
                "params": { "source": script },
            })),
        );
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub fn exec(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    pub fn click(&self, css: &str) {
        let element = self.element(css);
        self.call("POST", &format!("/element/{element}/click"), None);
    }

    /// Whether the control `css` is enabled (a disabled button ignores clicks).
    pub fn enabled(&self, css: &str) -> bool {
        let element = self.element(css);
        self.call("GET", &format!("/element/{element}/enabled"), None) == json!(true)
    }

    pub fn text(&self, css: &str) -> String {
        let element = self.element(css);
        let text = self.call("GET", &format!("/element/{element}/text"), None);
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Polls `#status` until `done` says so or `limit` passes; its last text.
    pub fn wait_status(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.text("#status");
            if done(&status) || Instant::now() >= deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The page's console messages since the last call (to explain a failure).
    pub fn console(&self) -> String {
        let logs = self.call("POST", "/se/log", Some(json!({"type": "browser"})));
        logs.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| format!("{} {}\n", e["level"], e["message"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A PNG of the page as it is now.
    pub fn screenshot(&self, path: &Path) {
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        std::fs::write(path, bytes).expect("screenshot written");
    }

    /// Closes the browser (as closing the window would) and stops chromedriver.
    pub fn quit(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .agent
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
            self.session.clear();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}
