//! `backup-runner restore`: a run fetched, checked, decrypted and unpacked into a folder in one
//! streaming pass (no file is downloaded or decrypted to disk first).
//!
//! - Tar archives are extracted into the folder as `tar -C DIR -x` would (filesbackup's
//!   archives hold paths relative to `/`, so `/etc/x` comes back as `DIR/etc/x`); gzip or zstd
//!   compressed files (database dumps) are decompressed beside; other files are placed as
//!   stored. A file that a source section of the run made (filesbackup's archive, a dump) is
//!   unpacked the same way when it turns up inside another archive (compression's).
//! - Everything goes into a hidden staging folder inside DIR first; only when every file has
//!   been read, checked and unpacked is it moved into place. A failed restore leaves DIR as it
//!   was, and the next destination that holds the run is tried.
//! - Nothing is written outside DIR, whatever an archive holds (see `ncb_archive::extract`).
//! - Objects kept in an archive storage class (GLACIER, DEEP_ARCHIVE) are named before anything
//!   is read when they are not thawed; `--thaw DAYS` ([`thaw`]) asks the store to thaw them.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use encryption::key::MasterKey;
use ncb_archive::extract::{self, ExtractOptions, Extracted, Kind, decode, kind_of, write_under};
use ncb_core::progress::Progress;
use ncb_core::stage::error_chain;
use ncb_core::{Error, IoContext, Result};
use serde::Serialize;

use storage::backend::{Archived, RUN_MANIFEST, Thaw};

use crate::readback::{self, Item, Source};

#[derive(Debug, Clone)]
pub struct Options {
    pub run: String,
    pub to: PathBuf,
    pub only: Vec<String>,
    /// Only these paths (or globs) of the file archives (`--include`).
    pub include: Vec<String>,
    /// An item that cannot be read costs only itself (the others are restored; exit 1).
    pub keep_going: bool,
    pub force: bool,
    pub allow_unsigned: bool,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub run_id: String,
    pub destination: String,
    pub to: PathBuf,
    /// Stored items read (of every run of a chain), and their stored bytes.
    pub items: usize,
    pub stored_bytes: u64,
    /// Items that could not be read (`--keep-going`): what they hold is not (all) restored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_items: Vec<String>,
    /// Files, folders, links and bytes restored; entries refused.
    #[serde(flatten)]
    pub unpacked: Extracted,
}

/// Archives nested deeper than this are left as files.
const MAX_DEPTH: usize = 4;
const STAGING: &str = ".ncb-restore-";

