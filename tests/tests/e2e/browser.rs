//! The upload page in a real browser: Debian's Chromium, headless, over WebDriver, against the
//! built `ferryd` with its web listener. The page is opened through a link `ferryd link` made;
//! Chromium trusts the web listener's self-signed certificate by its key
//! (`--ignore-certificate-errors-spki-list`, as a person clicking through the warning once),
//! and the QUIC port's browser certificate by the hash the page fetches.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::browser::{available, spki_hash, Browser};
use ferry_tests::{assert_same_file, binary, random_file, Deployment};

/// `ferryd serve` with the web and admin listeners, a link for alice, and Chromium's trust.
struct Site {
    deployment: Deployment,
    url: String,
    spki: String,
}

impl Site {
    fn start() -> Option<Self> {
        if let Err(why) = available() {
            eprintln!("skipped: {why}");
            return None;
        }
        let deployment = Deployment::start(&[
            "--web-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        let web = deployment.server.web.expect("the web listener's address");
        let out = Command::new(binary("ferryd"))
            .args(["link", "alice", "--expires", "1h", "--data"])
            .arg(&deployment.data)
            .args(["--web-url", &format!("https://127.0.0.1:{}", web.port())])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(
            url.starts_with(&format!("https://127.0.0.1:{}/u/fl_", web.port())),
            "{url}"
        );
        let key = std::fs::read_to_string(deployment.data.join("tls").join("key.pem")).unwrap();
        Some(Self {
            deployment,
            url,
            spki: spki_hash(&key),
        })
    }

    fn published(&self, name: &str) -> std::path::PathBuf {
        self.deployment.data.join("files").join("alice").join(name)
    }

    /// One admin GET: the body.
    fn admin(&self, path: &str) -> String {
        let addr = self.deployment.server.admin.expect("the admin listener");
        crate::admin::get(&addr.to_string(), path, None).1
    }

    fn bytes_received(&self) -> u64 {
        crate::admin::sample(&self.admin("/metrics"), "ferry_bytes_received_total") as u64
    }

    /// A browser on `profile` that opened `url`, saw the page ready, chose `files` and clicked
    /// `#upload`.
    fn upload(&self, profile: &Path, url: &str, files: &[&Path]) -> Browser {
        self.upload_with(profile, url, files, &[], None)
    }

    /// Like `upload`, in a Chromium started with `flags`, running `inject` before each page.
    fn upload_with(
        &self,
        profile: &Path,
        url: &str,
        files: &[&Path],
        flags: &[&str],
        inject: Option<&str>,
    ) -> Browser {
        let browser = Browser::start_with(profile, &self.spki, flags);
        if let Some(script) = inject {
            browser.before_each_page(script);
        }
        browser.open(url);
        let status = browser.wait_status(Duration::from_secs(20), settled);
        assert_eq!(status, "ready", "console:\n{}", browser.console());
        assert!(!browser.enabled("#upload"), "nothing chosen yet");
        browser.set_files("#files", files);
        assert!(browser.enabled("#upload"), "files chosen");
        browser.click("#upload");
        browser
    }

    /// Waits (at most 60 s) until the unfinished upload has `bytes` durable.
    fn wait_durable(&self, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.durable_bytes() < bytes && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Durable bytes of the unfinished upload (0 if there is none).
    fn durable_bytes(&self) -> u64 {
        let uploads: serde_json::Value = serde_json::from_str(&self.admin("/uploads")).unwrap();
        uploads
            .as_array()
            .and_then(|a| a.first())
            .and_then(|u| u["durable_bytes"].as_u64())
            .unwrap_or(0)
    }
}

/// The page has checked its link (or found nothing to check).
fn settled(status: &str) -> bool {
    status != "loading" && status != "checking the link"
}

fn is_done(status: &str) -> bool {
    status == "complete" || status.starts_with("failed")
}

#[test]
fn the_page_uploads_two_files_through_a_link() {
    let Some(site) = Site::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let small = random_file(local.path(), "notes.txt", (100 << 10) + 3, 5);
    let big = random_file(local.path(), "clip.mov", 64 << 20, 6);
    let profile = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let browser = site.upload(profile.path(), &site.url, &[&small, &big]);
    let status = browser.wait_status(Duration::from_secs(180), is_done);
    let took = started.elapsed();
    assert_eq!(status, "complete", "console:\n{}", browser.console());
    assert_same_file(&small, &site.published("notes.txt"));
    assert_same_file(&big, &site.published("clip.mov"));
    eprintln!(
        "two files, {} MiB, in {:.2} s through the page",
        (64 << 20) / (1 << 20),
        took.as_secs_f64()
    );
    browser.quit();
}

#[test]
fn a_closed_page_resumes_sending_only_the_missing_chunks() {
    let Some(site) = Site::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let size = 64u64 << 20;
    let file = random_file(local.path(), "long.mov", size as usize, 9);
    let profile = tempfile::tempdir().unwrap();
    // First visit, paced at 16 MiB/s so that it is surely cut off mid-way.
    let paced = format!("{}?limit=16M", site.url);
    let browser = site.upload(profile.path(), &paced, &[&file]);
    site.wait_durable(16 << 20);
    if let Ok(path) = std::env::var("FERRY_SCREENSHOT") {
        browser.screenshot(Path::new(&path));
    }
    // Closed as a person closes the window; in-flight chunks are lost or committed.
    browser.quit();
    std::thread::sleep(Duration::from_secs(1));
    let durable = site.durable_bytes();
    let received_before = site.bytes_received();
    assert!(
        durable >= 16 << 20 && durable < size,
        "cut off mid-way: {durable} of {size}"
    );

    // Second visit, same browser profile: the page finds its upload in IndexedDB, asks the
    // server, and sends only the rest.
    let browser = site.upload(profile.path(), &site.url, &[&file]);
    let status = browser.wait_status(Duration::from_secs(120), is_done);
    assert_eq!(status, "complete");
    assert_same_file(&file, &site.published("long.mov"));
    let sent_again = site.bytes_received() - received_before;
    assert_eq!(
        sent_again,
        size - durable,
        "only the chunks the server did not hold were sent ({durable} of {size} durable)"
    );
    let note = browser.text("#list li .note");
    assert!(note.starts_with("done: long.mov"), "{note}");
    eprintln!(
        "resumed: {} MiB durable before, {} MiB sent after",
        durable >> 20,
        sent_again >> 20
    );
    browser.quit();
}

#[test]
fn pause_stops_sending_and_resume_finishes() {
    let Some(site) = Site::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let size = 64u64 << 20;
    let file = random_file(local.path(), "paused.mov", size as usize, 13);
    let profile = tempfile::tempdir().unwrap();
    let paced = format!("{}?limit=16M", site.url);
    let browser = site.upload(profile.path(), &paced, &[&file]);
    site.wait_durable(8 << 20);
    browser.click("#pause");
    assert_eq!(browser.text("#status"), "paused");
    // Issue 22, finding 8: a paused upload shows no rate or time left.
    let note = browser.text("#list li .note");
    assert!(note.ends_with("· paused") && !note.contains("/s"), "{note}");
    // What was in flight lands (at most 6 chunks, paced at 16 MiB/s), then nothing more.
    std::thread::sleep(Duration::from_millis(3500));
    let held = site.durable_bytes();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(site.durable_bytes(), held, "nothing is sent while paused");
    assert!(held < size, "paused mid-way: {held} of {size}");
    browser.click("#pause");
    let status = browser.wait_status(Duration::from_secs(60), is_done);
    assert_eq!(status, "complete", "console:\n{}", browser.console());
    assert_same_file(&file, &site.published("paused.mov"));
    browser.quit();
}

/// The page as another web server would host it: the grant in the fragment (never sent to any
/// server) and the ferryd web listener named by `?server=`.
#[test]
fn the_page_takes_the_grant_from_the_fragment_and_the_server_from_the_query() {
    let Some(site) = Site::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let file = random_file(local.path(), "elsewhere.bin", (3 << 20) + 11, 17);
    let (origin, grant) = site.url.split_once("/u/").unwrap();
    let host = origin.trim_start_matches("https://");
    let profile = tempfile::tempdir().unwrap();
    let elsewhere = format!("{origin}/index.html?server={host}#{grant}");
    let browser = site.upload(profile.path(), &elsewhere, &[&file]);
    let status = browser.wait_status(Duration::from_secs(60), is_done);
    assert_eq!(status, "complete", "console:\n{}", browser.console());
    assert_same_file(&file, &site.published("elsewhere.bin"));
    browser.quit();
}

/// A revoked link: the page says why, in the DOM contract's form, and explains it — when it
/// opens (issue 22, finding 8: it said `ready` until Upload was pressed), with Upload disabled.
/// The words are the server's on either path: a page whose WebTransport session fails for
/// another reason checks the link over tus, whose `401` carries them in its challenge.
#[test]
fn a_revoked_link_fails_with_its_code_and_message() {
    let Some(site) = Site::start() else { return };
    let out = Command::new(binary("ferryd"))
        .args(["link", "--revoke", &site.url, "--data"])
        .arg(&site.deployment.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local = tempfile::tempdir().unwrap();
    let file = random_file(local.path(), "late.bin", 1 << 20, 19);
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(profile.path(), &site.spki);
    browser.open(&site.url);
    let status = browser.wait_status(Duration::from_secs(30), settled);
    let via = browser.text("#via");
    if via.contains("tus") {
        eprintln!("the link was checked over tus: {via}");
    }
    assert_eq!(
        status,
        "failed: unauthorized unknown or revoked upload link",
        "{via}\nconsole:\n{}",
        browser.console()
    );
    assert!(browser.text("#explain").contains("not valid"));
    browser.set_files("#files", &[&file]);
    assert!(
        !browser.enabled("#upload"),
        "nothing can be sent through it"
    );
    assert!(!site.published("late.bin").exists());
    browser.quit();

    // Without a WebTransport session the page checks the link over tus: the same words.
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(profile.path(), &site.spki);
    browser.before_each_page(UDP_BLOCKED);
    browser.open(&site.url);
    let status = browser.wait_status(Duration::from_secs(30), settled);
    assert_eq!(
        status,
        "failed: unauthorized unknown or revoked upload link"
    );
    assert!(browser.text("#via").contains("no WebTransport session"));
    assert!(browser.text("#explain").contains("not valid"));
    browser.quit();
}

/// Issue 22, finding 5: reopening a link and choosing a file that was uploaded already (a new
/// browser, nothing in its IndexedDB) re-sent all of it and published `clip (1).mov`; pressing
/// Upload again on a finished page made another upload. The page asks the server first: the
/// same content is not sent again, and Upload is off until new files are chosen.
#[test]
fn a_finished_file_chosen_again_is_not_sent_again() {
    let Some(site) = Site::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let file = random_file(local.path(), "clip.mov", 24 << 20, 21);
    let profile = tempfile::tempdir().unwrap();
    let browser = site.upload(profile.path(), &site.url, &[&file]);
    assert_eq!(
        browser.wait_status(Duration::from_secs(120), is_done),
        "complete"
    );
    assert!(
        !browser.enabled("#upload"),
        "Upload is off after a finished upload"
    );
    browser.quit();
    let received = site.bytes_received();

    let fresh = tempfile::tempdir().unwrap();
    let browser = site.upload(fresh.path(), &site.url, &[&file]);
    let status = browser.wait_status(Duration::from_secs(120), is_done);
    assert_eq!(status, "complete", "console:\n{}", browser.console());
    let note = browser.text("#list li .note");
    assert_eq!(note, "already on the server as clip.mov");
    assert_eq!(site.bytes_received(), received, "nothing sent again");
    assert!(!site.published("clip (1).mov").exists(), "no copy");
    browser.quit();
}

/// Bytes received over tus (`ferry_bytes_received_total{frontend="tus"}`).
fn tus_bytes(site: &Site) -> u64 {
    crate::admin::sample_of(
        &site.admin("/metrics"),
        "ferry_bytes_received_total",
        "frontend=\"tus\"",
    ) as u64
}

/// A WebTransport whose sessions never open, as on a network that blocks UDP: Chromium's own
/// class replaced before the page loads by one whose `ready` fails.
const UDP_BLOCKED: &str = "window.WebTransport = class { constructor() { \
    this.ready = Promise.reject(new Error('UDP blocked')); this.ready.catch(() => {}); \
    this.closed = new Promise(() => {}); } close() {} };";

/// Where the browser cannot open a WebTransport session, or has no WebTransport at all, the
/// page says so and sends over tus on the web listener: the files published whole, every byte
/// over tus.
#[test]
fn without_a_webtransport_session_the_page_sends_over_tus() {
    let Some(site) = Site::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let small = random_file(local.path(), "notes.txt", (100 << 10) + 3, 51);
    let big = random_file(local.path(), "clip.mov", 24 << 20, 53);
    let profile = tempfile::tempdir().unwrap();
    let browser = site.upload_with(
        profile.path(),
        &site.url,
        &[&small, &big],
        &[],
        Some(UDP_BLOCKED),
    );
    let status = browser.wait_status(Duration::from_secs(120), is_done);
    assert_eq!(status, "complete", "console:\n{}", browser.console());
    let via = browser.exec("return document.getElementById('via').dataset.via");
    assert_eq!(via, "tus", "{}", browser.text("#via"));
    assert!(
        browser
            .text("#via")
            .contains("no WebTransport session (UDP blocked)"),
        "{}",
        browser.text("#via")
    );
    assert_same_file(&small, &site.published("notes.txt"));
    assert_same_file(&big, &site.published("clip.mov"));
    assert_eq!(tus_bytes(&site), (100 << 10) + 3 + (24 << 20));
    browser.quit();

    // No WebTransport at all (as in a browser without it: the class removed before the page
    // loads).
    let other = random_file(local.path(), "other.bin", 3 << 20, 57);
    let profile = tempfile::tempdir().unwrap();
    let browser = site.upload_with(
        profile.path(),
        &site.url,
        &[&other],
        &[],
        Some("delete window.WebTransport;"),
    );
    let status = browser.wait_status(Duration::from_secs(120), is_done);
    assert_eq!(status, "complete", "console:\n{}", browser.console());
    assert!(
        browser
            .text("#via")
            .contains("this browser has no WebTransport"),
        "{}",
        browser.text("#via")
    );
    assert_same_file(&other, &site.published("other.bin"));
    browser.quit();
}

/// Over tus too, a closed page resumes: the second visit asks the server for the offset and
/// sends only the rest (every byte received once over tus, the first visit's cut-off request
/// included), and the file is whole.
#[test]
fn over_tus_a_closed_page_resumes_from_the_servers_offset() {
    let Some(site) = Site::start() else { return };
    let local = tempfile::tempdir().unwrap();
    let size = 48u64 << 20;
    let file = random_file(local.path(), "long.mov", size as usize, 55);
    let profile = tempfile::tempdir().unwrap();
    let paced = format!("{}?via=tus&limit=8M", site.url);
    let browser = site.upload(profile.path(), &paced, &[&file]);
    assert_eq!(
        browser.exec("return document.getElementById('via').dataset.via"),
        "tus"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while tus_bytes(&site) < 16 << 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    browser.quit();
    std::thread::sleep(Duration::from_secs(1));
    let held = tus_bytes(&site);
    assert!(
        held >= 16 << 20 && held < size,
        "{held} bytes held after the first visit"
    );
    let browser = site.upload(profile.path(), &format!("{}?via=tus", site.url), &[&file]);
    let status = browser.wait_status(Duration::from_secs(120), is_done);
    assert_eq!(status, "complete", "console:\n{}", browser.console());
    assert_same_file(&file, &site.published("long.mov"));
    assert_eq!(tus_bytes(&site), size, "nothing sent twice");
    browser.quit();
}

/// A plain-HTTP static site on loopback (another origin than the web listener), serving
/// `files` by path until dropped (at most 300 s), one request per connection.
struct StaticSite {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StaticSite {
    fn start(files: Vec<(&'static str, &'static str, Vec<u8>)>) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_owned();
                let reply = match files.iter().find(|(p, _, _)| *p == path) {
                    Some((_, kind, body)) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&reply);
            }
        });
        Self { addr, stop }
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Uppy with its tus plugin (the `uppy` bundle from npm), on a page of another origin allowed
/// by `--web-origin`, uploads two files through an upload link: both published whole.
#[test]
fn uppy_on_another_origin_uploads_over_tus() {
    if let Err(why) = available() {
        return eprintln!("skipped: {why}");
    }
    let Some(bundle) = ferry_tests::node::packed_file("uppy@6.0.1", "dist/uppy.min.js") else {
        return;
    };
    let page = std::fs::read(ferry_tests::py::script("clients/uppy.html")).unwrap();
    let site = StaticSite::start(vec![
        ("/", "text/html; charset=utf-8", page),
        (
            "/uppy.min.js",
            "text/javascript; charset=utf-8",
            std::fs::read(bundle).unwrap(),
        ),
    ]);
    let origin = format!("http://127.0.0.1:{}", site.addr.port());
    let deployment = Deployment::start(&["--web-listen", "127.0.0.1:0", "--web-origin", &origin]);
    let web = deployment.server.web.expect("the web listener");
    let (_, grant) = ferry_server::links::Links::new(&deployment.data)
        .add("alice", 0, 0, 0)
        .unwrap();
    let key = std::fs::read_to_string(deployment.data.join("tls").join("key.pem")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let small = random_file(local.path(), "poster.png", 200_001, 61);
    let big = random_file(local.path(), "trailer.mp4", 23_000_007, 63);
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(profile.path(), &spki_hash(&key));
    browser.open(&format!(
        "{origin}/?endpoint=https://127.0.0.1:{}/files/&grant={grant}",
        web.port()
    ));
    let status = browser.wait_status(Duration::from_secs(20), |s| s != "loading");
    assert_eq!(status, "ready", "console:\n{}", browser.console());
    browser.set_files("#files", &[&small, &big]);
    let status = browser.wait_status(Duration::from_secs(120), is_done);
    assert_eq!(status, "complete", "console:\n{}", browser.console());
    let alice = deployment.data.join("files/alice");
    assert_same_file(&small, &alice.join("poster.png"));
    assert_same_file(&big, &alice.join("trailer.mp4"));
    browser.quit();
}

/// Issue 25: two nodes of one service on SeaweedFS, each announcing the other's web listener
/// (`--web-peer`); the page opened on node A goes on through node B when A is killed.
#[test]
fn the_page_moves_to_another_node_when_its_node_dies() {
    use ferry_tests::weed::{S3Server, Weed};
    if let Err(why) = available() {
        eprintln!("skipped: {why}");
        return;
    }
    let Some(weed) = Weed::start() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let prefix = "page/";
    crate::scaleout::ferryd(&weed, prefix, &["token", "add", "alice"]);
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port_a, port_b) = (free(), free());
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let web = |port: u16, peer: u16| {
        vec![
            "--web-listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--web-origin".to_owned(),
            "*".to_owned(),
            "--web-peer".to_owned(),
            format!("https://127.0.0.1:{peer}"),
        ]
    };
    let args_a = web(port_a, port_b);
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let mut a = crate::scaleout::node(&weed, prefix, data_a.path(), &args_a);
    // B keeps its own generated identity: a copied self-signed one (`--cert`) would give it no
    // browser certificates, and Chromium would refuse its QUIC certificate (docs/scale-out.md).
    // The browser trusts both web listeners, as a person who accepted each once.
    let args_b = web(port_b, port_a);
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let _b = crate::scaleout::node(&weed, prefix, data_b.path(), &args_b);
    let url = crate::scaleout::link(
        &weed,
        prefix,
        data_a.path(),
        &format!("https://127.0.0.1:{port_a}"),
        &["alice", "--expires", "1h"],
    );
    let url = url.trim().to_owned();
    let spki = |data: &Path| {
        spki_hash(&std::fs::read_to_string(data.join("tls").join("key.pem")).unwrap())
    };
    let trusted = format!("{},{}", spki(data_a.path()), spki(data_b.path()));
    let local = tempfile::tempdir().unwrap();
    let size = 64u64 << 20;
    let file = random_file(local.path(), "take.mov", size as usize, 25);
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(profile.path(), &trusted);
    browser.open(&format!("{url}?limit=16M"));
    let status = browser.wait_status(Duration::from_secs(20), settled);
    assert_eq!(status, "ready", "console:\n{}", browser.console());
    browser.set_files("#files", &[&file]);
    browser.click("#upload");
    let s3 = runtime.block_on(weed.client(prefix));
    let deadline = Instant::now() + Duration::from_secs(60);
    while runtime.block_on(crate::scaleout::stored_parts(&s3, prefix)) < 2 {
        assert!(Instant::now() < deadline, "two parts stored within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let killed = Instant::now();
    a.kill9();
    let status = browser.wait_status(Duration::from_secs(180), is_done);
    assert_eq!(status, "complete", "console:\n{}", browser.console());
    eprintln!(
        "the page finished through node B {:.1} s after node A was killed",
        killed.elapsed().as_secs_f64()
    );
    let stored = runtime.block_on(crate::scaleout::object(&s3, prefix, "alice", "take.mov"));
    assert!(
        stored == std::fs::read(&file).unwrap(),
        "the object differs from the source"
    );
    browser.quit();
}
