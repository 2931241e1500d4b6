use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

/// A response of `status` with `pairs`, received at `t` (sent at the same time).
fn check(status: u16, pairs: &[(&str, &str)], t: SystemTime) -> (Result<(), NotStored>, Freshness) {
    check_req(&[], status, pairs, t)
}

fn check_req(
    req: &[(&str, &str)],
    status: u16,
    pairs: &[(&str, &str)],
    t: SystemTime,
) -> (Result<(), NotStored>, Freshness) {
    let req = headers(req);
    let h = headers(pairs);
    let targets = [HeaderName::from_static("cdn-cache-control")];
    let (d, targeted) = effective(&h, &targets);
    let x = Exchange {
        request: &req,
        status: StatusCode::from_u16(status).unwrap(),
        headers: &h,
        directives: &d,
        targeted,
        sent: t,
        received: t,
    };
    (x.storable(), x.freshness())
}

/// 2026-11-23T00:00:00Z, and its IMF-fixdate.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_392_000)
}
const DATE: &str = "Mon, 23 Nov 2026 00:00:00 GMT";

#[test]
fn rfc9110_5_6_7_expires_in_all_three_date_formats() {
    for expires in [
        "Mon, 23 Nov 2026 01:00:00 GMT",
        "Monday, 23-Nov-26 01:00:00 GMT",
        "Mon Nov 23 01:00:00 2026",
    ] {
        let (ok, f) = check(200, &[("date", DATE), ("expires", expires)], t0());
        assert_eq!(ok, Ok(()), "{expires}");
        assert_eq!(f.lifetime, Duration::from_secs(3600), "{expires}");
    }
}

#[test]
fn rfc9111_5_3_invalid_expires_means_already_expired() {
    for expires in ["0", "Mon,  23 Nov 2026 01:00:00 GMT", "tomorrow", ""] {
        let (ok, f) = check(200, &[("date", DATE), ("expires", expires)], t0());
        assert_eq!(ok, Ok(()), "{expires:?} is still explicit");
        assert_eq!(f.lifetime, Duration::ZERO, "{expires:?}");
    }
    // Expires counts from Date, not from arrival.
    let late = t0() + Duration::from_secs(600);
    let (_, f) = check(
        200,
        &[("date", DATE), ("expires", "Mon, 23 Nov 2026 01:00:00 GMT")],
        late,
    );
    assert_eq!(f.lifetime, Duration::from_secs(3600));
    assert_eq!(
        late.duration_since(f.born).unwrap(),
        Duration::from_secs(600)
    );
}

#[test]
fn rfc9111_4_2_1_s_maxage_then_max_age_then_expires() {
    let (_, f) = check(
        200,
        &[
            ("cache-control", "max-age=60, s-maxage=5"),
            ("expires", "0"),
        ],
        t0(),
    );
    assert_eq!(f.lifetime, Duration::from_secs(5));
    assert!(f.strict, "s-maxage forbids serving stale");
    let (_, f) = check(
        200,
        &[("cache-control", "max-age=60"), ("expires", "0")],
        t0(),
    );
    assert_eq!(f.lifetime, Duration::from_secs(60));
    assert!(!f.strict);
}

#[test]
fn rfc9111_5_1_age_uses_the_first_value_and_ignores_invalid_ones() {
    let cc = ("cache-control", "max-age=10000");
    for (age, want) in [
        ("7200, 0", 7200),
        ("7200,0", 7200),
        ("abc", 0),
        ("-5", 0),
        ("12", 12),
    ] {
        let (_, f) = check(200, &[cc, ("age", age)], t0());
        assert_eq!(
            t0().duration_since(f.born).unwrap(),
            Duration::from_secs(want),
            "Age: {age}"
        );
    }
}

#[test]
fn rfc9111_4_2_3_apparent_age_from_date() {
    // Date 100 s before arrival, no Age: 100 s old on arrival.
    let (_, f) = check(
        200,
        &[("cache-control", "max-age=60"), ("date", DATE)],
        t0() + Duration::from_secs(100),
    );
    assert_eq!(f.born, t0());
    // A Date in the future is no negative age.
    let (_, f) = check(
        200,
        &[("cache-control", "max-age=60"), ("date", DATE)],
        t0() - Duration::from_secs(5),
    );
    assert_eq!(f.born, t0() - Duration::from_secs(5));
    // Arrival within the Date's second: age 0.
    let (_, f) = check(
        200,
        &[("cache-control", "max-age=60"), ("date", DATE)],
        t0() + Duration::from_millis(900),
    );
    assert_eq!(f.born, t0() + Duration::from_millis(900));
}

