//! CURVE keys: generation, Z85 text form, key files.
//!
//! A key is 32 bytes, written as 40 Z85 characters. A key-pair file holds two lines,
//! `public = "<Z85>"` and `secret = "<Z85>"` (valid TOML), and must not be readable by group or
//! others (mode 0600): loading a secret from a more open file is refused, as ssh does. A public
//! key file holds only the `public` line and may be shared.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A CURVE key (public or secret), 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    /// Parses 40 Z85 characters.
    pub fn from_z85(text: &str) -> Result<Key, KeyError> {
        let text = text.trim();
        if text.len() != 40 {
            return Err(KeyError::Invalid(format!(
                "a CURVE key is 40 Z85 characters, got {}",
                text.len()
            )));
        }
        const Z85: &[u8] =
            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
        if let Some(c) = text.bytes().find(|c| !Z85.contains(c)) {
            return Err(KeyError::Invalid(format!(
                "a CURVE key has only Z85 characters, not {:?}",
                char::from(c)
            )));
        }
        let bytes =
            zmq::z85_decode(text).map_err(|e| KeyError::Invalid(format!("not a Z85 key: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Invalid("a CURVE key decodes to 32 bytes".into()))?;
        Ok(Key(bytes))
    }

    /// Wraps raw bytes (e.g. the credentials of a ZAP request).
    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        bytes.try_into().ok().map(Key)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 40-character Z85 text.
    pub fn to_z85(&self) -> String {
        // 32 bytes is a multiple of 4: encoding cannot fail.
        zmq::z85_encode(&self.0).unwrap_or_default()
    }
}

/// Public keys print as Z85; use [`KeyPair`] for secrets, whose `Debug` hides them.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_z85())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

/// A public key and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The public half, given to peers.
    pub public: Key,
    /// The secret half; never printed.
    pub secret: Key,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair {{ public: {}, secret: <hidden> }}", self.public)
    }
}

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not a key.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A secret key file that group or others can read.
    #[error("{path}: a secret key file must not be readable by group or others (mode {mode:o}); run chmod 600")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// libzmq could not generate a key pair (built without CURVE).
    #[error("cannot generate a CURVE key pair: {0} (libzmq without CURVE support?)")]
    Generate(zmq::Error),
}

impl KeyPair {
    /// A new random key pair (libzmq's `zmq_curve_keypair`, libsodium underneath).
    pub fn generate() -> Result<KeyPair, KeyError> {
        let pair = zmq::CurveKeyPair::new().map_err(KeyError::Generate)?;
        Ok(KeyPair {
            public: Key(pair.public_key),
            secret: Key(pair.secret_key),
        })
    }

    /// Reads a key-pair file written by [`KeyPair::write`] (refused if group/others can read
    /// it).
    pub fn load(path: impl AsRef<Path>) -> Result<KeyPair, KeyError> {
        let path = path.as_ref();
        check_private(path)?;
        let text = read(path)?;
        let public = field(&text, "public")
            .ok_or_else(|| invalid(path, "has no `public = \"...\"` line"))?;
        let secret = field(&text, "secret")
            .ok_or_else(|| invalid(path, "has no `secret = \"...\"` line"))?;
        let public = Key::from_z85(public).map_err(|e| invalid(path, &e.to_string()))?;
        let secret = Key::from_z85(secret).map_err(|e| invalid(path, &e.to_string()))?;
        Ok(KeyPair { public, secret })
    }

    /// Writes `<base>.key` (the pair) and `<base>.pub` (the public key), both mode 0600,
    /// refusing to overwrite existing files. Returns the two paths.
    pub fn write(&self, base: impl AsRef<Path>) -> Result<(PathBuf, PathBuf), KeyError> {
        let base = base.as_ref();
        let key_path = with_suffix(base, "key");
        let pub_path = with_suffix(base, "pub");
        let public = format!(
            "# MPREG CURVE public key: give this to the peers that must trust it\npublic = \"{}\"\n",
            self.public
        );
        let pair = format!(
            "# MPREG CURVE key pair: keep this file secret (mode 0600)\npublic = \"{}\"\nsecret = \"{}\"\n",
            self.public,
            self.secret.to_z85()
        );
        create_private(&key_path, &pair)?;
        create_private(&pub_path, &public)?;
        Ok((key_path, pub_path))
    }
}

/// A public key given either as 40 Z85 characters or as the path of a file holding a
/// `public = "..."` line (a `.pub` or `.key` file).
pub fn load_public(key_or_path: &str) -> Result<Key, KeyError> {
    if key_or_path.len() == 40 && !Path::new(key_or_path).exists() {
        return Key::from_z85(key_or_path);
    }
    let path = Path::new(key_or_path);
    let text = read(path)?;
    let public =
        field(&text, "public").ok_or_else(|| invalid(path, "has no `public = \"...\"` line"))?;
    Key::from_z85(public).map_err(|e| invalid(path, &e.to_string()))
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

fn invalid(path: &Path, what: &str) -> KeyError {
    KeyError::Invalid(format!("{}: {what}", path.display()))
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The value of a `name = "value"` line.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

fn create_private(path: &Path, text: &str) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn libzmq_has_curve() {
        assert_eq!(zmq::has("curve"), Some(true));
    }

    #[test]
    fn z85_round_trip_and_rejects() {
        let pair = KeyPair::generate().unwrap();
        let text = pair.public.to_z85();
        assert_eq!(text.len(), 40);
        assert_eq!(Key::from_z85(&text).unwrap(), pair.public);
        assert!(Key::from_z85(&text[..39]).is_err());
        assert!(Key::from_z85(&format!("{}~", &text[..39])).is_err());
        assert!(!format!("{pair:?}").contains(&pair.secret.to_z85()));
    }

    #[test]
    fn files_are_private_and_reload() {
        let dir = std::env::temp_dir().join(format!("mpreg-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pair = KeyPair::generate().unwrap();
        let (key, public) = pair.write(dir.join("broker")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(KeyPair::load(&key).unwrap(), pair);
        assert_eq!(load_public(public.to_str().unwrap()).unwrap(), pair.public);
        assert_eq!(load_public(&pair.public.to_z85()).unwrap(), pair.public);
        // No overwriting.
        assert!(pair.write(dir.join("broker")).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                KeyPair::load(&key),
                Err(KeyError::Permissions { .. })
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
