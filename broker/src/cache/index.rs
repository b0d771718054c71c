//! The cache's indexes over its entries: by tag, by function, and the dependency links (design
//! section 4.2, invalidation).
//!
//! A link `parent -> child` says that the child's arguments came from the parent's cached
//! result in one plan. Links are recorded by the child and leave with it; a parent that leaves
//! first keeps its links to the children still cached, so invalidating it by key still reaches
//! them. An entry that leaves for room or age takes its own parent links with it: a chain
//! `a -> b -> c` whose `b` was evicted no longer links `a` to `c` (`c` stays until its own
//! tags, age or room remove it). Keeping links through evicted entries would keep memory that
//! no entry's byte count pays for.
//!
//! Ordered collections throughout: what [`Index::downstream`] returns, and so the order of
//! removals, depends on the keys only.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::key::CacheKey;

#[derive(Debug, Default)]
pub(super) struct Index {
    by_tag: BTreeMap<Box<str>, BTreeSet<CacheKey>>,
    by_function: BTreeMap<Box<str>, BTreeSet<CacheKey>>,
    children: BTreeMap<CacheKey, BTreeSet<CacheKey>>,
}

fn unlink<K, Q>(map: &mut BTreeMap<K, BTreeSet<CacheKey>>, at: &Q, key: &CacheKey)
where
    K: Ord + std::borrow::Borrow<Q>,
    Q: Ord + ?Sized,
{
    if let Some(set) = map.get_mut(at) {
        set.remove(key);
        if set.is_empty() {
            map.remove(at);
        }
    }
}

impl Index {
    /// Records a cached entry.
    pub(super) fn add(&mut self, key: &CacheKey, tags: &[Box<str>], parents: &[CacheKey]) {
        for tag in tags {
            self.by_tag
                .entry(tag.clone())
                .or_default()
                .insert(key.clone());
        }
        self.by_function
            .entry(key.fun().into())
            .or_default()
            .insert(key.clone());
        for parent in parents {
            self.children
                .entry(parent.clone())
                .or_default()
                .insert(key.clone());
        }
    }

    /// Forgets an entry that left the cache (its own children keep their links to it).
    pub(super) fn forget(&mut self, key: &CacheKey, tags: &[Box<str>], parents: &[CacheKey]) {
        for tag in tags {
            unlink(&mut self.by_tag, &**tag, key);
        }
        unlink(&mut self.by_function, key.fun(), key);
        for parent in parents {
            unlink(&mut self.children, parent, key);
        }
    }

    /// The entries carrying `tag`.
    pub(super) fn tagged(&self, tag: &str) -> Vec<CacheKey> {
        self.by_tag
            .get(tag)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The entries of function `fun` (any version, any resources).
    pub(super) fn of_function(&self, fun: &str) -> Vec<CacheKey> {
        self.by_function
            .get(fun)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `roots` and everything linked below them, at any depth, each once, breadth first
    /// (iterative: a chain as long as a plan costs no stack).
    pub(super) fn downstream(&self, roots: Vec<CacheKey>) -> Vec<CacheKey> {
        let mut seen: BTreeSet<CacheKey> = BTreeSet::new();
        let mut queue: VecDeque<CacheKey> = VecDeque::new();
        let mut out = Vec::new();
        for r in roots {
            if seen.insert(r.clone()) {
                queue.push_back(r);
            }
        }
        while let Some(k) = queue.pop_front() {
            if let Some(children) = self.children.get(&k) {
                for c in children {
                    if seen.insert(c.clone()) {
                        queue.push_back(c.clone());
                    }
                }
            }
            out.push(k);
        }
        out
    }

    /// The entries linked directly below `key`.
    #[cfg(test)]
    pub(super) fn children_of(&self, key: &CacheKey) -> BTreeSet<CacheKey> {
        self.children.get(key).cloned().unwrap_or_default()
    }

    /// True when nothing is indexed (every entry forgotten).
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.by_tag.is_empty() && self.by_function.is_empty() && self.children.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap as Map;

    fn key(fun: &str, n: i64) -> CacheKey {
        CacheKey::new(fun, None, &[], &[n.into()], &Map::new()).unwrap()
    }

    fn tags(t: &[&str]) -> Vec<Box<str>> {
        t.iter().map(|&s| s.into()).collect()
    }

    #[test]
    fn downstream_is_transitive_and_visits_each_once() {
        let (a, b, c, d) = (key("f", 0), key("f", 1), key("g", 2), key("g", 3));
        let mut ix = Index::default();
        ix.add(&a, &[], &[]);
        ix.add(&b, &[], std::slice::from_ref(&a));
        ix.add(&c, &[], std::slice::from_ref(&b));
        // A diamond and a cycle: d hangs off a and c, and a off d.
        ix.add(&d, &[], &[a.clone(), c.clone()]);
        ix.add(&a, &[], std::slice::from_ref(&d));
        let got = ix.downstream(vec![b.clone()]);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], b);
        let set: BTreeSet<_> = got.into_iter().collect();
        assert_eq!(
            set,
            BTreeSet::from([a.clone(), b.clone(), c.clone(), d.clone()])
        );
        assert_eq!(ix.downstream(vec![c.clone(), c.clone()]).len(), 4);
    }

    #[test]
    fn a_long_chain_costs_no_stack() {
        let keys: Vec<CacheKey> = (0..100_000).map(|i| key("f", i)).collect();
        let mut ix = Index::default();
        ix.add(&keys[0], &[], &[]);
        for w in keys.windows(2) {
            ix.add(&w[1], &[], std::slice::from_ref(&w[0]));
        }
        assert_eq!(ix.downstream(vec![keys[0].clone()]).len(), keys.len());
    }

    #[test]
    fn forgetting_unlinks_everything_the_entry_added() {
        let (a, b) = (key("f", 0), key("g", 1));
        let mut ix = Index::default();
        ix.add(&a, &tags(&["t", "u"]), &[]);
        ix.add(&b, &tags(&["u"]), std::slice::from_ref(&a));
        assert_eq!(ix.tagged("u"), {
            let mut v = vec![a.clone(), b.clone()];
            v.sort();
            v
        });
        assert_eq!(ix.of_function("g"), vec![b.clone()]);
        // The parent leaves first: its link to the child stays, for invalidation by key.
        ix.forget(&a, &tags(&["t", "u"]), &[]);
        assert_eq!(ix.tagged("t"), vec![]);
        assert_eq!(ix.downstream(vec![a.clone()]), vec![a.clone(), b.clone()]);
        ix.forget(&b, &tags(&["u"]), std::slice::from_ref(&a));
        assert!(ix.is_empty());
    }
}
