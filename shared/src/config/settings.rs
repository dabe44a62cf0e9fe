//! One declaration per configuration key.
//!
//! A key is declared once, in a [`settings!`] table: its doc line, its type,
//! its default and its flag attributes. The table becomes the raw struct that
//! both TOML and the command line fill (serde and clap derives on the same
//! fields, so the TOML key and the flag are the same word), its `overlay`, its
//! typed defaults for validation, the `[default: …]` of `--help`, and a list
//! of [`KeyDoc`]s that tests hold `conf/*.toml` and the README against.

use std::net::IpAddr;
use std::time::Duration;

use super::format_duration;

/// Declares a table of settings, each key once.
///
/// ```text
/// settings! {
///     /// Doc of the raw struct.
///     RawExample, defaults ExampleDefaults {
///         /// The key's doc line: rustdoc, `--help` and the key table.
///         #[arg(long, value_name = "PORT")]
///         example_port: u16 = 8080,
///         /// A key without a declared default (unset, or computed as its doc says).
///         #[arg(skip)] // TOML only: no flag
///         example_path: PathBuf,
///     }
///     tables { quic: RawQuicConfig }
/// }
/// ```
///
/// generates
/// - `RawExample`: every key as an `Option` (`None` = not given) with
///   `clap::Args` (flag `--example-port`, its help the doc line plus
///   `[default: 8080]`) and `serde::Deserialize` (TOML key `example-port`,
///   unknown keys refused); each table as an `Option`, TOML only;
/// - `RawExample::overlay(self, other)`: key by key, `other` wins; tables merge;
/// - `ExampleDefaults` and `RawExample::defaults()`: the declared defaults,
///   typed, for validation (keys without a default have no field there);
/// - `RawExample::keys()`: one [`KeyDoc`] per key, tables' keys prefixed
///   with the table's name (`quic.idle-timeout`).
///
/// Each key has exactly one doc line. Other attributes (`#[arg]`, `#[serde]`)
/// are passed to the derives unchanged.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $raw:ident, defaults $defaults:ident {
            $(
                #[doc = $doc:literal]
                $(#[$attr:meta])*
                $field:ident: $ty:ty $(= $default:expr)?,
            )*
        }
        $(tables { $($table:ident: $table_ty:ty),* $(,)? })?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, clap::Args, serde::Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct $raw {
            $(
                #[doc = $doc]
                #[arg(help = $crate::config::settings::help_line(
                    $doc,
                    $crate::config::settings::shown_default!($ty $(, $default)?),
                ))]
                $(#[$attr])*
                pub $field: Option<$ty>,
            )*
            $($(
                #[doc = concat!("Table `[", stringify!($table), "]` (TOML only).")]
                #[arg(skip)]
                pub $table: Option<$table_ty>,
            )*)?
        }

        #[doc = concat!("Declared defaults of [`", stringify!($raw), "`]'s keys that have one.")]
        #[derive(Debug, Clone, PartialEq)]
        pub struct $defaults {
            $($(
                #[doc = concat!("`", stringify!($default), "`")]
                pub $field: $ty,
            )?)*
        }

        impl $raw {
            /// Key by key, values set in `other` win (`file.overlay(flags)`);
            /// tables given in both merge the same way.
            pub fn overlay(self, other: $raw) -> $raw {
                $raw {
                    $($field: other.$field.or(self.$field),)*
                    $($($table: match (self.$table, other.$table) {
                        (Some(base), Some(top)) => Some(base.overlay(top)),
                        (base, top) => top.or(base),
                    },)*)?
                }
            }

            /// The declared defaults, typed.
            pub fn defaults() -> $defaults {
                $defaults { $($($field: $default,)?)* }
            }

            /// Every key, with its doc line and declared default.
            pub fn keys() -> Vec<$crate::config::KeyDoc> {
                #[allow(unused_mut)]
                let mut keys = vec![$(
                    $crate::config::KeyDoc::new(
                        stringify!($field),
                        $doc,
                        $crate::config::settings::shown_default!($ty $(, $default)?),
                    ),
                )*];
                $($(keys.extend(<$table_ty>::keys().into_iter().map(|k| k.in_table(stringify!($table))));)*)?
                keys
            }
        }
    };
}

/// Checks that every key of `keys` that `command` has as a flag shows its
/// declared default at the end of its help (`[default: …]`), or a help
/// line without one; returns how many flags were checked, or the first
/// mismatch.
pub fn check_help_defaults(command: &clap::Command, keys: &[KeyDoc]) -> Result<usize, String> {
    let mut flags = 0;
    for key in keys {
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(key.key.as_str())) else {
            continue;
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let fits = match &key.default {
            Some(d) => help.ends_with(&format!(" [default: {}]", d.text)),
            None => !help.is_empty() && !help.ends_with('.'),
        };
        if !fits {
            return Err(format!("--{}: {help:?} (declared default: {:?})", key.key, key.default));
        }
        flags += 1;
    }
    Ok(flags)
}

