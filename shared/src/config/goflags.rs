//! Go-style flags on the command line.
//!
//! Upstream's binaries use Go's `flag`/`pflag` packages, and Kubernetes
//! manifests written for them often spell long flags with one dash
//! (`-v=4`, `-logtostderr=true`, `-uds-name=/x`). clap reads `-v=4` but would
//! read `-uds-name` as a cluster of short flags, so [`normalize_go_flags`]
//! rewrites single-dash spellings of *known* long flags to the double-dash form
//! before clap sees them. The value parsers below take upstream's spellings:
//! empty bind addresses and paths, any klog level.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use super::upstream::{self, NoEffect};

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
    try_parse_go_style_with(args, &[]).map(|(parsed, _)| parsed)
}

/// [`try_parse_go_style`] with upstream's no-effect flags of `tables` accepted
/// too; also returns those given, whose warnings are logged at start-up (see
/// [`upstream`](super::upstream)).
pub fn try_parse_go_style_with<P, I, T>(
    args: I,
    tables: &[&'static [NoEffect]],
) -> Result<(P, upstream::Given), clap::Error>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut command = upstream::register(P::command(), tables);
    let longs: Vec<String> =
        command.get_arguments().filter_map(|a| a.get_long_and_visible_aliases()).flatten().map(str::to_owned).collect();
    let longs: Vec<&str> = longs.iter().map(String::as_str).collect();
    let matches = command.try_get_matches_from_mut(normalize_go_flags(args, &longs))?;
    let parsed = P::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
    Ok((parsed, upstream::Given::from_matches(&matches, tables)))
}

/// A listen address as upstream's `--*-bind-address` / `--health-server-host`
/// take it: an IP address (IPv6 also in brackets), `localhost`, or empty for
/// all addresses (`0.0.0.0`).
pub fn parse_bind_address(s: &str) -> Result<IpAddr, String> {
    match s {
        "" => Ok(Ipv4Addr::UNSPECIFIED.into()),
        "localhost" => Ok(Ipv4Addr::LOCALHOST.into()),
        _ => s
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(s)
            .parse()
            .map_err(|_| format!("invalid address {s:?} (an IP address, localhost, or empty for all addresses)")),
    }
}

/// A path flag: any string, as Go's string flags take it; empty (`--x=`)
/// means unset once validated, as upstream treats it.
pub fn parse_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// klog's `-v`: any 32-bit integer, as upstream parses it; konnq's levels
/// stop at 255 (everything above 5 is trace anyway) and start at 0.
pub fn parse_klog_level(s: &str) -> Result<u8, String> {
    let v: i32 = s.parse().map_err(|_| format!("invalid log level {s:?} (an integer)"))?;
    Ok(v.clamp(0, u8::MAX.into()) as u8)
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
    fn bind_addresses_as_upstream_writes_them() {
        assert_eq!(parse_bind_address(""), Ok(IpAddr::from([0, 0, 0, 0])), "empty = all addresses");
        assert_eq!(parse_bind_address("localhost"), Ok(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(parse_bind_address("10.1.2.3"), Ok(IpAddr::from([10, 1, 2, 3])));
        assert_eq!(parse_bind_address("[::1]"), Ok(std::net::Ipv6Addr::LOCALHOST.into()));
        assert_eq!(parse_bind_address("::"), Ok(std::net::Ipv6Addr::UNSPECIFIED.into()));
        assert!(parse_bind_address("node-1").unwrap_err().contains("invalid address"));
    }

    #[test]
    fn klog_levels_clamp_to_konnq_range() {
        assert_eq!(parse_klog_level("4"), Ok(4));
        assert_eq!(parse_klog_level("-1"), Ok(0));
        assert_eq!(parse_klog_level("1000"), Ok(255));
        assert!(parse_klog_level("four").is_err());
    }

    #[test]
    fn everything_else_is_kept() {
        assert_eq!(
            norm(&["-v", "--v=1", "-v4", "-x=1", "-unknown", "value", "-", "--", "-v=3"]),
            ["-v", "--v=1", "-v4", "-x=1", "-unknown", "value", "-", "--", "-v=3"]
        );
    }
}
