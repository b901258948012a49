//! A read-only file view over an uncompressed tar (indexed in place) or an extracted folder, for NeMo checkpoints.
//!
//! Tar members are indexed once (name -> data offset, size) with the `tar` crate, which handles GNU long
//! names, PAX records and the ustar prefix; data is then read with positioned reads from the one open file,
//! so nothing is extracted and the archive is never read whole. Names are normalised: a leading `./` is
//! stripped, the root entry and anything under `.git/` are skipped, and absolute or `..` names are refused.
use super::check_lfs;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Largest file `Fs::read` returns whole (configs, `.zarray`, tokenizers); bigger ones are chunks to read in place.
pub const MAX_SMALL_FILE: u64 = 64 << 20;
/// Deepest folder nesting followed in directory mode.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone)]
struct Member {
    size: u64,
    /// Tar: absolute data offset in the archive. Folder: unused.
    offset: u64,
    /// Folder: the file on disk. Tar: unused.
    real: PathBuf,
}

#[derive(Debug)]
enum Kind {
    Tar(File),
    Dir,
}

/// Files of a checkpoint container, by normalised relative name (`a/b/c`).
#[derive(Debug)]
pub struct Fs {
    path: PathBuf,
    kind: Kind,
    files: BTreeMap<String, Member>,
    dirs: BTreeSet<String>,
}

/// Normalises a member name: strips `./` and empty components; `None` for the root itself.
/// Absolute names and `..` components are refused.
pub fn normalize(archive: &Path, raw: &str) -> Result<Option<String>> {
    let unsafe_path = || Error::UnsafePath { archive: archive.into(), entry: raw.to_string() };
    if raw.starts_with('/') {
        return Err(unsafe_path());
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(unsafe_path()),
            c => parts.push(c),
        }
    }
    Ok(if parts.is_empty() { None } else { Some(parts.join("/")) })
}

fn under_git(name: &str) -> bool {
    name.split('/').any(|c| c == ".git")
}

/// Every parent folder of `name` (`a`, `a/b` for `a/b/c`).
fn parents(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('/').map(move |(i, _)| &name[..i])
}

