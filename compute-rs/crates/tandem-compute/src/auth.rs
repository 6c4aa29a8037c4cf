//! Bearer tokens (`--token-file`): with a token file, every call but health
//! and reflection needs gRPC metadata `authorization: Bearer <token>` with
//! one of the file's tokens, else it is answered UNAUTHENTICATED (reason
//! `UNAUTHENTICATED`) before its body is read.
//!
//! The file holds one token a line; blank lines and lines starting with `#`
//! are ignored. It is re-read when it changes ([`crate::reload`]); a file
//! that no longer parses (or holds no token) keeps the previous tokens.
//! Only SHA-256 digests of the tokens are kept, compared in constant time
//! against every accepted one; no token is ever logged or echoed.

use std::future::Future;
use std::path::Path;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tandem_core::Error;

use crate::metrics::Metrics;
use crate::reload::{self, Reloading, Source};
use crate::status;

/// The longest `authorization` value read; a longer one is refused with
/// this limit in the ErrorInfo (HTTP/2 itself bounds all the metadata of a
/// call: [`crate::server::MAX_METADATA_BYTES`]).
pub const MAX_AUTHORIZATION_BYTES: usize = 1024;

const BEARER: &[u8] = b"Bearer ";

/// The longest token a token file may hold.
pub const MAX_TOKEN_BYTES: usize = MAX_AUTHORIZATION_BYTES - BEARER.len();

/// Call paths open without a token: health and both reflection versions.
pub const OPEN_PREFIXES: [&str; 3] =
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// The accepted tokens, as SHA-256 digests.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} accepted)", self.digests.len())
    }
}

impl Tokens {
    /// Parses a token file: one token a line (surrounding whitespace
    /// ignored), blank lines and `#` lines skipped. A token is 1 to
    /// [`MAX_TOKEN_BYTES`] bytes of visible ASCII (no spaces); a file with
    /// none is an error. Errors name the line, never its text.
    pub fn parse(text: &[u8]) -> Result<Tokens, String> {
        let mut digests = Vec::new();
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let n = i + 1;
            if line.len() > MAX_TOKEN_BYTES {
                return Err(format!(
                    "line {n}: the token is {} bytes, longer than the limit of {MAX_TOKEN_BYTES} bytes",
                    line.len()
                ));
            }
            if !line.iter().all(|b| b.is_ascii_graphic()) {
                return Err(format!("line {n}: a token is visible ASCII without spaces; this one is not"));
            }
            digests.push(Sha256::digest(line).into());
        }
        if digests.is_empty() {
            return Err("no tokens (blank lines and # comments do not count)".to_owned());
        }
        Ok(Tokens { digests })
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Never true for a parsed file (it holds at least one token).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `token` is one of them; takes the same time whichever matches.
    pub fn accepts(&self, token: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found = Choice::from(0);
        for d in &self.digests {
            found |= d.ct_eq(&digest);
        }
        found.into()
    }

    /// Reads and parses a token file once (as [`crate::serve`] does before
    /// it serves); errors name the flag and the file.
    pub fn from_file(path: &Path) -> Result<Tokens, String> {
        let source = source(path);
        Tokens::parse(&reload::read(&source)?).map_err(|e| format!("--token-file {}: {e}", path.display()))
    }
}

fn source(path: &Path) -> Source {
    Source { flag: "--token-file", path: path.to_owned() }
}

/// Loads the token file (an error if it is unusable) and watches it.
pub(crate) fn watch(path: &Path, metrics: Metrics) -> Result<Reloading<Tokens>, String> {
    let p = path.to_owned();
    reload::watch("tokens", vec![source(path)], metrics, move |contents| {
        let text = contents.first().map(Vec::as_slice).unwrap_or_default();
        let tokens = Tokens::parse(text).map_err(|e| format!("--token-file {}: {e}", p.display()))?;
        tracing::info!(tokens = tokens.len(), "bearer tokens loaded");
        Ok(tokens)
    })
}

fn unauthenticated(detail: impl Into<String>) -> Error {
    Error::Unauthenticated { detail: detail.into(), limit: None, actual: None }
}

/// Checks the `authorization` metadata of a call against `tokens`.
pub fn check(headers: &http::HeaderMap, tokens: &Tokens) -> Result<(), Error> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        if headers.contains_key("authorization-bin") {
            return Err(unauthenticated(
                "binary metadata authorization-bin is not accepted: send the token as \"authorization: Bearer <token>\"",
            ));
        }
        return Err(unauthenticated("the call has no authorization metadata: send \"authorization: Bearer <token>\""));
    };
    if values.next().is_some() {
        return Err(unauthenticated("the call has more than one authorization metadata value"));
    }
    let value = value.as_bytes();
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(Error::Unauthenticated {
            detail: format!(
                "authorization metadata is {} bytes, longer than the limit of {MAX_AUTHORIZATION_BYTES} bytes",
                value.len()
            ),
            limit: Some(MAX_AUTHORIZATION_BYTES as u64),
            actual: Some(value.len() as u64),
        });
    }
    let scheme_ok = value.len() >= BEARER.len() && value[..BEARER.len()].eq_ignore_ascii_case(BEARER);
    if !scheme_ok {
        return Err(unauthenticated("authorization metadata is not \"Bearer <token>\""));
    }
    let token = value[BEARER.len()..].trim_ascii();
    if token.is_empty() {
        return Err(unauthenticated("authorization metadata has an empty bearer token"));
    }
    if !tokens.accepts(token) {
        return Err(unauthenticated("the bearer token is not accepted"));
    }
    Ok(())
}

