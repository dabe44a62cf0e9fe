//! `proxy-strategies`: how the server picks the agent for a dial, as
//! upstream's `--proxy-strategies` names them (an ordered, comma-separated
//! list such as `destHost,defaultRoute,default`).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::settings::{DefaultValue, Shown};

/// One of upstream's proxy strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyStrategy {
    /// Any agent that takes dials.
    Default,
    /// An agent whose identifiers name the dial's host (`host=`, `ipv4=`,
    /// `ipv6=`; konnq adds `cidr=`).
    DestHost,
    /// An agent that advertises `default-route=true`.
    DefaultRoute,
}

impl ProxyStrategy {
    pub const ALL: [ProxyStrategy; 3] = [ProxyStrategy::Default, ProxyStrategy::DestHost, ProxyStrategy::DefaultRoute];

    /// Upstream's name: the flag's word and the `proxy_strategy` metric label.
    pub fn name(self) -> &'static str {
        match self {
            ProxyStrategy::Default => "default",
            ProxyStrategy::DestHost => "destHost",
            ProxyStrategy::DefaultRoute => "defaultRoute",
        }
    }
}

impl fmt::Display for ProxyStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProxyStrategy {
    type Err = String;

    /// Upstream's words, case-sensitive, with upstream's error text.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| format!("unknown proxy strategy: {s}"))
    }
}

/// The strategies in the order they are tried; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStrategies(Vec<ProxyStrategy>);

impl ProxyStrategies {
    /// `strategies` unless empty (upstream's error text).
    pub fn new(strategies: Vec<ProxyStrategy>) -> Result<ProxyStrategies, String> {
        if strategies.is_empty() {
            return Err("proxy strategies cannot be empty".to_owned());
        }
        Ok(ProxyStrategies(strategies))
    }

    pub fn as_slice(&self) -> &[ProxyStrategy] {
        &self.0
    }

    /// The strategy tried first; readiness follows it, as upstream's does.
    pub fn first(&self) -> ProxyStrategy {
        self.0[0]
    }

    /// Upstream's parsing of a list of words: empty words are skipped (so
    /// `destHost,,default` and `default,` are fine), an unknown one is an
    /// error, and at least one must remain. Repeats are kept, as upstream
    /// keeps them.
    fn from_words<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<ProxyStrategies, String> {
        let strategies = words.into_iter().filter(|w| !w.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
        ProxyStrategies::new(strategies)
    }
}

impl Default for ProxyStrategies {
    /// Upstream's default: `default` alone.
    fn default() -> Self {
        ProxyStrategies(vec![ProxyStrategy::Default])
    }
}

impl fmt::Display for ProxyStrategies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|p| p.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for ProxyStrategies {
    type Err = String;

    /// The flag's syntax: comma-separated, e.g. `destHost,default`.
    fn from_str(s: &str) -> Result<Self, String> {
        ProxyStrategies::from_words(s.split(','))
    }
}

impl DefaultValue for ProxyStrategies {
    fn shown(&self) -> Shown {
        Shown { text: self.to_string(), quoted: true }
    }
}

/// TOML takes the flag's string (`"destHost,default"`) or an array of
/// names (`["destHost", "default"]`).
impl<'de> Deserialize<'de> for ProxyStrategies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrategiesVisitor)
    }
}

struct StrategiesVisitor;

impl<'de> Visitor<'de> for StrategiesVisitor {
    type Value = ProxyStrategies;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("proxy strategies: \"destHost,defaultRoute,default\" or [\"destHost\", \"default\"]")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<ProxyStrategies, E> {
        s.parse().map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ProxyStrategies, A::Error> {
        let mut words: Vec<String> = Vec::new();
        while let Some(word) = seq.next_element::<String>()? {
            words.push(word);
        }
        ProxyStrategies::from_words(words.iter().map(String::as_str)).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProxyStrategy as P;

    #[test]
    fn flag_syntax_as_upstream_parses_it() {
        let parsed = |s: &str| s.parse::<ProxyStrategies>().map(|p| p.as_slice().to_vec());
        assert_eq!(parsed("default"), Ok(vec![P::Default]));
        assert_eq!(parsed("destHost,defaultRoute,default"), Ok(vec![P::DestHost, P::DefaultRoute, P::Default]));
        assert_eq!(parsed(",destHost,,default,"), Ok(vec![P::DestHost, P::Default]), "empty words are skipped");
        assert_eq!(parsed("destHost,destHost"), Ok(vec![P::DestHost, P::DestHost]), "repeats are kept");
        assert_eq!(parsed("closest"), Err("unknown proxy strategy: closest".to_owned()));
        assert_eq!(parsed("desthost"), Err("unknown proxy strategy: desthost".to_owned()), "case-sensitive");
        assert_eq!(parsed(" default"), Err("unknown proxy strategy:  default".to_owned()));
        assert_eq!(parsed(","), Err("proxy strategies cannot be empty".to_owned()));
        assert_eq!(parsed(""), Err("proxy strategies cannot be empty".to_owned()));
    }

    #[test]
    fn names_round_trip_and_the_default_is_default() {
        for p in ProxyStrategy::ALL {
            assert_eq!(p.name().parse::<ProxyStrategy>(), Ok(p));
        }
        let list: ProxyStrategies = "destHost,default".parse().unwrap();
        assert_eq!(list.to_string(), "destHost,default");
        assert_eq!(list.first(), P::DestHost);
        assert_eq!(ProxyStrategies::default().shown(), Shown { text: "default".into(), quoted: true });
    }

    #[test]
    fn toml_takes_a_string_or_an_array() {
        #[derive(Debug, serde::Deserialize)]
        struct T {
            p: ProxyStrategies,
        }
        let parse = |v: &str| toml::from_str::<T>(&format!("p = {v}")).map(|t| t.p.as_slice().to_vec());
        assert_eq!(parse("\"destHost,default\"").unwrap(), [P::DestHost, P::Default]);
        assert_eq!(parse("[\"defaultRoute\", \"default\"]").unwrap(), [P::DefaultRoute, P::Default]);
        assert!(parse("[\"near\"]").unwrap_err().to_string().contains("unknown proxy strategy: near"));
        assert!(parse("[]").unwrap_err().to_string().contains("proxy strategies cannot be empty"));
        assert!(parse("3").is_err());
    }
}