impl Fs {
    /// Opens a `.nemo` tar file or an extracted checkpoint folder.
    pub fn open(path: &Path) -> Result<Fs> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() { Self::open_dir(path) } else { Self::open_tar(path, meta.len()) }
    }

    fn open_tar(path: &Path, len: u64) -> Result<Fs> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut head = vec![0u8; len.min(512) as usize];
        file.read_exact_at(&mut head, 0).map_err(|e| Error::io(path, e))?;
        check_lfs(path, &head)?;
        if head.starts_with(&[0x1f, 0x8b]) {
            return Err(Error::UnsupportedFormat {
                path: path.into(),
                format: "gzip-compressed .nemo (tar.gz, written by NeMo < 1.7)".into(),
                hint: "extract it and pass the folder, or repack it as an uncompressed tar \
                       (`tar -cf model.nemo -C extracted .`)"
                    .into(),
            });
        }
        if len < 512 {
            return Err(Error::ckpt(path, format!("not a tar archive ({len} bytes)")));
        }
        let bad = |e: std::io::Error| Error::ckpt(path, format!("not a valid tar archive: {e}"));
        let mut files = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        // Every regular member, `.git/` included, as hard-link targets.
        let mut all: BTreeMap<String, Member> = BTreeMap::new();
        let mut archive = tar::Archive::new(&file);
        // End of the last member's data: an end-of-archive zero block must follow it.
        let mut last_end = 0u64;
        // Hard links re-expose an earlier member's bytes under a new name without storing them again, so a small
        // archive could name one large member a million times. The bytes reachable through links may add up to
        // at most the archive's own length (a GNU tar of a repository links each file to its `.git/` twin at
        // most once, which stays within this), so a reader never materialises more than twice what is on disk.
        let mut linked = 0u64;
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            last_end = entry.raw_file_position().saturating_add(entry.size());
            let raw_bytes = entry.path_bytes();
            let raw = std::str::from_utf8(&raw_bytes)
                .map_err(|_| {
                    Error::ckpt(path, format!("tar entry name is not UTF-8: {:?}", String::from_utf8_lossy(&raw_bytes)))
                })?
                .to_string();
            let Some(name) = normalize(path, &raw)? else { continue };
            let ty = entry.header().entry_type();
            if ty.is_dir() {
                if !under_git(&name) {
                    dirs.insert(name);
                }
                continue;
            }
            if ty == tar::EntryType::GNUSparse {
                return Err(Error::ckpt(
                    path,
                    format!("tar entry `{name}` is a GNU sparse file, which is not supported"),
                ));
            }
            let member = if ty.is_hard_link() {
                // GNU tar stores a second path of the same inode as a link to the first (which may be under .git/).
                let target =
                    entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                let target = normalize(path, &target)?.unwrap_or_default();
                match all.get(&target) {
                    Some(m) => {
                        linked = linked.saturating_add(m.size);
                        if linked > len {
                            return Err(Error::ckpt(
                                path,
                                format!(
                                    "tar hard links (the last `{name}` -> `{target}`) re-expose {linked} bytes, \
                                     more than the archive's {len}: refusing"
                                ),
                            ));
                        }
                        Member::clone(m)
                    }
                    None => {
                        return Err(Error::ckpt(
                            path,
                            format!("tar entry `{name}` is a hard link to `{target}`, which is not an earlier member"),
                        ));
                    }
                }
            } else if ty.is_file() || ty == tar::EntryType::Continuous {
                let (offset, size) = (entry.raw_file_position(), entry.size());
                let end = offset
                    .checked_add(size)
                    .ok_or_else(|| Error::ckpt(path, format!("tar entry `{name}` size overflows")))?;
                if end > len {
                    return Err(Error::Truncated { path: path.into(), name, expected: end, got: len });
                }
                Member { size, offset, real: PathBuf::new() }
            } else {
                log::debug!("{}: ignoring tar entry `{name}` of type {ty:?}", path.display());
                continue;
            };
            all.insert(name.clone(), member.clone());
            if !under_git(&name) {
                for p in parents(&name) {
                    dirs.insert(p.to_string());
                }
                files.insert(name, member);
            }
        }
        let tail = last_end.div_ceil(512).saturating_mul(512);
        let mut zeros = [0u8; 512];
        if tail.saturating_add(512) > len
            || file.read_exact_at(&mut zeros, tail).is_err()
            || zeros.iter().any(|&b| b != 0)
        {
            return Err(Error::ckpt(path, "tar archive is truncated: no end-of-archive block after the last member"));
        }
        Ok(Fs { path: path.into(), kind: Kind::Tar(file), files, dirs })
    }

    fn open_dir(path: &Path) -> Result<Fs> {
        let root = path.canonicalize().map_err(|e| Error::io(path, e))?;
        let mut fs = Fs { path: path.into(), kind: Kind::Dir, files: BTreeMap::new(), dirs: BTreeSet::new() };
        fs.walk(&root, &root, "", 0)?;
        Ok(fs)
    }

    /// Indexes folder `dir` (relative name `rel`), refusing symlinks that leave `root`.
    fn walk(&mut self, root: &Path, dir: &Path, rel: &str, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::ckpt(dir, format!("folders nested deeper than {MAX_DEPTH} levels")));
        }
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(dir, e))?;
            let Some(base) = ent.file_name().to_str().map(str::to_string) else {
                log::debug!("{}: skipping non-UTF-8 name {:?}", dir.display(), ent.file_name());
                continue;
            };
            if base == ".git" {
                continue;
            }
            let name = if rel.is_empty() { base } else { format!("{rel}/{base}") };
            let full = ent.path();
            let lmeta = std::fs::symlink_metadata(&full).map_err(|e| Error::io(&full, e))?;
            let real = if lmeta.file_type().is_symlink() {
                let target = full.canonicalize().map_err(|e| Error::io(&full, e))?;
                if !target.starts_with(root) {
                    return Err(Error::UnsafePath { archive: self.path.clone(), entry: name });
                }
                target
            } else {
                full
            };
            let meta = std::fs::metadata(&real).map_err(|e| Error::io(&real, e))?;
            if meta.is_dir() {
                self.walk(root, &real, &name, depth + 1)?;
                self.dirs.insert(name);
            } else if meta.is_file() {
                self.files.insert(name, Member { size: meta.len(), offset: 0, real });
            }
        }
        Ok(())
    }

    /// The container path the user gave.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_tar(&self) -> bool {
        matches!(self.kind, Kind::Tar(_))
    }

    /// `tar` or `folder`.
    pub fn container(&self) -> &'static str {
        if self.is_tar() { "tar" } else { "folder" }
    }

    /// All file names (sorted), folders excluded.
    pub fn list(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Whether `name` is a folder (an explicit tar directory entry or the parent of a member).
    pub fn is_dir(&self, name: &str) -> bool {
        self.dirs.contains(name)
    }

    /// Size of file `name`, if it exists.
    pub fn size(&self, name: &str) -> Option<u64> {
        self.files.get(name).map(|m| m.size)
    }

    /// A path naming `name` in messages: the real file in a folder, `archive/name` in a tar.
    pub fn display(&self, name: &str) -> PathBuf {
        match self.files.get(name) {
            Some(m) if !self.is_tar() => m.real.clone(),
            _ => self.path.join(name),
        }
    }

    fn member(&self, name: &str) -> Result<&Member> {
        if name.starts_with('/') || name.split('/').any(|c| c == "..") {
            return Err(Error::UnsafePath { archive: self.path.clone(), entry: name.into() });
        }
        self.files.get(name).ok_or_else(|| {
            Error::io(
                self.path.join(name),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file in the checkpoint"),
            )
        })
    }

    /// Reads a small file whole (at most `MAX_SMALL_FILE`), refusing Git LFS pointers.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let m = self.member(name)?;
        if m.size > MAX_SMALL_FILE {
            return Err(Error::ckpt(self.display(name), format!("{} bytes is too large for a metadata file", m.size)));
        }
        let mut buf = vec![0u8; m.size as usize];
        self.read_at(name, 0, &mut buf)?;
        check_lfs(&self.display(name), &buf)?;
        Ok(buf)
    }

    /// Fills `buf` from `offset` within file `name`; the range must lie inside the file.
    pub fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let m = self.member(name)?;
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > m.size) {
            return Err(Error::Truncated {
                path: self.display(name),
                name: name.into(),
                expected: end.unwrap_or(u64::MAX),
                got: m.size,
            });
        }
        match &self.kind {
            Kind::Tar(f) => f.read_exact_at(buf, m.offset + offset).map_err(|e| Error::io(&self.path, e)),
            Kind::Dir => {
                let f = File::open(&m.real).map_err(|e| Error::io(&m.real, e))?;
                f.read_exact_at(buf, offset).map_err(|e| Error::io(&m.real, e))
            }
        }
    }

    /// Opens file `name` for many positioned reads (a folder file, or the archive itself at `base`).
    pub fn handle(&self, name: &str) -> Result<Handle<'_>> {
        let m = self.member(name)?;
        Ok(match &self.kind {
            Kind::Tar(f) => {
                Handle { file: HandleFile::Borrowed(f), base: m.offset, size: m.size, path: self.path.join(name) }
            }
            Kind::Dir => {
                let f = File::open(&m.real).map_err(|e| Error::io(&m.real, e))?;
                Handle { file: HandleFile::Owned(f), base: 0, size: m.size, path: m.real.clone() }
            }
        })
    }
}

