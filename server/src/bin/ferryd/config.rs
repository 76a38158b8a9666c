//! `ferryd`'s config file (`--config FILE`, or `FERRYD_CONFIG`): TOML whose keys are the long
//! options of `ferryd serve`, spelled the same (`listen = "0.0.0.0:4433"`,
//! `data = "/var/lib/ferry"`, `dedup-across-owners = true`). Precedence, strongest first: the
//! command-line flag, the `FERRYD_*` environment variable, the file, the built-in default.
//!
//! The file is turned into the flags it stands for, placed before the command line's own (the
//! last occurrence of a flag wins); a key whose environment variable is set is left out, so
//! the variable wins over the file.

use std::ffi::OsString;
use std::path::Path;

use clap::ArgAction;

/// Why a config file cannot be used; exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("config file {file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// The flags `file` stands for, for the options of `serve` (clap's definition of `ferryd
/// serve`). Every key must be one of its long options; values are strings, numbers or, for
/// switches, booleans.
pub fn flags_from_file(file: &Path, serve: &clap::Command) -> Result<Vec<OsString>, ConfigError> {
    let fail = |message: String| ConfigError {
        file: file.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(file).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| fail(e.to_string().trim_end().to_owned()))?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| {
                fail(format!(
                    "unknown key `{key}` (the keys are the long options of `ferryd serve`, \
                     e.g. listen, data, quota, admin-listen)"
                ))
            })?;
        if arg
            .get_env()
            .is_some_and(|name| std::env::var_os(name).is_some())
        {
            continue;
        }
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        match (value, switch) {
            (toml::Value::Boolean(true), true) => flags.push(format!("--{key}").into()),
            (toml::Value::Boolean(false), true) => {}
            (_, true) => return Err(fail(format!("`{key}` is a switch: true or false"))),
            (toml::Value::String(s), false) => flags.push(format!("--{key}={s}").into()),
            (toml::Value::Integer(n), false) => flags.push(format!("--{key}={n}").into()),
            (toml::Value::Float(n), false) => flags.push(format!("--{key}={n}").into()),
            (other, false) => {
                return Err(fail(format!(
                    "`{key}` takes a string or a number, not {}",
                    other.type_str()
                )))
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve() -> clap::Command {
        clap::Command::new("serve")
            .arg(clap::Arg::new("listen").long("listen"))
            .arg(clap::Arg::new("quota").long("quota"))
            .arg(
                clap::Arg::new("dedup-across-owners")
                    .long("dedup-across-owners")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                clap::Arg::new("data")
                    .long("data")
                    .env("FERRYD_TEST_DATA_UNSET"),
            )
    }

    #[test]
    fn keys_become_flags_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferryd.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:4433\"\nquota = 500\ndedup-across-owners = true\n",
        )
        .unwrap();
        let flags = flags_from_file(&file, &serve()).unwrap();
        assert_eq!(
            flags,
            [
                "--dedup-across-owners",
                "--listen=0.0.0.0:4433",
                "--quota=500"
            ]
            .map(OsString::from)
        );
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let err = flags_from_file(&file, &serve()).unwrap_err().to_string();
        assert!(
            err.contains("unknown key `lisen`") && err.contains("ferryd.toml"),
            "{err}"
        );
        std::fs::write(&file, "dedup-across-owners = \"yes\"\n").unwrap();
        let err = flags_from_file(&file, &serve()).unwrap_err().to_string();
        assert!(err.contains("is a switch"), "{err}");
        std::fs::write(&file, "listen = [1]\n").unwrap();
        assert!(flags_from_file(&file, &serve()).is_err());
    }
}
