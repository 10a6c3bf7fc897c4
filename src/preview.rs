//! `lists diff`: what an edit on disk would change compared with the generation now serving —
//! rules added and removed per list, and which names seen recently would get another outcome.
//!
//! The serving side is rebuilt from the served-state snapshot (`snapshot`), the edited side from
//! the files on disk with the same loader `serve` uses. Neither side touches a running server.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

use serde::Serialize;

use crate::{
    audit::{
        QueryEntry,
        record::{RuleEntry, TriggerEntry},
    },
    config::{BlockAction, Config},
    lists::{self, LoadError, OnInvalid, RuleKind},
    policy::{
        Client, LookupBuffer, Policy, PolicyList, Transport, Verdict,
        decision::{action_name, labels_from_text},
        write_lookup_key,
    },
    snapshot::{Manifest, Snapshot, SnapshotError},
    state::{self, BuildWarnings, StateError},
};

/// A query record as the preview reads it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The question name, in presentation form.
    pub name: String,
    pub client: IpAddr,
    /// The CNAME targets its answer passed through ([`recorded_chain`]).
    pub chain: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("cannot read the serving state (is dnsward running with this data_dir?): {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("the serving copy of list {name:?} is unreadable: {source}")]
    ServingList {
        name: String,
        #[source]
        source: LoadError,
    },
    /// The problems are its source's text (printed by the error chain, once).
    #[error("the edited lists do not load")]
    Edited(#[from] StateError),
}

/// How one list differs.
#[derive(Debug, Clone, Serialize)]
pub struct ListDiff {
    pub name: String,
    pub path: String,
    pub status: ListStatus,
    /// Settings that differ (`mode: enforce -> log-only`).
    pub settings: Vec<String>,
    pub rules_before: usize,
    pub rules_after: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListStatus {
    Unchanged,
    Changed,
    Added,
    Removed,
}

/// What a name gets under a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    Allowed,
    Blocked { list: String, action: String },
    Logged { list: String },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allowed => write!(f, "allowed"),
            Self::Blocked { list, action } => write!(f, "blocked ({list}, {action})"),
            Self::Logged { list } => write!(f, "logged ({list})"),
        }
    }
}

/// A name seen in the window whose outcome would change.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeChange {
    pub name: String,
    pub before: Outcome,
    pub after: Outcome,
    pub queries: u64,
    pub clients: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub serving_generation: u64,
    pub lists: Vec<ListDiff>,
    pub outcome_changes: Vec<OutcomeChange>,
    /// Distinct names examined from the audit log.
    pub names_examined: usize,
}

impl Preview {
    pub fn has_changes(&self) -> bool {
        self.lists
            .iter()
            .any(|list| list.status != ListStatus::Unchanged)
            || !self.outcome_changes.is_empty()
    }
}

/// The two policies to compare: serving (from the snapshot) and edited (from disk).
pub struct Comparison {
    manifest: Manifest,
    serving: Policy,
    edited: Policy,
    /// What the reload of the edit would warn of (skipped lines, whole-TLD rules).
    pub warnings: BuildWarnings,
}

impl Comparison {
    pub fn load(edited_config: Config) -> Result<Self, PreviewError> {
        let snapshot = Snapshot::new(&edited_config.server.data_dir);
        let manifest = snapshot.read_manifest()?;
        let mut serving_lists = Vec::with_capacity(manifest.lists.len());
        for list in &manifest.lists {
            let path = snapshot.list_path(&list.sha256);
            let loaded = lists::load_file(&path, OnInvalid::Skip).map_err(|source| {
                PreviewError::ServingList {
                    name: list.name.clone(),
                    source,
                }
            })?;
            serving_lists.push(PolicyList {
                name: Arc::from(list.name.as_str()),
                display_path: Arc::from(list.path.as_str()),
                path: PathBuf::from(&list.path),
                kind: list.kind,
                mode: list.mode,
                action: list.action,
                ede: list.ede,
                sinkhole_v4: list.sinkhole_v4,
                sinkhole_v6: list.sinkhole_v6,
                matcher: loaded.matcher,
                sha256: loaded.sha256,
                skipped_lines: loaded.skipped.len(),
            });
        }
        // The reload refuses what would empty a serving list; so does its preview.
        let serving_rules = manifest
            .lists
            .iter()
            .map(|list| (list.name.clone(), list.rules))
            .collect();
        let (edited, warnings) = state::build_generation(edited_config, 1, None, &serving_rules)?;
        Ok(Self {
            manifest,
            serving: Policy::new(serving_lists),
            edited: edited.policy,
            warnings,
        })
    }