pub fn restore(sources: &[Source], key: Option<&MasterKey>, o: &Options) -> Result<Summary> {
    prepare_target(&o.to, o.force)?;
    let mut failures = Vec::new();
    for (src, run, manifest) in readback::pick(sources, &o.run)? {
        let items = select(&readback::items(&manifest), &o.only, &run)?;
        if key.is_none()
            && readback::IDENTITIES.get().is_none_or(Vec::is_empty)
            && let Some(i) = items.iter().find(|i| matches!(i.content, readback::Content::Encrypted { .. }))
        {
            return Err(Error::config(format!(
                "run {run} holds encrypted files ({} …): give --key-file (or KEY_FILE in the config's encryption section), or --identity for a run encrypted for recipients",
                i.name
            )));
        }
        if let Err(e) = readback::authenticate(src, &run, &manifest, key, o.allow_unsigned) {
            log::error!("{}", error_chain(&e));
            failures.push(error_chain(&e));
            continue;
        }
        // Objects that cannot be read yet are named before anything is read.
        let refs: Vec<&Item> = items.iter().collect();
        let frozen = readback::frozen(src, &run, &refs).and_then(|f| match f.is_empty() {
            true => Ok(()),
            false => Err(Error::runtime(format!(
                "{} object(s) must be thawed before they can be read: {}; {}",
                f.len(),
                f.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                readback::thaw_hint(&run)
            ))),
        });
        if let Err(e) = frozen {
            let msg = format!("{}: {}", src.describe(), error_chain(&e));
            log::error!("run {run}: {msg}");
            failures.push(msg);
            continue;
        }
        let levels = match chain(src, &run, &manifest, items.clone(), key, o.allow_unsigned)
            .and_then(|l| if o.include.is_empty() { Ok(l) } else { selected(src, l, &o.include, key) })
        {
            Ok(l) => l,
            Err(e @ (Error::Usage(_) | Error::Config(_))) => return Err(e),
            Err(e) => {
                let msg = format!("{}: {}", src.describe(), error_chain(&e));
                log::error!("run {run}: {msg}");
                failures.push(msg);
                continue;
            }
        };
        log::info!("restoring run {run} from {} into {}", src.describe(), o.to.display());
        // What is read: every item of every level (a chain's runs, a selection's archives).
        let fetched = levels.iter().flat_map(|l| &l.items).fold((0, 0), |(n, b), i| (n + 1, b + i.stored_bytes()));
        let mut failed_items = Vec::new();
        let staged = match stage(src, &levels, key, &o.to, o.keep_going, &mut failed_items) {
            Ok(x) => x,
            Err(e @ (Error::Usage(_) | Error::Config(_))) => return Err(e),
            Err(e) => {
                let msg = format!("{}: {}", src.describe(), error_chain(&e));
                log::error!("restore of run {run} failed: {msg}");
                failures.push(msg);
                continue;
            }
        };
        // Past this point DIR changes: a failure is reported as a partial restore, not retried.
        let (staging, stats) = staged;
        move_into(&staging.0, &o.to, o.force).map_err(|e| {
            Error::runtime(format!(
                "run {run} was restored but only partly moved into {}: {} (the rest is in {}; nothing was deleted)",
                o.to.display(),
                error_chain(&e),
                staging.0.display()
            ))
        })?;
        return Ok(Summary {
            run_id: run.clone(),
            destination: src.describe(),
            to: o.to.clone(),
            items: fetched.0,
            stored_bytes: fetched.1,
            unpacked: stats,
            failed_items,
        });
    }
    Err(Error::runtime(format!(
        "restore of run {} failed from every destination that holds it, {} left as it was: {}",
        o.run,
        o.to.display(),
        failures.join("; ")
    )))
}

/// What `restore --thaw` did in one destination.
#[derive(Debug, Serialize)]
pub struct Thawed {
    pub run_id: String,
    pub destination: String,
    pub days: u32,
    /// Thaws asked for now.
    pub requested: usize,
    /// Thaws already under way.
    pub in_progress: usize,
    /// Archived objects that can already be read.
    pub readable: usize,
    /// The archive classes involved.
    pub classes: Vec<String>,
}

impl Thawed {
    /// What happened and when to come back.
    pub fn message(&self) -> String {
        let (run, dest) = (&self.run_id, &self.destination);
        let thawing = self.requested + self.in_progress;
        if thawing == 0 {
            return format!(
                "run {run} in {dest}: nothing to thaw ({} archived object(s), all readable now): run the same restore without --thaw",
                self.readable
            );
        }
        format!(
            "run {run} in {dest}: {thawing} object(s) thawing ({} asked for now, for {} day(s); {} already under way; {} already readable) in {}; run the same restore without --thaw in a few hours ({})",
            self.requested,
            self.days,
            self.in_progress,
            self.readable,
            self.classes.join(", "),
            storage::s3::THAW_TIMES
        )
    }
}

/// `restore --thaw DAYS`: asks the first destination holding the run for readable copies of
/// the objects the restore needs (`only` as for a restore) that sit in an archive storage class,
/// for `days` days, and restores nothing. Objects already thawed or thawing are left alone. A
/// run whose manifest is itself archived (stored before manifests were kept in STANDARD) is
/// thawed whole when asked for by id.
pub fn thaw(sources: &[Source], wanted: &str, only: &[String], days: u32) -> Result<Thawed> {
    let picked = match readback::pick(sources, wanted) {
        Ok(p) => p,
        Err(e) if wanted == "latest" => return Err(e),
        Err(e) => {
            return match thaw_whole_run(sources, wanted, only, days) {
                Ok(Some(t)) => Ok(t),
                Ok(None) => Err(e),
                Err(e2) => Err(Error::runtime(format!("{}; {}", error_chain(&e), error_chain(&e2)))),
            };
        }
    };
    let mut failures = Vec::new();
    for (src, run, manifest) in picked {
        let items = select(&readback::items(&manifest), only, &run)?;
        let refs: Vec<&Item> = items.iter().collect();
        match readback::archived(src, &run, &refs).and_then(|a| thaw_in(src, &run, &a, days)) {
            Ok(t) => return Ok(t),
            Err(e) => {
                let msg = format!("{}: {}", src.describe(), error_chain(&e));
                log::error!("thaw of run {run}: {msg}");
                failures.push(msg);
            }
        }
    }
    Err(Error::runtime(format!("cannot thaw run {wanted}: {}", failures.join("; "))))
}

