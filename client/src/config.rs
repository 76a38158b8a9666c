//! The client's config file (`$XDG_CONFIG_HOME/ferry/config.toml`, or `--config FILE`): the
//! settings a user would otherwise repeat on every command. Keys are named like the long
//! options. Precedence, strongest first: command-line flag, `FERRY_*` environment variable,
//! this file, built-in default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ClientError;

/// Every key the file may hold; any other key is an error naming it and the file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// One address, or a list of a service's addresses (`["a:4433", "b:4433"]`).
    pub server: Option<Servers>,
    pub token: Option<String>,
    pub fingerprint: Option<String>,
    pub ca: Option<PathBuf>,
    pub parallel: Option<u16>,
    /// A size like `4MiB` (the same syntax as `--chunk-size`).
    pub chunk_size: Option<String>,
    /// A rate like `10M` (bytes per second, as `--limit-rate`).
    pub limit_rate: Option<String>,
    pub files: Option<u16>,
    pub connect_timeout: Option<u64>,
    pub on_exists: Option<String>,
    /// Glob patterns left out of folders, beside `--exclude`'s.
    pub exclude: Option<Vec<String>>,
}

/// `server = "HOST:PORT"` or `server = ["HOST:PORT", …]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Servers {
    One(String),
    Many(Vec<String>),
}

impl Servers {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }
}

impl FileConfig {
    /// Reads `path`. A file that does not exist is an empty config when it is the default
    /// location (`required` false), an error when the user named it.
    pub fn load(path: &Path, required: bool) -> Result<Self, ClientError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(e) => {
                return Err(ClientError::Usage(format!(
                    "cannot read config file {}: {e}",
                    path.display()
                )))
            }
        };
        let config: Self = toml::from_str(&text).map_err(|e| {
            ClientError::Usage(format!(
                "config file {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        // Checked now, so a bad value is reported with its key and file, not later.
        for (key, value) in [
            ("chunk-size", &config.chunk_size),
            ("limit-rate", &config.limit_rate),
        ] {
            if let Some(v) = value {
                ferry_proto::units::parse_size(v).map_err(|e| {
                    ClientError::Usage(format!("config file {}: {key}: {e}", path.display()))
                })?;
            }
        }
        if let Some(v) = &config.on_exists {
            v.parse::<ferry_proto::OnExists>().map_err(|e| {
                ClientError::Usage(format!("config file {}: on-exists: {e}", path.display()))
            })?;
        }
        if config.parallel == Some(0) || config.files == Some(0) {
            return Err(ClientError::Usage(format!(
                "config file {}: parallel and files must be at least 1",
                path.display()
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_like_the_long_options_and_unknown_keys_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "server = \"example.org:4433\"\nparallel = 4\nchunk-size = \"8MiB\"\n",
        )
        .unwrap();
        let config = FileConfig::load(&path, true).unwrap();
        assert_eq!(
            config.server.map(Servers::into_vec),
            Some(vec!["example.org:4433".to_owned()])
        );
        assert_eq!(config.parallel, Some(4));
        assert_eq!(config.chunk_size.as_deref(), Some("8MiB"));

        std::fs::write(&path, "sever = \"typo:1\"\n").unwrap();
        let err = FileConfig::load(&path, true).unwrap_err().to_string();
        assert!(
            err.contains("sever") && err.contains("config.toml"),
            "{err}"
        );

        std::fs::write(&path, "chunk-size = \"4 furlongs\"\n").unwrap();
        let err = FileConfig::load(&path, true).unwrap_err().to_string();
        assert!(
            err.contains("chunk-size") && err.contains("config.toml"),
            "{err}"
        );

        assert_eq!(
            FileConfig::load(&dir.path().join("absent.toml"), false).unwrap(),
            FileConfig::default()
        );
        assert!(FileConfig::load(&dir.path().join("absent.toml"), true).is_err());
    }
}
