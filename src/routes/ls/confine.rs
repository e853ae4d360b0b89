//! The security policy of `/ls`: what `directory` may name, decided with file descriptors.
//!
//! # Policy
//!
//! - The root is opened once at start ([`Root::open`], an `O_PATH` directory fd). Every request
//!   is resolved from that fd, never from the root's path, so renaming or replacing the root's
//!   path later changes nothing: the server keeps listing the directory it opened.
//! - `directory` is taken relative to the root: leading slashes are dropped (`/x` is `<root>/x`),
//!   empty means the root. At most [`MAX_DIRECTORY_LEN`] bytes, no NUL byte (400).
//! - It is resolved by the kernel in one `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//!   call. The kernel refuses (`EXDEV`) any step that would leave the root: a `..` above it, an
//!   absolute symlink (even one that points back inside: symlinks in the root must be relative
//!   to count as inside), a relative symlink that climbs out. That answer is a 403 and comes
//!   from the step that leaves, before anything beyond it is looked up, so whether a path
//!   outside the root exists never changes the answer: no 403/404 oracle. `/proc` magic links
//!   are refused (`ELOOP`, 400).
//! - The result is an fd, and `ls` runs on what that fd names, not on a path (see
//!   [`Target`]): a symlink swapped in after the check cannot redirect the listing, because no
//!   path is resolved a second time beyond the fd. The only name `ls` itself resolves is one
//!   last component inside an fd-held directory, listed with `-d` and never followed
//!   (`ls -l` does not follow symlinks named on its command line).
//! - A directory must be readable and searchable by the server (403 otherwise, before any
//!   response is sent); a non-directory needs only the lookup that found it.
//!
//! # Failure modes
//!
//! - `EAGAIN` (the kernel saw a rename or mount during a `..` step and cannot vouch for the
//!   walk) is retried a few times, then reported as a 500.
//! - A kernel without `openat2` (before Linux 5.6) fails at start-up, in [`Root::open`], not per
//!   request.
//! - What is decided here can change before `ls` runs (a file deleted, a mode changed): `ls`
//!   then fails on the fd's directory and the body is cut off, but it can never reach outside.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Access, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::LsError;

/// Longest accepted `directory`, in bytes: Linux's PATH_MAX (4096) counts the terminating NUL,
/// so a path of 4096 bytes is ENAMETOOLONG (found by schemathesis: it was a 400
/// `directory_unresolvable` where the document promised at most 4096 bytes).
const MAX_DIRECTORY_LEN: usize = 4095;
/// How often a walk that raced with a rename (`EAGAIN`) is retried.
const RETRIES: usize = 8;

/// The listing root, held open for the life of the server.
#[derive(Debug)]
pub(super) struct Root {
    /// `O_PATH | O_DIRECTORY` fd of the root; every request is resolved from it.
    fd: OwnedFd,
    /// Device and inode of the root, to recognise a request that names the root itself.
    id: (u64, u64),
}

/// What a request names, held by fd; `ls` is pointed at it by `fchdir`, not by path.
#[derive(Debug)]
pub(super) enum Target {
    /// A directory, listed as `ls -lash -- .` from inside it.
    Directory {
        /// `O_PATH` fd of the directory.
        fd: OwnedFd,
        /// It is the root itself (also when asked as `sub/..`), whose `..` is outside.
        is_root: bool,
    },
    /// Anything else, listed as `ls -lashd -- name` from inside its parent directory.
    Entry {
        /// `O_PATH` fd of the directory that holds `name`.
        parent: OwnedFd,
        /// One path component, never `.` or `..`.
        name: OsString,
    },
}

impl Root {
    /// Opens `path` (already canonical) as the root and checks that this kernel has
    /// `openat2`, so that a missing one is a start-up error and not a 500 on every request.
    pub(super) fn open(path: &Path) -> io::Result<Root> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty())?;
        open_beneath(fd.as_fd(), b".", OFlags::DIRECTORY)?;
        let id = file_id(&fd)?;
        Ok(Root { fd, id })
    }

    /// Resolves `directory` inside the root (see the module doc). Blocking: it asks the file
    /// system.
    pub(super) fn resolve(&self, directory: &OsStr) -> Result<Target, LsError> {
        let bytes = directory.as_bytes();
        if bytes.len() > MAX_DIRECTORY_LEN {
            return Err(LsError::TooLong {
                len: bytes.len(),
                max: MAX_DIRECTORY_LEN,
            });
        }
        if bytes.contains(&0) {
            return Err(LsError::NulByte);
        }
        let refuse = |errno| classify(directory, errno);
        let relative = &bytes[bytes.iter().take_while(|&&b| b == b'/').count()..];
        let fd = open_beneath(self.fd.as_fd(), relative, OFlags::empty()).map_err(refuse)?;
        let stat = rustix::fs::fstat(&fd).map_err(refuse)?;
        if FileType::from_raw_mode(stat.st_mode).is_dir() {
            // `ls -l` of a directory needs read (the names) and search (each entry's details)
            // permission; without them it would fail after the 200 head.
            let listable = Access::READ_OK | Access::EXEC_OK;
            rustix::fs::accessat(&fd, ".", listable, AtFlags::EACCESS).map_err(refuse)?;
            let is_root = file_id(&fd).map_err(refuse)? == self.id;
            return Ok(Target::Directory { fd, is_root });
        }
        // Not a directory, so the path has no trailing slash (the kernel said ENOTDIR) and its
        // last component is a name. Its parent is opened the same confined way.
        let split = relative.iter().rposition(|&b| b == b'/');
        let (parent, name) = match split {
            Some(i) => (&relative[..i], &relative[i + 1..]),
            None => (&b""[..], relative),
        };
        let parent = open_beneath(self.fd.as_fd(), parent, OFlags::DIRECTORY).map_err(refuse)?;
        Ok(Target::Entry {
            parent,
            name: OsStr::from_bytes(name).to_owned(),
        })
    }
}