/// A run whose run manifest cannot be read because it is archived: every archived object of
/// the run folder, in the first destination that has some; `None` when none has.
fn thaw_whole_run(sources: &[Source], run: &str, only: &[String], days: u32) -> Result<Option<Thawed>> {
    for src in sources {
        let archived = match src.backend().archived(&src.key(run, "")) {
            Ok(a) => a,
            Err(e) => {
                log::warn!("{}: {}", src.describe(), error_chain(&e));
                continue;
            }
        };
        if !archived.iter().any(|a| a.key == src.key(run, RUN_MANIFEST)) {
            continue;
        }
        if !only.is_empty() {
            log::warn!("the run manifest of run {run} is archived: the whole run is thawed, whatever --only says");
        }
        log::warn!(
            "{}: the run manifest of run {run} is in an archive storage class (stored by an older version): thawing the whole run",
            src.describe()
        );
        return thaw_in(src, run, &archived, days).map(Some);
    }
    Ok(None)
}

fn thaw_in(src: &Source, run: &str, archived: &[Archived], days: u32) -> Result<Thawed> {
    let todo: Vec<String> = archived.iter().filter(|a| a.thaw == Thaw::Frozen).map(|a| a.key.clone()).collect();
    let mut classes: Vec<String> = archived.iter().map(|a| a.class.clone()).collect();
    classes.sort();
    classes.dedup();
    for k in &todo {
        log::info!("{}: thawing {k} for {days} day(s)", src.describe());
    }
    let after = src.backend().thaw(&todo, days)?;
    let readable =
        archived.iter().filter(|a| a.thaw.readable()).count() + after.iter().filter(|t| t.readable()).count();
    Ok(Thawed {
        run_id: run.to_owned(),
        destination: src.describe(),
        days,
        requested: after.iter().filter(|t| **t == Thaw::Thawing).count(),
        in_progress: archived.iter().filter(|a| a.thaw == Thaw::Thawing).count(),
        readable,
        classes,
    })
}

/// The items `--only` asks for (all without it).
fn select(items: &[Item], only: &[String], run: &str) -> Result<Vec<Item>> {
    if only.is_empty() {
        return Ok(items.to_vec());
    }
    let known: Vec<&String> = {
        let mut k: Vec<&String> = items.iter().flat_map(|i| &i.from).collect();
        k.sort();
        k.dedup();
        k
    };
    if known.is_empty() {
        return Err(Error::runtime(format!(
            "run {run} was stored without section lineage (storage run by hand): restore it without --only"
        )));
    }
    if let Some(bad) = only.iter().find(|s| !known.contains(s)) {
        let k: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
        return Err(Error::usage(format!(
            "--only {bad}: run {run} holds nothing from it (its sections: {})",
            k.join(", ")
        )));
    }
    Ok(items.iter().filter(|i| i.from.iter().any(|f| only.contains(f))).cloned().collect())
}

