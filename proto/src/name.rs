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
    /// Longer than [`MAX_NAME_BYTES`] after sanitising (or a folder path over
    /// [`MAX_DIR_BYTES`]).
    #[error("name is {len} bytes, over the limit ({MAX_NAME_BYTES} for a name, {MAX_DIR_BYTES} for a folder path)")]
    TooLong { len: usize },
    /// A folder path of more than [`MAX_DIR_DEPTH`] components.
    #[error("folder path is {depth} folders deep, the limit is {MAX_DIR_DEPTH}")]
    TooDeep { depth: usize },
}

/// Windows device names, refused as whole stems so a file stays usable if copied to Windows.
const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Makes `raw` a safe single path component: only what follows its last `/` is kept (so
/// `../../x` becomes `x`), backslashes and control characters become `_` (a backslash is a
/// separator on Windows but an ordinary character in a POSIX name: `a\b.txt` keeps its
/// `a`), leading dots and spaces and trailing dots and spaces go, a Windows device name gets a
/// trailing `_`.
pub fn sanitize(raw: &str) -> Result<String, NameError> {
    let last = raw.rsplit('/').next().unwrap_or(raw);
    let cleaned: String = last
        .chars()
        .map(|c| if c.is_control() || c == '\\' { '_' } else { c })
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

/// Most folders in a `dir` path, and its most bytes joined with `/`.
pub const MAX_DIR_DEPTH: usize = 32;
pub const MAX_DIR_BYTES: usize = 1024;

/// Sanitises every component of a folder path like a name; refuses a path deeper than
/// [`MAX_DIR_DEPTH`] or longer than [`MAX_DIR_BYTES`] bytes joined.
pub fn sanitize_dir(components: &[String]) -> Result<Vec<String>, NameError> {
    if components.len() > MAX_DIR_DEPTH {
        return Err(NameError::TooDeep {
            depth: components.len(),
        });
    }
    let clean = components
        .iter()
        .map(|c| sanitize(c))
        .collect::<Result<Vec<_>, _>>()?;
    // Joined with `/`: one separator fewer than components.
    let len = clean
        .iter()
        .map(|c| c.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    if len > MAX_DIR_BYTES {
        return Err(NameError::TooLong { len });
    }
    Ok(clean)
}

/// The `n`-th alternative for a taken name: `clip.mp4` → `clip (n).mp4` (the number goes
/// before the last dot, so `a.tar.gz` → `a.tar (n).gz`). The stem is shortened, at a character
/// boundary, so the result stays within [`MAX_NAME_BYTES`]: a 255-byte name has alternatives
/// too.
pub fn numbered(name: &str, n: u32) -> String {
    let tag = format!(" ({n})");
    let (stem, ext) = match name.rfind('.') {
        // An "extension" too long to keep beside the tag is part of the stem (then shortened).
        Some(dot) if dot > 0 && name.len() - dot + tag.len() < MAX_NAME_BYTES => name.split_at(dot),
        _ => (name, ""),
    };
    let room = MAX_NAME_BYTES.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{tag}{ext}", &stem[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unicode_and_strips_paths() {
        assert_eq!(sanitize("视频 第一集.mp4").unwrap(), "视频 第一集.mp4");
        assert_eq!(sanitize("../../x").unwrap(), "x");
        assert_eq!(sanitize("/etc/passwd").unwrap(), "passwd");
        assert_eq!(sanitize("a\\b").unwrap(), "a_b");
        // Regression (issue 22, finding 11): a name holding a backslash lost everything before
        // it (`NFD-cafe\xcc\x81.txt` became `x81.txt`).
        assert_eq!(
            sanitize("NFD-cafe\\xcc\\x81.txt").unwrap(),
            "NFD-cafe_xcc_x81.txt"
        );
        assert_eq!(sanitize("..\\..\\etc").unwrap(), "_.._etc");
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

    /// Regression (issue 21, finding 10): a folder path of exactly 1 024 bytes joined was
    /// refused as 1 025 (a separator counted after the last component).
    #[test]
    fn a_folder_path_of_exactly_the_limit_is_taken() {
        let mut exact: Vec<String> = (0..5).map(|i| format!("{i}{}", "d".repeat(199))).collect();
        exact[4].push_str(&"d".repeat(20));
        assert_eq!(exact.join("/").len(), MAX_DIR_BYTES);
        assert_eq!(sanitize_dir(&exact).unwrap(), exact);
        exact[4].push('d');
        assert_eq!(
            sanitize_dir(&exact),
            Err(NameError::TooLong {
                len: MAX_DIR_BYTES + 1
            })
        );
    }

    #[test]
    fn numbers_before_the_extension() {
        assert_eq!(numbered("clip.mp4", 1), "clip (1).mp4");
        assert_eq!(numbered("README", 2), "README (2)");
        assert_eq!(numbered("a.tar.gz", 3), "a.tar (3).gz");
    }

    /// Regression (issue 8): `name (1).ext` of a 255-byte name was 259 bytes, so publishing
    /// failed with `storage_error` and the client retried forever.
    #[test]
    fn numbered_names_fit_the_limit_at_character_boundaries() {
        let long = format!("{}.mov", "视".repeat(83)); // 249 + 4 = 253 bytes
        for n in [1, 99, 9999] {
            let alt = numbered(&long, n);
            assert!(alt.len() <= MAX_NAME_BYTES, "{} bytes", alt.len());
            assert!(alt.ends_with(&format!(" ({n}).mov")), "{alt}");
        }
        assert_eq!(numbered(&"a".repeat(255), 1).len(), 255);
    }

    /// Regression (issue 21, finding 8): a 255-byte name whose last dot is near its start
    /// (`a.xxxx…`) kept its 254-byte "extension" whole, so `name (1)` was 258 bytes and every
    /// finish of a second copy failed with `storage_error` "File name too long".
    #[test]
    fn a_long_extension_is_shortened_too() {
        for name in [
            format!("a.{}", "x".repeat(253)),
            format!("x.{}", "视".repeat(84)),
        ] {
            for n in [1, 10, 9999] {
                let alt = numbered(&name, n);
                assert!(alt.len() <= MAX_NAME_BYTES, "{} bytes", alt.len());
                assert!(alt.ends_with(&format!(" ({n})")), "{alt}");
            }
        }
    }
}
