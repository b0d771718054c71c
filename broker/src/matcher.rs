//! Topic pattern matching: a trie of pattern words.
//!
//! Rules (AMQP topic exchange): a topic is words separated by `.`, empty words included
//! (`a..b` has three words). In a pattern, the word `*` matches exactly one word and the word
//! `#` matches zero or more words, anywhere (`#`, `a.#`, `#.b`, `a.#.b`, `a.*.#`, `a.#.#`;
//! `a.#.#` matches `a`). A `*` or `#` inside a longer word is a literal character.
//!
//! Each trie node has children by literal word, plus a `*` child and a `#` child. Matching walks
//! the topic's words from the root; a `#` child may consume any number of words, and every
//! (node, position) pair is visited at most once per match, so patterns such as `#.#.#.x` cost
//! no more than the trie's size times the topic's length. Keys matched by several patterns
//! are reported once.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A subscription key.
pub type Key = u64;

/// FxHash: a fast, non-cryptographic hash for short words (the trie is keyed by words chosen
/// by authenticated clients, bounded in length and count).
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Fx = BuildHasherDefault<FxHasher>;

type NodeId = u32;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, NodeId, Fx>,
    star: Option<NodeId>,
    hash: Option<NodeId>,
    keys: Vec<Key>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.keys.is_empty()
    }
}

/// Patterns with their keys, matched against topics.
pub struct Matcher {
    nodes: Vec<Node>,
    free: Vec<NodeId>,
    pairs: usize,
    // Scratch space reused by `matches`.
    words: Vec<(usize, usize)>,
    stack: Vec<(NodeId, usize)>,
    visited_gen: Vec<u32>,
    visited_mask: Vec<u64>,
    visited_wide: HashSet<(NodeId, usize), Fx>,
    generation: u32,
    seen: HashSet<Key, Fx>,
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher::new()
    }
}

const ROOT: NodeId = 0;

enum Word<'a> {
    Literal(&'a str),
    Star,
    Hash,
}

fn word(w: &str) -> Word<'_> {
    match w {
        "*" => Word::Star,
        "#" => Word::Hash,
        other => Word::Literal(other),
    }
}

impl Matcher {
    /// An empty matcher.
    pub fn new() -> Matcher {
        Matcher {
            nodes: vec![Node::default()],
            free: Vec::new(),
            pairs: 0,
            words: Vec::new(),
            stack: Vec::new(),
            visited_gen: vec![0],
            visited_mask: vec![0],
            visited_wide: HashSet::default(),
            generation: 0,
            seen: HashSet::default(),
        }
    }

    /// Number of (pattern, key) pairs.
    pub fn len(&self) -> usize {
        self.pairs
    }

    /// True when no pattern is registered.
    pub fn is_empty(&self) -> bool {
        self.pairs == 0
    }

