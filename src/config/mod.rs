//! Loads the config file into validated, typed values, or one located error.
//!
//! Two steps (SPEC §2): `file.rs` parses the TOML into a serde mirror (unknown
//! keys, bad enum values and bad durations fail there, with toml's span), then
//! [`from_str`] checks what the values mean and builds [`Config`]. Every error
//! reads `file:line:column: what was expected`. Nothing downstream ever sees a
//! raw string. This room reads the files the config names (certificate, key,
//! secrets, admin token) but starts nothing.
//!
//! This file holds the entry points and the error with its location; the
//! rooms beside it hold the rest: `model.rs` the typed values, `check.rs` the
//! checks that build them from the mirror, `effective.rs` what `tether check`
//! prints.

mod check;
mod effective;
pub mod file;
mod model;
#[cfg(test)]
mod tests;

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

pub use file::{
    BindTo, LogFormat, Mode, OnMismatch, Protocol, SameSite, Secure, Source, StoreKind,
};
pub use model::{
    Admin, Backend, BackendTls, Config, Health, Limits, Listener, Log, Runtime, SecretOrigin,
    Secrets, Session, Store, Timeouts, Tls, MAX_BACKENDS, MAX_TOTAL_WEIGHT, MIN_SECRET_BYTES,
    SECRET_ENV,
};
pub use model::{HostPort, Sentinel};

/// A config file that cannot be used. Display is always one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A value at a known place in the file is wrong (or toml could not parse it).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What was expected, and how to fix it where that is obvious.
        message: String,
    },
    /// A problem with no place in the file (the `TETHER_SECRET` variable).
    #[error("{}: {message}", path.display())]
    Unlocated {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// `(line, column)`, both 1-based, when the error has a place in the file.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Invalid { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

/// Reads and validates the config file at `path`, with the secret from
/// `TETHER_SECRET` if the file names none.
///
/// # Errors
///
/// [`ConfigError::Read`] if the file cannot be read; otherwise as [`from_str`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_str(&text, path, std::env::var(SECRET_ENV).ok())
}

/// Validates config `text` as if read from `path` (used for error messages and
/// to resolve relative paths), with `env_secret` standing in for `TETHER_SECRET`.
///
/// # Errors
///
/// The first problem found, located in `text` where it has a place there.
pub fn from_str(
    text: &str,
    path: &Path,
    env_secret: Option<String>,
) -> Result<Config, ConfigError> {
    let cx = Cx {
        path,
        text,
        dir: path.parent().unwrap_or(Path::new("")),
    };
    let raw: file::Root = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.at(span, e.message().trim().replace('\n', " "))
    })?;
    cx.build(raw, env_secret)
}

/// What every check needs to build a located error and resolve a path.
struct Cx<'a> {
    path: &'a Path,
    text: &'a str,
    dir: &'a Path,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl Cx<'_> {
    /// An error at the start of `span`.
    fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    fn on<T>(&self, value: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.at(value.span(), message)
    }

    fn unlocated(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Unlocated {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
