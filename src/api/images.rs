//! Container image references as the container runtime reads them, so that a ProfileBinding's
//! image matches every spelling of the same image: `nginx`, `nginx:latest`,
//! `docker.io/library/nginx:latest` and `index.docker.io/library/nginx` are one image.
//!
//! What runs is decided by the digest when there is one (`app:1.2@sha256:…` runs the digest,
//! whatever the tag says), so a tag never matches a reference that carries a digest: otherwise a
//! pod author could borrow a trusted image's (looser) binding by writing its tag next to another
//! image's digest. A binding that names only a repository covers all of its tags and digests,
//! which is the form to use when a binding must not be dodged by pinning a digest.

use super::selectors::glob_matches;

const DOCKER_HUB: &str = "docker.io";

/// An image reference in canonical form: registry always present (Docker Hub as `docker.io`, its
/// official images under `library/`), a tag of `latest` when neither tag nor digest is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `registry/path`, e.g. `docker.io/library/nginx`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference the way the runtime resolves it. Not a validator: a string the runtime
    /// would refuse still gets a canonical form (the pod then fails to pull, not to bind).
    pub fn parse(image: &str) -> ImageRef {
        let (name, digest) = match image.split_once('@') {
            Some((n, d)) => (n, Some(d.to_owned())),
            None => (image, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_owned()),
            ),
            None => (name, None),
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        ImageRef {
            repository: canonical_repository(name),
            tag,
            digest,
        }
    }

    pub fn canonical(&self) -> String {
        let mut s = self.repository.clone();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

/// `registry/path` with Docker Hub's implicit registry and `library/` made explicit.
fn canonical_repository(name: &str) -> String {
    let (first, path) = match name.split_once('/') {
        Some((f, r)) if is_registry(f) => (registry(f), r),
        _ => (DOCKER_HUB.to_owned(), name),
    };
    if first == DOCKER_HUB && !path.contains('/') {
        format!("{first}/library/{path}")
    } else {
        format!("{first}/{path}")
    }
}

/// A registry host as one name: lowercase, Docker Hub's aliases as `docker.io`.
fn registry(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        _ => host,
    }
}

/// The first component names a registry when it looks like a host: a dot, a port or `localhost`.
fn is_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// A ProfileBinding's `image`, ready to match container images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImagePattern {
    /// `*`: every image.
    Any,
    /// A pattern with `*`, matched against the canonical reference (its literal start made
    /// canonical too, so `nginx:*` covers `docker.io/library/nginx:1.25`).
    Glob(String),
    /// A repository without tag or digest: every tag and digest of it.
    Repository(String),
    /// A tag and/or digest: that image. With a digest only the digest counts.
    Exact(ImageRef),
}

impl ImagePattern {
    pub fn parse(pattern: &str) -> ImagePattern {
        if pattern == "*" {
            return ImagePattern::Any;
        }
        if pattern.contains('*') {
            return ImagePattern::Glob(canonical_glob(pattern));
        }
        let has_digest = pattern.contains('@');
        let last = pattern.rsplit('/').next().unwrap_or(pattern);
        let has_tag = last.contains(':');
        let parsed = ImageRef::parse(pattern);
        if !has_digest && !has_tag {
            ImagePattern::Repository(parsed.repository)
        } else {
            ImagePattern::Exact(parsed)
        }
    }

    /// How specific the match is (lower wins), or None when the image does not match.
    pub fn rank(&self, image: &ImageRef) -> Option<u8> {
        match self {
            ImagePattern::Exact(want) => {
                let same = want.repository == image.repository
                    && match (&want.digest, &image.digest) {
                        (Some(w), Some(i)) => w == i,
                        (Some(_), None) => false,
                        (None, Some(_)) => false,
                        (None, None) => want.tag == image.tag,
                    };
                same.then_some(0)
            }
            ImagePattern::Repository(repo) => (*repo == image.repository).then_some(1),
            ImagePattern::Glob(glob) => glob_matches(glob, &image.canonical()).then_some(2),
            ImagePattern::Any => Some(3),
        }
    }
}

