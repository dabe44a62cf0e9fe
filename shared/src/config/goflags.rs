//! Go-style flags on the command line.
//!
//! Upstream's binaries use Go's `flag`/`pflag` packages, and Kubernetes
//! manifests written for them often spell long flags with one dash
//! (`-v=4`, `-logtostderr=true`, `-uds-name=/x`). clap reads `-v=4` but would
//! read `-uds-name` as a cluster of short flags, so [`normalize_go_flags`]
//! rewrites single-dash spellings of *known* long flags to the double-dash form
//! before clap sees them.

use std::ffi::OsString;

/// Rewrites `-name` / `-name=value` to `--name` / `--name=value` when `name` is
/// one of `long_names`; everything else, and everything after `--`, is kept.
/// The first element (the program name) is never rewritten.
pub fn normalize_go_flags<I, T>(args: I, long_names: &[&str]) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut out = Vec::new();
    let mut rewriting = true;
    for (i, arg) in args.into_iter().enumerate() {
        let arg: OsString = arg.into();
        if i == 0 || !rewriting {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rewriting = false;
            out.push(arg);
            continue;
        }
        out.push(rewrite(arg, long_names));
    }
    out
}

/// Parses `args` (first = program name) with clap, after rewriting Go-style
/// single-dash spellings of the parser's long flags.
pub fn try_parse_go_style<P, I, T>(args: I) -> Result<P, clap::Error>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let command = P::command();
    let longs: Vec<&str> = command.get_arguments().filter_map(|a| a.get_long()).collect();
    P::try_parse_from(normalize_go_flags(args, &longs))
}

fn rewrite(arg: OsString, long_names: &[&str]) -> OsString {
    let Some(text) = arg.to_str() else { return arg };
    let Some(rest) = text.strip_prefix('-') else {
        return arg;
    };
    if rest.starts_with('-') {
        return arg;
    }
    let name = rest.split_once('=').map_or(rest, |(name, _)| name);
    if long_names.contains(&name) {
        format!("-{text}").into()
    } else {
        arg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_go_flags(args.iter().copied(), &["v", "uds-name", "logtostderr"])
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn single_dash_known_long_flags_get_two_dashes() {
        assert_eq!(
            norm(&["prog", "-v=4", "-uds-name=/x", "-logtostderr", "-v", "2"]),
            ["prog", "--v=4", "--uds-name=/x", "--logtostderr", "--v", "2"]
        );
    }

    #[test]
    fn everything_else_is_kept() {
        assert_eq!(
            norm(&["-v", "--v=1", "-v4", "-x=1", "-unknown", "value", "-", "--", "-v=3"]),
            ["-v", "--v=1", "-v4", "-x=1", "-unknown", "value", "-", "--", "-v=3"]
        );
    }
}
