use super::*;
use proptest::prelude::*;

fn cc(v: &str) -> Directives {
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, v.parse().unwrap());
    Directives::of(&h)
}

#[test]
fn parses_the_stale_extensions() {
    let d = cc("max-age=60, stale-while-revalidate=30, stale-if-error=\"600\"");
    assert_eq!(d.max_age, Some(Duration::from_secs(60)));
    assert_eq!(d.stale_while_revalidate, Some(Duration::from_secs(30)));
    assert_eq!(d.stale_if_error, Some(Duration::from_secs(600)));
    assert!(d.allows_stale());
}

#[test]
fn revalidation_directives_forbid_stale() {
    for v in [
        "max-age=1, must-revalidate",
        "proxy-revalidate",
        "no-cache",
        "s-maxage=5",
    ] {
        assert!(!cc(v).allows_stale(), "{v}");
    }
}

#[test]
fn rfc9111_5_2_directive_names_are_case_insensitive() {
    let d = cc("Private, NO-STORE, No-CaChE, MaX-AgE=7, S-MAXAGE=9, Must-Understand");
    assert!(d.private && d.no_store && d.no_cache && d.must_understand);
    assert_eq!(d.max_age, Some(Duration::from_secs(7)));
    assert_eq!(d.s_maxage, Some(Duration::from_secs(9)));
}

