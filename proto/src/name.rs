//! File names from clients are display names. `sanitize` turns one into a name that is safe
//! as a single path component on the server, keeping Unicode (`视频 第一集.mp4` stays as it is).

/// Longest accepted name, in bytes (the common file-system limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing is left after sanitising (empty, only dots or spaces).
    #[error("file name {0:?} is empty after removing unsafe characters")]
    Empty(String),
    /// Longer than [`MAX_NAME_BYTES`] after sanitising.
    #[error("file name is {len} bytes, the limit is {MAX_NAME_BYTES}")]
    TooLong { len: usize },
}

/// Windows device names, refused as whole stems so a file stays usable if copied to Windows.
const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Makes `raw` a safe single path component: path separators and control characters become
/// `_`, leading dots and spaces and trailing dots and spaces go, a Windows device name gets a
/// trailing `_`. Only the last path component of `raw` is kept, so `../../x` becomes `x`.
pub fn sanitize(raw: &str) -> Result<String, NameError> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let cleaned: String = last
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let trimmed = cleaned
        .trim_start_matches(['.', ' '])
        .trim_end_matches(['.', ' ']);
    if trimmed.is_empty() {
        return Err(NameError::Empty(raw.chars().take(80).collect()));
    }
    let mut name = trimmed.to_owned();
    let stem = name.split('.').next().unwrap_or("");
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        name.insert(stem.len(), '_');
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong { len: name.len() });
    }
    Ok(name)
}

/// The `n`-th alternative for a taken name: `clip.mp4` → `clip (n).mp4`.
pub fn numbered(name: &str, n: u32) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unicode_and_strips_paths() {
        assert_eq!(sanitize("视频 第一集.mp4").unwrap(), "视频 第一集.mp4");
        assert_eq!(sanitize("../../x").unwrap(), "x");
        assert_eq!(sanitize("/etc/passwd").unwrap(), "passwd");
        assert_eq!(sanitize("a\\b").unwrap(), "b");
        assert_eq!(sanitize("a\0b").unwrap(), "a_b");
        assert_eq!(sanitize(".hidden").unwrap(), "hidden");
        assert_eq!(sanitize("CON").unwrap(), "CON_");
        assert_eq!(sanitize("con.txt").unwrap(), "con_.txt");
    }

    #[test]
    fn refuses_empty_and_long() {
        assert!(matches!(sanitize("...."), Err(NameError::Empty(_))));
        assert!(matches!(sanitize(""), Err(NameError::Empty(_))));
        assert!(matches!(sanitize("../"), Err(NameError::Empty(_))));
        assert_eq!(
            sanitize(&"a".repeat(10_000)),
            Err(NameError::TooLong { len: 10_000 })
        );
    }

    #[test]
    fn numbers_before_the_extension() {
        assert_eq!(numbered("clip.mp4", 1), "clip (1).mp4");
        assert_eq!(numbered("README", 2), "README (2)");
    }
}
