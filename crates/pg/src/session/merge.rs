//! Merging fanned-out rows into the order one database would give: each ORDER BY value is
//! turned into a key compared exactly as PostgreSQL compares its type (integers exactly, not
//! through floats; numeric as decimals; NaN above every number; NULLs where NULLS FIRST/LAST
//! puts them). Text is merged in byte order, which is PostgreSQL's only under the "C"
//! collation, so it needs `COLLATE "C"`; a type we cannot compare faithfully is refused.

use std::cmp::Ordering;

use bytes::{Buf, Bytes};

use crate::proto;
use crate::sharding::{Merge, SortKey};

/// A value as its type orders it.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Null,
    Int(i128),
    /// Ordered with NaN above +Infinity, as PostgreSQL does.
    Float(f64),
    /// A decimal: negative?, integer digits without leading zeros, fraction digits without
    /// trailing zeros; None for NaN (above every number).
    Dec(Option<(bool, String, String)>),
    Bytes(Vec<u8>),
}

/// The rows sorted by `merge.order_by` and cut to its limit; `desc` is the RowDescription.
pub(super) fn merge_rows(
    desc: Option<&[u8]>,
    rows: Vec<Bytes>,
    merge: &Merge,
) -> Result<Vec<Bytes>, String> {
    let mut rows = rows;
    if !merge.order_by.is_empty() {
        let Some(cols) = desc.map(columns) else {
            return Err("cannot merge ORDER BY without a row description".into());
        };
        let mut picked = Vec::new();
        for o in &merge.order_by {
            let idx = match &o.key {
                SortKey::Position(p) => p.checked_sub(1),
                SortKey::Name(n) => cols.iter().position(|c| &c.0 == n),
            };
            match idx.and_then(|i| cols.get(i).map(|c| (i, c.1, c.2))) {
                Some(k) => picked.push(k),
                None => {
                    return Err("a fanned-out ORDER BY column must be in the select list".into());
                }
            }
        }
        let mut keyed = Vec::with_capacity(rows.len());
        for r in rows {
            let vals = values(&r);
            let mut keys = Vec::with_capacity(picked.len());
            for (&(i, oid, binary), o) in picked.iter().zip(&merge.order_by) {
                keys.push(key(
                    vals.get(i).copied().flatten(),
                    oid,
                    binary,
                    o.byte_order,
                )?);
            }
            keyed.push((keys, r));
        }
        keyed.sort_by(|(a, _), (b, _)| {
            for ((x, y), o) in a.iter().zip(b).zip(&merge.order_by) {
                let ord = match (x, y) {
                    (Key::Null, Key::Null) => Ordering::Equal,
                    (Key::Null, _) if o.nulls_first => Ordering::Less,
                    (Key::Null, _) => Ordering::Greater,
                    (_, Key::Null) if o.nulls_first => Ordering::Greater,
                    (_, Key::Null) => Ordering::Less,
                    _ if o.desc => compare(y, x),
                    _ => compare(x, y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            Ordering::Equal
        });
        rows = keyed.into_iter().map(|(_, r)| r).collect();
    }
    if let Some(l) = merge.limit {
        rows.truncate(usize::try_from(l).unwrap_or(usize::MAX));
    }
    Ok(rows)
}

/// The sort key of one value of type `oid` in text or binary format.
fn key(v: Option<&[u8]>, oid: i32, binary: bool, byte_order: bool) -> Result<Key, String> {
    let Some(v) = v else {
        return Ok(Key::Null);
    };
    let bad = || format!("cannot merge ORDER BY: a value of type {oid} is not understood");
    let text = || std::str::from_utf8(v).map(str::trim).map_err(|_| bad());
    Ok(match oid {
        // int8, int2, int4, oid
        20 | 21 | 23 | 26 => Key::Int(if binary {
            match v.len() {
                8 => i128::from(i64::from_be_bytes(v.try_into().map_err(|_| bad())?)),
                4 if oid == 26 => i128::from(u32::from_be_bytes(v.try_into().map_err(|_| bad())?)),
                4 => i128::from(i32::from_be_bytes(v.try_into().map_err(|_| bad())?)),
                2 => i128::from(i16::from_be_bytes(v.try_into().map_err(|_| bad())?)),
                _ => return Err(bad()),
            }
        } else {
            text()?.parse().map_err(|_| bad())?
        }),
        // float4, float8
        700 | 701 => Key::Float(if binary {
            match v.len() {
                8 => f64::from_be_bytes(v.try_into().map_err(|_| bad())?),
                4 => f64::from(f32::from_be_bytes(v.try_into().map_err(|_| bad())?)),
                _ => return Err(bad()),
            }
        } else {
            match text()? {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                t => t.parse().map_err(|_| bad())?,
            }
        }),
        1700 if !binary => decimal(text()?).ok_or_else(bad)?,
        // bool, uuid: byte order is their order in both formats.
        16 | 2950 => Key::Bytes(v.to_vec()),
        // date, timestamp: binary is a count from 2000-01-01; ISO text with a four-digit
        // year (no BC, no infinity) sorts by bytes.
        1082 if binary && v.len() == 4 => Key::Int(i128::from(i32::from_be_bytes(
            v.try_into().map_err(|_| bad())?,
        ))),
        1114 | 1184 if binary && v.len() == 8 => Key::Int(i128::from(i64::from_be_bytes(
            v.try_into().map_err(|_| bad())?,
        ))),
        1082 | 1114 if iso_date(text()?) => Key::Bytes(v.to_vec()),
        // text, varchar, bpchar, name, "char"
        25 | 1043 | 1042 | 19 | 18 if byte_order => Key::Bytes(v.to_vec()),
        25 | 1043 | 1042 | 19 | 18 => {
            return Err(
                "ORDER BY a text column is merged across shards in byte order, which is PostgreSQL's order only under the \"C\" collation: write ORDER BY column COLLATE \"C\"".into(),
            );
        }
        _ => {
            return Err(format!(
                "cannot merge ORDER BY on a column of type {oid} across shards (integers, floats, numeric, bool, uuid, date, timestamp and text COLLATE \"C\" can be)"
            ));
        }
    })
}

fn iso_date(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && !t.ends_with("BC")
}

/// A numeric's text as a decimal key.
fn decimal(t: &str) -> Option<Key> {
    if t == "NaN" {
        return Some(Key::Dec(None));
    }
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let int = int.trim_start_matches('0').to_string();
    let frac = frac.trim_end_matches('0').to_string();
    let zero = int.is_empty() && frac.is_empty();
    Some(Key::Dec(Some((neg && !zero, int, frac))))
}

fn compare(a: &Key, b: &Key) -> Ordering {
    match (a, b) {
        (Key::Int(x), Key::Int(y)) => x.cmp(y),
        (Key::Float(x), Key::Float(y)) => match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            _ => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        },
        (Key::Dec(x), Key::Dec(y)) => match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some((xn, xi, xf)), Some((yn, yi, yf))) => match (xn, yn) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (neg, _) => {
                    let mag = xi
                        .len()
                        .cmp(&yi.len())
                        .then_with(|| xi.cmp(yi))
                        .then_with(|| xf.cmp(yf));
                    if *neg { mag.reverse() } else { mag }
                }
            },
        },
        (Key::Bytes(x), Key::Bytes(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// The item count that opens a RowDescription or DataRow body, and what follows it.
fn counted(m: &[u8]) -> Option<(i16, &[u8])> {
    let mut b = m.get(5..)?;
    if b.len() < 2 {
        return None;
    }
    Some((b.get_i16().max(0), b))
}

/// (name, type oid, binary) of each column of a RowDescription.
fn columns(m: &[u8]) -> Vec<(String, i32, bool)> {
    let Some((n, mut b)) = counted(m) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for _ in 0..n {
        let Some(name) = proto::cstr(&mut b) else {
            break;
        };
        if b.len() < 18 {
            break;
        }
        b.advance(6);
        let oid = b.get_i32();
        b.advance(6);
        let format = b.get_i16();
        out.push((name, oid, format == 1));
    }
    out
}

/// The values of a DataRow.
fn values(m: &[u8]) -> Vec<Option<&[u8]>> {
    let Some((n, mut b)) = counted(m) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for _ in 0..n {
        if b.len() < 4 {
            break;
        }
        let len = b.get_i32();
        if len < 0 {
            out.push(None);
        } else {
            let len = (len as usize).min(b.len());
            out.push(Some(&b[..len]));
            b.advance(len);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(t: &str, oid: i32) -> Key {
        key(Some(t.as_bytes()), oid, false, true).expect("key")
    }

    #[test]
    fn numbers_compare_exactly() {
        // Equal as f64, different as integers.
        assert_eq!(
            compare(&k("9007199254740993", 20), &k("9007199254740992", 20)),
            Ordering::Greater
        );
        assert_eq!(
            compare(&k("NaN", 701), &k("Infinity", 701)),
            Ordering::Greater
        );
        assert_eq!(
            compare(&k("-1.50", 1700), &k("-1.5", 1700)),
            Ordering::Equal
        );
        assert_eq!(compare(&k("-2", 1700), &k("-1.99", 1700)), Ordering::Less);
        assert_eq!(
            compare(&k("10.01", 1700), &k("9.999", 1700)),
            Ordering::Greater
        );
        assert_eq!(
            compare(&k("0.1", 1700), &k("0.09", 1700)),
            Ordering::Greater
        );
        assert_eq!(compare(&k("-0", 1700), &k("0.0", 1700)), Ordering::Equal);
        assert_eq!(
            compare(&k("NaN", 1700), &k("1e3", 701)),
            Ordering::Equal,
            "types differ"
        );
    }

    #[test]
    fn text_needs_the_c_collation_and_odd_types_are_refused() {
        assert!(key(Some(b"a"), 25, false, false).is_err());
        assert!(key(Some(b"a"), 25, false, true).is_ok());
        assert!(key(Some(b"(1,2)"), 600, false, true).is_err());
        assert!(key(Some(b"2024-01-01 10:00:00+01"), 1184, false, false).is_err());
        assert!(key(Some(b"infinity"), 1082, false, false).is_err());
        assert_eq!(key(None, 600, false, false), Ok(Key::Null));
    }
}
