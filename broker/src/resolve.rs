//! Reference resolution (ARCHITECTURE section 3, rule 2): before a step runs, every reference
//! in its arguments is replaced by the referenced step's result, walked along the field path
//! (map keys, then array indices). A path that does not resolve is an error, never a literal.

use std::collections::{BTreeMap, HashMap};

use mpreg_protocol::Value;

/// A reference whose field path does not lead anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The reference as written, e.g. `fetch.rows.7`.
    pub reference: String,
    /// Why the walk stopped.
    pub reason: String,
}

/// Looks up the result of the step a string names; `None` if the string is a literal.
pub trait Results {
    /// The result of step `name`, if it is a step of this plan (it has finished: the engine
    /// only resolves a step after all its references).
    fn result(&self, name: &str) -> Option<&Value>;
}

impl Results for HashMap<String, Value> {
    fn result(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// Resolves every reference inside `args` and `kwargs` values.
pub fn resolve_args<R: Results>(
    args: &[Value],
    kwargs: &BTreeMap<String, Value>,
    results: &R,
) -> Result<(Vec<Value>, BTreeMap<String, Value>), Unresolved> {
    let args = args
        .iter()
        .map(|v| resolve_value(v, results))
        .collect::<Result<_, _>>()?;
    let kwargs = kwargs
        .iter()
        .map(|(k, v)| Ok((k.clone(), resolve_value(v, results)?)))
        .collect::<Result<_, _>>()?;
    Ok((args, kwargs))
}

/// Resolves one value: strings that are references are replaced, containers are walked.
pub fn resolve_value<R: Results>(value: &Value, results: &R) -> Result<Value, Unresolved> {
    Ok(match value {
        Value::String(s) => match s.as_str() {
            Some(text) => match lookup(text, results)? {
                Some(found) => found.clone(),
                None => value.clone(),
            },
            None => value.clone(),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve_value(v, results))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), resolve_value(v, results)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// Why resolving a step's arguments was refused before any copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// The resolved arguments would encode to more than this many bytes.
    Bytes(usize),
    /// The resolved arguments would nest deeper than this.
    Depth(usize),
}

/// Measures what [`resolve_args`] would produce without copying anything: every reference
/// counts the encoded size and nesting of the value it names. A few bytes of arguments can
/// name a large result many times over; the engine checks this first so that a task never
/// exceeds the message limits (`max_bytes`) or nests deeper than `max_depth` (counted like
/// the scan does, from the arguments' own containers). Stops as soon as a limit is passed, so
/// it costs at most `max_bytes` of walking. Unresolved references count as literals here
/// ([`resolve_args`] reports them).
pub fn check_footprint<R: Results>(
    args: &[Value],
    kwargs: &BTreeMap<String, Value>,
    results: &R,
    max_bytes: usize,
    max_depth: usize,
) -> Result<(), Oversize> {
    let mut walk = Footprint {
        bytes: 0,
        max_bytes,
        max_depth,
    };
    for v in args {
        walk.value(v, results, 1)?;
    }
    for (k, v) in kwargs {
        walk.bytes += k.len() + 5;
        walk.value(v, results, 1)?;
    }
    Ok(())
}

struct Footprint {
    bytes: usize,
    max_bytes: usize,
    max_depth: usize,
}

impl Footprint {
    /// `depth`: the container depth at which `value` sits (1 = directly in `args`).
    fn value<R: Results>(
        &mut self,
        value: &Value,
        results: &R,
        depth: usize,
    ) -> Result<(), Oversize> {
        if let Value::String(s) = value {
            if let Some(found) = s.as_str().and_then(|t| lookup(t, results).ok().flatten()) {
                return self.plain(found, depth);
            }
        }
        match value {
            Value::Array(items) => {
                self.container(depth)?;
                for v in items {
                    self.value(v, results, depth + 1)?;
                }
                Ok(())
            }
            Value::Map(entries) => {
                self.container(depth)?;
                for (k, v) in entries {
                    self.plain(k, depth + 1)?;
                    self.value(v, results, depth + 1)?;
                }
                Ok(())
            }
            other => self.plain(other, depth),
        }
    }

    /// A value copied as is.
    fn plain(&mut self, value: &Value, depth: usize) -> Result<(), Oversize> {
        match value {
            Value::Array(items) => {
                self.container(depth)?;
                items.iter().try_for_each(|v| self.plain(v, depth + 1))
            }
            Value::Map(entries) => {
                self.container(depth)?;
                entries.iter().try_for_each(|(k, v)| {
                    self.plain(k, depth + 1)?;
                    self.plain(v, depth + 1)
                })
            }
            Value::String(s) => self.add(5 + s.as_bytes().len()),
            Value::Binary(b) => self.add(5 + b.len()),
            Value::Ext(_, b) => self.add(6 + b.len()),
            _ => self.add(9),
        }
    }

    fn container(&mut self, depth: usize) -> Result<(), Oversize> {
        if depth > self.max_depth {
            return Err(Oversize::Depth(self.max_depth));
        }
        self.add(5)
    }

    fn add(&mut self, bytes: usize) -> Result<(), Oversize> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.max_bytes {
            Err(Oversize::Bytes(self.max_bytes))
        } else {
            Ok(())
        }
    }
}

/// `Ok(None)` when `text` is a literal; the referenced value when it is a reference.
fn lookup<'r, R: Results>(text: &str, results: &'r R) -> Result<Option<&'r Value>, Unresolved> {
    let (head, path) = match text.split_once('.') {
        Some((head, path)) => (head, Some(path)),
        None => (text, None),
    };
    let Some(mut at) = results.result(head) else {
        return Ok(None);
    };
    let Some(path) = path else {
        return Ok(Some(at));
    };
    for segment in path.split('.') {
        at = step_into(at, segment).ok_or_else(|| Unresolved {
            reference: text.to_string(),
            reason: format!("no field `{segment}` in {}", describe(at)),
        })?;
    }
    Ok(Some(at))
}

