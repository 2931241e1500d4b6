//! The admin console through the extended protocol (Parse, Bind, Describe, Execute, Sync), as
//! drivers send queries with parameters or prepared: console commands take no parameters, so a
//! statement is its text; Describe answers the command's columns without running it, and
//! Execute runs it. After an error, messages are skipped up to the next Sync.

use std::collections::HashMap;

use bytes::BytesMut;

use crate::pooler::Pooler;
use crate::proto::{self, Severity};

/// Statements and portals of one console session.
#[derive(Debug, Default)]
pub struct Extended {
    statements: HashMap<Vec<u8>, String>,
    portals: HashMap<Vec<u8>, String>,
    /// An error happened: skip until Sync.
    skipping: bool,
}

impl Extended {
    /// Answers one message other than Query and Terminate into `out`.
    pub async fn message(&mut self, pooler: &Pooler, msg: &[u8], out: &mut BytesMut) {
        let tag = msg[0];
        if tag == b'S' {
            self.skipping = false;
            self.portals.retain(|name, _| !name.is_empty());
            return proto::ready(out, b'I');
        }
        if self.skipping || tag == b'H' {
            return;
        }
        let mut body = &msg[5..];
        match tag {
            b'P' => {
                let (Some(name), Some(sql)) = (proto::cbytes(&mut body), proto::cstr(&mut body))
                else {
                    return self.fail(out, "08P01", "malformed Parse");
                };
                self.statements.insert(name.to_vec(), sql);
                simple(out, b'1');
            }
            b'B' => {
                let (Some(portal), Some(name)) =
                    (proto::cbytes(&mut body), proto::cbytes(&mut body))
                else {
                    return self.fail(out, "08P01", "malformed Bind");
                };
                let Some(sql) = self.statements.get(name).cloned() else {
                    return self.fail(out, "26000", "prepared statement does not exist");
                };
                self.portals.insert(portal.to_vec(), sql);
                simple(out, b'2');
            }
            b'D' => {
                let kind = body.first().copied();
                let mut rest = body.get(1..).unwrap_or_default();
                let name = proto::cbytes(&mut rest).unwrap_or_default();
                let sql = match kind {
                    Some(b'S') => self.statements.get(name),
                    _ => self.portals.get(name),
                };
                let Some(sql) = sql else {
                    return self.fail(out, "34000", "no such statement or portal");
                };
                if kind == Some(b'S') {
                    // No parameters.
                    proto::message(out, b't', |o| o.extend_from_slice(&[0, 0]));
                }
                match crate::console::columns_of(sql) {
                    Some(cols) => proto::row_description(out, cols),
                    None => simple(out, b'n'),
                }
            }
            b'E' => {
                let portal = proto::cbytes(&mut body).unwrap_or_default();
                let Some(sql) = self.portals.get(portal).cloned() else {
                    return self.fail(out, "34000", "portal does not exist");
                };
                let mut answer = BytesMut::new();
                crate::console::command(pooler, &sql, &mut answer).await;
                // Execute sends rows and the tag; the columns came with Describe.
                for (t, m) in proto::messages(&answer) {
                    match t {
                        b'T' => {}
                        b'E' => {
                            self.skipping = true;
                            out.extend_from_slice(m);
                        }
                        _ => out.extend_from_slice(m),
                    }
                }
            }
            b'C' => {
                let kind = body.first().copied();
                let mut rest = body.get(1..).unwrap_or_default();
                let name = proto::cbytes(&mut rest).unwrap_or_default();
                match kind {
                    Some(b'S') => self.statements.remove(name),
                    _ => self.portals.remove(name),
                };
                simple(out, b'3');
            }
            _ => self.fail(out, "0A000", "the admin console does not take this message"),
        }
    }

    fn fail(&mut self, out: &mut BytesMut, code: &str, msg: &str) {
        proto::error(out, Severity::Error, code, msg);
        self.skipping = true;
    }
}

/// A message with no body.
fn simple(out: &mut BytesMut, tag: u8) {
    proto::message(out, tag, |_| {});
}
