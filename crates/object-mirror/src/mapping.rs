//! Where a record's copy goes: `<bucket>/<path>/<name without extension>/v<Version>.gzip`, as
//! seeds/004 maps `/cars/id-1/thumbnail.png` to `car-erp/cars/id-1/thumbnail/v1.gzip`.
//!
//! The Path is relative to the bucket (one leading `/` is the bucket's root, as in the seed's
//! mapping); `..`, `.`, empty components (`a//b`, `//etc`), NUL or other control characters,
//! a component over 255 bytes or a whole key over 1024 bytes are refused, so no record can name
//! a place outside DESTINATION. The extension is what follows the last `.` of the Name, unless
//! the Name starts with its only dot (`.env` has none); names without one keep their name
//! (`README` → `README/v1.gzip`); dots in folders stay (`a.b/c`), non-ASCII stays as UTF-8.

/// The longest key a record may map to (S3's limit is 1024 bytes).
pub const MAX_KEY: usize = 1024;
const MAX_COMPONENT: usize = 255;

fn check_component(c: &str, what: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err(format!("{what} has an empty component"));
    }
    if c == "." || c == ".." {
        return Err(format!("{what} has a '{c}' component"));
    }
    if c.chars().any(char::is_control) {
        return Err(format!("{what} holds a control character"));
    }
    if c.len() > MAX_COMPONENT {
        return Err(format!("{what} has a component of {} bytes (at most {MAX_COMPONENT})", c.len()));
    }
    Ok(())
}

/// The folder of a file's versions, relative to DESTINATION: `<bucket>/<path>/<stem>`.
pub fn folder(bucket: &str, path: &str, name: &str) -> Result<String, String> {
    check_component(bucket, "the bucket")?;
    if bucket.contains('/') {
        return Err("the bucket holds a '/'".into());
    }
    let rel = path.strip_prefix('/').unwrap_or(path);
    let rel = rel.strip_suffix('/').unwrap_or(rel);
    let mut parts = vec![bucket.to_owned()];
    if !rel.is_empty() {
        for c in rel.split('/') {
            check_component(c, "Path")?;
            parts.push(c.to_owned());
        }
    }
    if name.contains('/') {
        return Err("Name holds a '/'".into());
    }
    check_component(name, "Name")?;
    let stem = match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    };
    check_component(stem, "Name without its extension")?;
    parts.push(stem.to_owned());
    let key = parts.join("/");
    if key.len() + "/v9223372036854775807.gzip.enc".len() > MAX_KEY {
        return Err(format!("the copy's key would be over {MAX_KEY} bytes"));
    }
    Ok(key)
}

/// A copy's file name in its folder.
pub fn copy_name(version: i64, encrypted: bool) -> String {
    format!("v{version}.gzip{}", if encrypted { ".enc" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_mapping() {
        assert_eq!(folder("car-erp", "/cars/id-1/", "thumbnail.png").unwrap(), "car-erp/cars/id-1/thumbnail");
        assert_eq!(
            folder("car-erp", "/cars", "1ff7f0ca-4ee5-4cfe-ad1a-93023c759b53.png").unwrap(),
            "car-erp/cars/1ff7f0ca-4ee5-4cfe-ad1a-93023c759b53"
        );
        assert_eq!(folder("b", "path/in/s3/", "FileName.jpg").unwrap(), "b/path/in/s3/FileName");
        assert_eq!(copy_name(2, false), "v2.gzip");
        assert_eq!(copy_name(2, true), "v2.gzip.enc");
    }

    #[test]
    fn names_and_folders_without_surprises() {
        assert_eq!(folder("b", "", "README").unwrap(), "b/README");
        assert_eq!(folder("b", "/", ".env").unwrap(), "b/.env");
        assert_eq!(folder("b", "a.b/c.d", "x.tar.gz").unwrap(), "b/a.b/c.d/x.tar");
        assert_eq!(folder("b", "fotos/über", "Ölbild.jpeg").unwrap(), "b/fotos/über/Ölbild");
    }

    #[test]
    fn hostile_records_are_refused() {
        for (path, name) in [
            ("../../etc", "passwd"),
            ("a/../../x", "y"),
            ("//etc", "passwd"),
            ("a//b", "c"),
            ("./a", "b"),
            ("a", ".."),
            ("a", "b/c"),
            ("a\0b", "c"),
            ("a\nb", "c"),
            ("a", ""),
            ("a", "."),
        ] {
            assert!(folder("bucket", path, name).is_err(), "{path:?} {name:?}");
        }
        assert!(folder("bucket", &"x".repeat(256), "a").is_err());
        assert!(folder("bucket", &vec!["x".repeat(200); 6].join("/"), "a").is_err());
        assert!(folder("..", "a", "b").is_err());
    }
}
