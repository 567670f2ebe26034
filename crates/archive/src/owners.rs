//! uid/gid to names, from /etc/passwd and /etc/group, read once per archive.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Owners {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

fn parse(path: &str) -> HashMap<u32, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((id, name.to_owned()))
        })
        .collect()
}

impl Owners {
    pub fn load() -> Self {
        Owners { users: parse("/etc/passwd"), groups: parse("/etc/group") }
    }
    pub fn user(&self, uid: u32) -> Option<&str> {
        self.users.get(&uid).map(String::as_str)
    }
    pub fn group(&self, gid: u32) -> Option<&str> {
        self.groups.get(&gid).map(String::as_str)
    }
    pub fn user_id(&self, name: &str) -> Option<u32> {
        self.users.iter().find(|(_, n)| n.as_str() == name).map(|(id, _)| *id)
    }
    pub fn group_id(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|(_, n)| n.as_str() == name).map(|(id, _)| *id)
    }
}