#[test]
fn rfc9111_3_any_final_status_with_explicit_freshness_is_storable() {
    for status in [200, 201, 299, 400, 403, 418, 499, 500, 502, 503, 504, 599] {
        for cc in [
            ("cache-control", "max-age=60"),
            ("cache-control", "s-maxage=60"),
            ("expires", "Mon, 23 Nov 2026 01:00:00 GMT"),
        ] {
            assert_eq!(
                check(status, &[cc, ("date", DATE)], t0()).0,
                Ok(()),
                "{status} {cc:?}"
            );
        }
    }
    assert_eq!(
        check(206, &[("cache-control", "max-age=60")], t0()).0,
        Err(NotStored::Partial)
    );
    assert_eq!(
        check(304, &[("cache-control", "max-age=60")], t0()).0,
        Err(NotStored::NotModified)
    );
}

#[test]
fn rfc9110_15_1_heuristic_freshness_only_for_heuristically_cacheable_statuses() {
    let lm = ("last-modified", "Mon, 16 Nov 2026 00:00:00 GMT");
    for status in HEURISTIC.into_iter().filter(|s| *s != 206) {
        let (ok, f) = check(status, &[("date", DATE), lm], t0());
        assert_eq!(ok, Ok(()), "{status}");
        // 10% of a week, capped at a day.
        assert_eq!(
            f.lifetime,
            Duration::from_secs(7 * 86400 / 10).min(HEURISTIC_MAX)
        );
    }
    for status in [201, 302, 400, 403, 500, 503] {
        assert_eq!(
            check(status, &[("date", DATE), lm], t0()).0,
            Err(NotStored::Status),
            "{status}"
        );
    }
    // `public` makes any status heuristically cacheable.
    let (ok, f) = check(
        500,
        &[("date", DATE), lm, ("cache-control", "public")],
        t0(),
    );
    assert_eq!(ok, Ok(()));
    assert!(f.lifetime > Duration::ZERO);
}

#[test]
fn rfc9111_5_2_2_3_must_understand_overrides_no_store_for_understood_statuses() {
    let cc = ("cache-control", "max-age=60, no-store, must-understand");
    assert_eq!(check(200, &[cc], t0()).0, Ok(()));
    assert_eq!(check(404, &[cc], t0()).0, Ok(()));
    assert_eq!(check(299, &[cc], t0()).0, Err(NotStored::MustUnderstand));
    assert_eq!(check(500, &[cc], t0()).0, Err(NotStored::MustUnderstand));
    assert_eq!(
        check(200, &[("cache-control", "max-age=60, NO-STORE")], t0()).0,
        Err(NotStored::NoStore)
    );
}

#[test]
fn rfc9111_3_private_authorization_and_request_no_store() {
    let ma = ("cache-control", "max-age=60");
    assert_eq!(
        check(200, &[("cache-control", "max-age=60, Private")], t0()).0,
        Err(NotStored::Private)
    );
    let auth = [("authorization", "Bearer x")];
    assert_eq!(
        check_req(&auth, 200, &[ma], t0()).0,
        Err(NotStored::Authorization)
    );
    for cc in ["public", "s-maxage=5", "must-revalidate, max-age=5"] {
        assert_eq!(
            check_req(&auth, 200, &[("cache-control", cc)], t0()).0,
            Ok(()),
            "{cc}"
        );
    }
    assert_eq!(
        check_req(&[("cache-control", "No-Store")], 200, &[ma], t0()).0,
        Err(NotStored::RequestNoStore)
    );
}

#[test]
fn rfc9213_2_2_a_targeted_field_replaces_cache_control_and_expires() {
    let (ok, f) = check(
        200,
        &[
            ("cache-control", "no-store"),
            ("expires", "0"),
            ("cdn-cache-control", "max-age=600"),
        ],
        t0(),
    );
    assert_eq!(ok, Ok(()));
    assert_eq!(f.lifetime, Duration::from_secs(600));
    // The targeted field may also forbid what Cache-Control allows.
    let (ok, _) = check(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "no-store"),
        ],
        t0(),
    );
    assert_eq!(ok, Err(NotStored::NoStore));
    // Empty: ignored.
    let (_, f) = check(
        200,
        &[("cache-control", "max-age=60"), ("cdn-cache-control", " ")],
        t0(),
    );
    assert_eq!(f.lifetime, Duration::from_secs(60));
}

#[test]
fn rfc9111_5_4_response_pragma_no_cache_without_cache_control() {
    let (_, f) = check(
        200,
        &[
            ("pragma", "no-cache"),
            ("expires", "Mon, 23 Nov 2026 01:00:00 GMT"),
            ("date", DATE),
        ],
        t0(),
    );
    assert_eq!(f.lifetime, Duration::ZERO);
}
