//! The built-in stages the runner knows: by NAME (and nc-backup-py's aliases) for ACTION
//! `execute`, and by FROM/FILENAME/CLASS for ACTION `load`.

use ncb_core::StageDef;

/// A stage name the project defines, and its implementation when this build has it.
#[derive(Debug)]
pub struct Known {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub def: Option<&'static StageDef>,
}

/// Every stage of nc-backup. `def: None` marks a stage not available in this build, so that
/// a config naming it gets a precise error rather than "unknown".
pub fn stages() -> Vec<Known> {
    let built: [&'static StageDef; 8] = [
        &size_calc::STAGE,
        &filesbackup::STAGE,
        &compression::STAGE,
        &encryption::STAGE,
        &mysql_dump::STAGE,
        &pg_dump::STAGE,
        &storage::STAGE,
        &object_mirror::STAGE,
    ];
    let planned: [(&str, &[&str]); 7] = [
        ("filesbackup", &["files", "files_backup", "files-backup"]),
        ("compression", &[]),
        ("encryption", &[]),
        ("storage", &[]),
        ("mysql-dump", &["mysql_backup", "mysql_dump", "mysqldump"]),
        ("pg-dump", &["pg_dump", "postgres", "postgresql"]),
        ("size-calc", &[]),
    ];
    let mut out: Vec<Known> = built.iter().map(|d| Known { name: d.name, aliases: d.aliases, def: Some(*d) }).collect();
    for (name, aliases) in planned {
        if !out.iter().any(|k| k.name == name) {
            out.push(Known { name, aliases, def: None });
        }
    }
    out
}

fn norm(s: &str) -> String {
    s.trim().to_ascii_lowercase().replace('_', "-")
}

/// The stage a NAME selects, if any.
pub fn find_stage(name: &str) -> Option<Known> {
    let n = norm(name);
    stages().into_iter().find(|k| norm(k.name) == n || k.aliases.iter().any(|a| norm(a) == n))
}

pub fn stage_names() -> String {
    stages().iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// A `load` plugin: nc-backup-py's FROM/FILENAME/CLASS and the stage it maps to.
#[derive(Debug)]
pub struct Plugin {
    pub from: &'static str,
    pub filename: &'static str,
    pub class: &'static str,
    pub def: &'static StageDef,
}

pub fn plugins() -> Vec<Plugin> {
    vec![Plugin { from: "tools", filename: "size_calculation", class: "SizeCalculation", def: &size_calc::STAGE }]
}

pub fn plugin_names() -> String {
    plugins().iter().map(|p| format!("{}/{}/{}", p.from, p.filename, p.class)).collect::<Vec<_>>().join(", ")
}

/// FILENAME (with or without `.py`) and CLASS select a plugin; FROM, when given, must match.
pub fn find_plugin(from: Option<&str>, filename: &str, class: Option<&str>) -> Option<Plugin> {
    let file = filename.trim_end_matches(".py");
    plugins().into_iter().find(|p| {
        p.filename == file
            && class.is_none_or(|c| c == p.class)
            && from.is_none_or(|f| f.trim_end_matches('/') == p.from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/CONFIG.md documents every parameter of every built-in stage.
    #[test]
    fn every_parameter_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md")).unwrap();
        for k in stages() {
            let Some(def) = k.def else { continue };
            assert!(doc.contains(&format!("### {}", def.name)), "docs/CONFIG.md has no section for {}", def.name);
            for p in def.params {
                assert!(
                    doc.contains(&format!("`{}`", p.key)),
                    "docs/CONFIG.md does not document {} of {}",
                    p.key,
                    def.name
                );
            }
        }
    }
}