/// DIR must be an empty folder (or not exist yet) unless `force`, and every folder on its path
/// must be safe from other users (below). Staging folders left by a restore that was killed
/// are removed.
fn prepare_target(to: &Path, force: bool) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::metadata(to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Checked before anything is created in it.
            if let Some(existing) = to.ancestors().skip(1).find(|a| a.is_dir()) {
                check_private(existing, to)?;
            }
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(to).at("cannot create", to)?;
        }
        Err(e) => return Err(Error::path("cannot use", to, e)),
        Ok(m) if !m.is_dir() => return Err(Error::usage(format!("--to {}: not a folder", to.display()))),
        Ok(_) => {}
    }
    check_private(to, to)?;
    let mut others = Vec::new();
    for e in std::fs::read_dir(to).at("cannot list", to)? {
        let e = e.at("cannot list", to)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(STAGING).and_then(|rest| rest.split('-').next()?.parse::<u32>().ok());
        match pid {
            Some(pid) if pid == std::process::id() || !ncb_core::sys::process_alive(pid) => {
                log::info!("removing {} left by a restore that did not finish", e.path().display());
                remove_tree(&e.path())?;
            }
            _ => others.push(name),
        }
    }
    if !others.is_empty() && !force {
        return Err(Error::usage(format!(
            "--to {}: not empty ({} entries, e.g. {}): restore into an empty folder, or give --force to merge into it",
            to.display(),
            others.len(),
            others[0]
        )));
    }
    Ok(())
}

/// Another user who could rename or replace DIR, or a folder above it, during the restore could
/// redirect what is written (as root: anywhere). So DIR and every folder above it must belong
/// to us or to root and be writable by nobody else (a sticky folder such as /tmp is fine: others
/// cannot move what is ours in it).
fn check_private(dir: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let real = dir.canonicalize().at("cannot resolve", dir)?;
    let me = ncb_core::sys::euid();
    for dir in real.ancestors() {
        let m = std::fs::metadata(dir).at("cannot inspect", dir)?;
        let shared_write = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if (m.uid() != me && m.uid() != 0) || shared_write {
            return Err(Error::usage(format!(
                "--to {}: {} {}; another user could redirect the restore: restore into a folder only you can change, then move the files",
                to.display(),
                dir.display(),
                if shared_write { "is writable by others" } else { "belongs to another user" }
            )));
        }
    }
    Ok(())
}

/// Removes a tree, making read-only folders writable first (as restored folders may be).
fn remove_tree(dir: &Path) -> Result<()> {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return Ok(());
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    std::fs::remove_dir_all(dir).at("cannot remove", dir)
}

/// Removes the staging folder however the restore ends.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = remove_tree(&self.0)
        {
            log::warn!("{}", error_chain(&e));
        }
    }
}

/// What one run of a restore contributes, in order: the runs an incremental section builds
/// on (oldest first: the full archive, then each increment), then the run asked for.
#[derive(Debug)]
struct Level {
    run: String,
    items: Vec<Item>,
    /// The files source sections of this run made (unpacked even inside an archive).
    sources: HashSet<String>,
    /// For a run restored only as a base: the files of the incremental sections it is a base
    /// for; nothing else of it is restored.
    keep_only: Option<HashSet<String>>,
    /// The indexes of this run's file archives (for the sections restored).
    indexes: Vec<Item>,
    /// A selective restore: the entries (paths as stored) to take from this run's archives.
    select: Option<HashSet<String>>,
}