/// A tower layer in front of every gRPC call: with tokens, each call
/// outside [`OPEN_PREFIXES`] passes [`check`] or is answered UNAUTHENTICATED
/// at once, without its body being read. Without tokens it passes every call.
#[derive(Debug, Clone)]
pub struct AuthGate<S> {
    /// The services behind the gate.
    pub inner: S,
    /// The accepted tokens, or `None` for no token check.
    pub tokens: Option<Reloading<Tokens>>,
    /// Where rejections are counted.
    pub metrics: Metrics,
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for AuthGate<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        if let Some(tokens) = &self.tokens {
            let path = req.uri().path();
            if !OPEN_PREFIXES.iter().any(|p| path.starts_with(p))
                && let Err(e) = check(req.headers(), &tokens.current())
            {
                self.metrics.unauthenticated.inc();
                tracing::debug!(path, error = %e, "call refused: unauthenticated");
                let resp = status::to_status(&e, &[]).into_http::<ResB>();
                return Box::pin(async move { Ok(resp) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn parses_token_files() {
        let t = Tokens::parse(b"# compute tokens\n\n  tdm_a_secret1  \r\n#tdm_b_commented\ntdm_c_secret2\n").unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.accepts(b"tdm_a_secret1"));
        assert!(t.accepts(b"tdm_c_secret2"));
        assert!(!t.accepts(b"tdm_b_commented"));
        assert!(!t.accepts(b"tdm_a_secret"));
        assert!(!t.accepts(b""));
        assert_eq!(Tokens::parse(b"\n# only\n").unwrap_err(), "no tokens (blank lines and # comments do not count)");
        let e = Tokens::parse(b"ok\nsecret with space\n").unwrap_err();
        assert_eq!(e, "line 2: a token is visible ASCII without spaces; this one is not");
        assert!(!e.contains("secret"), "never echoes the token");
        let e = Tokens::parse(&[b"ok\n".as_slice(), &[0xff, 0xfe]].concat()).unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        let e = Tokens::parse(long.as_bytes()).unwrap_err();
        assert_eq!(e, format!("line 1: the token is 1018 bytes, longer than the limit of {MAX_TOKEN_BYTES} bytes"));
        assert!(Tokens::parse("x".repeat(MAX_TOKEN_BYTES).as_bytes()).is_ok());
    }

    #[test]
    fn checks_the_authorization_metadata() {
        let tokens = Tokens::parse(b"tdm_a_good\n").unwrap();
        let detail = |h: http::HeaderMap| match check(&h, &tokens) {
            Ok(()) => "ok".to_owned(),
            Err(e) => {
                assert_eq!(e.reason().as_str(), "UNAUTHENTICATED");
                assert_eq!(e.code(), tandem_core::Code::Unauthenticated);
                e.to_string()
            }
        };
        assert_eq!(detail(headers(&[("authorization", b"Bearer tdm_a_good")])), "ok");
        assert_eq!(detail(headers(&[("authorization", b"bearer  tdm_a_good ")])), "ok");
        assert_eq!(
            detail(headers(&[])),
            "the call has no authorization metadata: send \"authorization: Bearer <token>\""
        );
        assert!(detail(headers(&[("authorization-bin", b"AAE=")])).starts_with("binary metadata"));
        assert_eq!(detail(headers(&[("authorization", b"Bearer tdm_a_bad")])), "the bearer token is not accepted");
        assert_eq!(
            detail(headers(&[("authorization", b"Basic dXNlcjpwdw==")])),
            "authorization metadata is not \"Bearer <token>\""
        );
        assert_eq!(
            detail(headers(&[("authorization", b"tdm_a_good")])),
            "authorization metadata is not \"Bearer <token>\""
        );
        assert_eq!(detail(headers(&[("authorization", b"")])), "authorization metadata is not \"Bearer <token>\"");
        assert_eq!(
            detail(headers(&[("authorization", b"Bearer ")])),
            "authorization metadata has an empty bearer token"
        );
        assert_eq!(
            detail(headers(&[("authorization", b"Bearer tdm_a_good"), ("authorization", b"Bearer tdm_a_good")])),
            "the call has more than one authorization metadata value"
        );
        let huge = format!("Bearer {}", "x".repeat(5000));
        let e = check(&headers(&[("authorization", huge.as_bytes())]), &tokens).unwrap_err();
        assert_eq!(e.to_string(), "authorization metadata is 5007 bytes, longer than the limit of 1024 bytes");
        let m = e.metadata();
        assert_eq!((m["field"].as_str(), m["limit"].as_str(), m["actual"].as_str()), ("authorization", "1024", "5007"));
    }
}
