//! fail2ban 1.1's `ignoreip` host names and files in the registry: what
//! each file held when last read well, and the names they add to those
//! the daemon looks up.

use std::path::{Path, PathBuf};

use super::{JailSet, JailSpec};
use crate::jail::ignore_file::IgnoreFile;

impl JailSet {
    /// The `ignoreip` host names of a jail: its own and its files'.
    pub(super) fn ignore_names_of<'a>(
        &'a self,
        spec: &'a JailSpec,
    ) -> impl Iterator<Item = &'a String> {
        spec.ignore_names.iter().chain(
            spec.ignore_files
                .iter()
                .filter_map(|f| self.files.get(f))
                .flat_map(|f| f.names.iter()),
        )
    }

    /// Every `ignoreip` file a running jail names.
    pub fn ignore_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .specs
            .values()
            .flat_map(|s| s.ignore_files.iter().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Hands in what the `ignoreip` file `path` holds now, or why it could
    /// not be read: a good read replaces the file's entries in every jail
    /// that names it; a failed one keeps the last good entries (never
    /// nothing, never everything) and says so. Returns whether what the
    /// jails leave alone changed.
    pub fn set_ignore_file(&mut self, path: &Path, read: Result<IgnoreFile, String>) -> bool {
        match read {
            Ok(f) => {
                if self.files.get(path) == Some(&f) {
                    return false;
                }
                tracing::info!(
                    "ignoreip file {}: {} address(es) or network(s), {} host name(s)",
                    path.display(),
                    f.nets.len(),
                    f.names.len()
                );
                self.files.insert(path.to_path_buf(), f);
                self.refresh_policies();
                true
            }
            Err(e) => {
                match self.files.get(path) {
                    Some(f) => tracing::warn!(
                        "ignoreip file {}: {e}; keeping the last good list ({} entries)",
                        path.display(),
                        f.nets.len() + f.names.len()
                    ),
                    None => tracing::warn!(
                        "ignoreip file {}: {e}; nothing from it is left alone until it reads well",
                        path.display()
                    ),
                }
                false
            }
        }
    }
}
