//! `backup-runner runs` lists the runs in each destination; `backup-runner verify` checks runs
//! against their run manifests: every file present with its size, and with `--read-data` (or a
//! random `--read-data-subset`) read back and hashed, encrypted files decrypted and
//! authenticated when the key is at hand. Objects in an archive storage class that are not
//! thawed are named as problems instead of read (the manifests, kept in STANDARD, and the
//! listing are all that runs and the size check need).

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;

use encryption::key::MasterKey;
use ncb_core::progress::{Progress, human};
use ncb_core::stage::error_chain;
use ncb_core::{Error, Result};
use serde::Serialize;

use crate::readback::{self, Content, Item, Source};

#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub destination: String,
    pub run_id: String,
    pub complete: bool,
    /// Retention began deleting it and was interrupted: the next retention finishes it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub files: usize,
    pub bytes: u64,
}

/// Every run in every source, oldest first per source; whether a source could not be listed.
pub fn runs(sources: &[Source]) -> Result<(Vec<RunInfo>, bool)> {
    let mut failed = false;
    let mut out = Vec::new();
    for s in sources {
        let b = s.backend();
        let listed = match b.runs(&s.dest.prefix) {
            Ok(r) => r,
            Err(e) => {
                log::error!("{}: cannot list runs: {}", s.describe(), error_chain(&e));
                failed = true;
                continue;
            }
        };
        for run in listed {
            let manifest = match storage::manifest_of(b, &s.dest.prefix, &run) {
                Ok(m) => m,
                Err(e) => {
                    log::error!("{}: run {run}: {}", s.describe(), error_chain(&e));
                    failed = true;
                    continue;
                }
            };
            let info = match manifest {
                Some(m) => RunInfo {
                    destination: s.describe(),
                    run_id: run,
                    complete: true,
                    deleting: false,
                    created: Some(m.created.clone()),
                    files: m.files.len(),
                    bytes: m.files.iter().map(|f| f.size).sum(),
                },
                None => {
                    let sizes = b.sizes(&format!("{}{run}/", s.dest.prefix))?;
                    RunInfo {
                        destination: s.describe(),
                        deleting: b.being_deleted(&s.dest.prefix, &run)?,
                        run_id: run,
                        complete: false,
                        created: None,
                        files: sizes.len(),
                        bytes: sizes.values().sum(),
                    }
                }
            };
            out.push(info);
        }
    }
    Ok((out, failed))
}

pub fn print_runs(list: &[RunInfo], out: &mut impl Write) -> std::io::Result<()> {
    let mut last = "";
    for r in list {
        if r.destination != last {
            writeln!(out, "{}", r.destination)?;
            last = &r.destination;
        }
        let state = match (r.complete, r.deleting) {
            (true, _) => "complete",
            (false, true) => "BEING DELETED (retention was interrupted; the next one finishes)",
            (false, false) => "INCOMPLETE (no run manifest)",
        };
        writeln!(out, "  {}  {:<28}  {:>5} files  {:>10}", r.run_id, state, r.files, human(r.bytes as f64))?;
    }
    if list.is_empty() {
        writeln!(out, "no runs")?;
    }
    Ok(())
}

/// How much data `verify` reads back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Presence and size only.
    None,
    All,
    /// This share of the items (0 < p <= 100), chosen at random.
    Subset(f64),
}

impl ReadData {
    pub fn parse_subset(s: &str) -> Result<f64> {
        let t = s.trim().trim_end_matches('%');
        match t.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
            _ => Err(Error::usage(format!("--read-data-subset: '{s}' is not a percentage in (0, 100], e.g. 10%"))),
        }
    }
}

/// What verify found in one run of one destination.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Verdict {
    pub destination: String,
    pub run_id: String,
    pub files: usize,
    /// Files once parts are joined: what read-back counts.
    pub items: usize,
    pub read_items: usize,
    pub read_bytes: u64,
    pub decrypted: usize,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// Which runs of a source `--run` means: an id, `latest` (the newest complete) or `all`.
fn chosen_runs(s: &Source, wanted: &str) -> Result<Vec<String>> {
    let all = s.backend().runs(&s.dest.prefix)?;
    Ok(match wanted {
        "all" => all,
        "latest" => match storage::find_run(s.backend(), &s.dest.prefix, "latest") {
            Ok((run, _)) => vec![run],
            Err(_) if all.is_empty() => Vec::new(),
            Err(_) => vec![all[all.len() - 1].clone()],
        },
        id => vec![id.to_owned()],
    })
    .map(|runs| with_bases(s, runs))
}

