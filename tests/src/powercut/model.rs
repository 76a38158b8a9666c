//! The state of the power-cut file system, without FUSE: inodes that keep what they hold now
//! and what would survive a power cut, and `cut` that rolls everything back to the latter.
//!
//! What is durable when:
//! - a file's bytes and size: as of its last fsync or fdatasync (a write, a truncate or an
//!   fallocate on its own is lost at a cut);
//! - a directory's entries (create, mkdir, link, unlink, rename): in [`Metadata::Strict`] as of
//!   the last fsync of that directory; in [`Metadata::Lenient`] at once.
//!
//! Errors are errno values, for the FUSE glue to pass on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

/// When directory entries become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metadata {
    /// Every create, link, unlink and rename is durable as soon as it returns.
    Lenient,
    /// A change to a directory's entries is durable only after an fsync of that directory.
    Strict,
}

pub const ROOT: u64 = 1;

/// Bytes of a file, sparse, in shared pages: a snapshot (`clone`) costs one pointer per page,
/// and a write copies only the pages it touches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Content {
    len: u64,
    /// Page number → page; an absent page reads as zeros.
    pages: BTreeMap<u64, Arc<Vec<u8>>>,
}

const PAGE: u64 = 16 << 10;

impl Content {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn read(&self, offset: u64, size: u32) -> Vec<u8> {
        let end = self.len.min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let (page, within) = (at / PAGE, (at % PAGE) as usize);
            let take = ((PAGE - at % PAGE).min(end - at)) as usize;
            match self.pages.get(&page) {
                Some(bytes) => out.extend_from_slice(&bytes[within..within + take]),
                None => out.resize(out.len() + take, 0),
            }
            at += take as u64;
        }
        out
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let (page, within) = (at / PAGE, (at % PAGE) as usize);
            let take = ((PAGE as usize) - within).min(rest.len());
            let bytes = self
                .pages
                .entry(page)
                .or_insert_with(|| Arc::new(vec![0; PAGE as usize]));
            Arc::make_mut(bytes)[within..within + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            at += take as u64;
        }
        self.len = self.len.max(offset + data.len() as u64);
    }

    /// Pages whose bytes differ between `self` and `other`, counting a length change as one.
    pub fn pages_differing(&self, other: &Content) -> u64 {
        let pages: std::collections::BTreeSet<u64> = self
            .pages
            .keys()
            .chain(other.pages.keys())
            .copied()
            .collect();
        let differ = pages
            .into_iter()
            .filter(|page| match (self.pages.get(page), other.pages.get(page)) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b) && a != b,
                (Some(p), None) | (None, Some(p)) => p.iter().any(|&b| b != 0),
                (None, None) => false,
            })
            .count() as u64;
        differ + u64::from(self.len != other.len)
    }

    /// Truncates or extends (with zeros).
    pub fn set_len(&mut self, len: u64) {
        if len < self.len {
            let first_gone = len.div_ceil(PAGE);
            self.pages.retain(|&page, _| page < first_gone);
            // The page the new end falls in keeps its head; its tail reads as zeros again.
            let (page, within) = (len / PAGE, (len % PAGE) as usize);
            if let Some(bytes) = self.pages.get_mut(&page).filter(|_| within > 0) {
                Arc::make_mut(bytes)[within..].fill(0);
            }
        }
        self.len = len;
    }
}

#[derive(Debug, Clone)]
pub enum Node {
    File {
        content: Content,
        durable: Content,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub node: Node,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Names pointing at it, counted over current entries.
    pub links: u32,
    /// Bumped by writes and size changes; for `mtime`.
    pub version: u64,
}

/// Counts of what the file system saw, for a test's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub cuts: u64,
    /// Files whose content a cut rolled back (written or resized, never synced).
    pub files_lost: u64,
    /// 16 KiB pages of content a cut threw away.
    pub pages_lost: u64,
    /// Directory entries that a cut undid (created or removed, never synced).
    pub entries_lost: u64,
}

pub struct State {
    mode: Metadata,
    /// Set by `power_off`: from then on every operation fails with EIO and changes nothing,
    /// until `cut` brings the power back.
    off: bool,
    /// Set by `power_off_after_links(n)`: the nth hard link from then cuts the power as it
    /// returns (0: not armed).
    armed: u32,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    pub stats: Stats,
}

pub type Errno = i32;

impl State {
    pub fn new(mode: Metadata) -> Self {
        let root = Inode {
            node: Node::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
            perm: 0o755,
            uid: 0,
            gid: 0,
            links: 2,
            version: 0,
        };
        Self {
            mode,
            off: false,
            armed: 0,
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            stats: Stats::default(),
        }
    }