/// Makes the literal start of a glob canonical where it unambiguously names a repository: a
/// pattern without `/` is a Docker Hub official image (`nginx*` → `docker.io/library/nginx*`); a
/// first component without `*` is a registry or a Docker Hub user. Patterns that start with `*`,
/// or whose first component has one, are left as written.
fn canonical_glob(pattern: &str) -> String {
    if pattern.starts_with('*') {
        return pattern.to_owned();
    }
    match pattern.split_once('/') {
        None => format!("{DOCKER_HUB}/library/{pattern}"),
        Some((first, _)) if first.contains('*') => pattern.to_owned(),
        Some((first, rest)) if is_registry(first) => {
            let first = registry(first);
            if first == DOCKER_HUB && !rest.contains('/') && !rest.starts_with("library") {
                format!("{first}/library/{rest}")
            } else {
                format!("{first}/{rest}")
            }
        }
        Some(_) => format!("{DOCKER_HUB}/{pattern}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_image_is_one_reference() {
        let canonical = "docker.io/library/nginx:latest";
        for spelling in [
            "nginx",
            "nginx:latest",
            "library/nginx",
            "docker.io/nginx",
            "docker.io/library/nginx:latest",
            "index.docker.io/library/nginx",
            "registry-1.docker.io/library/nginx:latest",
        ] {
            assert_eq!(ImageRef::parse(spelling).canonical(), canonical, "{spelling}");
        }
        assert_eq!(
            ImageRef::parse("registry.local:5000/team/web:1.2").canonical(),
            "registry.local:5000/team/web:1.2"
        );
        assert_eq!(
            ImageRef::parse("localhost/web").canonical(),
            "localhost/web:latest"
        );
        assert_eq!(
            ImageRef::parse("team/web").canonical(),
            "docker.io/team/web:latest"
        );
        let pinned = ImageRef::parse("nginx:1.25@sha256:abc");
        assert_eq!(pinned.repository, "docker.io/library/nginx");
        assert_eq!(pinned.tag.as_deref(), Some("1.25"));
        assert_eq!(pinned.digest.as_deref(), Some("sha256:abc"));
        assert_eq!(ImageRef::parse("nginx@sha256:abc").tag, None);
    }

    fn rank(pattern: &str, image: &str) -> Option<u8> {
        ImagePattern::parse(pattern).rank(&ImageRef::parse(image))
    }

    #[test]
    fn a_binding_cannot_be_dodged_by_another_spelling() {
        for image in [
            "nginx:1.25",
            "docker.io/library/nginx:1.25",
            "index.docker.io/nginx:1.25",
        ] {
            assert_eq!(rank("nginx:1.25", image), Some(0), "{image}");
            assert_eq!(rank("docker.io/library/nginx:1.25", image), Some(0), "{image}");
        }
        // `nginx` is the repository: every tag and every digest of it.
        for image in [
            "nginx",
            "nginx:1.25",
            "docker.io/library/nginx@sha256:abc",
            "nginx:1.25@sha256:abc",
        ] {
            assert_eq!(rank("nginx", image), Some(1), "{image}");
        }
        assert_eq!(rank("nginx", "nginx-exporter:1"), None);
        assert_eq!(rank("nginx", "evil/nginx:1"), None);
        // Globs see the canonical form.
        assert_eq!(rank("nginx:*", "docker.io/library/nginx:1.25"), Some(2));
        assert_eq!(rank("registry.local/web:*", "registry.local/web:2"), Some(2));
        assert_eq!(rank("team/*", "docker.io/team/web:1"), Some(2));
        assert_eq!(rank("*/library/nginx:*", "nginx:1"), Some(2));
        assert_eq!(rank("*", "anything"), Some(3));
    }

    #[test]
    fn a_tag_never_matches_a_reference_that_runs_a_digest() {
        // The runtime runs the digest; the tag beside it is decoration a pod author chooses.
        assert_eq!(rank("trusted:1.0", "trusted:1.0@sha256:evil"), None);
        assert_eq!(rank("trusted:1.0", "trusted:1.0"), Some(0));
        assert_eq!(rank("trusted@sha256:good", "trusted:any@sha256:good"), Some(0));
        assert_eq!(rank("trusted@sha256:good", "trusted@sha256:evil"), None);
        assert_eq!(rank("trusted@sha256:good", "trusted:1.0"), None);
    }
}
