//! The serving state: config, ACL and compiled policy as one immutable value.
//!
//! A query loads the current `State` once and uses that snapshot for every step, so a reload
//! (which builds a whole new `State` off the query path and swaps it in) can never be seen half
//! applied.

use std::{collections::HashMap, sync::Arc};

use hickory_proto::rr::Name;

use crate::{
    config::Config,
    lists::{self, ListError, WholeTldRule},
    policy::{Policy, PolicyList},
    resolve::{ForwardZones, Upstreams},
    server::acl::Acl,
    snapshot::Snapshot,
};

#[derive(Debug)]
pub struct State {
    /// 1 for the state built at start; each accepted reload adds one.
    pub generation: u64,
    pub config: Arc<Config>,
    pub acl: Acl,
    pub policy: Policy,
    /// Part of the state so an upstream change applies on reload; health starts afresh.
    pub upstreams: Upstreams,
    /// `[[forward.zone]]` in forward mode (recursion has its own).
    pub forward_zones: ForwardZones,
}

impl State {
    /// Where forward mode sends a question for `qname`: the most specific `[[forward.zone]]`
    /// holding it (internal names never go to the public upstreams), else `[forward]`'s.
    pub fn upstreams_for(&self, qname: &Name) -> &Upstreams {
        self.forward_zones
            .upstreams_for(qname)
            .unwrap_or(&self.upstreams)
    }
}

/// Every list that failed to load, with every bad line: an admin fixes them all in one pass.
#[derive(Debug, thiserror::Error)]
#[error("{} list problem(s):\n{}", errors.len(), errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct StateError {
    pub errors: Vec<ListError>,
}

/// What a build reports without refusing: lines skipped in lists with `on_invalid = "skip"`,
/// and rules that cover a whole top-level domain.
#[derive(Debug, Default)]
pub struct BuildWarnings {
    pub skipped: Vec<ListError>,
    pub whole_tld: Vec<WholeTldRule>,
}

impl BuildWarnings {
    /// Skipped lines logged at a start or reload: through the logger (so a JSON log stays
    /// JSON), the first [`Self::LOGGED`] one by one and the rest as a count, the same at a
    /// start and at every reload. A feed with 50,000 bad lines wrote 50,000 lines per reload.
    pub const LOGGED: usize = 20;

    pub fn log(&self) {
        log_capped(&self.skipped, " (skipped)", "skipped line(s)");
        log_capped(
            &self.whole_tld,
            "",
            "rule(s) covering a whole top-level domain",
        );
    }
}

/// Logs the first [`BuildWarnings::LOGGED`] of `warnings` (each followed by `suffix`), then
/// how many more `what` there are.
fn log_capped<T: std::fmt::Display>(warnings: &[T], suffix: &str, what: &str) {
    for warning in warnings.iter().take(BuildWarnings::LOGGED) {
        tracing::warn!("{warning}{suffix}");
    }
    let more = warnings.len().saturating_sub(BuildWarnings::LOGGED);
    if more > 0 {
        tracing::warn!(
            more,
            "... and {more} more {what}; `dnsward check` lists them all"
        );
    }
}

/// What `serve` needs of a configuration besides its lists, each problem as
/// `<config>: <key>: <reason>`: an upstream or recursion, and the files it opens (audit keys,
/// root hints, trust anchor). `check` reports these, and a reload refuses a config with any
/// of them even where the setting waits for a restart: the restart would then fail.
pub fn start_problems(config: &Config) -> Vec<String> {
    let path = config.path.display();
    let mut problems = Vec::new();
    if config.forward.upstreams.is_empty() && !config.recursion.enabled {
        problems.push(format!(
            "{path}: forward.upstreams: needs at least one upstream (or recursion.enabled = true)"
        ));
    }
    if config.audit.enabled
        && let Some(key) = &config.audit.signing_key
        && let Err(error) = crate::audit::keys::load_signing_key(key)
    {
        problems.push(format!("{path}: audit.signing_key: {error}"));
    }
    if config.audit.enabled
        && config.audit.anonymize_key.is_some()
        && let Err(error) = crate::audit::writer::check_anonymize_key(&config.audit)
    {
        problems.push(format!("{path}: audit.anonymize_key: {error}"));
    }
    if config.recursion.enabled {
        // hickory builds its recursor inside a runtime; this thread has none.
        let checked = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())
            .and_then(|runtime| {
                runtime.block_on(async {
                    crate::resolve::Recursor::new(
                        &config.recursion,
                        &config.forward_zones,
                        &config.forward,
                    )
                    .map(drop)
                    .map_err(|error| error.to_string())
                })
            });
        if let Err(error) = checked {
            problems.push(format!("{path}: recursion: {error}"));
        }
    }
    problems
}

