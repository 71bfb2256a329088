//! Basic auth against bcrypt hashes, and the response headers the web config sets.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::sync::Semaphore;

use crate::server::HEALTH_PATH;

/// Users and their bcrypt hashes. A bcrypt check costs tens of milliseconds by design, so
/// the password last verified for each user is remembered and a scrape every few seconds
/// does not pay it again; other attempts pay it one at a time, and only a few may wait.
pub(super) struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashMap<String, Vec<u8>>>,
    /// One bcrypt at a time. The permit moves into the blocking task, so a client that
    /// hangs up mid-check does not let the next check start beside it.
    bcrypt: Arc<Semaphore>,
    /// Checks that may wait for their turn; past it the answer is 503 at once, so a flood
    /// of wrong passwords cannot hold a first right one for longer than a scrape timeout.
    waiting: Semaphore,
    /// Checks in line per client address: one client's flood takes at most
    /// [`PER_CLIENT`] places, and another client's first right password still gets one.
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// Places in line one client address may hold: one being checked and one waiting.
const PER_CLIENT: usize = 2;

/// A client's place in line, given back when dropped.
struct Place<'a>(&'a Mutex<HashMap<IpAddr, usize>>, IpAddr);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// See [`BasicAuth::waiting`]: at cost 10 (about 50 ms) the last in line waits under 1 s.
const MAX_WAITING: usize = 16;
/// Costs accepted in a hash: below 4 bcrypt cannot check it, above 16 one check takes
/// seconds and would hold every other attempt.
const COSTS: std::ops::RangeInclusive<u32> = 4..=16;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Allowed,
    Denied,
    /// Too many checks waiting.
    Busy,
}

impl BasicAuth {
    /// Checks every hash; the error names the user, never the hash.
    pub(super) fn new(users: BTreeMap<String, String>) -> Result<BasicAuth, (String, String)> {
        for (user, hash) in &users {
            if user.contains(':') {
                return Err((user.clone(), "a user name cannot contain ':'".into()));
            }
            let Ok(parts) = hash.parse::<bcrypt::HashParts>() else {
                return Err((user.clone(), "the password is not a bcrypt hash".into()));
            };
            if !COSTS.contains(&parts.get_cost()) {
                return Err((
                    user.clone(),
                    format!(
                        "bcrypt cost {} is outside {}-{} (htpasswd -B uses 5, 10 is common)",
                        parts.get_cost(),
                        COSTS.start(),
                        COSTS.end()
                    ),
                ));
            }
        }
        Ok(BasicAuth {
            users,
            verified: Mutex::new(HashMap::new()),
            bcrypt: Arc::new(Semaphore::new(1)),
            waiting: Semaphore::new(MAX_WAITING),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// A place in line for `client`, if it has fewer than [`PER_CLIENT`].
    fn place(&self, client: IpAddr) -> Option<Place<'_>> {
        let mut m = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(client).or_insert(0);
        if *n >= PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(Place(&self.per_client, client))
    }

    /// `client` is the peer's address, when the listener knows it.
    pub(super) async fn check(
        &self,
        client: Option<IpAddr>,
        authorization: Option<&HeaderValue>,
    ) -> Verdict {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return Verdict::Denied;
        };
        {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified
                .get(&user)
                .is_some_and(|known| same(known, &password))
            {
                return Verdict::Allowed;
            }
        }
        let known = self.users.get(&user).cloned();
        // An unknown user is checked against a real hash too, so that the answer takes as
        // long as for a known one and does not tell which users exist.
        let Some(hash) = known
            .clone()
            .or_else(|| self.users.values().next().cloned())
        else {
            return Verdict::Denied;
        };
        let _place = match client {
            Some(ip) => match self.place(ip) {
                Some(p) => Some(p),
                None => return Verdict::Busy,
            },
            None => None,
        };
        let Ok(_in_line) = self.waiting.try_acquire() else {
            return Verdict::Busy;
        };
        let Ok(turn) = self.bcrypt.clone().acquire_owned().await else {
            return Verdict::Denied;
        };
        let pw = password.clone();
        let matched = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            bcrypt::verify(&pw, &hash)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false);
        if !(matched && known.is_some()) {
            return Verdict::Denied;
        }
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user, password);
        Verdict::Allowed
    }
}

/// `Basic base64(user:password)` → (user, password); None for anything else.
fn credentials(v: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let (scheme, rest) = v.to_str().ok()?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let (user, password) = raw.split_at(colon);
    let user = String::from_utf8(user.to_vec()).ok()?;
    Some((user, password.get(1..)?.to_vec()))
}

