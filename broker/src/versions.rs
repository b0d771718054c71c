//! Function versions: a worker may register a function with a semantic version; a step may
//! ask for a version requirement (`">=1.2, <2"`, `"^1.4"`, `"=2.0.1"`, the `semver` crate's
//! syntax, the one Cargo uses). A step without a requirement accepts any version; a function
//! registered without a version has version `0.0.0` for requirements.

/// A parsed version requirement.
pub type Requirement = semver::VersionReq;

/// Parses a step's requirement; the error says why.
pub fn parse_requirement(text: &str) -> Result<Requirement, String> {
    semver::VersionReq::parse(text).map_err(|e| format!("version requirement {text:?}: {e}"))
}

/// Checks a registered version string; the error says why.
pub fn check_version(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Ok(());
    }
    semver::Version::parse(text)
        .map(|_| ())
        .map_err(|e| format!("version {text:?}: {e}"))
}

/// Does a function registered with `version` (empty: none) satisfy `requirement`?
pub fn matches_version(version: &str, requirement: Option<&Requirement>) -> bool {
    let Some(requirement) = requirement else {
        return true;
    };
    let version = if version.is_empty() { "0.0.0" } else { version };
    semver::Version::parse(version).is_ok_and(|v| requirement.matches(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_match_like_cargo() {
        let r = parse_requirement(">=1.2, <2").unwrap();
        assert!(matches_version("1.2.0", Some(&r)));
        assert!(matches_version("1.9.3", Some(&r)));
        assert!(!matches_version("2.0.0", Some(&r)));
        assert!(!matches_version("", Some(&r)), "unversioned is 0.0.0");
        assert!(matches_version("", None));
        assert!(matches_version(
            "",
            Some(&parse_requirement(">=0").unwrap())
        ));
        // The original's vectors: 2.1.0 does not satisfy >=3.0; 1.0.0 satisfies >=1.0.0.
        assert!(!matches_version(
            "2.1.0",
            Some(&parse_requirement(">=3.0").unwrap())
        ));
        assert!(matches_version(
            "1.0.0",
            Some(&parse_requirement(">=1.0.0").unwrap())
        ));
        assert!(parse_requirement("banana").is_err());
        assert!(check_version("1.2").is_err() && check_version("1.2.3").is_ok());
    }
}
