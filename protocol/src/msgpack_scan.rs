//! A non-recursive structural check of a msgpack document, run before any decoder sees it.
//!
//! It proves the bytes hold exactly one well-formed value, that containers nest no deeper than
//! the limit (so recursive decoders cannot overflow the stack), and that no container declares
//! more elements than there are bytes left (so no decoder pre-allocates for a lie). It allocates
//! at most `max_depth` counters and reads each byte once.

use thiserror::Error;

/// Why a document failed the structural check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScanError {
    /// The document ends in the middle of a value.
    #[error("msgpack truncated at byte {offset}")]
    Truncated {
        /// Where the missing value or payload starts.
        offset: usize,
    },
    /// A byte that msgpack never uses as a type marker (0xc1).
    #[error("invalid msgpack marker 0x{marker:02x} at byte {offset}")]
    InvalidMarker {
        /// Position of the marker.
        offset: usize,
        /// The marker byte.
        marker: u8,
    },
    /// Containers nest deeper than allowed.
    #[error("msgpack nested deeper than {max} levels")]
    TooDeep {
        /// The limit that was exceeded.
        max: usize,
    },
    /// A container declares more elements than the remaining bytes could hold.
    #[error(
        "container at byte {offset} declares {declared} elements but only {remaining} bytes remain"
    )]
    ImpossibleLength {
        /// Position of the container header.
        offset: usize,
        /// Elements declared (map entries count twice).
        declared: u64,
        /// Bytes left after the header.
        remaining: usize,
    },
    /// Bytes follow the single top-level value.
    #[error("{extra} trailing bytes after the msgpack value")]
    TrailingBytes {
        /// How many bytes follow.
        extra: usize,
    },
}

/// What a header tells the scanner to do next.
enum Header {
    /// A scalar followed by this many payload bytes.
    Skip(u64),
    /// A container holding this many child values (map entries count twice).
    Container(u64),
}

/// Checks that `bytes` hold exactly one well-formed msgpack value nested at most `max_depth`
/// containers deep.
pub fn scan(bytes: &[u8], max_depth: usize) -> Result<(), ScanError> {
    let mut stack: Vec<u64> = Vec::with_capacity(max_depth.min(64));
    let mut pos = 0usize;
    loop {
        let start = pos;
        let header = read_header(bytes, &mut pos)?;
        match header {
            Header::Skip(n) => {
                let remaining = (bytes.len() - pos) as u64;
                if n > remaining {
                    return Err(ScanError::Truncated { offset: pos });
                }
                pos += n as usize;
            }
            Header::Container(0) => {}
            Header::Container(n) => {
                let remaining = bytes.len() - pos;
                if n > remaining as u64 {
                    return Err(ScanError::ImpossibleLength {
                        offset: start,
                        declared: n,
                        remaining,
                    });
                }
                if stack.len() >= max_depth {
                    return Err(ScanError::TooDeep { max: max_depth });
                }
                stack.push(n);
                continue;
            }
        }
        // A value completed: count it against its parents, closing every container it filled.
        loop {
            match stack.last_mut() {
                None => {
                    return if pos == bytes.len() {
                        Ok(())
                    } else {
                        Err(ScanError::TrailingBytes {
                            extra: bytes.len() - pos,
                        })
                    };
                }
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    stack.pop();
                }
            }
        }
    }
}

/// Where the value starting at `start` ends, walking nested containers with a single counter
/// (no recursion, no allocation). `None` if the bytes end first.
pub fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut pos = start;
    let mut pending: u64 = 1;
    while pending > 0 {
        pending -= 1;
        match read_header(bytes, &mut pos).ok()? {
            Header::Skip(n) => pos = pos.checked_add(usize::try_from(n).ok()?)?,
            Header::Container(n) => pending = pending.checked_add(n)?,
        }
        if pos > bytes.len() {
            return None;
        }
    }
    Some(pos)
}

