//! `ferry hash`: a file's content hash (what `finish` carries and `--json` reports) and its
//! plain SHA-256, in one read, without a server. Run it on both machines to compare a
//! published file with its source.

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;

use ferry_client::digests::hash_file;
use ferry_client::ClientError;
use serde::Serialize;

#[derive(Serialize)]
struct Line<'a> {
    path: &'a str,
    size: u64,
    chunk_size: u64,
    content_hash: String,
    sha256: String,
}

/// Prints one line per file; exit 0, or 2 if a file could not be read (the others are still
/// printed).
pub(crate) fn hash(paths: &[PathBuf], chunk_size: u64, sha256: bool, json: bool) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for path in paths {
        let hashed = File::open(path).and_then(|file| {
            let size = file.metadata()?.len();
            let (content, plain) = hash_file(&file, size, chunk_size)?;
            Ok((size, content, plain))
        });
        let (size, content, plain) = match hashed {
            Ok(done) => done,
            Err(e) => {
                code = crate::fail("cannot hash", &ClientError::local(path.display(), e));
                continue;
            }
        };
        let shown = path.display().to_string();
        if json {
            let line = Line {
                path: &shown,
                size,
                chunk_size,
                content_hash: content.to_hex(),
                sha256: plain.to_hex(),
            };
            out!(
                "{}",
                serde_json::to_string(&line).expect("plain data serializes")
            );
        } else {
            // `sha256sum`'s format either way, so `sha256sum -c` and `diff` work on the output.
            let digest = if sha256 { plain } else { content };
            out!("{digest}  {shown}");
        }
    }
    code
}