/// Equality whose time does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the web config puts in front of every route: basic auth (all but the health check,
/// which kubelet and systemd probes reach without credentials and which says only "OK"),
/// and extra response headers.
#[derive(Clone, Default)]
pub struct Guard {
    auth: Option<Arc<BasicAuth>>,
    headers: Arc<HeaderMap>,
}

impl Guard {
    pub(super) fn new(auth: Option<Arc<BasicAuth>>, headers: HeaderMap) -> Guard {
        Guard {
            auth,
            headers: Arc::new(headers),
        }
    }

    pub fn requires_auth(&self) -> bool {
        self.auth.is_some()
    }

    pub fn protect(&self, router: Router) -> Router {
        if self.auth.is_none() && self.headers.is_empty() {
            return router;
        }
        router.layer(axum::middleware::from_fn_with_state(self.clone(), guard))
    }
}

async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let verdict = match &g.auth {
        Some(auth) if req.uri().path() != HEALTH_PATH => {
            let client = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            auth.check(client, req.headers().get(header::AUTHORIZATION))
                .await
        }
        _ => Verdict::Allowed,
    };
    let mut resp = match verdict {
        Verdict::Allowed => next.run(req).await,
        Verdict::Denied => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic")],
            "Unauthorized\n",
        )
            .into_response(),
        Verdict::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many authentication attempts in progress\n",
        )
            .into_response(),
    };
    for (name, value) in g.headers.iter() {
        resp.headers_mut().insert(name, value.clone());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> HeaderValue {
        let enc = base64::engine::general_purpose::STANDARD.encode(s);
        HeaderValue::from_str(&format!("Basic {enc}")).unwrap()
    }

    #[test]
    fn credentials_split_at_the_first_colon() {
        assert_eq!(
            credentials(&basic("u:p:q")),
            Some(("u".into(), b"p:q".to_vec()))
        );
        assert_eq!(credentials(&basic("u:")), Some(("u".into(), vec![])));
        assert_eq!(credentials(&basic("nocolon")), None);
        assert_eq!(credentials(&HeaderValue::from_static("Bearer abc")), None);
        assert_eq!(credentials(&HeaderValue::from_static("Basic !!!")), None);
        assert_eq!(credentials(&HeaderValue::from_static("Basic")), None);
    }

    #[test]
    fn hashes_are_checked_at_load() {
        let users = |h: &str| BTreeMap::from([("prom".to_owned(), h.to_owned())]);
        let e = BasicAuth::new(users("secret")).err().unwrap();
        assert_eq!(
            e,
            ("prom".into(), "the password is not a bcrypt hash".into())
        );
        let colon = BTreeMap::from([("a:b".to_owned(), "x".to_owned())]);
        assert!(BasicAuth::new(colon).is_err());
    }

    async fn login(auth: &BasicAuth, user_password: &str) -> Verdict {
        auth.check(None, Some(&basic(user_password))).await
    }

    #[tokio::test]
    async fn right_wrong_and_unknown() {
        // Cost 4 keeps the test fast; htpasswd's $2y$ hashes are tested in tests/web.rs.
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_owned(), hash)])).unwrap();
        assert_eq!(auth.check(None, None).await, Verdict::Denied);
        assert_eq!(login(&auth, "prom:wrong").await, Verdict::Denied);
        assert_eq!(login(&auth, "other:s3cret").await, Verdict::Denied);
        assert_eq!(login(&auth, "prom:s3cret").await, Verdict::Allowed);
        // Remembered, and the memory does not widen what passes.
        assert_eq!(login(&auth, "prom:s3cret").await, Verdict::Allowed);
        assert_eq!(login(&auth, "prom:s3cret2").await, Verdict::Denied);
        assert_eq!(login(&auth, "prom:s3cre").await, Verdict::Denied);
    }

    #[tokio::test]
    async fn one_client_holds_two_places_at_most() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_owned(), hash)])).unwrap();
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 1].into();
        let (p1, p2) = (auth.place(a), auth.place(a));
        assert!(p1.is_some() && p2.is_some());
        assert!(auth.place(a).is_none(), "a third place for the same client");
        let wrong = basic("prom:wrong");
        assert_eq!(auth.check(Some(a), Some(&wrong)).await, Verdict::Busy);
        // Another client is not held back.
        assert_eq!(
            auth.check(Some(b), Some(&basic("prom:s3cret"))).await,
            Verdict::Allowed
        );
        drop(p1);
        assert_eq!(auth.check(Some(a), Some(&wrong)).await, Verdict::Denied);
        drop(p2);
        assert!(
            auth.per_client.lock().unwrap().is_empty(),
            "places are given back"
        );
    }
}