/// The levels restoring `run` takes: for every incremental section among `items`, its chain of
/// base runs, each complete and authenticated in `src`, down to the full archive.
fn chain(
    src: &Source,
    run: &str,
    manifest: &storage::backend::RunManifest,
    items: Vec<Item>,
    key: Option<&MasterKey>,
    allow_unsigned: bool,
) -> Result<Vec<Level>> {
    let is_index = |i: &Item| i.name.ends_with(ncb_archive::index::SUFFIX);
    let (indexes, mut items): (Vec<Item>, Vec<Item>) = items.into_iter().partition(is_index);
    let mut earlier: std::collections::BTreeMap<String, Level> = std::collections::BTreeMap::new();
    let mut incremental = HashSet::new();
    for (section, first) in manifest.sources.iter().filter_map(|(n, x)| Some((n, x.base.clone()?))) {
        if !items.iter().any(|i| i.from.contains(section)) {
            continue;
        }
        incremental.insert(section.clone());
        let mut cur = Some(first);
        while let Some(base) = cur.take() {
            if earlier.contains_key(&base) && earlier[&base].keep_only.as_ref().is_some_and(|k| k.contains(section)) {
                break;
            }
            if base.as_str() >= run {
                return Err(Error::runtime(format!(
                    "run {run}: {section} names run {base} as its base, which is not older"
                )));
            }
            let m = storage::manifest_of(src.backend(), &src.dest.prefix, &base)?.ok_or_else(|| {
                Error::runtime(format!(
                    "run {run}: {section} is an increment on run {base}, which is not complete here: it cannot be restored from this destination"
                ))
            })?;
            readback::authenticate(src, &base, &m, key, allow_unsigned)?;
            let Some(made) = m.sources.get(section) else {
                return Err(Error::runtime(format!("run {base}, a base of run {run}, holds nothing of {section}")));
            };
            let level = earlier.entry(base.clone()).or_insert_with(|| Level {
                run: base.clone(),
                items: Vec::new(),
                sources: m.sources.values().flat_map(|s| s.artifacts.iter().cloned()).collect(),
                keep_only: Some(HashSet::new()),
                indexes: Vec::new(),
                select: None,
            });
            for i in readback::items(&m).into_iter().filter(|i| i.from.contains(section)) {
                let list = if is_index(&i) { &mut level.indexes } else { &mut level.items };
                if !list.iter().any(|x| x.name == i.name) {
                    list.push(i);
                }
            }
            if let Some(k) = level.keep_only.as_mut() {
                k.extend(made.artifacts.iter().cloned());
                k.insert(section.clone());
            }
            cur = made.base.clone();
        }
    }
    // An increment's archive goes first in its own run: its folders' listings then apply to
    // what the earlier levels restored, never to the other sections' files.
    items.sort_by_key(|i| !i.from.iter().any(|f| incremental.contains(f)));
    let mut levels: Vec<Level> = earlier.into_values().collect();
    levels.push(Level {
        run: run.to_owned(),
        items,
        sources: manifest.sources.values().flat_map(|s| s.artifacts.iter().cloned()).collect(),
        keep_only: None,
        indexes,
        select: None,
    });
    Ok(levels)
}

/// A selective restore (`--include`): from the run's indexes, the entries that match; each is
/// taken from the newest run of its chain whose archive holds it, and only the runs (and,
/// in them, the file archives) that hold some are fetched. Other items (dumps) are left out.
fn selected(src: &Source, mut levels: Vec<Level>, include: &[String], key: Option<&MasterKey>) -> Result<Vec<Level>> {
    let globs: Vec<crate::browse::Pattern> = include
        .iter()
        .filter(|p| p.contains(['*', '?', '[']))
        .map(|p| crate::browse::Pattern::new(p))
        .collect::<Result<_>>()?;
    let paths: Vec<String> =
        include.iter().filter(|p| !p.contains(['*', '?', '['])).map(|p| crate::browse::normalize(p)).collect();
    let wanted = |p: &str| paths.iter().any(|u| crate::browse::is_under(p, u)) || globs.iter().any(|g| g.matches(p));
    let last = levels.len() - 1;
    let run = levels[last].run.clone();
    if levels[last].indexes.is_empty() {
        return Err(Error::runtime(format!(
            "run {run} holds no index of its files (stored before indexes were kept, or by `storage` alone): --include cannot choose; restore it whole"
        )));
    }
    // Newest level first: what it holds is taken from it; what only an earlier one holds waits.
    let mut pending: HashSet<String> = HashSet::new();
    let mut sections: HashSet<String> = HashSet::new();
    let mut found = 0usize;
    for i in (0..=last).rev() {
        let mut take = HashSet::new();
        let indexes = levels[i].indexes.clone();
        for item in &indexes {
            crate::browse::read_index(src, &levels[i].run, item, key, &mut |h, e| {
                let want = if i == last { wanted(&e.path) } else { pending.contains(&e.path) };
                if want && i == last {
                    found += 1;
                    sections.insert(h.section.clone());
                }
                if want && e.stored {
                    pending.remove(&e.path);
                    take.insert(e.path);
                } else if want && i == last {
                    pending.insert(e.path);
                }
                Ok(())
            })?;
        }
        levels[i].select = Some(take);
    }
    if found == 0 {
        return Err(Error::usage(format!(
            "--include {}: run {run} holds nothing that matches (see backup-runner ls)",
            include.join(" ")
        )));
    }
    for p in pending.iter().take(5) {
        log::warn!("{p}: in run {run}'s index, but in no archive of its chain (it could not be read that night)");
    }
    levels.retain(|l| l.select.as_ref().is_some_and(|s| !s.is_empty()));
    for l in &mut levels {
        l.items.retain(|i| i.from.iter().any(|f| sections.contains(f)));
    }
    Ok(levels)
}