enum HandleFile<'a> {
    Borrowed(&'a File),
    Owned(File),
}

/// One open member for repeated positioned reads.
pub struct Handle<'a> {
    file: HandleFile<'a>,
    base: u64,
    size: u64,
    path: PathBuf,
}

impl Handle<'_> {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` from `offset` within the member.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(Error::Truncated {
                path: self.path.clone(),
                name: "chunk".into(),
                expected: end.unwrap_or(u64::MAX),
                got: self.size,
            });
        }
        let f = match &self.file {
            HandleFile::Borrowed(f) => *f,
            HandleFile::Owned(f) => f,
        };
        f.read_exact_at(buf, self.base + offset).map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// A tar with one `data` member of `size` bytes and `links` hard links to it.
    fn tar_with_links(path: &Path, size: usize, links: usize) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        let mut h = header("data", tar::EntryType::Regular, size as u64);
        h.set_cksum();
        b.append(&h, vec![7u8; size].as_slice()).unwrap();
        for i in 0..links {
            let mut h = header(&format!("link{i}"), tar::EntryType::Link, 0);
            h.set_link_name("data").unwrap();
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        }
        b.finish().unwrap();
    }

    #[test]
    fn hard_links_cannot_expand_a_small_archive() {
        let dir = std::env::temp_dir().join(format!("tarfs_links_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // One link: the linked bytes (64 KiB) are within the archive's length; both names read the same bytes.
        let ok = dir.join("one_link.tar");
        tar_with_links(&ok, 64 << 10, 1);
        let fs = Fs::open(&ok).unwrap();
        assert_eq!(fs.size("link0"), Some(64 << 10));
        let mut buf = [0u8; 4];
        fs.read_at("link0", 100, &mut buf).unwrap();
        assert_eq!(buf, [7; 4]);
        // 1000 links to a 64 KiB member (a ~600 KiB archive naming 64 MB): refused, naming the cap.
        let bomb = dir.join("bomb.tar");
        tar_with_links(&bomb, 64 << 10, 1000);
        let len = std::fs::metadata(&bomb).unwrap().len();
        assert!(len < 1 << 20);
        let err = Fs::open(&bomb).unwrap_err().to_string();
        assert!(err.contains("hard links") && err.contains(&len.to_string()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
