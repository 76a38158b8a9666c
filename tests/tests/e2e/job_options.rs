//! The options of a job (issue 9), with the built binaries: `--dedup` (and across owners),
//! `--on-exists`, several files in flight, `ferry ping`, the client config file, a chunk size
//! beyond the server's limit, `pick 1,3` with marks, completions and manual pages.

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::*;

use crate::jobs::{json_lines, Job};

/// `--dedup`: a renamed copy of a file the owner already uploaded is published by link with 0
/// bytes sent; the same file under its own name (journal lost) is `skipped`, not published
/// twice; another owner's identical file is sent in full unless the server allows dedup
/// across owners.
#[test]
fn dedup_publishes_a_renamed_copy_without_sending_it() {
    let job = Job::start();
    let original = random_file(job.work.path(), "take1.mov", 5 << 20, 31);
    let out = job
        .upload(std::slice::from_ref(&original), &[])
        .output()
        .unwrap();
    assert!(out.status.success());

    let copy = job.work.path().join("copy of take1.mov");
    std::fs::copy(&original, &copy).unwrap();
    let out = job
        .upload(std::slice::from_ref(&copy), &["--dedup"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = &json_lines(&out.stdout)[0];
    assert_eq!(line["status"], "deduplicated", "{line}");
    assert_eq!(line["bytes_sent"], 0, "{line}");
    assert_same_file(&copy, &job.data.join("files/alice/copy of take1.mov"));

    // A fresh journal: the server recognises the content under the same name.
    let out = job
        .upload(std::slice::from_ref(&original), &["--dedup"])
        .arg("--state-dir")
        .arg(job.work.path().join("other-state"))
        .output()
        .unwrap();
    let line = &json_lines(&out.stdout)[0];
    assert_eq!(line["status"], "skipped", "{line}");
    assert_eq!(line["bytes_sent"], 0, "{line}");
    assert_eq!(job.published(), ["copy of take1.mov", "take1.mov"]);

    // Another owner: never linked to alice's file (it would reveal that she has it).
    let bob = ferry_server::Tokens::new(&job.data).add("bob").unwrap();
    let out = job
        .upload(std::slice::from_ref(&original), &["--dedup"])
        .args(["--token", &bob])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = &json_lines(&out.stdout)[0];
    assert_eq!(line["status"], "complete", "{line}");
    assert_eq!(line["bytes_sent"], 5 << 20, "{line}");
}

/// `ferryd --dedup-across-owners`: another owner's identical file is published by link too.
#[test]
fn dedup_across_owners_when_the_operator_allows_it() {
    let job = Job(Deployment::start(&["--dedup-across-owners"]));
    let original = random_file(job.work.path(), "shared.mov", 3 << 20, 81);
    assert!(job
        .upload(std::slice::from_ref(&original), &[])
        .output()
        .unwrap()
        .status
        .success());
    let bob = ferry_server::Tokens::new(&job.data).add("bob").unwrap();
    let out = job
        .upload(std::slice::from_ref(&original), &["--dedup"])
        .args(["--token", &bob])
        .output()
        .unwrap();
    let line = &json_lines(&out.stdout)[0];
    assert_eq!(line["status"], "deduplicated", "{line}");
    assert_eq!(line["bytes_sent"], 0, "{line}");
    assert_same_file(&original, &job.data.join("files/bob/shared.mov"));
}

/// `--on-exists`: a different file under a taken name is published as `name (1)` by default,
/// skipped with `skip` (nothing sent), refused with `fail` (exit 2, `already_exists`).
#[test]
fn on_exists_renames_skips_or_fails() {
    let job = Job::start();
    let first = random_file(job.work.path(), "clip.mov", 1 << 20, 41);
    assert!(job.upload(&[first], &[]).output().unwrap().status.success());
    let other_dir = job.work.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let second = random_file(&other_dir, "clip.mov", 1 << 20, 42);

    let out = job
        .upload(std::slice::from_ref(&second), &["--on-exists", "skip"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = &json_lines(&out.stdout)[0];
    assert_eq!(
        (&line["status"], &line["bytes_sent"]),
        (&"skipped".into(), &0.into()),
        "{line}"
    );

    let out = job
        .upload(std::slice::from_ref(&second), &["--on-exists", "fail"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // The server's lookup tells the client before it creates anything (issue 22).
    assert!(
        stderr.contains(
            "already_exists: a different file is on the server as clip.mov (--on-exists fail)"
        ),
        "{stderr}"
    );
    assert_eq!(json_lines(&out.stdout)[0]["status"], "failed");
    assert_eq!(job.published(), ["clip.mov"]);

    let out = job
        .upload(std::slice::from_ref(&second), &[])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(json_lines(&out.stdout)[0]["file_name"], "clip (1).mov");
    assert_same_file(&second, &job.data.join("files/alice/clip (1).mov"));
}

/// Small files do not wait behind a huge one: with the huge file first, the small ones are
/// published while it is still being sent (several files in flight, one window).
#[test]
fn small_files_do_not_wait_behind_a_huge_one() {
    let job = Job::start();
    let files = vec![
        random_file(job.work.path(), "huge.mov", 32 << 20, 51),
        random_file(job.work.path(), "small1.mov", 256 << 10, 52),
        random_file(job.work.path(), "small2.mov", 256 << 10, 53),
    ];
    let mut child = job.upload(&files, &["--limit-rate", "8M"]).spawn().unwrap();
    let smalls_first = eventually_blocking(Duration::from_secs(30), || {
        job.published() == ["small1.mov", "small2.mov"]
    });
    let status = wait_child(&mut child, Duration::from_secs(60)).expect("the job ends");
    assert!(status.success());
    assert!(
        smalls_first,
        "the small files were published before the huge one"
    );
    assert_eq!(job.published(), ["huge.mov", "small1.mov", "small2.mov"]);
    for f in &files {
        assert_same_file(
            f,
            &job.data.join("files/alice").join(f.file_name().unwrap()),
        );
    }
}

/// `ferry ping`: the server's version and limits, the token accepted, N round trips; a bad
/// token is exit 2 with the server's reason.
#[test]
fn ping_reports_round_trips_version_and_token() {
    let job = Job::start();
    let out = job.ferry(&["ping", "-c", "3"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let expected = format!(
        "ferryd 0.1.0 (protocol {}), token accepted for \"alice\"",
        ferry_proto::PROTOCOL_VERSION
    );
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(stdout.contains("round trips: 3 probes, min "), "{stdout}");
    // The service id, the same through every node of a service (32 hex characters).
    let service = stdout
        .lines()
        .find_map(|l| l.strip_prefix("service: "))
        .unwrap_or_else(|| panic!("a service line: {stdout}"));
    assert!(
        service.len() == 32 && service.bytes().all(|b| b.is_ascii_hexdigit()),
        "{service}"
    );
    assert!(stdout.contains("limits: files up to 1.0 TiB"), "{stdout}");

    let out = job
        .ferry(&["ping", "--json", "--token", "fy_nope"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unauthorized"), "{stderr}");
}

/// The client config file: settings without flags; a flag beats the file; an unknown key or a
/// bad value is exit 2 naming the key and the file.
#[test]
fn the_config_file_supplies_settings_and_flags_win() {
    let job = Job::start();
    let config = job.work.path().join("ferry.toml");
    let write = |text: String| std::fs::write(&config, text).unwrap();
    write(format!(
        "server = \"{}\"\ntoken = \"{}\"\nfingerprint = \"{}\"\n",
        job.server.addr, job.token, job.server.fingerprint
    ));
    let ferry = |args: &[&str]| {
        Command::new(binary("ferry"))
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(job.work.path().join("state"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = ferry(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "nothing in progress\n"
    );

    // -v: connection events.
    let out = ferry(&["-v", "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("ferry: connected to {} ", job.server.addr))
            && stderr.contains("as \"alice\", ferryd 0.1.0, in "),
        "{stderr}"
    );

    let out = ferry(&["--token", "fy_wrong", "status"]);
    assert_eq!(out.status.code(), Some(2), "the flag's token is used");

    write("servr = \"x:1\"\n".into());
    let out = ferry(&["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("servr") && stderr.contains("ferry.toml"),
        "{stderr}"
    );

    write("chunk-size = \"4 furlongs\"\n".into());
    let stderr = String::from_utf8_lossy(&ferry(&["status"]).stderr).into_owned();
    assert!(
        stderr.contains("chunk-size") && stderr.contains("ferry.toml"),
        "{stderr}"
    );
}

/// A chunk size outside the server's limits is refused before anything is created, in human
/// units.
#[test]
fn a_chunk_size_beyond_the_servers_limit_is_refused_in_human_units() {
    let job = Job::start();
    let file = random_file(job.work.path(), "a.mov", 1 << 20, 61);
    let out = job
        .ferry(&["upload", "--chunk-size", "1GB"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("--chunk-size 1.0 GiB is outside this server's limits (4.0 KiB to 64.0 MiB)"),
        "{stderr}"
    );
}

/// `ferry pick`: several files chosen at once (`1,3`), the menu on stderr so stdout holds only
/// the JSON lines, and files already on the server marked on the next round. Issue 22, finding
/// 9: files in sub-folders are listed (a card's were "no files"), picked files are published in
/// the folder as `upload DIR` does (not flat at the owner's root), and what `upload DIR` sent is
/// marked.
#[test]
fn pick_takes_several_and_marks_what_is_on_the_server() {
    let job = Job::start();
    let dir = job.work.path().join("card");
    std::fs::create_dir_all(dir.join("DCIM")).unwrap();
    // d.mov was sent by `upload card/` before the others were on the card.
    random_file(&dir, "d.mov", 1000, 80);
    let sent = job
        .upload(std::slice::from_ref(&dir), &[])
        .output()
        .unwrap();
    assert!(sent.status.success());
    for (n, name) in ["a.mov", "b.mov", "DCIM/c.mov"].iter().enumerate() {
        random_file(&dir, name, 300 << 10, 70 + n as u64);
    }
    let mut child = job
        .ferry(&["pick", "--json"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"1,2\nq\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = json_lines(&out.stdout);
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l["file_name"].as_str().unwrap_or(""))
        .collect();
    // The menu, in `upload`'s order: DCIM/c.mov, a.mov, b.mov, d.mov.
    assert_eq!(
        names,
        ["card/DCIM/c.mov", "card/a.mov", ""],
        "two files and the summary: {lines:?}"
    );
    assert_eq!(lines[2]["status"], "summary");
    for name in ["DCIM/c.mov", "a.mov"] {
        assert_same_file(
            &dir.join(name),
            &job.data.join("files/alice/card").join(name),
        );
    }
    let first_menu = &stderr[..stderr.find("Upload which?").unwrap()];
    assert!(first_menu.contains("DCIM/c.mov\n"), "{stderr}");
    assert!(first_menu.contains("d.mov  (on the server)"), "{stderr}");
    let second_menu = &stderr[stderr.rfind("  1  ").unwrap()..];
    assert!(second_menu.contains("a.mov  (on the server)"), "{stderr}");
    assert!(!second_menu.contains("b.mov  (on the server)"), "{stderr}");
    assert!(
        second_menu.contains("DCIM/c.mov  (on the server)"),
        "{stderr}"
    );
}

/// Shell completions and manual pages come from the same command-line definition.
#[test]
fn completions_and_manual_pages() {
    let out = Command::new(binary("ferry"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("_ferry()") && script.contains("--on-exists"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("ferry"))
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = std::fs::read_to_string(dir.path().join("ferry-upload.1")).unwrap();
    assert!(page.contains("on\\-exists"), "{page}");
    // Issue 22, finding 17: the pages say more than --help: exit codes and examples.
    for (binary_name, page) in [("ferry", "ferry.1"), ("ferryd", "ferryd.1")] {
        let out = Command::new(binary(binary_name))
            .arg("man")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(
            text.contains("Exit status:") && text.contains("Examples:"),
            "{page} lacks exit codes or examples"
        );
    }
}

/// The digests a user can check: `--json` reports the content hash (and with `--sha256` the
/// plain SHA-256); `ferry hash` prints the same content hash for the source and for the
/// published file, and with `--sha256` exactly what sha256sum prints; an unreadable file is
/// exit 2 naming it, the other files still printed.
#[test]
fn hash_prints_what_the_upload_reported() {
    let job = Job::start();
    let source = random_file(job.work.path(), "take.mov", (5 << 20) + 7, 41);
    let out = job
        .upload(std::slice::from_ref(&source), &["--sha256"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = &json_lines(&out.stdout)[0];
    let plain = sha256_file(&source);
    assert_eq!(line["sha256"], plain.as_str(), "{line}");
    let content = line["content_hash"].as_str().unwrap().to_owned();
    // `Job::upload` sends 1 MiB chunks; `ferry hash` is told the same.
    assert_eq!(content, content_hash_file(&source, 1 << 20));

    let published = job.data.join("files/alice/take.mov");
    let hash = |args: &[&str]| {
        Command::new(binary("ferry"))
            .arg("hash")
            .args(args)
            .output()
            .unwrap()
    };
    let (src, dst) = (source.to_str().unwrap(), published.to_str().unwrap());
    let out = hash(&["--chunk-size", "1MiB", src, dst]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{content}  {src}\n{content}  {dst}\n")
    );
    let out = hash(&["--sha256", src]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{plain}  {src}\n")
    );
    let out = hash(&["--json", "--chunk-size", "1MiB", src]);
    let line = &json_lines(&out.stdout)[0];
    assert_eq!(line["sha256"], plain.as_str());
    assert_eq!(line["chunk_size"], 1 << 20);
    assert_eq!(
        line["content_hash"],
        content_hash_file(&source, 1 << 20).as_str()
    );

    let missing = job.work.path().join("missing.mov");
    let out = hash(&["--chunk-size", "1MiB", missing.to_str().unwrap(), src]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.mov"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{content}  {src}\n")
    );
}