/// Reads, checks, decrypts and unpacks every item of every level into a new staging folder
/// inside `to`.
/// With `keep_going`, an item that cannot be read (a damaged or missing part) costs only itself:
/// its name goes to `failed`, its error to the refused entries, and the others are restored.
fn stage(
    src: &Source,
    levels: &[Level],
    key: Option<&MasterKey>,
    to: &Path,
    keep_going: bool,
    failed: &mut Vec<String>,
) -> Result<(Staging, Extracted)> {
    use std::os::unix::fs::DirBuilderExt;
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| Error::runtime(format!("no randomness: {e}")))?;
    let staging = Staging(to.join(format!("{STAGING}{}-{}", std::process::id(), hex::encode(tag))));
    std::fs::DirBuilder::new().mode(0o700).create(&staging.0).at("cannot create", &staging.0)?;
    let total: u64 = levels.iter().flat_map(|l| &l.items).map(Item::stored_bytes).sum();
    let last = levels.last().map(|l| l.run.as_str()).unwrap_or_default();
    let bar = Progress::new(format!("restore {last}"), total);
    let mut stats = Extracted::default();
    let selective = levels.iter().any(|l| l.select.is_some());
    let opts = ExtractOptions { incremental: levels.len() > 1 && !selective, ..ExtractOptions::default() };
    for level in levels {
        if level.keep_only.is_some() {
            log::info!("run {}: restoring its {} item(s) of the chain first", level.run, level.items.len());
        }
        let names: HashSet<String> = level.items.iter().map(|i| i.name.clone()).collect();
        let unpack = Unpack {
            root: &staging.0,
            sources: &level.sources,
            names: &names,
            opts,
            keep_only: level.keep_only.as_ref(),
            select: level.select.as_ref(),
        };
        for item in &level.items {
            if key.is_some() && matches!(item.content, readback::Content::Plain(_)) {
                log::warn!("{}: stored unencrypted; it is checked against the run manifest only", item.name);
            }
            let got = readback::with_plaintext(src, &level.run, item, key, &|n| bar.add(n), |r| {
                unpack.place(&item.name, r, 0)
            })
            .map_err(|e| e.context(&format!("run {}: {}", level.run, item.name)));
            match got {
                Ok(got) => stats.absorb(got),
                Err(e) if keep_going && !matches!(e, Error::Usage(_) | Error::Config(_)) => {
                    let plain = matches!(item.content, readback::Content::Plain(_));
                    let msg = format!(
                        "{}{}",
                        error_chain(&e),
                        if plain {
                            " (stored unencrypted: what was unpacked of it before the error is kept, unverified)"
                        } else {
                            " (what was unpacked of it before the damage is kept: every byte of it authenticated)"
                        }
                    );
                    log::error!("{msg}");
                    stats.refused.push(msg);
                    failed.push(item.name.clone());
                }
                Err(e) => return Err(e),
            }
        }
    }
    bar.finish();
    Ok((staging, stats))
}

/// How one plaintext stream is unpacked under the staging folder.
struct Unpack<'a> {
    root: &'a Path,
    /// File names that source sections of the run made: unpacked even inside an archive.
    sources: &'a HashSet<String>,
    /// Every item's name in the run: a dump is decompressed only when no item of the run
    /// already has the decompressed name (`db.sql` beside `db.sql.gz` stays compressed).
    names: &'a HashSet<String>,
    opts: ExtractOptions,
    /// A run restored only as a base of a chain: only these files (and sections) of it.
    keep_only: Option<&'a HashSet<String>>,
    /// A selective restore: only these entries of the file archives.
    select: Option<&'a HashSet<String>>,
}

