//! Logging: slog to stderr through an asynchronous drain, and the guard that flushes it.

use slog::Drain;

/// The log levels a setting may name (slog's short forms, such as `warn`, work too).
pub const LOG_LEVELS: [&str; 6] = ["critical", "error", "warning", "info", "debug", "trace"];

/// Checks a log level setting, naming the key when it is not a level.
pub fn check_level(key: &str, level: &str) -> Result<slog::Level, String> {
    level.parse::<slog::Level>().map_err(|_| {
        format!(
            "configuration `{key}` = {level:?} is not a log level; use one of {}",
            LOG_LEVELS.join(", ")
        )
    })
}

/// Flushes the logger's pending records when dropped: keep it alive until the process ends.
pub struct LogGuard(#[allow(dead_code)] slog_async::AsyncGuard);

/// A logger writing to stderr at `level` and above, with the root keys `values` (e.g. the
/// process's name); components derive child loggers with their own keys.
pub fn stderr_logger(
    level: slog::Level,
    values: slog::OwnedKV<impl slog::SendSyncRefUnwindSafeKV + 'static>,
) -> (slog::Logger, LogGuard) {
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let (drain, guard) = slog_async::Async::new(drain).build_with_guard();
    // After the guard is dropped, records are discarded, never a panic.
    let drain = drain.filter_level(level).ignore_res();
    (slog::Logger::root(drain, values), LogGuard(guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_checked_by_name() {
        assert_eq!(check_level("log_level", "warn"), Ok(slog::Level::Warning));
        let e = check_level("log_level", "verbose").unwrap_err();
        assert!(e.contains("`log_level` = \"verbose\""), "{e}");
    }
}
