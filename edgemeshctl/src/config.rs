//! Where the control API is and how to trust and authenticate to it: flags, then the environment
//! (`EDGEMESH_…`), then the configuration file (`~/.config/edgemesh/config.toml`), then the local
//! stack's files (`.edgemesh/` in the working directory). The admin token is read from a file, never
//! taken from the command line.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::failure::Failure;

#[derive(Debug, Args)]
pub struct Flags {
    /// The control API's admin listener.
    #[arg(long, global = true, env = "EDGEMESH_SERVER")]
    server: Option<String>,
    /// The EdgeMesh CA certificate (PEM), the only one trusted for the server.
    #[arg(long, global = true, env = "EDGEMESH_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// A file holding the admin token (readable by its owner only).
    #[arg(long, global = true, env = "EDGEMESH_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// The configuration file [default: ~/.config/edgemesh/config.toml].
    #[arg(long, global = true, env = "EDGEMESH_CONFIG")]
    config: Option<PathBuf>,
}

/// The configuration file's keys (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    server: Option<String>,
    ca_file: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    envoy_admin: Option<String>,
    ext_authz_metrics: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub server: String,
    ca_file: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    pub envoy_admin: Option<String>,
    pub ext_authz_metrics: Option<String>,
}

const DEFAULT_SERVER: &str = "https://127.0.0.1:8444";
const LOCAL_CA: &str = ".edgemesh/ca.pem";
const LOCAL_TOKEN: &str = ".edgemesh/admin-token";

impl Settings {
    pub fn resolve(flags: &Flags) -> Result<Self, Failure> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => match default_config_path() {
                Some(path) if path.exists() => read_file(&path)?,
                _ => File::default(),
            },
        };
        let local = |p: &str| Some(PathBuf::from(p)).filter(|p| p.exists());
        Ok(Self {
            server: flags
                .server
                .clone()
                .or(file.server)
                .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            ca_file: flags
                .ca_file
                .clone()
                .or(file.ca_file)
                .or_else(|| local(LOCAL_CA)),
            admin_token_file: flags
                .admin_token_file
                .clone()
                .or(file.admin_token_file)
                .or_else(|| local(LOCAL_TOKEN)),
            envoy_admin: file.envoy_admin,
            ext_authz_metrics: file.ext_authz_metrics,
        })
    }

    /// The CA certificate's PEM.
    pub fn ca_pem(&self) -> Result<String, Failure> {
        let path = self.ca_file.as_deref().ok_or_else(|| {
            Failure::Usage(
                "no CA certificate: give --ca-file, EDGEMESH_CA_FILE or ca_file in the \
                 configuration file"
                    .to_owned(),
            )
        })?;
        std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
    }

    /// The admin token, from its file; a file others can read is refused.
    pub fn admin_token(&self) -> Result<String, Failure> {
        let path = self.admin_token_file.as_deref().ok_or_else(|| {
            Failure::Usage(
                "no admin token: give --admin-token-file, EDGEMESH_ADMIN_TOKEN_FILE or \
                 admin_token_file in the configuration file (the token is never taken from the \
                 command line)"
                    .to_owned(),
            )
        })?;
        let unreadable =
            |e: std::io::Error| Failure::Usage(format!("cannot read {}: {e}", path.display()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(unreadable)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(Failure::Usage(format!(
                    "{} can be read by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        let token = std::fs::read_to_string(path).map_err(unreadable)?;
        let token = token.trim();
        if token.is_empty() {
            return Err(Failure::Usage(format!("{} is empty", path.display())));
        }
        Ok(token.to_owned())
    }
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("edgemesh/config.toml"))
}

fn read_file(path: &Path) -> Result<File, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_file_names_its_keys_and_refuses_others() {
        let file: File = toml::from_str(
            "server = \"https://cp:8444\"\nca_file = \"/etc/edgemesh/ca.pem\"\n\
             admin_token_file = \"/etc/edgemesh/admin-token\"\n",
        )
        .expect("parses");
        assert_eq!(file.server.as_deref(), Some("https://cp:8444"));
        assert!(
            toml::from_str::<File>("admin_token = \"emt_x\"\n").is_err(),
            "no token in the file"
        );
    }
}
