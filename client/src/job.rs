//! The files and folders of one `ferry upload` command: what to send and in which order. A
//! folder argument is uploaded as a tree, like `scp -r DIR host:`: its name kept, regular files
//! only, in name order, empty folders kept, symbolic links skipped with a note unless followed.

use std::path::{Path, PathBuf};

use crate::ClientError;

/// Deepest folder tree walked (the server's limit on a folder path is the same).
pub const MAX_DEPTH: usize = ferry_proto::name::MAX_DIR_DEPTH;

/// One thing to do on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Upload `path` into the folders `dir` under the owner's folder.
    File { path: PathBuf, dir: Vec<String> },
    /// Create the folder `dir`, which holds nothing to upload.
    EmptyDir { dir: Vec<String> },
}

/// What one command will do, and what it leaves out.
#[derive(Debug, Default)]
pub struct Job {
    pub items: Vec<Item>,
    /// Symbolic links (and other non-regular files) left out, for a note each.
    pub left_out: Vec<PathBuf>,
}

/// The job for these command-line paths, in their order; a folder's contents in name order.
pub fn plan(paths: &[PathBuf], follow_links: bool) -> Result<Job, ClientError> {
    let mut job = Job::default();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?;
        if meta.is_dir() {
            let name = component(path);
            walk(path, vec![name], follow_links, &mut job)?;
        } else {
            // A file named on the command line is uploaded even through a link: it was asked for.
            job.items.push(Item::File {
                path: path.clone(),
                dir: Vec::new(),
            });
        }
    }
    Ok(job)
}

fn walk(dir: &Path, at: Vec<String>, follow: bool, job: &mut Job) -> Result<(), ClientError> {
    if at.len() > MAX_DEPTH {
        return Err(ClientError::Local(format!(
            "{} is more than {MAX_DEPTH} folders deep",
            dir.display()
        )));
    }
    let unreadable = |e| ClientError::local(format!("cannot read {}", dir.display()), e);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    entries.sort();
    let before = job.items.len();
    for path in entries {
        let link = std::fs::symlink_metadata(&path).map_err(unreadable)?;
        let meta = if link.file_type().is_symlink() && follow {
            std::fs::metadata(&path).ok()
        } else {
            Some(link)
        };
        match meta {
            Some(m) if m.is_dir() => {
                let mut inner = at.clone();
                inner.push(component(&path));
                walk(&path, inner, follow, job)?;
            }
            Some(m) if m.is_file() => job.items.push(Item::File {
                path,
                dir: at.clone(),
            }),
            _ => job.left_out.push(path),
        }
    }
    if job.items.len() == before {
        job.items.push(Item::EmptyDir { dir: at });
    }
    Ok(())
}

fn component(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_in_name_order_with_empty_folders_and_links_left_out() {
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("card");
        std::fs::create_dir_all(top.join("b/deep")).unwrap();
        std::fs::create_dir_all(top.join("empty")).unwrap();
        std::fs::write(top.join("b/2.mov"), b"2").unwrap();
        std::fs::write(top.join("a.mov"), b"1").unwrap();
        std::os::unix::fs::symlink(top.join("a.mov"), top.join("link.mov")).unwrap();
        let job = plan(std::slice::from_ref(&top), false).unwrap();
        let dir = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            job.items,
            vec![
                Item::File {
                    path: top.join("a.mov"),
                    dir: dir(&["card"])
                },
                Item::File {
                    path: top.join("b/2.mov"),
                    dir: dir(&["card", "b"])
                },
                Item::EmptyDir {
                    dir: dir(&["card", "b", "deep"])
                },
                Item::EmptyDir {
                    dir: dir(&["card", "empty"])
                },
            ]
        );
        assert_eq!(job.left_out, vec![top.join("link.mov")]);
        let followed = plan(std::slice::from_ref(&top), true).unwrap();
        assert!(followed.left_out.is_empty());
        assert_eq!(followed.items.len(), 5);
    }
}