impl Root {
    /// Where `dir` (a directory resolved from the root) is now, relative to the root: the
    /// kernel's names for both (`/proc/self/fd`), the root's stripped from the directory's;
    /// empty for the root itself. Only to show symlink targets relative to their directory
    /// (see `symlinks`): nothing is resolved by this path.
    pub(super) fn position(&self, dir: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
        let root = fd_path(self.fd.as_fd())?;
        let dir = fd_path(dir)?;
        if dir == root {
            return Ok(Vec::new());
        }
        let mut prefix = root;
        if !prefix.ends_with(b"/") {
            prefix.push(b'/');
        }
        match dir.strip_prefix(prefix.as_slice()) {
            Some(position) => Ok(position.to_vec()),
            None => Err(io::Error::other(
                "the directory is no longer beneath the listing root",
            )),
        }
    }
}

/// The path the kernel has for what `fd` names.
fn fd_path(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStringExt;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(link.into_os_string().into_vec())
}

/// `openat2` of `path` under `dir` with `O_PATH` and the confinement flags; empty means `dir`.
fn open_beneath(dir: BorrowedFd<'_>, path: &[u8], extra: OFlags) -> Result<OwnedFd, Errno> {
    let path = match path.is_empty() {
        true => &b"."[..],
        false => path,
    };
    let flags = OFlags::PATH | OFlags::CLOEXEC | extra;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let mut tries = 0;
    loop {
        tries += 1;
        match rustix::fs::openat2(dir, path, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < RETRIES => continue,
            result => return result,
        }
    }
}

fn file_id(fd: &OwnedFd) -> Result<(u64, u64), Errno> {
    let stat = rustix::fs::fstat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// The answer to a failed step. `EXDEV` is how the kernel says "this leaves the root".
fn classify(directory: &OsStr, errno: Errno) -> LsError {
    let shown = directory.to_string_lossy().into_owned();
    match errno {
        Errno::XDEV => LsError::OutsideRoot(shown),
        Errno::NOENT | Errno::NOTDIR => LsError::NotFound(shown),
        Errno::ACCESS | Errno::PERM => LsError::PermissionDenied(shown),
        Errno::LOOP | Errno::NAMETOOLONG => LsError::Unresolvable {
            shown,
            source: errno.into(),
        },
        _ => LsError::Io {
            shown,
            source: errno.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root with `sub/f`, `up -> ..` and `abs -> <root>/sub` (absolute, pointing inside).
    fn root() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("up")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("sub"), dir.path().join("abs")).unwrap();
        let root = Root::open(&dir.path().canonicalize().unwrap()).unwrap();
        (dir, root)
    }

    fn outcome(root: &Root, directory: &str) -> String {
        match root.resolve(directory.as_ref()) {
            Ok(Target::Directory { is_root, .. }) => format!("dir root={is_root}"),
            Ok(Target::Entry { name, .. }) => format!("entry {}", name.to_string_lossy()),
            Err(e) => format!("{e:?}")
                .split([' ', '('])
                .next()
                .unwrap()
                .to_owned(),
        }
    }

    #[test]
    fn climbs_are_refused_by_the_kernel() {
        let (_dir, root) = root();
        for d in [
            "..",
            "../",
            "/..",
            "sub/../..",
            "./../x",
            "//../etc",
            "up",
            "up/x",
            "abs",
        ] {
            assert_eq!(outcome(&root, d), "OutsideRoot", "{d}");
        }
        assert_eq!(outcome(&root, "a\0b"), "NulByte");
        let long = "a".repeat(MAX_DIRECTORY_LEN + 1);
        assert_eq!(outcome(&root, &long), "TooLong");
    }

    #[test]
    fn a_directory_knows_its_position_under_the_root() {
        let (dir, root) = root();
        std::fs::create_dir(dir.path().join("sub/deeper")).unwrap();
        let position = |d: &str| match root.resolve(d.as_ref()).unwrap() {
            Target::Directory { fd, .. } => root.position(fd.as_fd()).unwrap(),
            Target::Entry { parent, .. } => root.position(parent.as_fd()).unwrap(),
        };
        assert_eq!(position(""), b"");
        assert_eq!(position("sub"), b"sub");
        assert_eq!(position("sub/deeper/.."), b"sub");
        assert_eq!(position("sub/deeper"), b"sub/deeper");
        assert_eq!(position("sub/f"), b"sub");
    }

    #[test]
    fn resolves_inside_the_root() {
        let (_dir, root) = root();
        for d in ["", "/", ".", "sub/..", "//sub/../"] {
            assert_eq!(outcome(&root, d), "dir root=true", "{d}");
        }
        assert_eq!(outcome(&root, "/sub/"), "dir root=false");
        assert_eq!(outcome(&root, "sub/f"), "entry f");
        assert_eq!(outcome(&root, "sub/f/"), "NotFound");
        assert_eq!(outcome(&root, "nope"), "NotFound");
    }
}
