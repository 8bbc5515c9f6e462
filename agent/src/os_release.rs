//! `/etc/os-release` (os-release(5)): the distribution's id and version.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub version_id: Option<String>,
}

/// The host's os-release, from `/etc/os-release` or else `/usr/lib/os-release`.
pub fn read_host() -> Option<OsRelease> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(Path::new(p)).ok())
        .and_then(|text| parse(&text))
}

pub fn parse(text: &str) -> Option<OsRelease> {
    let mut id = None;
    let mut version_id = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        match key {
            "ID" => id = Some(value),
            "VERSION_ID" => version_id = Some(value),
            _ => {}
        }
    }
    Some(OsRelease {
        id: id?,
        version_id,
    })
}

fn unquote(value: &str) -> String {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    inner.replace("\\\"", "\"").replace("\\\\", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_debian_and_raspberry_pi_os() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            parse(debian),
            Some(OsRelease {
                id: "debian".into(),
                version_id: Some("12".into())
            })
        );
        let arch = "NAME=\"Arch Linux\"\nID=arch\nBUILD_ID=rolling\n";
        assert_eq!(
            parse(arch),
            Some(OsRelease {
                id: "arch".into(),
                version_id: None
            }),
            "rolling release"
        );
        assert_eq!(parse("NAME=x\n"), None, "no ID");
    }
}
