use super::*;
use ProxyStrategy as P;

/// An agent: a name for the assertions and its identifiers in the query
/// syntax agents are configured with.
struct Agent {
    name: &'static str,
    reach: Reach,
}

fn agent(name: &'static str, identifiers: &str) -> Agent {
    let pairs: Vec<(String, String)> = identifiers
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let (reach, unused) = Reach::from_identifiers(&pairs);
    assert!(unused.is_empty(), "{identifiers}: {unused:?}");
    Agent { name, reach }
}

/// The strategy that decides a dial to `address` and the names of the
/// agents it may go to.
fn routed(strategies: &[P], agents: &[Agent], address: &str) -> Option<(P, Vec<&'static str>)> {
    let (strategy, found) = route(strategies, &Destination::of(address), agents, |a| &a.reach)?;
    Some((strategy, found.into_iter().map(|a| a.name).collect()))
}

fn lab() -> Vec<Agent> {
    vec![
        agent("a", "host=node-a&ipv4=10.0.0.5&ipv6=fd00::5"),
        agent("b", "default-route=true"),
        agent("c", "cidr=10.0.0.0/8&cidr=fd00::/16"),
        agent("d", "cidr=10.1.0.0/16&host=Node-D.example"),
        agent("e", ""),
    ]
}

#[test]
fn default_takes_every_agent() {
    let agents = lab();
    assert_eq!(routed(&[P::Default], &agents, "anything:80"), Some((P::Default, vec!["a", "b", "c", "d", "e"])));
}

#[test]
fn default_route_takes_the_agents_that_advertise_it() {
    let agents = lab();
    assert_eq!(routed(&[P::DefaultRoute], &agents, "node-a:443"), Some((P::DefaultRoute, vec!["b"])));
    assert_eq!(routed(&[P::DefaultRoute], &agents[2..], "x:1"), None);
}

#[test]
fn dest_host_matches_names_and_addresses_exactly() {
    let agents = lab();
    let dest = |address| routed(&[P::DestHost], &agents, address);
    assert_eq!(dest("node-a:443"), Some((P::DestHost, vec!["a"])));
    assert_eq!(dest("NODE-A:443"), Some((P::DestHost, vec!["a"])), "names ignore case");
    assert_eq!(dest("node-d.example:22"), Some((P::DestHost, vec!["d"])), "declared in any case");
    assert_eq!(dest("10.0.0.5:10250"), Some((P::DestHost, vec!["a"])), "exact beats the /8 of c");
    assert_eq!(dest("[fd00::5]:10250"), Some((P::DestHost, vec!["a"])));
    assert_eq!(dest("[fd00:0::5]:10250"), Some((P::DestHost, vec!["a"])), "addresses compare as addresses");
    assert_eq!(dest("node-b:443"), None);
    assert_eq!(dest("node:443"), None, "a prefix of a name is not the name");
}

#[test]
fn dest_host_falls_back_to_the_longest_cidr() {
    let agents = lab();
    let dest = |address| routed(&[P::DestHost], &agents, address);
    assert_eq!(dest("10.200.3.4:80"), Some((P::DestHost, vec!["c"])));
    assert_eq!(dest("10.1.2.3:80"), Some((P::DestHost, vec!["d"])), "/16 beats /8");
    assert_eq!(dest("[fd00:1::9]:80"), Some((P::DestHost, vec!["c"])));
    assert_eq!(dest("11.0.0.1:80"), None);
    assert_eq!(dest("10-1-2-3.example:80"), None, "names never match a block");
    let twins = [agent("x", "cidr=192.168.0.0/24"), agent("y", "cidr=192.168.0.0/24"), agent("z", "cidr=0.0.0.0/0")];
    assert_eq!(routed(&[P::DestHost], &twins, "192.168.0.7:1"), Some((P::DestHost, vec!["x", "y"])));
    assert_eq!(routed(&[P::DestHost], &twins, "8.8.8.8:53"), Some((P::DestHost, vec!["z"])), "/0 holds all");
    assert_eq!(routed(&[P::DestHost], &twins, "[::1]:53"), None, "an IPv4 block holds no IPv6 address");
}