    /// The instant of the power cut: nothing after it reaches the "disk".
    pub fn power_off(&mut self) {
        self.off = true;
    }

    /// Arms a cut at the next hard link: the instant a publish's link exists, before its
    /// directory is synced.
    pub fn power_off_after_link(&mut self) {
        self.power_off_after_links(1);
    }

    /// Arms a cut at the `n`th hard link from now (a deduplicated publish links twice: its
    /// staging name, then the published name).
    pub fn power_off_after_links(&mut self, n: u32) {
        self.armed = n;
    }

    pub fn is_off(&self) -> bool {
        self.off
    }

    /// Fails every operation once the power is off.
    pub fn powered(&self) -> Result<(), Errno> {
        if self.off {
            Err(libc::EIO)
        } else {
            Ok(())
        }
    }

    /// Whether some file holds bytes written since its last sync.
    pub fn has_unsynced(&self) -> bool {
        self.inodes.values().any(|inode| match &inode.node {
            Node::File { content, durable } => content.pages_differing(durable) > 0,
            Node::Dir { .. } => false,
        })
    }

    pub fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(parent)?.get(name).copied().ok_or(libc::ENOENT)
    }

    /// The current entries of a directory, sorted by name.
    pub fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.inode(dir)?.node {
            Node::Dir { entries, .. } => Ok(entries),
            Node::File { .. } => Err(libc::ENOTDIR),
        }
    }

    /// Creates a file (`dir == false`) or directory named `name` in `parent`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        dir: bool,
        perm: u16,
        owner: (u32, u32),
    ) -> Result<u64, Errno> {
        self.powered()?;
        if self.lookup(parent, name).is_ok() {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = if dir {
            Node::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            }
        } else {
            Node::File {
                content: Content::default(),
                durable: Content::default(),
            }
        };
        let inode = Inode {
            node,
            perm,
            uid: owner.0,
            gid: owner.1,
            links: 0,
            version: 0,
        };
        self.inodes.insert(ino, inode);
        self.add_entry(parent, name, ino)?;
        Ok(ino)
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.powered()?;
        if matches!(self.inode(ino)?.node, Node::Dir { .. }) {
            return Err(libc::EPERM);
        }
        if self.lookup(parent, name).is_ok() {
            return Err(libc::EEXIST);
        }
        self.add_entry(parent, name, ino)?;
        if self.armed > 0 {
            self.armed -= 1;
            self.off = self.armed == 0;
        }
        Ok(())
    }

    /// Removes a name: a file's (`dir == false`) or an empty directory's.
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        self.powered()?;
        let ino = self.lookup(parent, name)?;
        match (&self.inode(ino)?.node, dir) {
            (Node::Dir { entries, .. }, true) if !entries.is_empty() => {
                return Err(libc::ENOTEMPTY)
            }
            (Node::Dir { .. }, false) => return Err(libc::EISDIR),
            (Node::File { .. }, true) => return Err(libc::ENOTDIR),
            _ => {}
        }
        self.remove_entry(parent, name)
    }

    /// Moves `name` to `new_name`, replacing a file there unless `no_replace`.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        self.powered()?;
        let ino = self.lookup(parent, name)?;
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            let target_is_dir = matches!(self.inode(target)?.node, Node::Dir { .. });
            self.remove(new_parent, new_name, target_is_dir)?;
        }
        self.remove_entry(parent, name)?;
        self.add_entry(new_parent, new_name, ino)
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        match &self.inode(ino)?.node {
            Node::File { content, .. } => Ok(content.read(offset, size)),
            Node::Dir { .. } => Err(libc::EISDIR),
        }
    }

    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.powered()?;
        self.stats.writes += 1;
        self.content_mut(ino)?.write(offset, data);
        Ok(())
    }

    pub fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        self.powered()?;
        self.content_mut(ino)?.set_len(len);
        Ok(())
    }

    /// fallocate mode 0: the file is at least `end` bytes long afterwards.
    pub fn allocate(&mut self, ino: u64, end: u64) -> Result<(), Errno> {
        self.powered()?;
        let content = self.content_mut(ino)?;
        if content.len() < end {
            content.set_len(end);
        }
        Ok(())
    }

    pub fn set_perm(&mut self, ino: u64, perm: u16) -> Result<(), Errno> {
        self.powered()?;
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?.perm = perm;
        Ok(())
    }

    /// fsync, fdatasync, or fsync of a directory: what the inode holds now becomes durable.
    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        self.powered()?;
        match &mut self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?.node {
            Node::File { content, durable } => {
                self.stats.file_syncs += 1;
                *durable = content.clone();
            }
            Node::Dir { entries, durable } => {
                self.stats.dir_syncs += 1;
                *durable = entries.clone();
            }
        }
        Ok(())
    }

    /// The power goes: every inode goes back to its durable state, and what is no longer
    /// reachable from the root is gone.
    pub fn cut(&mut self) {
        self.stats.cuts += 1;
        self.off = false;
        self.armed = 0;
        for inode in self.inodes.values_mut() {
            match &mut inode.node {
                Node::File { content, durable } => {
                    let pages = content.pages_differing(durable);
                    if pages > 0 {
                        self.stats.files_lost += 1;
                        self.stats.pages_lost += pages;
                    }
                    *content = durable.clone();
                }
                Node::Dir { entries, durable } => {
                    let changed = entries
                        .iter()
                        .filter(|(name, ino)| durable.get(*name) != Some(ino))
                        .count()
                        + durable.keys().filter(|n| !entries.contains_key(*n)).count();
                    self.stats.entries_lost += changed as u64;
                    *entries = durable.clone();
                }
            }
        }
        let mut reachable = HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(dir) = todo.pop() {
            if let Some(Node::Dir { entries, .. }) = self.inodes.get(&dir).map(|i| &i.node) {
                for &ino in entries.values() {
                    if reachable.insert(ino) {
                        todo.push(ino);
                    }
                }
            }
        }
        self.inodes.retain(|ino, _| reachable.contains(ino));
        let mut links: HashMap<u64, u32> = HashMap::new();
        for inode in self.inodes.values() {
            if let Node::Dir { entries, .. } = &inode.node {
                for &ino in entries.values() {
                    *links.entry(ino).or_default() += 1;
                }
            }
        }
        for (ino, inode) in &mut self.inodes {
            inode.links = match inode.node {
                Node::Dir { .. } => 2,
                Node::File { .. } => links.get(ino).copied().unwrap_or(0),
            };
        }
    }

    fn content_mut(&mut self, ino: u64) -> Result<&mut Content, Errno> {
        let inode = self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        inode.version += 1;
        match &mut inode.node {
            Node::File { content, .. } => Ok(content),
            Node::Dir { .. } => Err(libc::EISDIR),
        }
    }

    fn add_entry(&mut self, parent: u64, name: &OsStr, ino: u64) -> Result<(), Errno> {
        self.edit_dir(parent, |entries| {
            entries.insert(name.to_owned(), ino);
        })?;
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.links += if matches!(inode.node, Node::Dir { .. }) {
                2
            } else {
                1
            };
        }
        Ok(())
    }

    fn remove_entry(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let mut removed = None;
        self.edit_dir(parent, |entries| removed = entries.remove(name))?;
        let inode = removed
            .and_then(|ino| self.inodes.get_mut(&ino))
            .ok_or(libc::ENOENT)?;
        inode.links = inode.links.saturating_sub(1);
        Ok(())
    }

    /// Changes a directory's current entries; in lenient mode the change is durable at once.
    fn edit_dir(
        &mut self,
        dir: u64,
        change: impl FnOnce(&mut BTreeMap<OsString, u64>),
    ) -> Result<(), Errno> {
        let lenient = self.mode == Metadata::Lenient;
        match &mut self.inodes.get_mut(&dir).ok_or(libc::ENOENT)?.node {
            Node::Dir { entries, durable } => {
                change(entries);
                if lenient {
                    *durable = entries.clone();
                }
                Ok(())
            }
            Node::File { .. } => Err(libc::ENOTDIR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: (u32, u32) = (0, 0);

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn unsynced_writes_are_lost_and_synced_ones_kept() {
        let mut fs = State::new(Metadata::Lenient);
        let f = fs.create(ROOT, name("f"), false, 0o644, ME).unwrap();
        fs.write(f, 0, b"durable").unwrap();
        fs.sync(f).unwrap();
        fs.write(f, 0, b"DURABLE and more").unwrap();
        fs.cut();
        assert_eq!(fs.read(f, 0, 100).unwrap(), b"durable");
    }

    #[test]
    fn size_changes_need_a_sync_too() {
        let mut fs = State::new(Metadata::Lenient);
        let f = fs.create(ROOT, name("f"), false, 0o644, ME).unwrap();
        fs.allocate(f, 1 << 20).unwrap();
        fs.cut();
        assert_eq!(fs.read(f, 0, 10).unwrap().len(), 0);
        fs.allocate(f, 1 << 20).unwrap();
        fs.write(f, (1 << 20) - 3, b"end").unwrap();
        fs.sync(f).unwrap();
        fs.set_len(f, 10).unwrap();
        fs.cut();
        assert_eq!(fs.read(f, (1 << 20) - 3, 10).unwrap(), b"end");
        assert_eq!(fs.read(f, 0, 4).unwrap(), vec![0; 4], "holes read as zeros");
    }

    #[test]
    fn strict_mode_loses_entries_until_the_directory_is_synced() {
        let mut fs = State::new(Metadata::Strict);
        let d = fs.create(ROOT, name("d"), true, 0o755, ME).unwrap();
        fs.sync(ROOT).unwrap();
        let f = fs.create(d, name("f"), false, 0o644, ME).unwrap();
        fs.write(f, 0, b"x").unwrap();
        fs.sync(f).unwrap();
        fs.cut();
        assert_eq!(
            fs.lookup(d, name("f")),
            Err(libc::ENOENT),
            "file synced, dir not"
        );

        let f = fs.create(d, name("f"), false, 0o644, ME).unwrap();
        fs.sync(d).unwrap();
        fs.rename(d, name("f"), ROOT, name("g"), false).unwrap();
        fs.sync(ROOT).unwrap();
        fs.cut();
        assert_eq!(fs.lookup(ROOT, name("g")), Ok(f), "the new name was synced");
        assert_eq!(
            fs.lookup(d, name("f")),
            Ok(f),
            "the removal of the old was not"
        );
        assert_eq!(fs.inode(f).unwrap().links, 2);
    }

    #[test]
    fn lenient_mode_keeps_entries_but_not_bytes() {
        let mut fs = State::new(Metadata::Lenient);
        let f = fs.create(ROOT, name("f"), false, 0o644, ME).unwrap();
        fs.write(f, 0, b"lost").unwrap();
        fs.link(f, ROOT, name("g")).unwrap();
        fs.remove(ROOT, name("f"), false).unwrap();
        fs.cut();
        assert_eq!(fs.lookup(ROOT, name("g")), Ok(f));
        assert_eq!(fs.lookup(ROOT, name("f")), Err(libc::ENOENT));
        assert!(fs.read(f, 0, 10).unwrap().is_empty());
        assert_eq!(fs.stats.cuts, 1);
        assert_eq!(
            (fs.stats.files_lost, fs.stats.pages_lost),
            (1, 2),
            "a page and the length"
        );
    }

    #[test]
    fn nothing_reaches_the_disk_after_the_power_is_off() {
        let mut fs = State::new(Metadata::Lenient);
        let f = fs.create(ROOT, name("f"), false, 0o644, ME).unwrap();
        fs.write(f, 0, b"before").unwrap();
        assert!(fs.has_unsynced());
        fs.power_off();
        assert_eq!(fs.sync(f), Err(libc::EIO));
        assert_eq!(fs.write(f, 0, b"after!"), Err(libc::EIO));
        assert_eq!(fs.create(ROOT, name("g"), false, 0o644, ME), Err(libc::EIO));
        fs.cut();
        assert!(
            fs.read(f, 0, 10).unwrap().is_empty(),
            "the sync after the cut did not count"
        );
        fs.write(f, 0, b"on again").unwrap();
    }

    #[test]
    fn unreachable_inodes_are_gone_after_a_cut() {
        let mut fs = State::new(Metadata::Strict);
        let f = fs.create(ROOT, name("f"), false, 0o644, ME).unwrap();
        fs.cut();
        assert_eq!(fs.inode(f).err(), Some(libc::ENOENT));
        assert_eq!(fs.stats.entries_lost, 1);
    }

    #[test]
    fn rename_and_remove_follow_posix_rules() {
        let mut fs = State::new(Metadata::Lenient);
        let d = fs.create(ROOT, name("d"), true, 0o755, ME).unwrap();
        fs.create(d, name("f"), false, 0o644, ME).unwrap();
        let g = fs.create(ROOT, name("g"), false, 0o644, ME).unwrap();
        assert_eq!(fs.remove(ROOT, name("d"), true), Err(libc::ENOTEMPTY));
        assert_eq!(fs.remove(ROOT, name("d"), false), Err(libc::EISDIR));
        assert_eq!(
            fs.rename(ROOT, name("g"), d, name("f"), true),
            Err(libc::EEXIST)
        );
        fs.rename(ROOT, name("g"), d, name("f"), false).unwrap();
        assert_eq!(fs.lookup(d, name("f")), Ok(g));
        assert_eq!(fs.create(d, name("f"), false, 0o644, ME), Err(libc::EEXIST));
    }
}
