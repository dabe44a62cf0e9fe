//! The lab's error type.

use std::io;

use thiserror::Error;

use crate::settings::SettingsError;

/// Why building, using or measuring a lab failed.
#[derive(Debug, Error)]
pub enum LabError {
    /// Not root, or `ip netns add` was refused.
    #[error("the lab needs root (CAP_NET_ADMIN) to create network namespaces")]
    NeedsRoot,
    /// The name prefix would make unsafe or ambiguous namespace names.
    #[error("bad lab name prefix `{0}`: use 1 to 16 characters of a-z, 0-9 and '-', starting with a letter")]
    BadPrefix(String),
    /// The link settings are invalid.
    #[error("link settings: {0}")]
    Settings(#[from] SettingsError),
    /// An `ip` command failed.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A link measurement could not be completed.
    #[error("measurement failed: {0}")]
    Measure(String),
}

impl LabError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
        let context = context.into();
        move |source| LabError::Io { context, source }
    }
}
