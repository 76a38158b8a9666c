//! Python programs the tests run against the server — hostile clients written with aioquic (a
//! QUIC stack that lets a client choose every STREAM frame's offset), real tus clients — with
//! their packages from PyPI installed into `target/tools/py/<name>-<version>` (never into a
//! Python environment), found through `PYTHONPATH`. `.ci/run` sets `FERRY_REQUIRE_PYTHON=1`:
//! there a package that cannot be installed fails the test instead of skipping it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The folder holding `name==version` and its dependencies, installed on first use. `None`
/// (with the reason printed) where it cannot be installed and the run does not require it.
pub fn package(name: &str, version: &str) -> Option<PathBuf> {
    match install(name, version) {
        Ok(dir) => Some(dir),
        Err(why) if std::env::var("FERRY_REQUIRE_PYTHON").is_ok_and(|v| v == "1") => {
            panic!("FERRY_REQUIRE_PYTHON=1 but {name} {version} is not available: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: {name} {version} is not available: {why}");
            None
        }
    }
}

fn install(name: &str, version: &str) -> Result<PathBuf, String> {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tools_dir().join(format!("{name}-{version}"));
    if dir.join(".installed").exists() {
        return Ok(dir);
    }
    let scratch = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let installed = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-warn-script-location", "--target"])
        .arg(&scratch)
        .arg(format!("{name}=={version}"))
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status()
        .map_err(|e| format!("python3 is not available ({e})"))?;
    if !installed.success() {
        return Err(format!(
            "`pip install {name}=={version}` failed ({installed})"
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&scratch, &dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(".installed"), b"").map_err(|e| e.to_string())?;
    Ok(dir)
}

/// `target/tools/py`.
fn tools_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/tools/py
    exe.ancestors()
        .nth(3)
        .expect("the target directory")
        .join("tools")
        .join("py")
}

/// A script of `tests/attacks/`, `tests/clients/` or `tests/fakes/`, by its path under `tests/`.
pub fn script(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}
