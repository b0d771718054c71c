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

/// The limits applied to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_steps: DEFAULT_MAX_STEPS,
            max_name_bytes: DEFAULT_MAX_NAME_BYTES,
            max_locs: DEFAULT_MAX_LOCS,
        }
    }
}
