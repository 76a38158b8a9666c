//! Operator hooks: commands run through `/bin/sh -c` with the upload described in `FERRY_*`
//! environment variables.
//!
//! - `--on-complete CMD` runs after an upload is published. The job is queued durably in the
//!   same transaction that records the upload complete, and removed only after the command
//!   ended, so a crash or a kill before that runs it again at the next start: at least once.
//!   At most `--hook-concurrency` run at a time, each stopped (killed) after `--hook-timeout`;
//!   exit status and the end of stderr are logged and counted. It never holds up an upload. A
//!   hook that could not even start (a fork failure, a missing shell) is tried again later
//!   (30 s, doubling to 10 min), never dropped: a published upload's hook runs at least once.
//! - Each run is its own process group, and a run that times out (or whose server stops) is
//!   killed with its whole group: the shell and everything it started. A run ends when the
//!   shell exited and its stdout and stderr closed; a background process that closed them
//!   (`cmd >/dev/null 2>&1 &`) is left running.
//! - Values pass through the environment, which cannot hold a NUL byte: `create` refuses a
//!   description with one (`bad_field`), and any that reached the queue before that rule is
//!   passed with U+FFFD in its place.
//! - `--on-create CMD` runs before an upload is created; a non-zero exit refuses it with
//!   `refused` and the command's first line of stdout as the message the client shows.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::metrics::metrics;
use crate::store::HookJob;

/// Bytes of a hook's stdout and stderr kept (the rest is read and dropped).
const KEPT_OUTPUT: u64 = 16 * 1024;
/// Longest an `--on-create` hook may take: a client waits for it.
pub const ON_CREATE_LIMIT: Duration = Duration::from_secs(30);
/// Jobs read from the queue per look (the running ones among them are skipped).
const QUEUE_LOOK: usize = 256;
/// How often the queue of `--on-complete` jobs is looked at.
const POLL: Duration = Duration::from_millis(250);

/// How one run of a hook ended.
#[derive(Debug)]
pub struct Ran {
    /// `ok`, `failed` (non-zero exit or killed by a signal), `timeout`, or `error` (could not
    /// start).
    pub result: &'static str,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// A failed start is tried again after this, doubling each time up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(600);

/// Runs `command` with `env`, at most `limit`, in a process group of its own: on a timeout (or
/// if the caller stops waiting) the whole group is killed.
pub async fn run(command: &str, env: &[(&str, String)], limit: Duration) -> Ran {
    let spawned = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v.replace('\0', "\u{FFFD}"))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return Ran {
                result: "error",
                status: format!("could not start: {e}"),
                stdout: String::new(),
                stderr: String::new(),
            }
        }
    };
    let mut group = child.id().map(Group);
    let stdout = child.stdout.take().map(kept);
    let stderr = child.stderr.take().map(kept);
    let outcome = tokio::time::timeout(limit, async {
        let (status, out, err) = tokio::join!(
            child.wait(),
            async {
                match stdout {
                    Some(f) => f.await,
                    None => String::new(),
                }
            },
            async {
                match stderr {
                    Some(f) => f.await,
                    None => String::new(),
                }
            },
        );
        (status, out, err)
    })
    .await;
    if outcome.is_ok() {
        // Ended, its output closed: what it started and detached may run on.
        if let Some(group) = group.take() {
            std::mem::forget(group);
        }
    }
    match outcome {
        Ok((Ok(status), stdout, stderr)) => Ran {
            result: if status.success() { "ok" } else { "failed" },
            status: status.to_string(),
            stdout,
            stderr,
        },
        Ok((Err(e), stdout, stderr)) => Ran {
            result: "error",
            status: e.to_string(),
            stdout,
            stderr,
        },
        Err(_) => {
            // `group` kills the shell and everything it started, on the way out.
            Ran {
                result: "timeout",
                status: format!("killed after {} s", limit.as_secs()),
                stdout: String::new(),
                stderr: String::new(),
            }
        }
    }
}