/// A key's declared default as [`Shown`], if it has one.
macro_rules! shown_default {
    ($ty:ty) => {
        None
    };
    ($ty:ty, $default:expr) => {
        Some($crate::config::settings::shown::<$ty>(&$default))
    };
}

pub(crate) use {settings, shown_default};

/// One key as documented: what `conf/*.toml` and the README are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDoc {
    /// TOML key path, e.g. `uds-name` or `quic.idle-timeout`.
    pub key: String,
    /// The doc line (also the flag's help).
    pub doc: &'static str,
    /// The declared default; `None` when the key has none (unset until
    /// given, required, or computed as the doc line says).
    pub default: Option<Shown>,
}

impl KeyDoc {
    /// A key named after its raw struct field (`uds_name` → `uds-name`).
    pub fn new(field: &str, doc: &'static str, default: Option<Shown>) -> KeyDoc {
        KeyDoc { key: field.replace('_', "-"), doc: doc.trim(), default }
    }

    /// The same key inside table `table`.
    pub fn in_table(self, table: &str) -> KeyDoc {
        KeyDoc { key: format!("{table}.{}", self.key), ..self }
    }
}

/// A default value as the docs write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// As `--help` shows it: `10s`, `8092`, `127.0.0.1`.
    pub text: String,
    /// Whether TOML quotes it (strings, durations, addresses).
    pub quoted: bool,
}

impl Shown {
    /// As TOML writes it: `"10s"`, `8092`, `true`.
    pub fn toml(&self) -> String {
        if self.quoted {
            toml::Value::String(self.text.clone()).to_string()
        } else {
            self.text.clone()
        }
    }
}

/// Types a key's default may have, and how that default is written.
pub trait DefaultValue {
    fn shown(&self) -> Shown;
}

/// [`DefaultValue::shown`] as a function, for the macro.
pub fn shown<T: DefaultValue>(value: &T) -> Shown {
    value.shown()
}

/// A flag's help: the doc line without its final period, then the default.
pub fn help_line(doc: &str, default: Option<Shown>) -> String {
    let doc = doc.trim();
    // As clap does with a doc comment: one final period goes, an ellipsis stays.
    let doc = if doc.ends_with("..") { doc } else { doc.strip_suffix('.').unwrap_or(doc) };
    match default {
        Some(d) => format!("{doc} [default: {}]", d.text),
        None => doc.to_owned(),
    }
}

macro_rules! bare_defaults {
    ($($ty:ty),*) => {$(
        impl DefaultValue for $ty {
            fn shown(&self) -> Shown {
                Shown { text: self.to_string(), quoted: false }
            }
        }
    )*};
}

bare_defaults!(bool, u8, u16, u32, u64, usize, f64);

impl DefaultValue for String {
    fn shown(&self) -> Shown {
        Shown { text: self.clone(), quoted: true }
    }
}

impl DefaultValue for IpAddr {
    fn shown(&self) -> Shown {
        Shown { text: self.to_string(), quoted: true }
    }
}

impl DefaultValue for Duration {
    fn shown(&self) -> Shown {
        Shown { text: format_duration(*self), quoted: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_line_drops_the_period_and_adds_the_default() {
        let port = Some(8092u16.shown());
        assert_eq!(help_line(" Admin port.", port), "Admin port [default: 8092]");
        assert_eq!(help_line(" Unix socket for kube-apiserver.", None), "Unix socket for kube-apiserver");
        assert_eq!(help_line("Ends in an ellipsis...", None), "Ends in an ellipsis...");
    }

    #[test]
    fn defaults_are_written_as_toml_writes_them() {
        assert_eq!(Duration::from_secs(120).shown(), Shown { text: "2m".into(), quoted: true });
        assert_eq!(Duration::from_secs(120).shown().toml(), "\"2m\"");
        assert_eq!(0.0f64.shown().toml(), "0");
        assert_eq!(true.shown().toml(), "true");
        assert_eq!(IpAddr::from([127, 0, 0, 1]).shown().toml(), "\"127.0.0.1\"");
    }

    #[test]
    fn keys_are_kebab_case_and_nest() {
        let k = KeyDoc::new("idle_timeout", " Idle timeout.", None).in_table("quic");
        assert_eq!(k.key, "quic.idle-timeout");
        assert_eq!(k.doc, "Idle timeout.");
    }
}