    /// Per-list rule differences. Lists whose content hash and settings match are skipped
    /// without comparing rules, so an edit to one list of a million rules costs only that list.
    pub fn list_diffs(&self) -> Vec<ListDiff> {
        let mut diffs = Vec::new();
        for before in self.serving.lists() {
            let after = self
                .edited
                .lists()
                .iter()
                .find(|list| list.name == before.name);
            diffs.push(match after {
                Some(after) => diff_list(before, after),
                None => ListDiff {
                    name: before.name.to_string(),
                    path: before.display_path.to_string(),
                    status: ListStatus::Removed,
                    settings: Vec::new(),
                    rules_before: before.matcher.len(),
                    rules_after: 0,
                    added: Vec::new(),
                    removed: Vec::new(),
                },
            });
        }
        for after in self.edited.lists() {
            if !self
                .serving
                .lists()
                .iter()
                .any(|list| list.name == after.name)
            {
                diffs.push(ListDiff {
                    name: after.name.to_string(),
                    path: after.display_path.to_string(),
                    status: ListStatus::Added,
                    settings: Vec::new(),
                    rules_before: 0,
                    rules_after: after.matcher.len(),
                    added: Vec::new(),
                    removed: Vec::new(),
                });
            }
        }
        diffs
    }

    /// Re-decides every name seen (with the clients that asked, and the CNAME chain its
    /// answer passed through: the last one recorded) under both policies.
    pub fn preview(self, seen: impl IntoIterator<Item = Seen>) -> Preview {
        let mut tally: HashMap<String, (u64, HashSet<IpAddr>, Vec<String>)> = HashMap::new();
        for Seen {
            name,
            client,
            chain,
        } in seen
        {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let entry = tally.entry(name).or_default();
            entry.0 += 1;
            entry.1.insert(client);
            if !chain.is_empty() || entry.2.is_empty() {
                entry.2 = chain;
            }
        }
        let client = Client {
            addr: (IpAddr::from([0, 0, 0, 0]), 0).into(),
            transport: Transport::Udp,
        };
        let mut outcome_changes: Vec<OutcomeChange> = tally
            .iter()
            .filter_map(|(name, (queries, clients, chain))| {
                let before = outcome(&self.serving, name, chain, &client);
                let after = outcome(&self.edited, name, chain, &client);
                (before != after).then(|| OutcomeChange {
                    name: name.clone(),
                    before,
                    after,
                    queries: *queries,
                    clients: clients.len(),
                })
            })
            .collect();
        outcome_changes.sort_by(|a, b| b.queries.cmp(&a.queries).then(a.name.cmp(&b.name)));
        Preview {
            serving_generation: self.manifest.generation,
            lists: self.list_diffs(),
            outcome_changes,
            names_examined: tally.len(),
        }
    }
}

/// How the server would decide a query for `name` whose answer passed through `chain` (the
/// CNAME targets it recorded), as the request chain does: a block of the name, else a block
/// of a chain name, else a log-only match of the name, else one of a chain name; an allow
/// rule vouches for the name it matches only.
fn outcome(policy: &Policy, name: &str, chain: &[String], client: &Client) -> Outcome {
    let blocked = |rule| {
        let list = policy.list(rule);
        Outcome::Blocked {
            list: list.name.to_string(),
            action: action_name(list.action).to_owned(),
        }
    };
    let logged = |rule| Outcome::Logged {
        list: policy.list(rule).name.to_string(),
    };
    let asked = decide_text(policy, name, client);
    if let Verdict::Blocked(rule) = asked {
        return blocked(rule);
    }
    let mut chain_logged = None;
    for target in chain {
        match decide_text(policy, target, client) {
            Verdict::Blocked(rule) => return blocked(rule),
            Verdict::Logged(rule) if chain_logged.is_none() => chain_logged = Some(rule),
            _ => {}
        }
    }
    match (asked, chain_logged) {
        (Verdict::Logged(rule), _) | (_, Some(rule)) => logged(rule),
        _ => Outcome::Allowed,
    }
}

