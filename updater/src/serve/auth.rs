//! Who may use the API from the network: users with a password, set at
//! commissioning (`updater password set`), kept as Argon2id hashes in the
//! state directory on the data partition, so that they outlive updates
//! and never ship in a release image. There is no default user: with none
//! set, the network listener does not start.
//!
//! A login gives a session: a random token (a cookie for the page, or
//! `Authorization: Bearer` for a script) and a CSRF token the page must
//! send back with every change (docs/api.md, "Logging in").

use crate::config::Config;
use anyhow::{anyhow, Result};
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

const USERS_FILE: &str = "api-users.json";
const FORMAT: u32 = 1;
/// The users file is a few hashes; anything larger is not one.
const MAX_USERS_FILE: u64 = 64 << 10;
const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD: usize = 1024;
/// Failed logins from one address before each further try must wait,
/// twice as long after each failure, up to [`MAX_WAIT`].
const FREE_TRIES: u32 = 5;
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Addresses remembered for their failures; an address quiet for
/// [`FORGET`] is forgotten.
const MAX_ADDRESSES: usize = 4096;
const FORGET: Duration = Duration::from_secs(3600);
/// A session ends after this long unused, and after [`SESSION_MAX`] in all.
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 64;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    format: u32,
    /// User name to the PHC string of its password's Argon2id hash.
    users: BTreeMap<String, String>,
}

fn users_path(config: &Config) -> PathBuf {
    config.state_dir().join(USERS_FILE)
}

/// The users, none when the file is missing. A file that is there and
/// cannot be read, or is open to others, is an error, never "no users".
fn load(path: &Path) -> Result<UsersFile> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(UsersFile {
            format: FORMAT,
            ..Default::default()
        });
    }
    let bytes = crate::config::read_secret(path, "API users file", MAX_USERS_FILE)
        .map_err(|e| anyhow!(crate::UpdateError::ConfigFile(e)))?;
    let file: UsersFile = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow!(crate::UpdateError::ConfigFile(format!(
            "the API users file {} is damaged ({e}): remove it and set the passwords again",
            path.display()
        )))
    })?;
    if file.format != FORMAT {
        return Err(anyhow!(crate::UpdateError::ConfigFile(format!(
            "the API users file {} has format {}, this updater knows {FORMAT}",
            path.display(),
            file.format
        ))));
    }
    Ok(file)
}

/// Replaces the file whole (mode 0600), so that a cut leaves the old
/// users or the new ones, never half.
fn save(path: &Path, file: &UsersFile) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let failed = |e: std::io::Error| anyhow!("writing the API users file {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(failed)?;
    serde_json::to_writer_pretty(&mut tmp, file).map_err(|e| failed(e.into()))?;
    tmp.write_all(b"\n").map_err(failed)?;
    tmp.as_file().sync_all().map_err(failed)?;
    tmp.persist(path).map_err(|e| failed(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed)
}

fn check_name(user: &str) -> Result<()> {
    let fits = (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if fits {
        Ok(())
    } else {
        Err(anyhow!(crate::UpdateError::Password(format!(
            "user name {user:?}: 1 to 64 letters, digits, '.', '_' or '-'"
        ))))
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| anyhow!("the system's random numbers: {e}"))?;
    Ok(hex::encode(buf))
}

/// The most memory and passes a stored hash may ask for: a users file
/// is the updater's own, but a damaged one must not take the machine's
/// memory at the next login.
const MAX_M_COST: u32 = 64 * 1024;
const MAX_T_COST: u32 = 16;

/// Argon2id (OWASP's parameters, the crate's default: 19 MiB, 2 passes)
/// of `password` with `salt`, in memory mapped for it and unmapped after:
/// freed to the allocator, 19 MiB would stay resident in the service, and
/// an install counts every resident byte against its budget
/// (docs/updater.md, "Memory").
fn argon2id<'a>(password: &str, salt: Salt<'a>, params: &Params) -> Result<PasswordHash<'a>> {
    let failed = |e: &dyn std::fmt::Display| anyhow!("hashing a password: {e}");
    let blocks = params.block_count();
    let mut map = memmap2::MmapMut::map_anon(blocks * Block::SIZE).map_err(|e| failed(&e))?;
    // SAFETY: the mapping is page-aligned (a Block needs 64), zeroed (a
    // valid Block: it is plain u64s), exactly `blocks` Blocks long, and
    // outlives the slice, which is this function's only view of it.
    let memory =
        unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<Block>(), blocks) };
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|e| failed(&e))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let hash = Output::init_with(len, |out| {
        argon
            .hash_password_into_with_memory(password.as_bytes(), salt_bytes, out, &mut *memory)
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(|e| failed(&e))?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| failed(&e))?,
        salt: Some(salt),
        hash: Some(hash),
    })
}

