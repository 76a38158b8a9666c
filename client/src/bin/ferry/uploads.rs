//! `ferry list`, `status` and `abort`: the uploads the server has for this token.

use std::path::Path;
use std::sync::Arc;

use ferry_client::progress::Tracker;
use ferry_client::{Client, ClientError, Options, Shared};
use ferry_proto::units::human;
use ferry_proto::UploadSummary;

use crate::report;

pub(crate) type BoxFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), (String, ClientError)>> + 'a>>;

pub(crate) async fn with_client(
    opts: Options,
    tracker: Arc<Tracker>,
    f: impl for<'a> FnOnce(&'a mut Client) -> BoxFuture<'a>,
) -> u8 {
    let endpoint = match Client::endpoint_for(&opts) {
        Ok(e) => e,
        Err(e) => return report("cannot start", &e),
    };
    let shared = Shared {
        tracker,
        ..Shared::default()
    };
    let mut client = Client::with(opts, endpoint, shared);
    let result = f(&mut client).await;
    client.close().await;
    match result {
        Ok(()) => 0,
        Err((what, e)) => report(&what, &e),
    }
}

/// Completed uploads `ferry list` shows without `--all`.
pub(crate) const RECENT_COMPLETE: usize = 20;

pub(crate) async fn list(
    client: &mut Client,
    json: bool,
    all: bool,
) -> Result<(), (String, ClientError)> {
    let mut uploads = client
        .list()
        .await
        .map_err(|e| ("list failed".to_owned(), e))?;
    if !all {
        let mut complete: Vec<&UploadSummary> =
            uploads.iter().filter(|u| u.state == "complete").collect();
        complete.sort_by_key(|u| std::cmp::Reverse(u.updated_at));
        let recent: std::collections::HashSet<String> = complete
            .iter()
            .take(RECENT_COMPLETE)
            .map(|u| u.upload_id.clone())
            .collect();
        uploads.retain(|u| u.state != "complete" || recent.contains(&u.upload_id));
    }
    print_uploads(&uploads, json);
    Ok(())
}

pub(crate) async fn status(
    client: &mut Client,
    target: Option<String>,
    json: bool,
) -> Result<(), (String, ClientError)> {
    let uploads = client
        .list()
        .await
        .map_err(|e| ("status failed".to_owned(), e))?;
    let wanted: Option<String> = match &target {
        None => None,
        Some(t) if Path::new(t).exists() => match client
            .journal_entry(Path::new(t))
            .await
            .map_err(|e| ("status failed".to_owned(), e))?
        {
            Some(entry) => Some(entry.upload_id),
            None => {
                out!(
                    "{t}: no upload of this file to {} on record here",
                    client.options().target.server
                );
                return Ok(());
            }
        },
        Some(t) => Some(t.clone()),
    };
    let shown: Vec<UploadSummary> = uploads
        .into_iter()
        .filter(|u| match &wanted {
            Some(id) => &u.upload_id == id,
            None => u.state != "complete",
        })
        .collect();
    match (&wanted, shown.is_empty()) {
        (Some(id), true) => {
            return Err((
                "status failed".into(),
                ClientError::Usage(format!("no upload {id} on the server")),
            ))
        }
        (None, true) if !json => out!("nothing in progress"),
        _ => print_uploads(&shown, json),
    }
    Ok(())
}

pub(crate) async fn abort(
    client: &mut Client,
    target: String,
) -> Result<(), (String, ClientError)> {
    let path = Path::new(&target);
    let upload_id = if path.exists() {
        let entry = client
            .journal_entry(path)
            .await
            .map_err(|e| ("abort failed".to_owned(), e))?;
        match entry {
            Some(entry) if entry.complete.is_none() => entry.upload_id,
            Some(_) => {
                let e = ClientError::Usage(format!(
                    "{target} was uploaded completely; nothing to abort"
                ));
                return Err(("abort failed".into(), e));
            }
            None => {
                let e = ClientError::Usage(format!("no upload of {target} on record here"));
                return Err(("abort failed".into(), e));
            }
        }
    } else {
        target.clone()
    };
    match client.abort(&upload_id).await {
        Ok(()) => out!("aborted {upload_id}"),
        // Gone from the server already: only the local record was left to forget.
        Err(ClientError::Server {
            code: ferry_proto::ErrorCode::NotFound | ferry_proto::ErrorCode::Expired,
            ..
        }) if path.exists() => out!("{upload_id} is no longer on the server"),
        Err(e) => return Err((format!("abort of {upload_id} failed"), e)),
    }
    if path.exists() {
        client
            .forget(path)
            .await
            .map_err(|e| ("abort failed".to_owned(), e))?;
    }
    Ok(())
}

pub(crate) fn print_uploads(uploads: &[UploadSummary], json: bool) {
    if json {
        for u in uploads {
            out!("{}", serde_json::to_string(u).unwrap_or_default());
        }
        return;
    }
    out!(
        "{:<32}  {:<9}  {:>6}  {:>10}  {:<16}  NAME",
        "ID",
        "STATE",
        "DONE",
        "SIZE",
        "UPDATED (UTC)"
    );
    for u in uploads {
        out!("{}", line(u));
    }
}

pub(crate) fn line(u: &UploadSummary) -> String {
    let pct = if u.size == 0 {
        100.0
    } else {
        u.durable_bytes as f64 * 100.0 / u.size as f64
    };
    let expiry = match u.expires_at {
        0 => String::new(),
        at => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!(
                "  (expires in {} h without progress)",
                at.saturating_sub(now).div_ceil(3600)
            )
        }
    };
    format!(
        "{}  {:<9}  {:>5.1}%  {:>10}  {:<16}  {}{expiry}",
        u.upload_id,
        u.state,
        pct,
        human(u.size),
        utc(u.updated_at),
        u.file_name
    )
}

/// `YYYY-MM-DD HH:MM` of a Unix time, UTC (days to civil date: Howard Hinnant's algorithm).
pub(crate) fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(super::utc(1_795_984_200), "2026-11-29 20:30");
    }
}
