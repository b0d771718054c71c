//! The wire form of coalesced publishes, written by hand: one `publish_batch` item per
//! message, encoded when the application hands it over, and the batch frame around them.
//! Byte for byte what `encode_body` gives the same messages (tested in publish_queue_tests).

use std::collections::BTreeMap;

use mpreg_protocol::{Value, COMPACT_PREFIX};

/// The message type of a batch.
pub(super) const KIND: &[u8] = b"publish_batch";

/// Where a message sits inside its batch's frame.
#[derive(Debug, Clone, Copy)]
pub(super) struct ItemRef {
    pub(super) seq: u64,
    pub(super) id: u64,
    pub(super) start: usize,
    pub(super) end: usize,
}

/// One coalesced `publish_batch`, encoded.
pub(crate) struct Batch {
    pub(super) id: u64,
    pub(super) frame: Vec<u8>,
    pub(super) items: Vec<ItemRef>,
}

impl Batch {
    /// The compact frame to send.
    pub(crate) fn frame(&self) -> &[u8] {
        &self.frame
    }

    pub(super) fn first_seq(&self) -> u64 {
        self.items.first().map_or(u64::MAX, |i| i.seq)
    }

    /// Bytes of its messages (what they count against the budget).
    pub(super) fn message_bytes(&self) -> usize {
        self.items.iter().map(|i| i.end - i.start).sum()
    }

    /// Encodes a batch of `items` (each an encoded `{topic, headers, payload}` map): exactly
    /// the bytes `encode_body` gives a [`mpreg_protocol::PublishBatch`] with `confirm: true`.
    pub(super) fn encode<'a>(
        id: u64,
        items: impl ExactSizeIterator<Item = (u64, u64, &'a [u8])>,
    ) -> Batch {
        let n = items.len();
        let mut frame = Vec::new();
        let mut refs = Vec::with_capacity(n);
        frame.extend_from_slice(COMPACT_PREFIX);
        frame.extend_from_slice(KIND);
        frame.push(0);
        // {"id": id, "messages": [...], "confirm": true}
        frame.push(0x83);
        write_str(&mut frame, "id");
        write_uint(&mut frame, id);
        write_str(&mut frame, "messages");
        write_array_len(&mut frame, n);
        for (seq, item_id, bytes) in items {
            let start = frame.len();
            frame.extend_from_slice(bytes);
            refs.push(ItemRef {
                seq,
                id: item_id,
                start,
                end: frame.len(),
            });
        }
        write_str(&mut frame, "confirm");
        frame.push(0xc3);
        Batch {
            id,
            frame,
            items: refs,
        }
    }
}

/// Encodes one unconfirmed publish as a `publish_batch` item, `{topic, headers (when not
/// empty), payload}`: exactly what `encode_body` gives a [`mpreg_protocol::BatchItem`], into a
/// buffer sized once (the serde path grows it several times per message).
pub(crate) fn encode_item(
    topic: &str,
    headers: &BTreeMap<String, String>,
    payload: &Value,
) -> Vec<u8> {
    let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let mut out = Vec::with_capacity(32 + topic.len() + header_bytes + payload_hint(payload));
    out.push(if headers.is_empty() { 0x82 } else { 0x83 });
    write_str(&mut out, "topic");
    write_str(&mut out, topic);
    if !headers.is_empty() {
        write_str(&mut out, "headers");
        write_map_len(&mut out, headers.len());
        for (key, value) in headers {
            write_str(&mut out, key);
            write_str(&mut out, value);
        }
    }
    write_str(&mut out, "payload");
    rmpv::encode::write_value(&mut out, payload).expect("writing msgpack into a Vec cannot fail");
    out
}

/// About how many bytes `payload` encodes to (a capacity hint, not a bound).
fn payload_hint(payload: &Value) -> usize {
    match payload {
        Value::Binary(b) => b.len() + 5,
        Value::String(s) => s.as_bytes().len() + 5,
        Value::Array(a) => 5 + a.len() * 9,
        Value::Map(m) => 5 + m.len() * 18,
        _ => 9,
    }
}

// The smallest headers, written by `rmp` (what `encode_body` writes through rmp-serde).
// Writing into a Vec cannot fail.

fn write_str(out: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(out, s).expect("writing msgpack into a Vec cannot fail");
}

fn write_map_len(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    rmp::encode::write_map_len(out, n).expect("writing msgpack into a Vec cannot fail");
}

fn write_uint(out: &mut Vec<u8>, n: u64) {
    rmp::encode::write_uint(out, n).expect("writing msgpack into a Vec cannot fail");
}

fn write_array_len(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    rmp::encode::write_array_len(out, n).expect("writing msgpack into a Vec cannot fail");
}

/// Bytes a batch adds around its messages: the compact frame's prefix and type, the body's
/// map with `id`, the array header and `confirm`. An upper bound.
pub(crate) const BATCH_OVERHEAD: usize = 8 + 13 + 1 + 1 + 3 + 9 + 9 + 5 + 8 + 1;