/// The runs and, before them, every run they build on (incremental sections' bases, down to
/// the full archives), each once, oldest first: verifying a run verifies its whole chain.
fn with_bases(s: &Source, runs: Vec<String>) -> Vec<String> {
    let mut out = runs.clone();
    let mut todo = runs;
    while let Some(run) = todo.pop() {
        let Ok(Some(m)) = storage::manifest_of(s.backend(), &s.dest.prefix, &run) else { continue };
        for base in m.sources.values().filter_map(|x| x.base.clone()) {
            if !out.contains(&base) {
                out.push(base.clone());
                todo.push(base);
            }
        }
    }
    out.sort();
    out
}

pub fn verify(
    sources: &[Source],
    wanted: &str,
    read: ReadData,
    key: Option<&MasterKey>,
    allow_unsigned: bool,
) -> Result<Vec<Verdict>> {
    let mut out = Vec::new();
    for s in sources {
        // One destination out of reach fails its verdict; the others are still checked.
        let runs = match chosen_runs(s, wanted) {
            Ok(r) => r,
            Err(e) => {
                out.push(Verdict {
                    destination: s.describe(),
                    run_id: wanted.to_owned(),
                    problems: vec![format!("cannot list runs: {}", error_chain(&e))],
                    ..Default::default()
                });
                continue;
            }
        };
        if runs.is_empty() {
            out.push(Verdict {
                destination: s.describe(),
                run_id: wanted.to_owned(),
                problems: vec!["no run stored".into()],
                ..Default::default()
            });
        }
        for run in runs {
            out.push(verify_run(s, &run, read, key, allow_unsigned));
        }
    }
    Ok(out)
}

fn verify_run(s: &Source, run: &str, read: ReadData, key: Option<&MasterKey>, allow_unsigned: bool) -> Verdict {
    let mut v = Verdict { destination: s.describe(), run_id: run.to_owned(), ..Default::default() };
    let manifest = match storage::manifest_of(s.backend(), &s.dest.prefix, run) {
        Ok(Some(m)) => m,
        Ok(None) => {
            let exists = s.backend().runs(&s.dest.prefix).map(|r| r.iter().any(|x| x == run)).unwrap_or(false);
            if exists && s.backend().being_deleted(&s.dest.prefix, run).unwrap_or(false) {
                // Not a backup any more, and not a failure: retention chose to delete it.
                v.notes
                    .push("being deleted: retention was interrupted deleting it; the next retention finishes".into());
                return v;
            }
            v.problems.push(if exists {
                "incomplete: no run manifest (the run did not finish storing)".into()
            } else {
                "no such run".into()
            });
            return v;
        }
        Err(e) => {
            v.problems.push(error_chain(&e));
            return v;
        }
    };
    v.files = manifest.files.len();
    for (section, base) in manifest.sources.iter().filter_map(|(n, x)| Some((n, x.base.as_ref()?))) {
        match storage::manifest_of(s.backend(), &s.dest.prefix, base) {
            Ok(Some(_)) => v.notes.push(format!("{section}: an increment on run {base}")),
            Ok(None) => v.problems.push(format!(
                "{section} is an increment on run {base}, which is not complete here: this run cannot be restored"
            )),
            Err(e) => v.problems.push(format!("{section}: cannot read its base run {base}: {}", error_chain(&e))),
        }
    }
    let signers = readback::SIGNERS.get().is_some_and(|v| !v.is_empty());
    if key.is_some() || signers {
        match readback::authenticate(s, run, &manifest, key, allow_unsigned) {
            Ok(()) => {
                if key.is_some() {
                    v.notes.push(if manifest.mac.is_some() {
                        "run manifest authenticated by the key".into()
                    } else {
                        "run manifest not authenticated (stored without KEY_FILE)".into()
                    });
                }
                if let (true, Some(sig)) = (signers, &manifest.signature) {
                    v.notes.push(format!("run manifest signed by host key {}: signature checked", sig.key_id));
                }
            }
            Err(e) => v.problems.push(error_chain(&e)),
        }
    } else if let Some(sig) = &manifest.signature {
        v.notes.push(format!("run manifest signed by host key {} (give --signer to check it)", sig.key_id));
    }
    // Which key each run needs: the key file, or the identities of the recipients it was
    // encrypted for (read from the small encryption manifests).
    let mut needs: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for item in readback::items(&manifest) {
        if let readback::Content::Encrypted { manifest: man, parts } = &item.content {
            match readback::encryption_manifest(s, run, &item.name, man, parts) {
                Ok(m) if m.recipients.is_empty() => {
                    needs.insert("the key file".into());
                }
                Ok(m) => {
                    needs.insert(format!("an identity of recipient(s) {}", m.recipients.join(" or ")));
                }
                // Not a verdict: --read-data checks every manifest and part; this only names keys.
                Err(e) => v.notes.push(format!("{}: cannot tell which key it needs: {}", item.name, error_chain(&e))),
            }
        }
    }
    if !needs.is_empty() {
        v.notes.push(format!("decrypts with {}", needs.into_iter().collect::<Vec<_>>().join("; and ")));
    }
    let sizes = match s.backend().sizes(&format!("{}{run}/", s.dest.prefix)) {
        Ok(x) => x,
        Err(e) => {
            v.problems.push(format!("cannot list the run: {}", error_chain(&e)));
            return v;
        }
    };
    for f in &manifest.files {
        match sizes.get(&s.key(run, &f.name)) {
            None => v.problems.push(format!("{}: missing", f.name)),
            Some(&n) if n != f.size => v
                .problems
                .push(format!("{}: {n} bytes, the run manifest says {} (truncated or replaced)", f.name, f.size)),
            Some(_) => {}
        }
    }
    let listed: HashSet<String> = manifest.files.iter().map(|f| s.key(run, &f.name)).collect();
    let manifest_key = s.key(run, storage::backend::RUN_MANIFEST);
    for k in sizes.keys().filter(|k| !listed.contains(*k) && **k != manifest_key) {
        v.notes.push(format!("{k}: not in the run manifest (ignored)"));
    }
    if read == ReadData::None {
        return v;
    }
    let items = readback::items(&manifest);
    v.items = items.len();
    let mut picked = pick_items(&items, read);
    // Objects in an archive storage class are named, not read: they must be thawed first.
    match readback::frozen(s, run, &picked) {
        Ok(frozen) if !frozen.is_empty() => {
            let keys: HashSet<&str> = frozen.iter().map(|a| a.key.as_str()).collect();
            for a in &frozen {
                v.problems.push(format!("{a}: must be thawed before it can be read"));
            }
            v.notes.push(format!("{} object(s) to thaw: {}", frozen.len(), readback::thaw_hint(run)));
            picked.retain(|i| !i.stored().iter().any(|f| keys.contains(s.key(run, &f.name).as_str())));
        }
        Ok(_) => {}
        Err(e) => {
            v.problems.push(format!("cannot tell which objects are in archive storage classes: {}", error_chain(&e)))
        }
    }
    let total: u64 = picked.iter().map(|i| i.stored_bytes()).sum();
    let bar = Progress::new(format!("verify {run}"), total);
    for item in picked {
        let encrypted = matches!(item.content, Content::Encrypted { .. });
        let res = if encrypted && key.is_none() {
            // Without the key: every stored file is still read and hashed.
            item.stored().into_iter().try_for_each(|f| {
                let r = s.backend().open_checked(&s.key(run, &f.name), f)?;
                let mut counted = readback::Counted { inner: r, count: &|n| bar.add(n) };
                std::io::copy(&mut counted, &mut std::io::sink()).map_err(|e| Error::runtime(e.to_string()))?;
                Ok(())
            })
        } else {
            readback::with_plaintext(s, run, item, key, &|n| bar.add(n), |r| {
                std::io::copy(r, &mut std::io::sink()).map_err(|e| Error::runtime(format!("{}: {e}", item.name)))
            })
            .map(|_| ())
        };
        match res {
            Ok(()) => {
                v.read_items += 1;
                v.read_bytes += item.stored_bytes();
                v.decrypted += usize::from(encrypted && key.is_some());
            }
            Err(e) => v.problems.push(error_chain(&e)),
        }
    }
    bar.finish();
    if key.is_none() && items.iter().any(|i| matches!(i.content, Content::Encrypted { .. })) {
        v.notes.push("no key at hand: encrypted files were hashed, not decrypted".into());
    }
    v
}

