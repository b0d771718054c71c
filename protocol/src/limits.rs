//! Size limits every peer enforces on what it accepts.
//!
//! The defaults here are the broker's defaults; a broker may be configured with others and
//! reports them in its `status` reply.

/// Default largest body frame accepted, in bytes (16 MiB): large enough for a 10,000-step plan
/// or a sizeable payload, small enough that one peer cannot exhaust memory.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Default deepest nesting of msgpack containers in one body, counting the body's own map.
/// Bounds the recursion of every decoder that walks values.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Default most steps in one plan.
pub const DEFAULT_MAX_STEPS: usize = 100_000;
/// Default longest step name, function name or resource name, in bytes.
pub const DEFAULT_MAX_NAME_BYTES: usize = 256;
/// Default most resource names in one step's `locs` or one worker's registration.
pub const DEFAULT_MAX_LOCS: usize = 256;
/// Default longest topic or pattern, in bytes.
pub const DEFAULT_MAX_TOPIC_BYTES: usize = 256;
/// Default most words in a topic or pattern.
pub const DEFAULT_MAX_TOPIC_WORDS: usize = 32;
/// Default most patterns in one subscription.
pub const DEFAULT_MAX_PATTERNS: usize = 64;

/// The limits applied to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest body frame, in bytes.
    pub max_message_bytes: usize,
    /// Deepest container nesting inside a body (the body's own map counts as 1).
    pub max_depth: usize,
    /// Most steps in a plan.
    pub max_steps: usize,
    /// Longest name (step, function, resource), in bytes.
    pub max_name_bytes: usize,
    /// Most resource names in one `locs` list or registration.
    pub max_locs: usize,
    /// Longest topic or pattern, in bytes.
    pub max_topic_bytes: usize,
    /// Most words in a topic or pattern.
    pub max_topic_words: usize,
    /// Most patterns in one subscription.
    pub max_patterns: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_steps: DEFAULT_MAX_STEPS,
            max_name_bytes: DEFAULT_MAX_NAME_BYTES,
            max_locs: DEFAULT_MAX_LOCS,
            max_topic_bytes: DEFAULT_MAX_TOPIC_BYTES,
            max_topic_words: DEFAULT_MAX_TOPIC_WORDS,
            max_patterns: DEFAULT_MAX_PATTERNS,
        }
    }
}