/// A PostgreSQL directory-format dump (`NAME.dir/`): its files stay as pg_restore reads them.
fn in_pg_dir(rel: &Path) -> bool {
    let n = rel.components().count();
    rel.components().take(n.saturating_sub(1)).any(|c| c.as_os_str().to_string_lossy().ends_with(".dir"))
}

impl Unpack<'_> {
    fn place(&self, name: &str, r: &mut (dyn Read + Send), depth: usize) -> Result<Extracted> {
        let rel = Path::new(name);
        let base = rel.file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
        let (kind, stem) = kind_of(&base);
        let kind = if in_pg_dir(rel) { Kind::Plain } else { kind };
        if let Some(keep) = self.keep_only
            && !keep.contains(&base)
        {
            // A base run's item that bundles other sections' files: only the chain's own.
            return match kind {
                Kind::Tar => self.untar(r, depth),
                _ => {
                    std::io::copy(r, &mut std::io::sink()).map_err(|e| Error::runtime(format!("{name}: {e}")))?;
                    Ok(Extracted::default())
                }
            };
        }
        let inner = Unpack { keep_only: None, ..*self };
        let this = if self.keep_only.is_some() { &inner } else { self };
        match kind {
            Kind::Tar => this.untar(r, depth),
            Kind::Compressed if self.names.contains(&rel.with_file_name(stem).to_string_lossy().into_owned()) => {
                log::warn!("{name}: kept compressed, since the run also holds {stem}");
                self.write(rel, r)
            }
            Kind::Compressed => this.write(&rel.with_file_name(stem), &mut decode(r).at("cannot read", rel)?),
            Kind::Plain => this.write(rel, r),
        }
    }

    fn write(&self, rel: &Path, r: &mut dyn Read) -> Result<Extracted> {
        let bytes = write_under(self.root, rel, r)?;
        Ok(Extracted { files: 1, bytes, ..Default::default() })
    }

    fn untar(&self, r: &mut dyn Read, depth: usize) -> Result<Extracted> {
        let mut dec = decode(r).map_err(|e| Error::runtime(format!("cannot read archive: {e}")))?;
        let mut nested = Extracted::default();
        let mut inner_err = None;
        let mut emptied: Vec<PathBuf> = Vec::new();
        let mut st = {
            let mut divert = |rel: &Path, entry: &mut dyn Read| -> Result<bool> {
                let Some(base) = rel.file_name().map(|b| b.to_string_lossy().into_owned()) else { return Ok(false) };
                if let Some(keep) = self.keep_only
                    && !keep.contains(&base)
                {
                    // Another section's file in a base run's bundle: not restored.
                    emptied.extend(rel.parent().map(Path::to_path_buf));
                    return Ok(true);
                }
                if depth >= MAX_DEPTH || !self.sources.contains(&base) || in_pg_dir(rel) {
                    return Ok(false);
                }
                let (kind, stem) = kind_of(&base);
                let inner = Unpack { keep_only: None, ..*self };
                let got = match kind {
                    Kind::Tar => inner.untar(entry, depth + 1),
                    Kind::Compressed => match decode(entry) {
                        Ok(mut d) => inner.write(&rel.with_file_name(stem), &mut d),
                        Err(e) => Err(Error::runtime(format!("{}: {e}", rel.display()))),
                    },
                    Kind::Plain => return Ok(false),
                };
                match got {
                    Ok(x) => {
                        nested.absorb(x);
                        emptied.extend(rel.parent().map(Path::to_path_buf));
                    }
                    Err(e) => {
                        let msg = format!("{}: {}", rel.display(), error_chain(&e));
                        inner_err = Some(msg.clone());
                        return Err(Error::runtime(msg));
                    }
                }
                Ok(true)
            };
            let select = self.select.map(|set| move |p: &Path| set.contains(p.to_string_lossy().as_ref()));
            let select = select.as_ref().map(|f| f as &dyn Fn(&Path) -> bool);
            extract::extract_selected(&mut dec, self.root, self.opts, Some(&mut divert), select)?
        };
        if let Some(e) = inner_err {
            return Err(Error::runtime(e));
        }
        // Folders that only carried the pipeline's own archives (compression's `files/`) go.
        emptied.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in emptied {
            for d in dir.ancestors().filter(|d| !d.as_os_str().is_empty()) {
                if std::fs::remove_dir(self.root.join(d)).is_err() {
                    break;
                }
            }
        }
        // The rest of the stream (the archive's padding, the gzip trailer and its CRC).
        std::io::copy(&mut dec, &mut std::io::sink()).map_err(|e| Error::runtime(format!("archive: {e}")))?;
        st.absorb(nested);
        Ok(st)
    }
}