/// A hook's process group (its id is the shell's pid): killed, every member, when dropped
/// before the hook ended (a timeout, or the server stopping while it runs).
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.0) {
            // SAFETY: a plain syscall; a group that is gone already gives ESRCH, ignored.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// The first `KEPT_OUTPUT` bytes of a pipe; the rest is read and dropped, so the hook never
/// blocks on a full pipe.
async fn kept(mut pipe: impl AsyncRead + Unpin) -> String {
    let mut buf = Vec::new();
    let _ = (&mut pipe).take(KEPT_OUTPUT).read_to_end(&mut buf).await;
    let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The environment of an `--on-complete` run.
fn complete_env(job: &HookJob) -> Vec<(&'static str, String)> {
    vec![
        ("FERRY_UPLOAD_ID", job.upload_id.clone()),
        ("FERRY_OWNER", job.owner.clone()),
        ("FERRY_PATH", job.path.display().to_string()),
        ("FERRY_NAME", job.name.clone()),
        ("FERRY_SIZE", job.size.to_string()),
        ("FERRY_CONTENT_HASH", job.content_hash.clone()),
        ("FERRY_CHUNK_SIZE", job.chunk_size.to_string()),
        ("FERRY_DESC", job.desc.clone()),
    ]
}

/// Runs the queued `--on-complete` jobs until aborted: oldest first, `hook_concurrency` at a
/// time, with the command and timeout current when each starts (a reload may change them;
/// with no command, jobs wait in the queue).
pub(crate) async fn complete_forever(uploads: Arc<crate::uploads::Uploads>) {
    let store = uploads.store().clone();
    let places = Arc::new(Semaphore::new(uploads.config().hook_concurrency.max(1)));
    let running: Arc<Mutex<HashSet<u64>>> = Arc::default();
    // Jobs whose command could not start: when to try again, and the wait after that.
    let retry: Arc<Mutex<HashMap<u64, (Instant, Duration)>>> = Arc::default();
    // Bounded by the process: one look at the queue per turn.
    loop {
        let tunable = uploads.tunable();
        let Some(command) = tunable.on_complete else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let limit = tunable.hook_timeout;
        let queued = {
            let store = store.clone();
            // The oldest few: the queue may be long while a slow hook works through it.
            tokio::task::spawn_blocking(move || store.hook_jobs(QUEUE_LOOK)).await
        };
        let jobs = match queued {
            Ok(Ok(jobs)) => jobs,
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "cannot read the hook queue");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        for (seq, job) in jobs {
            if running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&seq)
            {
                continue;
            }
            let due = retry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&seq)
                .is_none_or(|(at, _)| *at <= Instant::now());
            if !due {
                continue;
            }
            let Ok(place) = places.clone().acquire_owned().await else {
                return;
            };
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq);
            let (store, command, running) = (store.clone(), command.clone(), running.clone());
            let retry = retry.clone();
            tokio::spawn(async move {
                let ran = run(&command, &complete_env(&job), limit).await;
                metrics().hook("on_complete", ran.result);
                if ran.result == "error" {
                    // It did not run: kept, and tried again later.
                    let mut retry = retry.lock().unwrap_or_else(|p| p.into_inner());
                    let wait = retry
                        .get(&seq)
                        .map_or(RETRY_FIRST, |(_, w)| (*w * 2).min(RETRY_MAX));
                    retry.insert(seq, (Instant::now() + wait, wait));
                    warn!(
                        upload = job.upload_id,
                        status = ran.status,
                        retry_s = wait.as_secs(),
                        "on-complete hook could not start; it will be tried again"
                    );
                    running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&seq);
                    return drop(place);
                }
                retry.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
                let stderr = ran.stderr.trim_end();
                if ran.result == "ok" {
                    info!(upload = job.upload_id, path = %job.path.display(), status = ran.status, "on-complete hook ran");
                } else {
                    warn!(upload = job.upload_id, path = %job.path.display(), status = ran.status, stderr, "on-complete hook failed");
                }
                // Ran (whatever its exit): forget the job. Failures are logged and counted,
                // not retried: a hook that fails would fail again.
                let done = tokio::task::spawn_blocking(move || store.hook_done(seq)).await;
                if !matches!(done, Ok(Ok(()))) {
                    warn!(seq, "cannot remove a hook job that ran; it will run again");
                }
                running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&seq);
                drop(place);
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_status_output_and_timeout() {
        let ran = run(
            "echo \"$GREETING\"; echo oops >&2; exit 3",
            &[("GREETING", "hello".into())],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(ran.result, "failed");
        assert_eq!(ran.stdout, "hello\n");
        assert_eq!(ran.stderr, "oops\n");
        assert!(ran.status.contains('3'), "{}", ran.status);

        let ran = run("true", &[], Duration::from_secs(10)).await;
        assert_eq!(ran.result, "ok");

        let started = std::time::Instant::now();
        let ran = run("sleep 30", &[], Duration::from_millis(200)).await;
        assert_eq!(ran.result, "timeout");
        assert!(started.elapsed() < Duration::from_secs(5));

        // A hook that writes a lot does not block on its pipe; only the start is kept.
        let ran = run("head -c 1000000 /dev/zero", &[], Duration::from_secs(10)).await;
        assert_eq!((ran.result, ran.stdout.len()), ("ok", KEPT_OUTPUT as usize));
    }

    /// Whether process `pid` is alive (a zombie counts as gone).
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
            .unwrap_or(false)
    }

    /// Regression (issue 21, finding 4): a timed-out hook's shell was killed but the commands it
    /// started ran on (3 of 3 `sleep`s). The whole process group goes now.
    #[tokio::test]
    async fn a_timeout_kills_everything_the_hook_started() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let command = format!(
            "for i in 1 2 3; do sleep 60 & echo $! >> {0}; done; wait",
            pids.display()
        );
        let ran = run(&command, &[], Duration::from_millis(500)).await;
        assert_eq!(ran.result, "timeout");
        let started = std::fs::read_to_string(&pids).unwrap();
        let started: Vec<&str> = started.lines().collect();
        assert_eq!(started.len(), 3);
        let mut left = started.len();
        for _ in 0..100 {
            left = started.iter().filter(|pid| alive(pid)).count();
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(left, 0, "sleeps the hook started still run");
    }

    /// Regression (issue 21, finding 4): a NUL byte in a value made the hook fail to start, and
    /// the job was dropped. The value is passed with U+FFFD in its place.
    #[tokio::test]
    async fn a_nul_byte_in_a_value_does_not_stop_the_hook() {
        let ran = run(
            "printf %s \"$FERRY_DESC\"",
            &[("FERRY_DESC", "a\0b".into())],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!((ran.result, ran.stdout.as_str()), ("ok", "a\u{FFFD}b"));
    }
}
