//! Diagnostic logging: a `tracing` subscriber on stderr, filtered by config or `RUST_LOG`.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, LogSection};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`: an operator
/// debugging in the field should not have to edit the config.
pub fn init(settings: &LogSection) {
    // hickory-server logs every request at info; our decision records already say more, so its
    // chatter is kept to warnings. hickory's recursor warns about every "no data" answer met on
    // the way down a delegation (QNAME minimisation meets many), which is normal resolution,
    // not trouble: its errors still show. Both unless the operator's filter names hickory.
    let level = if settings.level.contains("hickory") {
        settings.level.clone()
    } else {
        format!(
            "{},hickory_server=warn,hickory_resolver=error,hickory_proto=error",
            settings.level
        )
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: escape codes in a log file or pipe get in the way of grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // `try_init` fails only if a subscriber is already set (tests calling twice): harmless.
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
