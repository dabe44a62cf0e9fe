//! Which agent connections take dials (no I/O: the backend keeps one
//! [`Registry`] behind a mutex).
//!
//! A connection takes dials unless it is draining or *superseded*: when a
//! connection registers with an agent ID that is already registered, the
//! newest one takes the dials for that ID and the older ones stop taking
//! new dials (their open streams carry on). An agent that restarted or lost
//! its path reconnects before the server has noticed its old connection is
//! dead, and new dials must not go down the dead one. If the newest
//! connection goes away, the newest remaining one with that ID takes over.
//!
//! Two *different* agents with one ID (an operator error: upstream groups
//! them under one ID as well) look the same at first; the backend tells them
//! apart later, by whether the older connection is still alive after the
//! reconnect grace.

/// One registered connection.
struct Entry<T> {
    key: u64,
    agent_id: String,
    draining: bool,
    superseded: bool,
    value: T,
}

impl<T> Entry<T> {
    fn takes_dials(&self) -> bool {
        !self.draining && !self.superseded
    }
}

/// Registered connections in the order they registered (keys increase).
pub struct Registry<T> {
    entries: Vec<Entry<T>>,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry { entries: Vec::new() }
    }
}

impl<T> Registry<T> {
    /// Registers connection `key` (larger than every key before it) of
    /// `agent_id`; returns the values of the connections with the same ID
    /// that it supersedes and that were not draining (an agent that drains
    /// one connection and opens another, e.g. moving from TCP back to UDP,
    /// is one agent, not two sharing an ID).
    pub fn insert(&mut self, key: u64, agent_id: &str, value: T) -> Vec<&T> {
        for e in self.entries.iter_mut().filter(|e| e.agent_id == agent_id) {
            e.superseded = true;
        }
        self.entries.push(Entry { key, agent_id: agent_id.to_owned(), draining: false, superseded: false, value });
        let len = self.entries.len();
        self.entries[..len - 1].iter().filter(|e| e.agent_id == agent_id && !e.draining).map(|e| &e.value).collect()
    }

    /// Removes connection `key`; if it was its ID's newest, the newest
    /// remaining connection of that ID takes dials again.
    pub fn remove(&mut self, key: u64) {
        let Some(at) = self.entries.iter().position(|e| e.key == key) else { return };
        let gone = self.entries.remove(at);
        if gone.superseded {
            return;
        }
        if let Some(next) = self.entries.iter_mut().rev().find(|e| e.agent_id == gone.agent_id) {
            next.superseded = false;
        }
    }

    /// Connection `key` takes no new dials from now on.
    pub fn set_draining(&mut self, key: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.key == key) {
            e.draining = true;
        }
    }

    /// The connections that take dials.
    pub fn ready(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter(|e| e.takes_dials()).map(|e| &e.value)
    }

    /// The draining connections that are their agent ID's newest: they
    /// take a dial only when no ready one can.
    pub fn draining(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter(|e| e.draining && !e.superseded).map(|e| &e.value)
    }

    /// Every registered connection.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|e| &e.value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(r: &Registry<&'static str>) -> Vec<&'static str> {
        r.ready().copied().collect()
    }

    #[test]
    fn the_newest_connection_of_an_id_takes_the_dials() {
        let mut r = Registry::default();
        assert!(r.insert(1, "node-a", "a1").is_empty());
        assert!(r.insert(2, "node-b", "b1").is_empty());
        assert_eq!(r.insert(3, "node-a", "a2"), vec![&"a1"], "a2 supersedes a1");
        assert_eq!(ready(&r), ["b1", "a2"]);
        assert_eq!(r.insert(4, "node-a", "a3"), vec![&"a1", &"a2"]);
        assert_eq!(ready(&r), ["b1", "a3"]);
        assert_eq!(r.len(), 4, "superseded connections stay registered");
    }

    #[test]
    fn a_connection_that_drained_is_superseded_without_a_conflict() {
        let mut r = Registry::default();
        r.insert(1, "node-a", "a1");
        r.set_draining(1);
        assert!(r.insert(2, "node-a", "a2").is_empty(), "a1 drained: not a second agent with that ID");
        assert_eq!(ready(&r), ["a2"]);
    }

    #[test]
    fn when_the_newest_goes_the_next_newest_takes_over() {
        let mut r = Registry::default();
        r.insert(1, "node-a", "a1");
        r.insert(2, "node-a", "a2");
        r.insert(3, "node-a", "a3");
        r.remove(2);
        assert_eq!(ready(&r), ["a3"], "removing a superseded one changes nothing");
        r.remove(3);
        assert_eq!(ready(&r), ["a1"]);
        r.remove(1);
        assert!(ready(&r).is_empty());
        assert_eq!(r.len(), 0);
        r.remove(7); // unknown keys are ignored
    }

    #[test]
    fn draining_connections_take_no_dials() {
        let mut r = Registry::default();
        r.insert(1, "node-a", "a1");
        r.insert(2, "node-b", "b1");
        r.set_draining(2);
        assert_eq!(ready(&r), ["a1"]);
        r.insert(3, "node-b", "b2");
        assert_eq!(ready(&r), ["a1", "b2"], "a reconnect after a drain takes dials");
        r.remove(3);
        assert_eq!(ready(&r), ["a1"], "the draining one stays out");
        assert_eq!(r.all().count(), 2);
        assert_eq!(r.draining().copied().collect::<Vec<_>>(), ["b1"], "the last resort");
        r.insert(4, "node-b", "b3");
        assert!(r.draining().next().is_none(), "a superseded draining connection is no resort");
    }
}