fn read_header(bytes: &[u8], pos: &mut usize) -> Result<Header, ScanError> {
    let offset = *pos;
    let marker = *bytes.get(offset).ok_or(ScanError::Truncated { offset })?;
    *pos += 1;
    let header = match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Header::Skip(0),
        0x80..=0x8f => Header::Container(2 * u64::from(marker & 0x0f)),
        0x90..=0x9f => Header::Container(u64::from(marker & 0x0f)),
        0xa0..=0xbf => Header::Skip(u64::from(marker & 0x1f)),
        0xc1 => return Err(ScanError::InvalidMarker { offset, marker }),
        // bin 8/16/32, str 8/16/32
        0xc4 | 0xd9 => Header::Skip(read_len(bytes, pos, 1)?),
        0xc5 | 0xda => Header::Skip(read_len(bytes, pos, 2)?),
        0xc6 | 0xdb => Header::Skip(read_len(bytes, pos, 4)?),
        // ext 8/16/32: length, then a type byte, then the data
        0xc7 => Header::Skip(read_len(bytes, pos, 1)? + 1),
        0xc8 => Header::Skip(read_len(bytes, pos, 2)? + 1),
        0xc9 => Header::Skip(read_len(bytes, pos, 4)? + 1),
        0xca => Header::Skip(4),
        0xcb => Header::Skip(8),
        0xcc | 0xd0 => Header::Skip(1),
        0xcd | 0xd1 => Header::Skip(2),
        0xce | 0xd2 => Header::Skip(4),
        0xcf | 0xd3 => Header::Skip(8),
        // fixext 1/2/4/8/16: a type byte, then the data
        0xd4 => Header::Skip(2),
        0xd5 => Header::Skip(3),
        0xd6 => Header::Skip(5),
        0xd7 => Header::Skip(9),
        0xd8 => Header::Skip(17),
        0xdc => Header::Container(read_len(bytes, pos, 2)?),
        0xdd => Header::Container(read_len(bytes, pos, 4)?),
        0xde => Header::Container(2 * read_len(bytes, pos, 2)?),
        0xdf => Header::Container(2 * read_len(bytes, pos, 4)?),
    };
    Ok(header)
}

fn read_len(bytes: &[u8], pos: &mut usize, width: usize) -> Result<u64, ScanError> {
    let offset = *pos;
    let raw = bytes
        .get(offset..offset + width)
        .ok_or(ScanError::Truncated { offset })?;
    *pos += width;
    Ok(raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rmpv::Value;

    fn pack(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("write to vec");
        out
    }

    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut bytes = vec![0x91; depth];
        bytes.push(0x01);
        bytes
    }

    #[test]
    fn accepts_scalars_and_containers() {
        for v in [
            Value::Nil,
            Value::from(true),
            Value::from(-5),
            Value::from(u64::MAX),
            Value::from(1.5),
            Value::from("héllo"),
            Value::Binary(vec![0; 300]),
            Value::Array(vec![]),
            Value::Map(vec![(Value::from("a"), Value::Array(vec![Value::from(1)]))]),
            Value::Ext(3, vec![1, 2, 3, 4]),
            Value::Ext(7, vec![0; 100]),
        ] {
            assert_eq!(scan(&pack(&v), 8), Ok(()), "{v:?}");
        }
    }

    #[test]
    fn depth_limit_is_exact() {
        assert_eq!(scan(&nested_arrays(10), 10), Ok(()));
        assert_eq!(
            scan(&nested_arrays(11), 10),
            Err(ScanError::TooDeep { max: 10 })
        );
        // 100,000 levels are rejected without recursion.
        assert_eq!(
            scan(&nested_arrays(100_000), 64),
            Err(ScanError::TooDeep { max: 64 })
        );
    }

    #[test]
    fn rejects_lies_and_garbage() {
        // array32 declaring 4 billion elements in a 6-byte document
        assert!(matches!(
            scan(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01], 8),
            Err(ScanError::ImpossibleLength { .. })
        ));
        // str32 declaring 4 GiB
        assert!(matches!(
            scan(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'], 8),
            Err(ScanError::Truncated { .. })
        ));
        assert_eq!(
            scan(&[0xc1], 8),
            Err(ScanError::InvalidMarker {
                offset: 0,
                marker: 0xc1
            })
        );
        assert_eq!(scan(&[], 8), Err(ScanError::Truncated { offset: 0 }));
        assert!(matches!(
            scan(&[0x92, 0x01], 8),
            Err(ScanError::ImpossibleLength { .. })
        ));
        assert_eq!(
            scan(&[0x92, 0xcd, 0x01], 8),
            Err(ScanError::Truncated { offset: 2 })
        );
        assert_eq!(
            scan(&[0x01, 0x02], 8),
            Err(ScanError::TrailingBytes { extra: 1 })
        );
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
            proptest::collection::vec(any::<u8>(), 0..70).prop_map(Value::Binary),
            (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..20))
                .prop_map(|(t, d)| Value::Ext(t, d)),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn every_encoded_value_scans(v in arb_value()) {
            prop_assert_eq!(scan(&pack(&v), 64), Ok(()));
        }

        #[test]
        fn every_strict_prefix_is_rejected(v in arb_value()) {
            let bytes = pack(&v);
            for cut in 0..bytes.len() {
                prop_assert!(scan(&bytes[..cut], 64).is_err());
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = scan(&bytes, 16);
        }
    }
}