#[test]
fn rfc9111_5_2_quoted_values_and_commas_inside_quotes() {
    let d = cc(r#"no-cache="set-cookie, x-a", max-age = "60" , private="x, max-age=5""#);
    assert!(d.no_cache && d.private);
    assert_eq!(d.max_age, Some(Duration::from_secs(60)));
    // A directive hidden inside a quoted string is not a directive.
    let d = cc(r#"x-ext="a, no-store, b", max-age=5"#);
    assert!(!d.no_store);
    assert_eq!(d.max_age, Some(Duration::from_secs(5)));
    let d = cc(r#"x-ext="a\", no-store", max-age=5"#);
    assert!(!d.no_store, "an escaped quote does not end the string");
}

#[test]
fn rfc9111_1_2_2_delta_seconds() {
    assert_eq!(
        cc("max-age=abc").max_age,
        Some(Duration::ZERO),
        "invalid = stale"
    );
    assert_eq!(cc("max-age=-1").max_age, Some(Duration::ZERO));
    assert_eq!(cc("max-age=").max_age, Some(Duration::ZERO));
    assert_eq!(
        cc("max-age=99999999999999999999999").max_age,
        Some(MAX_DELTA)
    );
    assert_eq!(cc("max-stale").max_stale, Some(MAX_DELTA));
    assert_eq!(cc("max-stale=x").max_stale, None);
    assert_eq!(
        cc("max-age=5, max-age=9").max_age,
        Some(Duration::from_secs(5))
    );
}

#[test]
fn pragma_counts_only_without_cache_control() {
    let mut h = HeaderMap::new();
    h.insert(header::PRAGMA, "No-Cache".parse().unwrap());
    assert!(request_no_cache(&h, &Directives::of(&h)));
    h.insert(header::CACHE_CONTROL, "max-age=10".parse().unwrap());
    assert!(!request_no_cache(&h, &Directives::of(&h)));
}

/// A directive of the reference model: which one, and how it is spelled.
#[derive(Clone, Debug)]
enum Model {
    Flag(&'static str),
    Secs(&'static str, u64),
    BadSecs(&'static str),
    Fields(&'static str, Vec<String>),
    Unknown(String, String),
}

const FLAGS: [&str; 10] = [
    "no-cache",
    "no-store",
    "private",
    "public",
    "no-transform",
    "must-revalidate",
    "proxy-revalidate",
    "must-understand",
    "immutable",
    "only-if-cached",
];
const SECS: [&str; 6] = [
    "max-age",
    "s-maxage",
    "min-fresh",
    "max-stale",
    "stale-while-revalidate",
    "stale-if-error",
];

fn model() -> impl Strategy<Value = Model> {
    let field = "[a-z-]{1,8}";
    prop_oneof![
        prop::sample::select(FLAGS.to_vec()).prop_map(Model::Flag),
        (prop::sample::select(SECS.to_vec()), 0u64..100_000).prop_map(|(n, s)| Model::Secs(n, s)),
        prop::sample::select(SECS.to_vec()).prop_map(Model::BadSecs),
        (
            prop::sample::select(vec!["no-cache", "private"]),
            prop::collection::vec(field, 1..3)
        )
            .prop_map(|(n, f)| Model::Fields(n, f)),
        // An unknown extension whose quoted value looks like directives.
        ("x-[a-z]{1,6}", "[a-z ,=-]{0,12}").prop_map(|(n, v)| Model::Unknown(n, v)),
    ]
}

/// `name` in a random mix of cases.
fn spell(name: &str, case: &[bool]) -> String {
    name.chars()
        .zip(case.iter().cycle())
        .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
        .collect()
}

fn render(m: &Model, case: &[bool], quote: bool, ws: &str) -> String {
    let q = |v: &str| {
        if quote {
            format!("\"{v}\"")
        } else {
            v.to_string()
        }
    };
    match m {
        Model::Flag(n) => spell(n, case),
        Model::Secs(n, s) => format!("{}{ws}={ws}{}", spell(n, case), q(&s.to_string())),
        Model::BadSecs(n) => format!("{}={}", spell(n, case), q("1x")),
        Model::Fields(n, f) => format!("{}=\"{}\"", spell(n, case), f.join(", ")),
        Model::Unknown(n, v) => format!("{n}=\"{v}\""),
    }
}

/// What the RFC says the list means: first occurrence wins, invalid max-age/s-maxage is 0.
fn expected(ms: &[Model]) -> Directives {
    let mut d = Directives::default();
    for m in ms {
        match m {
            Model::Flag(n) | Model::Fields(n, _) => match *n {
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "no-transform" => d.no_transform = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "must-understand" => d.must_understand = true,
                "immutable" => d.immutable = true,
                _ => d.only_if_cached = true,
            },
            Model::Secs(n, s) => set(&mut d, n, Some(Duration::from_secs(*s))),
            Model::BadSecs(n) => set(&mut d, n, None),
            Model::Unknown(..) => {}
        }
    }
    d
}

fn set(d: &mut Directives, name: &str, v: Option<Duration>) {
    let zero_if_bad = v.or(Some(Duration::ZERO));
    let (slot, v) = match name {
        "max-age" => (&mut d.max_age, zero_if_bad),
        "s-maxage" => (&mut d.s_maxage, zero_if_bad),
        "min-fresh" => (&mut d.min_fresh, v),
        "max-stale" => (&mut d.max_stale, v),
        "stale-while-revalidate" => (&mut d.stale_while_revalidate, v),
        _ => (&mut d.stale_if_error, v),
    };
    if slot.is_none() {
        *slot = v;
    }
}

proptest! {
    #[test]
    fn rfc9111_5_2_parser_matches_the_reference_model(
        ms in prop::collection::vec(model(), 0..8),
        case in prop::collection::vec(any::<bool>(), 1..6),
        quote in any::<bool>(),
        ws in prop::sample::select(vec!["", " ", "\t", "  "]),
        split in any::<bool>(),
    ) {
        let items: Vec<String> = ms.iter().map(|m| render(m, &case, quote, ws)).collect();
        let mut h = HeaderMap::new();
        if split && items.len() > 1 {
            // The same list over two field lines.
            let (a, b) = items.split_at(items.len() / 2);
            h.append(header::CACHE_CONTROL, a.join(",").parse().unwrap());
            h.append(header::CACHE_CONTROL, b.join(&format!("{ws},{ws}")).parse().unwrap());
        } else {
            let line = items.join(&format!("{ws},{ws}"));
            h.insert(header::CACHE_CONTROL, format!("{ws}{line}{ws}").parse().unwrap());
        }
        prop_assert_eq!(Directives::of(&h), expected(&ms));
    }
}