/// One path segment: a map key (string keys, or integer keys written in decimal), or an array
/// index.
fn step_into<'v>(value: &'v Value, segment: &str) -> Option<&'v Value> {
    match value {
        Value::Map(entries) => entries.iter().find_map(|(k, v)| {
            let matches = match k {
                Value::String(s) => s.as_str() == Some(segment),
                Value::Integer(i) => i.to_string() == segment,
                _ => false,
            };
            matches.then_some(v)
        }),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Map(m) => format!("a map of {} entries", m.len()),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Nil => "nil".into(),
        Value::Boolean(_) => "a boolean".into(),
        Value::Integer(_) => "an integer".into(),
        Value::F32(_) | Value::F64(_) => "a float".into(),
        Value::String(_) => "a string".into(),
        Value::Binary(_) => "binary data".into(),
        Value::Ext(..) => "an extension value".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn footprint_counts_references_without_copying() {
        let big = Value::from("x".repeat(1000));
        let results = HashMap::from([("big".to_string(), big)]);
        let refs: Vec<Value> = (0..100).map(|_| Value::from("big")).collect();
        let none = BTreeMap::new();
        // 100 references to 1000 bytes: about 100 KB once resolved.
        assert_eq!(
            check_footprint(&refs, &none, &results, 50_000, 64),
            Err(Oversize::Bytes(50_000))
        );
        assert!(check_footprint(&refs, &none, &results, 200_000, 64).is_ok());
        // Depth: a reference nested 3 deep to a value nested 3 deep.
        let deep = Value::Array(vec![Value::Array(vec![Value::Array(vec![])])]);
        let results = HashMap::from([("deep".to_string(), deep)]);
        let arg = vec![Value::Array(vec![Value::Array(vec![Value::from("deep")])])];
        assert!(check_footprint(&arg, &none, &results, 1 << 20, 5).is_ok());
        assert_eq!(
            check_footprint(&arg, &none, &results, 1 << 20, 4),
            Err(Oversize::Depth(4))
        );
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    fn results() -> HashMap<String, Value> {
        let rows = Value::Array(vec![s("r0"), Value::Map(vec![(s("k"), Value::from(7))])]);
        HashMap::from([
            (
                "fetch".to_string(),
                Value::Map(vec![(s("rows"), rows), (Value::from(3), s("three"))]),
            ),
            ("n".to_string(), Value::from(42)),
        ])
    }

    #[test]
    fn walks_keys_and_indices_at_any_depth() {
        let r = results();
        let v = Value::Array(vec![
            s("fetch.rows.1.k"),
            Value::Map(vec![(s("n"), s("n"))]),
            s("fetch.3"),
            s("literal"),
        ]);
        let got = resolve_value(&v, &r).unwrap();
        assert_eq!(
            got,
            Value::Array(vec![
                Value::from(7),
                Value::Map(vec![(s("n"), Value::from(42))]),
                s("three"),
                s("literal")
            ])
        );
    }

    #[test]
    fn unresolved_paths_are_errors() {
        let r = results();
        for bad in [
            "fetch.rows.9",
            "fetch.nope",
            "n.x",
            "fetch.rows.-1",
            "fetch.rows.0.x",
            "fetch.",
        ] {
            let err = resolve_value(&s(bad), &r).unwrap_err();
            assert_eq!(err.reference, bad);
        }
        let mut kw = BTreeMap::new();
        kw.insert("x".to_string(), Value::Array(vec![s("fetch.rows.5")]));
        assert!(resolve_args(&[], &kw, &r).is_err());
    }

    proptest! {
        /// Any value without references resolves to itself.
        #[test]
        fn literals_are_untouched(words in proptest::collection::vec("[a-z]{0,6}(\\.[a-z0-9]{1,3})?", 0..12)) {
            let r = results();
            let v = Value::Array(words.iter().map(|w| s(&format!("x{w}"))).collect());
            prop_assert_eq!(resolve_value(&v, &r).unwrap(), v);
        }

        /// Nesting a reference at any depth resolves to the same value.
        #[test]
        fn depth_does_not_matter(depth in 0usize..20, in_map in any::<bool>()) {
            let r = results();
            let mut v = s("fetch.rows.0");
            let mut want = s("r0");
            for _ in 0..depth {
                if in_map {
                    v = Value::Map(vec![(s("k"), v)]);
                    want = Value::Map(vec![(s("k"), want)]);
                } else {
                    v = Value::Array(vec![v]);
                    want = Value::Array(vec![want]);
                }
            }
            prop_assert_eq!(resolve_value(&v, &r).unwrap(), want);
        }
    }
}
