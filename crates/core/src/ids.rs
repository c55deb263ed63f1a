//! Resource ids. Clients may choose them (Clarifai lets them) or leave them empty to have one
//! generated. Ids appear in URLs and SQL but never in file paths; the charset still excludes
//! anything path-like so that no future code can be tricked by "../x".

use rand::Rng;

pub const MAX_ID_LEN: usize = 128;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {len} characters long; the limit is {MAX_ID_LEN}")]
    TooLong { len: usize },
    #[error("id {id:?} contains {ch:?}; ids may use letters, digits, '-' and '_' and may not start with '-' or '_'")]
    BadCharacter { id: String, ch: char },
}

/// Checks a client-chosen id: ASCII letters, digits, `-` and `_`, starting with a letter or digit.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { len: id.len() });
    }
    for (i, ch) in id.chars().enumerate() {
        let ok = ch.is_ascii_alphanumeric() || (i > 0 && (ch == '-' || ch == '_'));
        if !ok {
            return Err(IdError::BadCharacter { id: id.to_string(), ch });
        }
    }
    Ok(())
}

/// A new random id in Clarifai's style: 32 lowercase hex characters.
pub fn generate_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// Makes an id out of arbitrary text (a file name, a folder name) for imports that must be
/// idempotent: the same text always gives the same id.
pub fn slug_id(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_ID_LEN));
    for ch in text.chars() {
        if out.len() >= MAX_ID_LEN {
            break;
        }
        if ch.is_ascii_alphanumeric() {
            out.push(ch);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "x".to_string() } else { out }
}

/// The id a folder import gives a file: readable (a slug of its relative path) and unique (a
/// short hash of the exact path, since slugs of "a b.png" and "a-b.png" coincide).
pub fn path_id(relative_path: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(relative_path.as_bytes());
    let mut slug = slug_id(relative_path);
    slug.truncate(MAX_ID_LEN - 9);
    format!("{slug}-{}", hex::encode(&digest[..4]))
}

/// The id an import gives a row that names no input id: derived from its URL, so importing the
/// same file twice finds the same inputs instead of adding copies.
pub fn id_for_url(url: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(url.as_bytes());
    format!("url-{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_clarifai_style_ids() {
        for id in ["cat", "my-app_2", "0123abcd", "A"] {
            assert_eq!(validate_id(id), Ok(()), "{id}");
        }
        assert_eq!(validate_id(&generate_id()), Ok(()));
    }

    #[test]
    fn refuses_path_like_and_odd_ids() {
        for id in ["../x", "a/b", "..", ".hidden", "a b", "-lead", "_lead", "é", "a\0b", "a\\b"] {
            assert!(validate_id(id).is_err(), "{id:?} must be refused");
        }
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert!(matches!(validate_id(&"a".repeat(129)), Err(IdError::TooLong { .. })));
    }

    #[test]
    fn slugs_are_valid_and_stable() {
        assert_eq!(slug_id("cats/IMG 001.jpg"), "cats-IMG-001-jpg");
        assert_eq!(slug_id("../.."), "x");
        assert_eq!(validate_id(&slug_id("ünïcode name.png")), Ok(()));
    }

    #[test]
    fn path_ids_tell_apart_paths_with_the_same_slug() {
        assert_ne!(path_id("cat/a b.png"), path_id("cat/a-b.png"));
        assert!(path_id("cat/a b.png").starts_with("cat-a-b-png-"));
        assert_eq!(validate_id(&path_id(&"x/".repeat(200))), Ok(()));
    }

    #[test]
    fn url_ids_are_stable_valid_and_distinct() {
        let a = id_for_url("http://example.com/a.png");
        assert_eq!(a, id_for_url("http://example.com/a.png"));
        assert_ne!(a, id_for_url("http://example.com/b.png"));
        assert_eq!(validate_id(&a), Ok(()));
    }
}
