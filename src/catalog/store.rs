//! Where template versions come from: the built-in catalog embedded at build time, and an
//! optional override directory (`--manifests-path` / `MANIFESTS_PATH`) whose module/version
//! folders take precedence over built-in ones with the same names.
//!
//! Symbolic links are followed, so a ConfigMap volume works as an override directory: there every
//! file (and, with `items[].path`, every folder) is a link into a hidden `..data/` directory that
//! the kubelet swaps atomically on update. Hidden entries (`..data`, `..2024_…`) are never modules,
//! versions or template files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use include_dir::{include_dir, Dir};

use super::version::{RawVersion, TemplateVersion};
use super::{validate_name, Error, Result};

static BUILTIN: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/templates");

/// Human-readable source of the built-in catalog.
pub const BUILTIN_SOURCE: &str = "builtin";

/// Summary of one module for `ListTemplates`.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    pub module: String,
    pub versions: Vec<Arc<TemplateVersion>>,
}

/// Per file: its path, where it resolves to (a ConfigMap update swaps `..data`), mtime and size.
type Fingerprint = Vec<(PathBuf, Option<PathBuf>, Option<SystemTime>, u64)>;

#[derive(Debug, Default)]
struct Cache {
    versions: HashMap<(String, String), (Fingerprint, Arc<TemplateVersion>)>,
}

/// The catalog. Cheap to share (`Arc`); loaded versions are cached and a changed override file
/// is picked up on the next request.
#[derive(Debug)]
pub struct Catalog {
    override_dir: Option<PathBuf>,
    include_builtin: bool,
    cache: RwLock<Cache>,
}

impl Catalog {
    /// Built-in templates only.
    pub fn builtin() -> Self {
        Catalog { override_dir: None, include_builtin: true, cache: RwLock::default() }
    }

    /// Built-in templates, overridden by `dir`.
    pub fn with_override(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(Error::Io(format!("manifests path {} is not a directory", dir.display())));
        }
        Ok(Catalog { override_dir: Some(dir), include_builtin: true, cache: RwLock::default() })
    }

    /// Only the templates of `dir` (used to prove an original store works unchanged).
    pub fn directory_only(dir: impl Into<PathBuf>) -> Result<Self> {
        let mut c = Self::with_override(dir)?;
        c.include_builtin = false;
        Ok(c)
    }

    pub fn override_dir(&self) -> Option<&Path> {
        self.override_dir.as_deref()
    }

    /// Module names with their version names, sorted.
    pub fn index(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if self.include_builtin {
            for m in BUILTIN.dirs() {
                let module = file_name(m.path());
                if validate_name("module", &module).is_err() {
                    continue;
                }
                let versions = out.entry(module).or_default();
                for v in m.dirs() {
                    let version = file_name(v.path());
                    if validate_name("version", &version).is_ok() {
                        versions.insert(version);
                    }
                }
            }
        }
        if let Some(root) = &self.override_dir {
            for module in subdirs(root) {
                let versions: Vec<String> = subdirs(&root.join(&module));
                let entry = out.entry(module).or_default();
                entry.extend(versions);
            }
        }
        out.retain(|_, v| !v.is_empty());
        out
    }

    pub fn list(&self) -> Result<Vec<ModuleInfo>> {
        let mut out = Vec::new();
        for (module, versions) in self.index() {
            let versions = versions.iter().map(|v| self.load(&module, v)).collect::<Result<Vec<_>>>()?;
            out.push(ModuleInfo { module, versions });
        }
        Ok(out)
    }

    /// Loads (or returns the cached) template version; validates the names first.
    pub fn load(&self, module: &str, version: &str) -> Result<Arc<TemplateVersion>> {
        validate_name("module", module)?;
        validate_name("version", version)?;
        let key = (module.to_string(), version.to_string());
        let dir_path = self.override_dir.as_ref().map(|r| r.join(module).join(version)).filter(|p| p.is_dir());
        let fingerprint = match &dir_path {
            Some(p) => fingerprint(p),
            None => Vec::new(),
        };
        if let Some((fp, v)) = self.cache.read().expect("catalog cache lock").versions.get(&key) {
            if *fp == fingerprint {
                return Ok(v.clone());
            }
        }
        let raw = match &dir_path {
            Some(p) => read_dir_version(p, module, version)?,
            None => self.builtin_version(module, version)?,
        };
        let loaded = Arc::new(TemplateVersion::from_raw(raw)?);
        self.cache.write().expect("catalog cache lock").versions.insert(key, (fingerprint, loaded.clone()));
        Ok(loaded)
    }

    fn builtin_version(&self, module: &str, version: &str) -> Result<RawVersion> {
        let index = self.index();
        let Some(versions) = index.get(module) else {
            return Err(Error::ModuleNotFound { module: module.into(), valid: index.keys().cloned().collect() });
        };
        let found = self.include_builtin.then(|| BUILTIN.get_dir(format!("{module}/{version}"))).flatten();
        let Some(dir) = found else {
            return Err(Error::VersionNotFound {
                module: module.into(),
                version: version.into(),
                valid: versions.iter().cloned().collect(),
            });
        };
        let files = |d: &Dir<'static>| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = d
                .files()
                .filter_map(|f| {
                    let name = file_name(f.path());
                    let text = f.contents_utf8()?.to_string();
                    Some((name, text))
                })
                .collect();
            v.sort();
            v
        };
        let dependencies = dir.get_dir(format!("{module}/{version}/dependencies")).map(files);
        Ok(RawVersion {
            module: module.into(),
            version: version.into(),
            source: BUILTIN_SOURCE.into(),
            top: files(dir),
            dependencies,
        })
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Hidden entries: a ConfigMap volume's `..data` link and its timestamped `..2024_…` directories.
fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Whether `p` is a directory (`true`) or a regular file (`false`) once symbolic links are
/// followed; `None` for anything else, including a dangling link.
fn resolved_kind(p: &Path) -> Option<bool> {
    let meta = std::fs::metadata(p).ok()?;
    if meta.is_dir() {
        Some(true)
    } else if meta.is_file() {
        Some(false)
    } else {
        None
    }
}

