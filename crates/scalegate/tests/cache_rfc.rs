//! RFC 9111 (HTTP caching) and its neighbours, checked from outside against a real scripted
//! origin. Each test is named after the section it checks.

mod cache_support;
mod common;

use cache_support::*;
use scalegate_testkit::Origin;

/// The spellings of "do not share this" an origin may send; each must keep alice's response
/// from bob. The path names the spelling.
const PRIVATE_SPELLINGS: &[(&str, &str)] = &[
    ("/private", "max-age=3600, private"),
    ("/Private", "max-age=3600, Private"),
    ("/PRIVATE", "max-age=3600, PRIVATE"),
    ("/private-quoted", "max-age=3600, private=\"set-cookie\""),
    ("/private-ws", "max-age=3600 ,\t Private\t"),
    ("/private-field-list", "max-age=3600, PRIVATE=\"x-a, x-b\""),
    ("/No-Store", "max-age=3600, No-Store"),
    ("/NO-STORE", "MAX-AGE=3600, NO-STORE"),
    ("/No-CaChE", "No-CaChE, max-age=3600"),
    (
        "/no-cache-set-cookie",
        "no-cache=\"set-cookie\", max-age=3600",
    ),
    ("/no-cache-unquoted", "no-cache=set-cookie, max-age=3600"),
    ("/S-MAXAGE", "max-age=3600, S-MAXAGE=0"),
    ("/MaX-AgE", "MaX-AgE=0"),
];

/// An origin answering each user their own response, with the path's Cache-Control and a
/// Set-Cookie of the user's session.
async fn per_user_origin() -> Origin {
    Origin::start(|req, _| {
        let user = req
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nobody")
            .to_string();
        let cc = PRIVATE_SPELLINGS
            .iter()
            .find(|(p, _)| *p == req.uri.path())
            .map_or("max-age=3600", |(_, cc)| *cc);
        let cookie = format!("session={user}");
        resp(
            200,
            &[("cache-control", cc), ("set-cookie", &cookie)],
            &format!("account of {user}"),
        )
    })
    .await
}

#[tokio::test]
async fn rfc9111_5_2_directive_names_are_case_insensitive_alice_never_reaches_bob() {
    let o = per_user_origin().await;
    // Sharing Set-Cookie responses is on, so only the directives keep these apart.
    let g = gw(&o, "cache = { share_set_cookie = true }", "").await;
    for (path, cc) in PRIVATE_SPELLINGS {
        let a = get(&g, path, &[("x-user", "alice")]).await;
        assert_eq!(a.body, "account of alice", "{path}");
        for _ in 0..2 {
            let b = get(&g, path, &[("x-user", "bob")]).await;
            assert_eq!(
                b.body,
                "account of bob",
                "{cc:?}: bob got {:?} ({})",
                b.body,
                status(&b)
            );
            assert_eq!(b.header("set-cookie"), "session=bob", "{cc:?}");
            assert!(!is_hit(&b), "{cc:?}: {}", status(&b));
        }
        assert_eq!(o.hits(path), 3, "{cc:?}: every request reached the origin");
    }
    // The control: the same origin with a plain max-age is shared.
    get(&g, "/public", &[("x-user", "alice")]).await;
    let b = get(&g, "/public", &[("x-user", "bob")]).await;
    assert!(is_hit(&b), "{}", status(&b));
    assert_eq!(
        b.header("set-cookie"),
        "",
        "a stored cookie is never replayed"
    );
}
