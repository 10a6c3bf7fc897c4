//! Diagnostic logging: a `tracing` subscriber on stderr, filtered by config or `RUST_LOG`.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, LogSection};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`: an operator
/// debugging in the field should not have to edit the config.
pub fn init(settings: &LogSection) {
    let from_env =
        std::env::var(EnvFilter::DEFAULT_ENV)
            .ok()
            .filter(|text| match filter_problem(text) {
                None => true,
                Some(problem) => {
                    // No subscriber yet to say it through.
                    eprintln!("dnsward: RUST_LOG ignored: {problem}; using log.level");
                    false
                }
            });
    let filter = from_env
        .map_or_else(
            || EnvFilter::try_new(filter_directives(&settings.level)),
            EnvFilter::try_new,
        )
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

/// Why `text` is not a usable log filter, if it is not: it does not parse, or a directive
/// without `=` is not a level. `tracing` reads such a word (`warning`, `inf`) as a module
/// name, which turns every other message off, errors included: a typo silenced the resolver.
pub fn filter_problem(text: &str) -> Option<String> {
    if let Err(error) = EnvFilter::try_new(text) {
        return Some(format!("{text:?} is not a log filter: {error}"));
    }
    if text.trim().is_empty() {
        return Some("empty: give a level (error, warn, info, debug, trace, off)".to_owned());
    }
    text.split(',')
        .map(str::trim)
        .find(|directive| {
            !directive.contains('=')
                && directive
                    .parse::<tracing_subscriber::filter::LevelFilter>()
                    .is_err()
        })
        .map(|directive| {
            format!(
                "{directive:?} is neither a level (error, warn, info, debug, trace, off) nor                  target=level; as written it would turn every other message off"
            )
        })
}

/// The filter for `log.level`, with hickory's own chatter held down unless the operator's
/// filter names hickory. hickory-server logs every request at info; our decision records
/// already say more, so it is kept to warnings. hickory's recursor warns about every "no data"
/// answer met on the way down a delegation (QNAME minimisation meets many), which is normal
/// resolution. hickory-net warns per response on what a remote server sends (a reply with the
/// wrong ID, a negative answer without NSEC records, with the whole message dumped): lines an
/// outside party can make us write per query, from the resolution tasks, while the outcome is
/// in the decision record and its EDE anyway. Their errors still show.
fn filter_directives(level: &str) -> String {
    if level.contains("hickory") {
        level.to_owned()
    } else {
        format!(
            "{level},hickory_server=warn,hickory_resolver=error,hickory_proto=error,\
             hickory_net=error"
        )
    }
}

/// A warning that a failure can repeat once per query (an upstream down, a socket refusing
/// answers): let through at most once a second, with how many were held back since, so that a
/// failure under load does not become a line per query, written to stderr by the query workers
/// themselves. Lock-free: two atomics.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Microseconds since `epoch()` before which nothing more is let through.
    next_us: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    const PERIOD_US: u64 = 1_000_000;

    pub const fn new() -> Self {
        Self {
            next_us: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(held)`: write the warning now, saying that `held` like it were not written since
    /// the last one; `None`: hold this one back (it is counted).
    pub fn admit(&self) -> Option<u64> {
        let now = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX);
        self.admit_at(now)
    }

    fn admit_at(&self, now_us: u64) -> Option<u64> {
        let next = self.next_us.load(Ordering::Relaxed);
        if now_us >= next
            && self
                .next_us
                .compare_exchange(
                    next,
                    now_us.saturating_add(Self::PERIOD_US),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The monotonic clock's origin for `Throttle` (a wall-clock step must not silence it).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the default filter lets through, for events of each target at each level.
    fn written(level: &str, emit: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = fmt()
            .with_env_filter(EnvFilter::new(filter_directives(level)))
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn hickory_warnings_about_remote_answers_are_held_down() {
        let text = written("info", || {
            tracing::warn!(target: "hickory_net::dnssec", "net warning");
            tracing::warn!(target: "hickory_net::udp::udp_client_stream", "wrong id");
            tracing::warn!(target: "hickory_resolver::recursor", "resolver warning");
            tracing::info!(target: "hickory_server::server", "server info");
            tracing::error!(target: "hickory_net::dnssec", "net error");
            tracing::warn!(target: "hickory_server::server", "server warning");
            tracing::info!(target: "dnsward::cli", "our info");
        });
        for held in ["net warning", "wrong id", "resolver warning", "server info"] {
            assert!(!text.contains(held), "{held}: {text}");
        }
        for shown in ["net error", "server warning", "our info"] {
            assert!(text.contains(shown), "{shown}: {text}");
        }
        // An operator who names hickory gets what they asked for.
        let text = written("info,hickory_net=warn", || {
            tracing::warn!(target: "hickory_net::dnssec", "net warning");
        });
        assert!(text.contains("net warning"), "{text}");
    }

    #[test]
    fn a_throttle_lets_one_through_a_second_and_counts_the_rest() {
        let throttle = Throttle::new();
        assert_eq!(throttle.admit_at(5), Some(0));
        for at in [6, 500_000, 1_000_004] {
            assert_eq!(throttle.admit_at(at), None, "{at}");
        }
        assert_eq!(throttle.admit_at(1_000_005), Some(3));
        assert_eq!(throttle.admit_at(1_000_006), None);
        // A quiet while later: let through at once, with the one held back before.
        assert_eq!(throttle.admit_at(60_000_000), Some(1));
    }
}
