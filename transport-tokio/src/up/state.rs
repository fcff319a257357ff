//! The node's state file: its private keys (which never leave it) and its node secret, in a
//! 0600 file that is never read or written through a symlink.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burrow_wg::PrivateKey;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

/// What the state file holds.
#[derive(Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) private_key: String,
    pub(crate) disco_key: String,
    pub(crate) secret: Option<String>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("node.json")
}

pub(crate) fn load_or_create_state(dir: &Path) -> Result<State> {
    let path = state_path(dir);
    if path.exists() {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        // Never through a symlink: whoever planted one would choose our keys.
        use std::os::unix::fs::MetadataExt;
        let mut text = String::new();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("reading {} (it must be a regular file)", path.display()))?;
        // Only a file that is ours alone holds our keys: one another user could write may hold
        // keys they chose.
        let meta = f.metadata()?;
        if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
            bail!(
                "{} must be owned by this user and private (mode 0600); it is not, so its keys \
                 cannot be trusted",
                path.display()
            );
        }
        f.read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()));
    }
    let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
    let state = State {
        private_key: PrivateKey::generate(&mut rng).expose_base64(),
        disco_key: PrivateKey::generate(&mut rng).expose_base64(),
        secret: None,
    };
    save_state(dir, &state)?;
    Ok(state)
}

pub(crate) fn save_state(dir: &Path, state: &State) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let path = state_path(dir);
    let tmp = path.with_extension("tmp");
    // A leftover (or planted) temporary file goes first; the new one is created exclusively
    // and never through a symlink, so its mode is 0600 and its place is ours (audit #18).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", tmp.display()));
        }
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Keeps a new node secret in the state file.
pub(crate) fn save_secret(dir: &Path, state: &mut State, secret: String) -> Result<()> {
    state.secret = Some(secret);
    save_state(dir, state)
}

impl State {
    /// The node key and the disco key.
    pub(crate) fn keys(&self) -> Result<(PrivateKey, PrivateKey)> {
        let private = PrivateKey::from_base64(&self.private_key)
            .map_err(|_| anyhow::anyhow!("the state file's private key is corrupt"))?;
        let disco = PrivateKey::from_base64(&self.disco_key)
            .map_err(|_| anyhow::anyhow!("the state file's disco key is corrupt"))?;
        Ok((private, disco))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Audit #18: a planted `node.tmp` symlink is not followed (its target is untouched), the
    /// state file is 0600, and a state file that is a symlink is refused.
    #[test]
    fn the_state_file_never_follows_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("burrow-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("node.tmp")).unwrap();
        let state = State {
            private_key: "k".into(),
            disco_key: "d".into(),
            secret: None,
        };
        save_state(&dir, &state).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let mode = std::fs::metadata(dir.join("node.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // node.json replaced by a symlink to attacker-chosen keys: refused.
        std::fs::remove_file(dir.join("node.json")).unwrap();
        std::fs::write(
            dir.join("planted"),
            r#"{"private_key":"x","disco_key":"y","secret":null}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.join("planted"), dir.join("node.json")).unwrap();
        assert!(load_or_create_state(&dir).is_err());
        // A regular node.json that others may write is refused too; our own 0600 one loads.
        std::fs::remove_file(dir.join("node.json")).unwrap();
        save_state(&dir, &state).unwrap();
        assert!(load_or_create_state(&dir).is_ok());
        std::fs::set_permissions(
            dir.join("node.json"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        assert!(load_or_create_state(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