/// Renames `src` to `dest`, which must not exist. A folder without write permission for its
/// owner (restored as it was) cannot change parent unless made writable for the move.
fn move_new(src: &Path, dest: &Path) -> Result<()> {
    match ncb_core::sys::rename_noreplace(src, dest) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && src.is_dir() => {
            let mode = std::fs::symlink_metadata(src).at("cannot inspect", src)?.permissions().mode();
            std::fs::set_permissions(src, std::fs::Permissions::from_mode(mode | 0o200)).at("cannot move", src)?;
            ncb_core::sys::rename_noreplace(src, dest).at("cannot move into place", dest)?;
            std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode)).at("cannot set the mode of", dest)
        }
        r => r.at("cannot move into place", dest),
    }
}

/// Moves the staged restore into `to`: entries that are not there yet are renamed into place;
/// with `force`, folders are merged and files replaced.
fn move_into(staging: &Path, to: &Path, force: bool) -> Result<()> {
    for e in std::fs::read_dir(staging).at("cannot list", staging)? {
        let e = e.at("cannot list", staging)?;
        let dest = to.join(e.file_name());
        merge(&e.path(), &dest, force)?;
    }
    ncb_core::atomic::sync_dir(to)
}

fn merge(src: &Path, dest: &Path, force: bool) -> Result<()> {
    let existing = match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::path("cannot inspect", dest, e)),
        Ok(m) => Some(m),
    };
    let Some(m) = existing else {
        return move_new(src, dest);
    };
    if !force {
        return Err(Error::runtime(format!("{}: appeared during the restore", dest.display())));
    }
    let src_is_dir = std::fs::symlink_metadata(src).at("cannot inspect", src)?.is_dir();
    match (src_is_dir, m.is_dir()) {
        (true, true) => {
            for e in std::fs::read_dir(src).at("cannot list", src)? {
                let e = e.at("cannot list", src)?;
                merge(&e.path(), &dest.join(e.file_name()), force)?;
            }
            Ok(())
        }
        (false, false) => std::fs::rename(src, dest).at("cannot replace", dest),
        _ => Err(Error::runtime(format!(
            "{}: a {} is in the way of the restored {} (left as it was)",
            dest.display(),
            if m.is_dir() { "folder" } else { "file" },
            if src_is_dir { "folder" } else { "file" }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_directory_dumps_stay_as_they_are() {
        assert!(in_pg_dir(Path::new("pg/db_T.dir/3456.dat.gz")));
        assert!(!in_pg_dir(Path::new("pg/db_T.sql.gz")));
        assert!(!in_pg_dir(Path::new("db_T.dir")));
    }

    #[test]
    fn force_merges_folders_and_refuses_type_clashes() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        std::fs::create_dir_all(src.join("etc/sub")).unwrap();
        std::fs::write(src.join("etc/sub/a"), "new").unwrap();
        std::fs::create_dir_all(dest.join("etc/sub")).unwrap();
        std::fs::write(dest.join("etc/sub/a"), "old").unwrap();
        std::fs::write(dest.join("etc/keep"), "kept").unwrap();
        move_into(&src, &dest, true).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("etc/sub/a")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(dest.join("etc/keep")).unwrap(), "kept");

        std::fs::create_dir_all(src.join("x")).unwrap();
        std::fs::write(dest.join("x"), "file").unwrap();
        let e = move_into(&src, &dest, true).unwrap_err().to_string();
        assert!(e.contains("a file is in the way of the restored folder"), "{e}");
    }
}