#[test]
fn strategies_fall_through_in_their_order() {
    let agents = lab();
    let all = [P::DestHost, P::DefaultRoute, P::Default];
    assert_eq!(routed(&all, &agents, "node-a:443"), Some((P::DestHost, vec!["a"])));
    assert_eq!(routed(&all, &agents, "kubernetes.default:443"), Some((P::DefaultRoute, vec!["b"])));
    let no_default_route: Vec<Agent> = lab().into_iter().filter(|a| a.name != "b").collect();
    assert_eq!(routed(&all, &no_default_route, "elsewhere:443"), Some((P::Default, vec!["a", "c", "d", "e"])));
    assert_eq!(routed(&[P::DestHost, P::DefaultRoute], &no_default_route, "elsewhere:443"), None);
    assert_eq!(routed(&[P::Default, P::DestHost], &agents, "node-a:443").map(|r| r.0), Some(P::Default));
    assert_eq!(routed(&all, &[], "node-a:443"), None, "no agents at all");
}

#[test]
fn destination_hosts_as_upstream_strips_ports() {
    let host = |address| {
        let d = Destination::of(address);
        (d.host, d.ip.map(|ip| ip.to_string()))
    };
    assert_eq!(host("node-a:443"), ("node-a".into(), None));
    assert_eq!(host("Node-A"), ("node-a".into(), None));
    assert_eq!(host("10.0.0.5:80"), ("10.0.0.5".into(), Some("10.0.0.5".into())));
    assert_eq!(host("[fd00::5]:80"), ("fd00::5".into(), Some("fd00::5".into())));
    assert_eq!(host("[fd00::5]"), ("fd00::5".into(), Some("fd00::5".into())));
    assert_eq!(host("fd00::5"), ("fd00::5".into(), Some("fd00::5".into())), "bare IPv6, no port");
    assert_eq!(host(""), (String::new(), None));
    assert_eq!(host("[unterminated"), ("unterminated".into(), None));
}

#[test]
fn identifiers_konnq_cannot_use_are_reported() {
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    let (reach, unused) = Reach::from_identifiers(&pairs(&[
        ("host", "a"),
        ("zone", "eu"),
        ("ipv4", "::1"),
        ("cidr", "10.0.0.0/33"),
        ("host", ""),
        ("default-route", "false"),
        ("default-route", "yes"),
    ]));
    assert_eq!(unused, ["zone=eu", "ipv4=::1", "cidr=10.0.0.0/33", "host=", "default-route=yes"]);
    assert!(reach.serves(P::DestHost) && reach.serves(P::Default) && !reach.serves(P::DefaultRoute));
    let (nothing, _) = Reach::from_identifiers(&[]);
    assert!(!nothing.serves(P::DestHost) && !nothing.serves(P::DefaultRoute) && nothing.serves(P::Default));
    let (route, _) = Reach::from_identifiers(&pairs(&[("default-route", "T")]));
    assert!(route.serves(P::DefaultRoute), "Go's booleans, as upstream parses them");
    let (cidr_only, _) = Reach::from_identifiers(&pairs(&[("cidr", "fd00::/64")]));
    assert!(cidr_only.serves(P::DestHost), "a block is something destHost can route to");
}

#[test]
fn choose_prefers_agents_with_a_free_stream_slot() {
    let pool = vec![("a", false), ("b", true), ("c", false), ("d", true)];
    let free = |a: &(&str, bool)| a.1;
    for i in 0..2 {
        let picked = choose(pool.clone(), free, |n| {
            assert_eq!(n, 2, "only the free ones are candidates");
            i
        });
        assert_eq!(picked.map(|p| p.0), Some(["b", "d"][i]));
    }
    let busy = vec![("a", false), ("c", false)];
    assert_eq!(choose(busy, free, |n| n - 1).map(|p| p.0), Some("c"), "all busy: any of them (it waits)");
    assert_eq!(choose(Vec::<(&str, bool)>::new(), free, |_| 0), None);
    assert_eq!(choose(vec![("a", true)], free, |_| 7).map(|p| p.0), Some("a"), "an index past the end is clamped");
}
