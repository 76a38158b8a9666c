//! JavaScript programs the tests run against the server with Node: real tus clients
//! (tus-js-client), with their packages from npm installed into `target/tools/npm/<name>`
//! (never globally). Scripts are CommonJS, so `NODE_PATH` finds the packages. `.ci/run`
//! installs Node and npm and sets `FERRY_REQUIRE_NODE=1`: there a package that cannot be
//! installed fails the test instead of skipping it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The `node_modules` folder holding `spec` (`name@version`) and its dependencies, installed on
/// first use. `None` (with the reason printed) where it cannot be installed and the run does
/// not require it.
pub fn package(spec: &str) -> Option<PathBuf> {
    match install(spec) {
        Ok(dir) => Some(dir),
        Err(why) if std::env::var("FERRY_REQUIRE_NODE").is_ok_and(|v| v == "1") => {
            panic!("FERRY_REQUIRE_NODE=1 but {spec} is not available: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: {spec} is not available: {why}");
            None
        }
    }
}

fn install(spec: &str) -> Result<PathBuf, String> {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let name: String = spec
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = tools_dir().join(name);
    let modules = dir.join("node_modules");
    if dir.join(".installed").exists() {
        return Ok(modules);
    }
    Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("node is not available ({e})"))?;
    let scratch = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let installed = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&scratch)
        .arg(spec)
        .status()
        .map_err(|e| format!("npm is not available ({e})"))?;
    if !installed.success() {
        return Err(format!("`npm install {spec}` failed ({installed})"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&scratch, &dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(".installed"), b"").map_err(|e| e.to_string())?;
    Ok(modules)
}

/// `target/tools/npm`.
fn tools_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/tools/npm
    exe.ancestors()
        .nth(3)
        .expect("the target directory")
        .join("tools")
        .join("npm")
}

/// A `node` command running `script` with the packages of `modules` on its `NODE_PATH`.
pub fn command(modules: &Path, script: &Path) -> Command {
    let mut command = Command::new("node");
    command.arg(script).env("NODE_PATH", modules);
    command
}

/// One file of the npm package `spec` (`name@version`), without its dependencies: a
/// self-contained bundle such as `uppy`'s `dist/uppy.min.js`, fetched with `npm pack` on first
/// use into `target/tools/npm/`. `None` as for [`package`].
pub fn packed_file(spec: &str, path: &str) -> Option<PathBuf> {
    match unpack(spec, path) {
        Ok(file) => Some(file),
        Err(why) if std::env::var("FERRY_REQUIRE_NODE").is_ok_and(|v| v == "1") => {
            panic!("FERRY_REQUIRE_NODE=1 but {spec} is not available: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: {spec} is not available: {why}");
            None
        }
    }
}

fn unpack(spec: &str, path: &str) -> Result<PathBuf, String> {
    static UNPACK: Mutex<()> = Mutex::new(());
    let _one = UNPACK.lock().unwrap_or_else(|p| p.into_inner());
    let name: String = spec
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = tools_dir().join(format!("{name}.packed"));
    let file = dir.join("package").join(path);
    if dir.join(".installed").exists() {
        return Ok(file);
    }
    let scratch = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let packed = Command::new("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(&scratch)
        .arg(spec)
        .output()
        .map_err(|e| format!("npm is not available ({e})"))?;
    if !packed.status.success() {
        return Err(format!("`npm pack {spec}` failed ({})", packed.status));
    }
    let tarball = String::from_utf8_lossy(&packed.stdout).trim().to_owned();
    let unpacked = Command::new("tar")
        .arg("xzf")
        .arg(scratch.join(&tarball))
        .arg("-C")
        .arg(&scratch)
        .status()
        .map_err(|e| format!("tar is not available ({e})"))?;
    if !unpacked.success() || !scratch.join("package").join(path).is_file() {
        return Err(format!("{tarball} holds no {path}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&scratch, &dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(".installed"), b"").map_err(|e| e.to_string())?;
    Ok(file)
}