/// Loads every list the config names and compiles the policy. Fails if any list fails: a
/// half-applied policy is worse than none.
pub fn build(config: Config) -> Result<(State, BuildWarnings), StateError> {
    build_generation(config, 1, None, &ServingRules::new())
}

/// Rules per list name in the serving generation, for the checks that compare an edit with
/// what serves (an emptied list file).
pub type ServingRules = HashMap<String, usize>;

/// The rule counts of `state`'s lists.
pub fn serving_rules(state: &State) -> ServingRules {
    state
        .policy
        .lists()
        .iter()
        .map(|list| (list.name.to_string(), list.matcher.len()))
        .collect()
}

/// [`build`] with an explicit generation number (reloads count up from the serving state's),
/// keeping a copy of every list as loaded in `snapshot` when given (see `snapshot`). A list
/// whose file is now empty while its serving version has rules is refused (see
/// [`ListError::Emptied`]).
pub fn build_generation(
    config: Config,
    generation: u64,
    snapshot: Option<&Snapshot>,
    serving: &ServingRules,
) -> Result<(State, BuildWarnings), StateError> {
    let mut errors = Vec::new();
    let mut warnings = BuildWarnings::default();
    let mut compiled = Vec::with_capacity(config.lists.len());
    for list in &config.lists {
        let bytes = match crate::files::read_regular(&list.path) {
            Ok(bytes) => bytes,
            Err(source) => {
                errors.push(ListError::Io {
                    path: list.path.clone(),
                    source,
                });
                continue;
            }
        };
        match lists::load_bytes(&list.path, &bytes, list.on_invalid) {
            Ok(loaded)
                if loaded.matcher.is_empty()
                    && lists::is_blank(&bytes)
                    && serving.get(&list.name).is_some_and(|&rules| rules > 0) =>
            {
                errors.push(ListError::Emptied {
                    path: list.path.clone(),
                    serving_rules: serving.get(&list.name).copied().unwrap_or_default(),
                });
            }
            Ok(loaded) => {
                if let Some(snapshot) = snapshot
                    && let Err(error) = snapshot.keep_list(&loaded.sha256, &bytes)
                {
                    // The snapshot serves previews and audits, not queries: do not refuse a
                    // good list because the data directory is unwritable.
                    tracing::warn!(%error, "cannot keep a copy of the list as loaded");
                }
                let skipped_lines = loaded.skipped.len();
                warnings.skipped.extend(loaded.skipped);
                warnings.whole_tld.extend(loaded.whole_tld);
                compiled.push(PolicyList {
                    name: Arc::from(list.name.as_str()),
                    display_path: Arc::from(list.display_path.as_str()),
                    path: list.path.clone(),
                    kind: list.kind,
                    mode: list.mode,
                    action: list.action,
                    ede: list.ede,
                    sinkhole_v4: list.sinkhole_v4,
                    sinkhole_v6: list.sinkhole_v6,
                    matcher: loaded.matcher,
                    sha256: loaded.sha256,
                    skipped_lines,
                });
            }
            Err(error) => errors.extend(error.errors),
        }
    }
    if !errors.is_empty() {
        return Err(StateError { errors });
    }
    let state = State {
        generation,
        acl: Acl::new(&config.server.allow),
        policy: Policy::new(compiled),
        upstreams: Upstreams::new(&config.forward),
        forward_zones: ForwardZones::new(&config.forward_zones, &config.forward),
        config: Arc::new(config),
    };
    Ok((state, warnings))
}