    fn alloc(&mut self) -> NodeId {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::default());
                self.visited_gen.push(0);
                self.visited_mask.push(0);
                (self.nodes.len() - 1) as NodeId
            }
        }
    }

    /// Adds `key` under `pattern` (adding the same pair twice has no effect).
    pub fn insert(&mut self, pattern: &str, key: Key) {
        let mut at = ROOT;
        for w in pattern.split('.') {
            let next = match word(w) {
                Word::Star => self.nodes[at as usize].star,
                Word::Hash => self.nodes[at as usize].hash,
                Word::Literal(l) => self.nodes[at as usize].children.get(l).copied(),
            };
            at = match next {
                Some(n) => n,
                None => {
                    let n = self.alloc();
                    let node = &mut self.nodes[at as usize];
                    match word(w) {
                        Word::Star => node.star = Some(n),
                        Word::Hash => node.hash = Some(n),
                        Word::Literal(l) => {
                            node.children.insert(l.into(), n);
                        }
                    }
                    n
                }
            };
        }
        let keys = &mut self.nodes[at as usize].keys;
        if !keys.contains(&key) {
            keys.push(key);
            self.pairs += 1;
        }
    }

    /// Removes `key` from `pattern`; false if the pair was not there. Empty branches are
    /// pruned.
    pub fn remove(&mut self, pattern: &str, key: Key) -> bool {
        let mut path: Vec<(NodeId, &str)> = Vec::new();
        let mut at = ROOT;
        for w in pattern.split('.') {
            let node = &self.nodes[at as usize];
            let next = match word(w) {
                Word::Star => node.star,
                Word::Hash => node.hash,
                Word::Literal(l) => node.children.get(l).copied(),
            };
            let Some(next) = next else { return false };
            path.push((at, w));
            at = next;
        }
        let keys = &mut self.nodes[at as usize].keys;
        let Some(i) = keys.iter().position(|&k| k == key) else {
            return false;
        };
        keys.swap_remove(i);
        self.pairs -= 1;
        // Prune from the leaf up while nodes are empty.
        let mut child = at;
        while let Some((parent, w)) = path.pop() {
            if !self.nodes[child as usize].is_empty() {
                break;
            }
            let node = &mut self.nodes[parent as usize];
            match word(w) {
                Word::Star => node.star = None,
                Word::Hash => node.hash = None,
                Word::Literal(l) => {
                    node.children.remove(l);
                }
            }
            self.nodes[child as usize] = Node::default();
            self.free.push(child);
            child = parent;
        }
        true
    }

    /// Appends to `out` every key with a pattern matching `topic`, each once.
    pub fn matches(&mut self, topic: &str, out: &mut Vec<Key>) {
        self.words.clear();
        let mut start = 0;
        for (i, b) in topic.bytes().enumerate() {
            if b == b'.' {
                self.words.push((start, i));
                start = i + 1;
            }
        }
        self.words.push((start, topic.len()));
        let n = self.words.len();
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.visited_gen.iter_mut().for_each(|g| *g = 0);
            self.generation = 1;
        }
        self.visited_wide.clear();
        self.seen.clear();
        self.stack.clear();
        self.stack.push((ROOT, 0));
        while let Some((at, pos)) = self.stack.pop() {
            if !self.visit(at, pos) {
                continue;
            }
            let node = &self.nodes[at as usize];
            if let Some(h) = node.hash {
                // `#` consumes zero or more words: the rest of the pattern continues at
                // any later position.
                for p in pos..=n {
                    self.stack.push((h, p));
                }
            }
            if pos == n {
                for &k in &node.keys {
                    if self.seen.insert(k) {
                        out.push(k);
                    }
                }
                continue;
            }
            if let Some(s) = node.star {
                self.stack.push((s, pos + 1));
            }
            let (a, b) = self.words[pos];
            if let Some(&c) = node.children.get(&topic[a..b]) {
                self.stack.push((c, pos + 1));
            }
        }
    }

    /// Marks (node, position) visited; false if it already was during this match.
    fn visit(&mut self, node: NodeId, pos: usize) -> bool {
        if pos < 64 {
            let i = node as usize;
            if self.visited_gen[i] != self.generation {
                self.visited_gen[i] = self.generation;
                self.visited_mask[i] = 0;
            }
            let bit = 1u64 << pos;
            let fresh = self.visited_mask[i] & bit == 0;
            self.visited_mask[i] |= bit;
            fresh
        } else {
            self.visited_wide.insert((node, pos))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matched(m: &mut Matcher, topic: &str) -> Vec<Key> {
        let mut out = Vec::new();
        m.matches(topic, &mut out);
        out.sort_unstable();
        out
    }

    fn one(pattern: &str, topic: &str) -> bool {
        let mut m = Matcher::new();
        m.insert(pattern, 1);
        !matched(&mut m, topic).is_empty()
    }

    #[test]
    fn rule_vectors() {
        let yes = [
            ("a", "a"),
            ("a.b", "a.b"),
            ("*", "a"),
            ("*", ""),
            ("#", "a"),
            ("#", "a.b.c"),
            ("#", ""),
            ("a.#", "a"),
            ("a.#", "a.b.c"),
            ("#.b", "b"),
            ("#.b", "a.x.b"),
            ("a.#.b", "a.b"),
            ("a.#.b", "a.x.y.b"),
            ("a.*.#", "a.b"),
            ("a.*.#", "a.b.c.d"),
            ("a.#.#", "a"),
            ("a.#.#", "a.b.c"),
            ("a..b", "a..b"),
            ("a.*.b", "a..b"),
            ("*.b", ".b"),
            ("a*", "a*"),
            ("#a", "#a"),
            ("#.#.#.x", "x"),
            ("#.#.#.x", "a.b.c.d.e.x"),
        ];
        for (p, t) in yes {
            assert!(one(p, t), "{p} should match {t}");
        }
        let no = [
            ("a", "b"),
            ("a", "a.b"),
            ("*", "a.b"),
            ("a.*", "a"),
            ("a.*.#", "a"),
            ("a.#.b", "a.b.c"),
            ("#.b", "b.a"),
            ("a*", "ab"),
            ("a*", "a"),
            ("a..b", "a.b"),
            ("#.#.#.x", "x.y"),
            ("a.b", "a.b.c"),
        ];
        for (p, t) in no {
            assert!(!one(p, t), "{p} should not match {t}");
        }
    }

    #[test]
    fn keys_are_reported_once_and_separately() {
        let mut m = Matcher::new();
        m.insert("a.*", 1);
        m.insert("a.#", 1);
        m.insert("#", 1);
        m.insert("a.b", 2);
        m.insert("#", 3);
        m.insert("a.b", 2);
        assert_eq!(m.len(), 5);
        assert_eq!(matched(&mut m, "a.b"), vec![1, 2, 3]);
        assert_eq!(matched(&mut m, "z"), vec![1, 3]);
    }

    #[test]
    fn remove_prunes_and_keeps_siblings() {
        let mut m = Matcher::new();
        m.insert("a.b.c", 1);
        m.insert("a.b", 2);
        m.insert("a.#", 3);
        assert!(m.remove("a.b.c", 1));
        assert!(!m.remove("a.b.c", 1));
        assert!(!m.remove("a.x", 2));
        assert_eq!(matched(&mut m, "a.b"), vec![2, 3]);
        assert_eq!(matched(&mut m, "a.b.c"), vec![3]);
        assert!(m.remove("a.b", 2) && m.remove("a.#", 3));
        assert!(m.is_empty());
        assert!(m.nodes[0].is_empty(), "every branch was pruned");
        assert_eq!(m.free.len(), m.nodes.len() - 1);
    }

    #[test]
    fn many_patterns_stay_fast() {
        let mut m = Matcher::new();
        for i in 0..100_000u64 {
            m.insert(&format!("orders.r{}.{}.*", i % 8, i), i);
        }
        let start = std::time::Instant::now();
        let mut out = Vec::new();
        for i in 0..10_000u64 {
            out.clear();
            m.matches(
                &format!("orders.r{}.{}.created", i % 8, i * 7 % 100_000),
                &mut out,
            );
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    /// The reference: a direct recursive reading of the rules over word slices.
    fn reference(pattern: &[&str], topic: &[&str]) -> bool {
        match pattern.split_first() {
            None => topic.is_empty(),
            Some((&"#", rest)) => (0..=topic.len()).any(|skip| reference(rest, &topic[skip..])),
            Some((&"*", rest)) => !topic.is_empty() && reference(rest, &topic[1..]),
            Some((w, rest)) => topic.first() == Some(w) && reference(rest, &topic[1..]),
        }
    }

    fn words() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop::sample::select(vec!["a", "b", "c", "", "*", "#", "a*"]),
            1..6,
        )
        .prop_map(|w| w.join("."))
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(
            patterns in proptest::collection::vec((words(), 0u64..6), 0..12),
            removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
            topics in proptest::collection::vec(words(), 1..8),
        ) {
            let mut m = Matcher::new();
            let mut live: Vec<(String, u64)> = Vec::new();
            for (p, k) in &patterns {
                m.insert(p, *k);
                if !live.contains(&(p.clone(), *k)) {
                    live.push((p.clone(), *k));
                }
            }
            for r in &removals {
                if live.is_empty() { break; }
                let (p, k) = live.remove(r.index(live.len()));
                prop_assert!(m.remove(&p, k));
            }
            prop_assert_eq!(m.len(), live.len());
            for t in &topics {
                // Topics use the same alphabet; `*` and `#` in a topic are literal words.
                let tw: Vec<&str> = t.split('.').collect();
                let mut want: Vec<u64> = live
                    .iter()
                    .filter(|(p, _)| reference(&p.split('.').collect::<Vec<_>>(), &tw))
                    .map(|(_, k)| *k)
                    .collect();
                want.sort_unstable();
                want.dedup();
                prop_assert_eq!(matched(&mut m, t), want, "topic {}", t);
            }
            for (p, k) in &live {
                prop_assert!(m.remove(p, *k));
            }
            prop_assert!(m.is_empty());
            prop_assert!(m.nodes[0].is_empty());
        }
    }
}