/// All items, or a random share of them (at least one).
fn pick_items(items: &[Item], read: ReadData) -> Vec<&Item> {
    let ReadData::Subset(p) = read else { return items.iter().collect() };
    let want = ((items.len() as f64 * p / 100.0).ceil() as usize).clamp(1, items.len().max(1));
    // A random order: each name hashed with this process's random keys.
    let seed = std::collections::hash_map::RandomState::new();
    let mut keyed: Vec<(u64, &Item)> = items
        .iter()
        .map(|i| {
            let mut h = seed.build_hasher();
            h.write(i.name.as_bytes());
            (h.finish(), i)
        })
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().take(want).map(|(_, i)| i).collect()
}

pub fn print_verdicts(list: &[Verdict], out: &mut impl Write) -> std::io::Result<()> {
    for v in list {
        let state = if v.problems.is_empty() { "OK" } else { "FAILED" };
        write!(out, "{state}  {}  run {}: {} files", v.destination, v.run_id, v.files)?;
        if v.read_items > 0 {
            write!(out, ", {} of {} read back ({})", v.read_items, v.items, human(v.read_bytes as f64))?;
        }
        if v.decrypted > 0 {
            write!(out, ", {} decrypted and authenticated", v.decrypted)?;
        }
        writeln!(out)?;
        for p in &v.problems {
            writeln!(out, "    problem: {p}")?;
        }
        for n in &v.notes {
            writeln!(out, "    note: {n}")?;
        }
    }
    Ok(())
}