fn hash(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| anyhow!("the system's random numbers: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow!("a salt: {e}"))?;
    argon2id(password, salt.as_salt(), &Params::default()).map(|h| h.to_string())
}

/// Whether `password` is the one `phc` was made from; a hash in another
/// form, or asking for more than [`MAX_M_COST`], matches nothing.
fn verify(password: &str, phc: &str) -> bool {
    let Ok(stored) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(want)) = (stored.salt, stored.hash) else {
        return false;
    };
    let params = match Params::try_from(&stored) {
        Ok(p) if p.m_cost() <= MAX_M_COST && p.t_cost() <= MAX_T_COST => p,
        _ => return false,
    };
    let params = match Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        Some(want.len()),
    ) {
        Ok(p) => p,
        Err(_) => return false,
    };
    if stored.algorithm != Algorithm::Argon2id.ident() {
        return false;
    }
    // Output's comparison takes the same time however much matches.
    argon2id(password, salt, &params).is_ok_and(|got| got.hash == Some(want))
}

/// `updater password set`: gives `user` this password, a new user or not.
pub fn set_password(config: &Config, user: &str, password: &str) -> Result<()> {
    check_name(user)?;
    let chars = password.chars().count();
    if chars < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(anyhow!(crate::UpdateError::Password(format!(
            "the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters, not {chars}"
        ))));
    }
    let path = users_path(config);
    let mut file = load(&path)?;
    file.users.insert(user.to_string(), hash(password)?);
    save(&path, &file)
}

/// `updater password remove`: false when there was no such user.
pub fn remove_user(config: &Config, user: &str) -> Result<bool> {
    let path = users_path(config);
    let mut file = load(&path)?;
    let had = file.users.remove(user).is_some();
    if had {
        save(&path, &file)?;
    }
    Ok(had)
}

struct Session {
    user: String,
    /// The hash the password was checked against: a session ends when
    /// its user's password is changed or the user removed.
    phc: String,
    csrf: String,
    created: Instant,
    used: Instant,
}

/// A session as a request sees it.
pub struct Seen {
    pub user: String,
    pub csrf: String,
}

/// What a login gives.
pub struct Login {
    pub user: String,
    pub token: String,
    pub csrf: String,
}

pub enum Refused {
    /// The same for an unknown user and a wrong password.
    Wrong,
    /// Too many failures from this address: try again in this many seconds.
    Wait(u64),
    Broken(anyhow::Error),
}

struct Failures {
    count: u32,
    last: Instant,
}

pub struct Gate {
    path: PathBuf,
    /// Verified against when the user does not exist, so that an unknown
    /// user takes as long to refuse as a wrong password.
    decoy: String,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// One hash at a time: a burst of logins from many addresses is as
    /// slow as Argon2 makes them, and cannot take the machine's memory.
    hashing: Mutex<()>,
}