/// Valid-named subdirectories (links to directories included), sorted.
fn subdirs(p: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(p) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| resolved_kind(&e.path()) == Some(true))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_hidden(n) && validate_name("module", n).is_ok())
        .collect();
    v.sort();
    v
}

fn yaml_files(p: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(p).map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_file = resolved_kind(&e.path()) == Some(false);
        if is_file && !is_hidden(&name) && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            let text =
                std::fs::read_to_string(e.path()).map_err(|err| Error::Io(format!("{}: {err}", e.path().display())))?;
            out.push((name, text));
        }
    }
    out.sort();
    Ok(out)
}

fn read_dir_version(p: &Path, module: &str, version: &str) -> Result<RawVersion> {
    let deps = p.join("dependencies");
    Ok(RawVersion {
        module: module.into(),
        version: version.into(),
        source: p.display().to_string(),
        top: yaml_files(p)?,
        dependencies: if deps.is_dir() { Some(yaml_files(&deps)?) } else { None },
    })
}

fn fingerprint(p: &Path) -> Fingerprint {
    let mut out = Vec::new();
    for dir in [p.to_path_buf(), p.join("dependencies")] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let path = e.path();
            // Followed links: a swapped `..data` changes where the files resolve to.
            let meta = std::fs::metadata(&path).ok();
            let target = std::fs::canonicalize(&path).ok();
            out.push((path, target, meta.as_ref().and_then(|m| m.modified().ok()), meta.map(|m| m.len()).unwrap_or(0)));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// Copies the built-in redis `latest` files into `dir`.
    fn write_redis(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/redis/latest");
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }

    fn names(catalog: &Catalog) -> Vec<(String, Vec<String>)> {
        catalog.index().into_iter().map(|(m, v)| (m, v.into_iter().collect())).collect()
    }

    /// A ConfigMap mounted at `<root>/<module>/<version>`: each key is a link `KEY -> ..data/KEY`
    /// and `..data` links to a timestamped directory.
    #[test]
    fn a_version_folder_of_symlinked_files_loads_like_regular_files() {
        let root = tempfile::tempdir().unwrap();
        let version = root.path().join("redis/latest");
        let stamp = version.join("..2026_12_01_00_00_00.000000001");
        write_redis(&stamp);
        symlink("..2026_12_01_00_00_00.000000001", version.join("..data")).unwrap();
        for name in ["placeholders.yaml", "redis.yaml", "local.yaml"] {
            symlink(format!("..data/{name}"), version.join(name)).unwrap();
        }
        let catalog = Catalog::directory_only(root.path()).unwrap();
        assert_eq!(names(&catalog), [("redis".to_string(), vec!["latest".to_string()])]);
        let loaded = catalog.load("redis", "latest").unwrap();
        assert!(loaded.declares("name") && loaded.declares("memory"), "placeholders.yaml was read");
        assert!(loaded.has_local_recipe(), "local.yaml was read");
        assert_eq!(loaded.source, version.display().to_string());
    }

    /// A ConfigMap whose `items[].path` nest the store (`redis/latest/redis.yaml`): the module
    /// folder itself is a link into `..data/`, and the hidden entries are not modules.
    #[test]
    fn a_store_whose_folders_are_symlinks_loads_and_hides_the_data_links() {
        let root = tempfile::tempdir().unwrap();
        let stamp = root.path().join("..2026_12_01_00_00_00.000000001");
        write_redis(&stamp.join("redis/latest"));
        symlink("..2026_12_01_00_00_00.000000001", root.path().join("..data")).unwrap();
        symlink("..data/redis", root.path().join("redis")).unwrap();
        let catalog = Catalog::directory_only(root.path()).unwrap();
        assert_eq!(names(&catalog), [("redis".to_string(), vec!["latest".to_string()])]);
        assert!(catalog.load("redis", "latest").unwrap().declares("name"));
        assert!(catalog.load("..data", "latest").is_err());
    }

    /// The kubelet updates a ConfigMap volume by swapping `..data` to a new directory: the next
    /// load sees the new files.
    #[test]
    fn swapping_the_data_link_is_picked_up_on_the_next_load() {
        let root = tempfile::tempdir().unwrap();
        let version = root.path().join("redis/latest");
        let (old, new) = ("..2026_12_01_00_00_00.1", "..2026_12_01_00_00_01.2");
        write_redis(&version.join(old));
        write_redis(&version.join(new));
        let text = std::fs::read_to_string(version.join(new).join("placeholders.yaml")).unwrap();
        let changed = text.replacen("description: ", "description: Changed. ", 1);
        std::fs::write(version.join(new).join("placeholders.yaml"), changed).unwrap();
        symlink(old, version.join("..data")).unwrap();
        for name in ["placeholders.yaml", "redis.yaml"] {
            symlink(format!("..data/{name}"), version.join(name)).unwrap();
        }
        let catalog = Catalog::directory_only(root.path()).unwrap();
        assert!(!catalog.load("redis", "latest").unwrap().description.starts_with("Changed."));
        // The kubelet's atomic swap: a new link renamed over the old one.
        symlink(new, version.join("..data_tmp")).unwrap();
        std::fs::rename(version.join("..data_tmp"), version.join("..data")).unwrap();
        assert!(catalog.load("redis", "latest").unwrap().description.starts_with("Changed."));
    }

    #[test]
    fn dangling_links_and_hidden_files_are_ignored() {
        let root = tempfile::tempdir().unwrap();
        let version = root.path().join("redis/latest");
        write_redis(&version);
        symlink("nowhere.yaml", version.join("gone.yaml")).unwrap();
        std::fs::write(version.join(".hidden.yaml"), "not: a template").unwrap();
        let catalog = Catalog::directory_only(root.path()).unwrap();
        assert!(catalog.load("redis", "latest").unwrap().declares("name"));
    }
}