/// The verdict on a name stored in presentation form (`\.` and `\DDD` escapes): decided from
/// its labels, as the server decided it.
fn decide_text(policy: &Policy, name: &str, client: &Client) -> Verdict {
    let mut buffer = LookupBuffer::new();
    let labels = labels_from_text(name.as_bytes());
    let key = write_lookup_key(labels.iter().map(Vec::as_slice), &mut buffer);
    key.map_or(Verdict::Pass, |key| policy.decide(key, client))
}

/// The CNAME targets a query record shows its answer passed through: the chain of a match
/// made through one (up to the name that matched), else the CNAME records its answer summary
/// starts with (the summary is in chain order; only leading CNAMEs, so text in a later record
/// cannot pose as one).
pub fn recorded_chain(query: &QueryEntry) -> Vec<String> {
    if let Some(RuleEntry {
        trigger: TriggerEntry::Cname { chain, .. },
        ..
    }) = &query.rule
    {
        return chain.iter().skip(1).cloned().collect();
    }
    query
        .answer
        .split(", ")
        .map_while(|entry| entry.strip_prefix("CNAME "))
        // The target is one token (a name in presentation form has no bare space); what may
        // follow it is a note such as `(not sent)`.
        .filter_map(|target| target.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// The sinkhole addresses as configured (`sinkhole = [...]`), `none` when there are none.
fn sinkhole_text(list: &PolicyList) -> String {
    let addresses: Vec<String> = list
        .sinkhole_v4
        .map(|v4| v4.to_string())
        .into_iter()
        .chain(list.sinkhole_v6.map(|v6| v6.to_string()))
        .collect();
    if addresses.is_empty() {
        "none".to_owned()
    } else {
        addresses.join(" ")
    }
}

fn diff_list(before: &PolicyList, after: &PolicyList) -> ListDiff {
    let mut settings = Vec::new();
    let mut setting = |key: &str, old: String, new: String| {
        if old != new {
            settings.push(format!("{key}: {old} -> {new}"));
        }
    };
    setting(
        "type",
        before.kind.as_str().into(),
        after.kind.as_str().into(),
    );
    setting(
        "mode",
        before.mode.as_str().into(),
        after.mode.as_str().into(),
    );
    setting(
        "action",
        action_name(before.action).into(),
        action_name(after.action).into(),
    );
    setting("ede", before.ede.to_string(), after.ede.to_string());
    if before.action == BlockAction::Sinkhole || after.action == BlockAction::Sinkhole {
        setting("sinkhole", sinkhole_text(before), sinkhole_text(after));
    }
    let (added, removed) = if before.sha256 == after.sha256 {
        (Vec::new(), Vec::new())
    } else {
        rule_difference(before, after)
    };
    let status = if settings.is_empty() && added.is_empty() && removed.is_empty() {
        ListStatus::Unchanged
    } else {
        ListStatus::Changed
    };
    ListDiff {
        name: after.name.to_string(),
        path: after.display_path.to_string(),
        status,
        settings,
        rules_before: before.matcher.len(),
        rules_after: after.matcher.len(),
        added,
        removed,
    }
}

fn rule_set(list: &PolicyList) -> HashSet<(&str, bool)> {
    (0..list.matcher.len() as u32)
        .map(|index| {
            let subdomains_only = list.matcher.rule_text(index).kind() == RuleKind::Subdomains;
            (list.matcher.rule_name(index), subdomains_only)
        })
        .collect()
}

/// Rules in `after` but not `before`, and the reverse, as canonical rule text, sorted. The sets
/// borrow rule names from the matchers: no per-rule string is built for unchanged rules.
fn rule_difference(before: &PolicyList, after: &PolicyList) -> (Vec<String>, Vec<String>) {
    let old = rule_set(before);
    let new = rule_set(after);
    let render = |(name, wildcard): &(&str, bool)| {
        if *wildcard {
            format!("*.{name}")
        } else {
            (*name).to_owned()
        }
    };
    let mut added: Vec<String> = new.difference(&old).map(render).collect();
    let mut removed: Vec<String> = old.difference(&new).map(render).collect();
    added.sort();
    removed.sort();
    (added, removed)
}

/// Renders a preview as the text report `lists diff` prints.
impl fmt::Display for Preview {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "serving generation {}", self.serving_generation)?;
        for list in &self.lists {
            let status = match list.status {
                ListStatus::Unchanged => "unchanged",
                ListStatus::Changed => "changed",
                ListStatus::Added => "added",
                ListStatus::Removed => "removed",
            };
            writeln!(
                f,
                "list {:<16} {:<9} rules {} -> {} (+{} -{})",
                list.name,
                status,
                list.rules_before,
                list.rules_after,
                list.added.len(),
                list.removed.len()
            )?;
            for setting in &list.settings {
                writeln!(f, "  {setting}")?;
            }
            for rule in list.added.iter().take(50) {
                writeln!(f, "  + {rule}")?;
            }
            for rule in list.removed.iter().take(50) {
                writeln!(f, "  - {rule}")?;
            }
            let hidden =
                list.added.len().saturating_sub(50) + list.removed.len().saturating_sub(50);
            if hidden > 0 {
                writeln!(f, "  ... {hidden} more (use --json for all)")?;
            }
        }
        writeln!(
            f,
            "\n{} name(s) seen in the window, {} would change outcome",
            self.names_examined,
            self.outcome_changes.len()
        )?;
        if !self.outcome_changes.is_empty() {
            let width = self
                .outcome_changes
                .iter()
                .map(|change| change.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            writeln!(
                f,
                "{:<width$}  {:<28}  {:<28}  {:>8}  {:>7}",
                "NAME", "NOW", "AFTER EDIT", "QUERIES", "CLIENTS"
            )?;
            for change in &self.outcome_changes {
                writeln!(
                    f,
                    "{:<width$}  {:<28}  {:<28}  {:>8}  {:>7}",
                    change.name,
                    change.before.to_string(),
                    change.after.to_string(),
                    change.queries,
                    change.clients
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(answer: &str, rule: Option<serde_json::Value>) -> QueryEntry {
        let mut value = serde_json::json!({
            "generation": 1, "client": "127.0.0.1:5353", "transport": "udp",
            "qname": "alias.example.", "qtype": "A", "qclass": "IN", "decision": "allowed",
            "rcode": "NOERROR", "answer": answer, "source": "cache", "latency_us": 5,
        });
        if let Some(rule) = rule {
            value["rule"] = rule;
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_recorded_chain_is_the_leading_cnames_or_the_matchs_chain() {
        let chain = |answer| recorded_chain(&query(answer, None));
        assert_eq!(
            chain("CNAME a.example., CNAME b.example., A 192.0.2.1"),
            ["a.example.", "b.example."]
        );
        assert_eq!(chain("CNAME a.example. (not sent)"), ["a.example."]);
        // Text in a later record cannot pose as a chain name.
        assert!(chain("TXT \"x, CNAME evil.example.\"").is_empty());
        assert!(chain("").is_empty());
        let matched = serde_json::json!({
            "list": "exchanges", "rule": "b.example", "file": "block.txt", "line": 1,
            "trigger": {"kind": "cname", "matched": "b.example.",
                        "chain": ["alias.example.", "a.example.", "b.example."]},
        });
        assert_eq!(
            recorded_chain(&query("", Some(matched))),
            ["a.example.", "b.example."]
        );
    }
}