impl Gate {
    /// The gate of the network listener; refused with no user set, as
    /// there are no default credentials.
    pub fn new(config: &Config) -> Result<Gate> {
        let path = users_path(config);
        if load(&path)?.users.is_empty() {
            return Err(anyhow!(crate::UpdateError::ConfigFile(format!(
                "serve.listen is set but no API user has a password ({} has none): set one with `updater password set --user NAME`",
                path.display()
            ))));
        }
        Ok(Gate {
            path,
            decoy: hash(&random_hex(16)?)?,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            hashing: Mutex::new(()),
        })
    }

    /// Checks `user`'s password, read from the file now so that a password
    /// set or removed takes effect at once.
    pub fn login(&self, from: IpAddr, user: &str, password: &str) -> Result<Login, Refused> {
        let from = source(from);
        self.attempt(from).map_err(Refused::Wait)?;
        let users = load(&self.path).map_err(Refused::Broken)?;
        let known = users.users.get(user);
        let phc = known.unwrap_or(&self.decoy);
        let good = {
            let _one = self.hashing.lock().unwrap_or_else(PoisonError::into_inner);
            verify(password, phc)
        };
        let Some(phc) = known.filter(|_| good) else {
            return Err(Refused::Wrong);
        };
        self.lock_failures().remove(&from);
        let login = Login {
            user: user.to_string(),
            token: random_hex(32).map_err(Refused::Broken)?,
            csrf: random_hex(32).map_err(Refused::Broken)?,
        };
        let now = Instant::now();
        let mut sessions = self.lock_sessions();
        sessions.retain(|_, s| alive(s, now));
        if sessions.len() >= MAX_SESSIONS {
            // The least recently used goes: a technician's new login
            // always works.
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(t, _)| t.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            login.token.clone(),
            Session {
                user: login.user.clone(),
                phc: phc.clone(),
                csrf: login.csrf.clone(),
                created: now,
                used: now,
            },
        );
        Ok(login)
    }

    /// The live session of `token`, marked used; its user's password
    /// is read again, so that a password changed or a user removed ends
    /// every session of theirs at once.
    pub fn session(&self, token: &str) -> Option<Seen> {
        self.find(token, true)
    }

    /// Whether `token`'s session still lives, not marking it used: an
    /// events stream left open is not a technician at the page.
    pub fn lives(&self, token: &str) -> bool {
        self.find(token, false).is_some()
    }

    fn find(&self, token: &str, touch: bool) -> Option<Seen> {
        let users = load(&self.path).ok();
        let now = Instant::now();
        let mut sessions = self.lock_sessions();
        let s = sessions.get_mut(token)?;
        let same_password = users
            .as_ref()
            .and_then(|u| u.users.get(&s.user))
            .is_some_and(|phc| *phc == s.phc);
        if !alive(s, now) || !same_password {
            sessions.remove(token);
            return None;
        }
        if touch {
            s.used = now;
        }
        Some(Seen {
            user: s.user.clone(),
            csrf: s.csrf.clone(),
        })
    }

    pub fn logout(&self, token: &str) {
        self.lock_sessions().remove(token);
    }

    /// Counts a try from `from`, as failed until it succeeds: logins sent
    /// at once all count, not only the first. Err: how many seconds
    /// `from` must still wait.
    fn attempt(&self, from: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let mut failures = self.lock_failures();
        if let Some(f) = failures.get(&from) {
            if f.count >= FREE_TRIES {
                let wait = Duration::from_secs(1 << (f.count - FREE_TRIES).min(16)).min(MAX_WAIT);
                let left = wait.saturating_sub(now.duration_since(f.last));
                if !left.is_zero() {
                    return Err(left.as_secs().max(1));
                }
            }
        }
        failures.retain(|_, f| now.duration_since(f.last) < FORGET);
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&from) {
            if let Some(oldest) = failures.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a) {
                failures.remove(&oldest);
            }
        }
        let f = failures.entry(from).or_insert(Failures {
            count: 0,
            last: now,
        });
        f.count += 1;
        f.last = now;
        Ok(())
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where tries are counted from: an IPv4 address (also as IPv6 mapped),
/// or an IPv6 /64, the block one machine is given and can take any
/// address of.
fn source(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.duration_since(s.used) < SESSION_IDLE && now.duration_since(s.created) < SESSION_MAX
}

/// Equal, in a time that does not tell how much of it matched.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let text = serde_json::json!({
            "compatible": "acme-gw",
            "keyring": dir,
            "data_dir": dir,
        });
        Config::parse(text.to_string().as_bytes(), Path::new("test.json")).unwrap()
    }

    #[test]
    fn no_user_no_gate_and_a_wrong_name_or_password_look_alike() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let none = Gate::new(&config).err().unwrap().to_string();
        assert!(none.contains("no API user has a password"), "{none}");

        assert!(set_password(&config, "tech", "short").is_err());
        assert!(set_password(&config, "bad name", "long enough password").is_err());
        set_password(&config, "tech", "long enough password").unwrap();
        let gate = Gate::new(&config).unwrap();
        let here: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(matches!(
            gate.login(here, "nobody", "long enough password"),
            Err(Refused::Wrong)
        ));
        assert!(matches!(
            gate.login(here, "tech", "wrong password!"),
            Err(Refused::Wrong)
        ));
        let login = gate
            .login(here, "tech", "long enough password")
            .ok()
            .unwrap();
        assert_eq!(gate.session(&login.token).unwrap().csrf, login.csrf);
        gate.logout(&login.token);
        assert!(gate.session(&login.token).is_none());

        // Removed: refused at the next login, no restart needed.
        assert!(remove_user(&config, "tech").unwrap());
        assert!(matches!(
            gate.login(here, "tech", "long enough password"),
            Err(Refused::Wrong)
        ));
    }

    #[test]
    fn failures_from_one_address_make_it_wait_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        set_password(&config, "tech", "long enough password").unwrap();
        let gate = Gate::new(&config).unwrap();
        let bad: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..FREE_TRIES {
            assert!(matches!(
                gate.login(bad, "tech", "guess guess"),
                Err(Refused::Wrong)
            ));
        }
        // Even the right password waits now.
        assert!(matches!(
            gate.login(bad, "tech", "long enough password"),
            Err(Refused::Wait(1))
        ));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(gate.login(other, "tech", "long enough password").is_ok());

        // One IPv6 /64 is one source, whatever address of it comes.
        for i in 0..FREE_TRIES {
            let addr: IpAddr = format!("2001:db8::{i}").parse().unwrap();
            assert!(matches!(
                gate.login(addr, "tech", "guess guess"),
                Err(Refused::Wrong)
            ));
        }
        let next: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert!(matches!(
            gate.login(next, "tech", "long enough password"),
            Err(Refused::Wait(1))
        ));
        let elsewhere: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(gate
            .login(elsewhere, "tech", "long enough password")
            .is_ok());
    }

    #[test]
    fn a_changed_password_ends_the_sessions_it_opened() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        set_password(&config, "tech", "long enough password").unwrap();
        set_password(&config, "other", "another long password").unwrap();
        let gate = Gate::new(&config).unwrap();
        let here: IpAddr = "192.0.2.1".parse().unwrap();
        let tech = gate
            .login(here, "tech", "long enough password")
            .ok()
            .unwrap();
        let other = gate
            .login(here, "other", "another long password")
            .ok()
            .unwrap();
        set_password(&config, "tech", "a new long password").unwrap();
        assert!(gate.session(&tech.token).is_none());
        assert!(gate.session(&other.token).is_some());
        remove_user(&config, "other").unwrap();
        assert!(gate.session(&other.token).is_none());
    }

    #[test]
    fn a_users_file_open_to_others_is_refused_not_taken_for_none() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        set_password(&config, "tech", "long enough password").unwrap();
        let path = users_path(&config);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Gate::new(&config).err().unwrap().to_string();
        assert!(e.contains("open to others"), "{e}");
        std::fs::write(&path, b"{").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Gate::new(&config).err().unwrap().to_string();
        assert!(e.contains("is damaged"), "{e}");
    }
}
