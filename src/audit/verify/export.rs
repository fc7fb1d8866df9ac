//! An export file (JSON lines or CSV) with its checkpoints.

use super::*;

/// One line of a JSON-lines export (all fields optional; `type` says which apply).
#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(default, borrow)]
    chain_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    tenant_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    prev_hash: Option<&'a str>,
    #[serde(default)]
    hash: Option<&'a str>,
    #[serde(default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    event_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    time_ms: Option<i64>,
    #[serde(default, borrow)]
    body: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    upto_seq: Option<u64>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    records: Option<u64>,
    #[serde(default)]
    chains: Option<u64>,
    #[serde(default)]
    checkpoints: Option<u64>,
}

/// A parsed export row, independent of the format.
enum Row<'a> {
    Header {
        keys: Vec<String>,
        tenant_id: Option<String>,
    },
    Chain {
        chain_id: &'a str,
        tenant_id: &'a str,
    },
    Checkpoint {
        chain_id: &'a str,
        note: &'a str,
        size: Option<u64>,
        time_ms: Option<i64>,
    },
    Purge {
        chain_id: &'a str,
        upto_seq: u64,
    },
    Record {
        chain_id: &'a str,
        /// CSV only: the tenant column.
        tenant_id: Option<&'a str>,
        seq: u64,
        prev: Hash,
        hash: Hash,
        cols: Columns<'a>,
        body: &'a str,
    },
    End {
        chains: u64,
        records: u64,
        checkpoints: u64,
    },
}

/// The file verifier's state machine.
struct FileState<'k> {
    trusted: Option<&'k TrustedKeys>,
    keys: Option<TrustedKeys>,
    report: Report,
    chain: Option<ChainCheck>,
    last_cp_size: Option<u64>,
    seen_chains: Vec<String>,
    ends: HashMap<String, Option<(u64, Hash)>>,
    links: Vec<Link>,
    ended: bool,
    header: bool,
    tenant: Option<String>,
}

impl<'k> FileState<'k> {
    fn close_chain(&mut self) -> Result<(), Failure> {
        if let Some(cc) = self.chain.take() {
            let unsigned = cc.finish()?;
            self.report.unsigned_records += unsigned;
            self.report.chains += 1;
            self.ends.insert(cc.chain_id.clone(), cc.last());
            if let Some(l) = cc.link() {
                self.links.push(l.clone());
            }
        }
        Ok(())
    }

    fn row(&mut self, row: Row<'_>) -> Result<(), Failure> {
        let malformed = |m: &str| Failure {
            problem: Problem::Malformed,
            chain_id: None,
            seq: None,
            line: None,
            message: m.to_owned(),
        };
        if self.ended {
            return Err(malformed("content after the end line"));
        }
        if !self.header && !matches!(row, Row::Header { .. }) {
            return Err(malformed("the export does not start with its header"));
        }
        match row {
            Row::Header { keys, tenant_id } => {
                if self.header {
                    return Err(malformed("second header"));
                }
                self.header = true;
                self.tenant = tenant_id;
                // Parsed even when keys are pinned: a malformed key is a damaged export.
                let listed = TrustedKeys::new(&keys)
                    .map_err(|_| malformed("header holds a malformed verifier key"))?;
                if self.trusted.is_none() {
                    self.keys = Some(listed);
                    self.report.warnings.push(
                        "signatures checked against the keys inside the export; pass --key to pin the published key"
                            .into(),
                    );
                } else {
                    self.report.keys_pinned = true;
                }
            }
            Row::Chain {
                chain_id,
                tenant_id,
            } => {
                self.close_chain()?;
                if self.tenant.as_deref() != Some(tenant_id) {
                    return Err(malformed("chain of another tenant than the header's"));
                }
                if self.seen_chains.iter().any(|c| c == chain_id) {
                    return Err(malformed("chain appears twice"));
                }
                self.seen_chains.push(chain_id.to_owned());
                self.chain = Some(ChainCheck::new(chain_id, tenant_id));
                self.last_cp_size = None;
            }
            Row::Checkpoint {
                chain_id,
                note,
                size: stated_size,
                time_ms: stated_time,
            } => {
                let keys = self.trusted.or(self.keys.as_ref()).expect("header seen");
                let last_cp = self.last_cp_size;
                let cc = self
                    .chain
                    .as_mut()
                    .filter(|c| c.chain_id == chain_id)
                    .ok_or_else(|| malformed("checkpoint outside its chain's section"))?;
                if cc.last().is_some() {
                    return Err(malformed("checkpoint after the chain's records"));
                }
                let cp = cc.add_checkpoint(note, keys)?;
                if stated_size != Some(cp.size) || stated_time != Some(cp.time_ms) {
                    return Err(Failure {
                        problem: Problem::ColumnMismatch,
                        chain_id: Some(chain_id.to_owned()),
                        seq: Some(cp.size),
                        line: None,
                        message: "checkpoint size or time disagrees with its signed note".into(),
                    });
                }
                let size = cc.checkpoints.keys().next_back().copied();
                if last_cp.is_some() && size <= last_cp {
                    return Err(malformed("checkpoints are not in increasing size order"));
                }
                self.last_cp_size = size;
                self.report.checkpoints += 1;
            }
            Row::Purge { chain_id, upto_seq } => {
                let cc = self
                    .chain
                    .as_mut()
                    .filter(|c| c.chain_id == chain_id)
                    .ok_or_else(|| malformed("purge outside its chain's section"))?;
                cc.set_purged(upto_seq);
            }
            Row::Record {
                chain_id,
                tenant_id,
                seq,
                prev,
                hash,
                cols,
                body,
            } => {
                let cc = self
                    .chain
                    .as_mut()
                    .filter(|c| c.chain_id == chain_id)
                    .ok_or_else(|| Failure {
                        problem: Problem::Malformed,
                        chain_id: Some(chain_id.to_owned()),
                        seq: Some(seq),
                        line: None,
                        message: "record outside its chain's section".into(),
                    })?;
                if tenant_id.is_some_and(|t| t != cc.tenant_id) {
                    return Err(fail(
                        Problem::ColumnMismatch,
                        chain_id,
                        Some(seq),
                        "tenant column disagrees with the chain",
                    ));
                }
                cc.push(seq, &prev, &hash, body, Some(cols))?;
                self.report.records += 1;
            }
            Row::End {
                chains,
                records,
                checkpoints,
            } => {
                self.close_chain()?;
                self.ended = true;
                if chains != self.report.chains
                    || records != self.report.records
                    || checkpoints != self.report.checkpoints
                {
                    return Err(Failure {
                        problem: Problem::ExportIncomplete,
                        chain_id: None,
                        seq: None,
                        line: None,
                        message: format!(
                            "the end line counts {chains} chains, {records} records, {checkpoints} checkpoints; the file holds {}, {}, {}",
                            self.report.chains, self.report.records, self.report.checkpoints
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

fn hash_field(s: Option<&str>) -> Option<Hash> {
    s.and_then(parse_hash)
}

/// Verifies an export (JSON lines or CSV, detected from the first byte) read from `input`.
/// `trusted`: pinned verifier keys; without them the export's own keys are used (and the report
/// says so).
pub fn verify_export<R: BufRead>(mut input: R, trusted: Option<&TrustedKeys>) -> Report {
    let mut st = FileState {
        trusted,
        keys: None,
        report: Report::default(),
        chain: None,
        last_cp_size: None,
        seen_chains: Vec::new(),
        ends: HashMap::new(),
        links: Vec::new(),
        ended: false,
        header: false,
        tenant: None,
    };
    let csv = match input.fill_buf() {
        Ok(b) => b.first().is_some_and(|c| *c != b'{'),
        Err(_) => false,
    };
    let res = if csv {
        verify_csv(input, &mut st)
    } else {
        verify_jsonl(input, &mut st)
    };
    let res = res.and_then(|()| {
        if !st.ended {
            return Err(Failure {
                problem: Problem::ExportIncomplete,
                chain_id: st.chain.as_ref().map(|c| c.chain_id.clone()),
                seq: None,
                line: None,
                message: "the export ends without its end line (cut off)".into(),
            });
        }
        check_links(&st.links, &st.ends, false, &mut st.report.warnings)
    });
    match res {
        Ok(()) => st.report.ok = true,
        Err(f) => st.report.failure = Some(f),
    }
    st.report
}

fn verify_jsonl<R: BufRead>(mut input: R, st: &mut FileState<'_>) -> Result<(), Failure> {
    let mut line = String::new();
    let mut n: u64 = 0;
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                return Err(Failure {
                    problem: Problem::Malformed,
                    chain_id: None,
                    seq: None,
                    line: Some(n + 1),
                    message: format!("read error: {e}"),
                });
            }
        }
        n += 1;
        let text = line.trim_end_matches(['\n', '\r']);
        let at = |mut f: Failure| {
            f.line = Some(n);
            f
        };
        let malformed = |m: &str| Failure {
            problem: Problem::Malformed,
            chain_id: None,
            seq: None,
            line: Some(n),
            message: m.to_owned(),
        };
        let l: JsonLine<'_> =
            serde_json::from_str(text).map_err(|_| malformed("not an export line"))?;
        let row = match l.ty {
            "header" if l.format.as_deref() != Some(EXPORT_FORMAT) => {
                return Err(malformed("not a scp-pep audit export header (format)"));
            }
            "header" => Row::Header {
                keys: l.keys.unwrap_or_default(),
                tenant_id: l.tenant_id.as_deref().map(str::to_owned),
            },
            "chain" => match (&l.chain_id, &l.tenant_id) {
                (Some(c), Some(t)) => Row::Chain {
                    chain_id: c,
                    tenant_id: t,
                },
                _ => return Err(malformed("chain line without chain_id/tenant_id")),
            },
            "checkpoint" => match (&l.chain_id, &l.note) {
                (Some(c), Some(note)) => Row::Checkpoint {
                    chain_id: c,
                    note,
                    size: l.size,
                    time_ms: l.time_ms,
                },
                _ => return Err(malformed("checkpoint line without chain_id/note")),
            },
            "purge" => match (&l.chain_id, l.upto_seq) {
                (Some(c), Some(u)) => Row::Purge {
                    chain_id: c,
                    upto_seq: u,
                },
                _ => return Err(malformed("purge line without chain_id/upto_seq")),
            },
            "record" => {
                match (
                    &l.chain_id,
                    l.seq,
                    hash_field(l.prev_hash),
                    hash_field(l.hash),
                    &l.kind,
                    &l.event_id,
                    l.time_ms,
                    l.body,
                ) {
                    (
                        Some(c),
                        Some(seq),
                        Some(prev),
                        Some(hash),
                        Some(kind),
                        Some(ev),
                        Some(t),
                        Some(body),
                    ) => Row::Record {
                        chain_id: c,
                        tenant_id: None,
                        seq,
                        prev,
                        hash,
                        cols: Columns {
                            kind,
                            event_id: ev,
                            time_ms: t,
                        },
                        body: body.get(),
                    },
                    _ => {
                        return Err(malformed(
                            "record line lacks a field or has a malformed hash",
                        ));
                    }
                }
            }
            "end" => Row::End {
                chains: l.chains.unwrap_or(u64::MAX),
                records: l.records.unwrap_or(u64::MAX),
                checkpoints: l.checkpoints.unwrap_or(u64::MAX),
            },
            _ => return Err(malformed("unknown line type")),
        };
        st.row(row).map_err(at)?;
    }
}

/// The `format` of an export header.
pub const EXPORT_FORMAT: &str = "scp-pep-audit-export/v1";

/// CSV columns of an export, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "type",
    "chain_id",
    "seq",
    "tenant_id",
    "kind",
    "event_id",
    "time_ms",
    "prev_hash",
    "hash",
    "data",
];

fn verify_csv<R: BufRead>(input: R, st: &mut FileState<'_>) -> Result<(), Failure> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let malformed = |n: u64, m: &str| Failure {
        problem: Problem::Malformed,
        chain_id: None,
        seq: None,
        line: Some(n),
        message: m.to_owned(),
    };
    match rdr.headers() {
        Ok(h) if h.iter().eq(CSV_COLUMNS.iter().copied()) => {}
        _ => return Err(malformed(1, "CSV header row is not the export's")),
    }
    let mut rec = csv::StringRecord::new();
    let mut n: u64 = 1;
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(_) => return Err(malformed(n + 1, "not a CSV record of the export")),
        }
        n += 1;
        let f = |i: usize| rec.get(i).unwrap_or("");
        let num = |i: usize| f(i).parse::<u64>().ok();
        let row = match f(0) {
            "header" => {
                let v: serde_json::Value = serde_json::from_str(f(9))
                    .map_err(|_| malformed(n, "header data is not JSON"))?;
                if v["type"] != "header" || v["format"] != EXPORT_FORMAT {
                    return Err(malformed(n, "not a scp-pep audit export header"));
                }
                if v["tenant_id"].as_str() != Some(f(3)) {
                    return Err(malformed(n, "header tenant column disagrees with its data"));
                }
                Row::Header {
                    tenant_id: v["tenant_id"].as_str().map(str::to_owned),
                    keys: v["keys"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|k| k.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            }
            "chain" => Row::Chain {
                chain_id: f(1),
                tenant_id: f(3),
            },
            "checkpoint" => Row::Checkpoint {
                chain_id: f(1),
                note: f(9),
                size: num(2),
                time_ms: f(6).parse().ok(),
            },
            "purge" => Row::Purge {
                chain_id: f(1),
                upto_seq: num(2).ok_or_else(|| malformed(n, "purge without seq"))?,
            },
            "record" => Row::Record {
                chain_id: f(1),
                tenant_id: Some(f(3)),
                seq: num(2).ok_or_else(|| malformed(n, "record without seq"))?,
                prev: parse_hash(f(7)).ok_or_else(|| malformed(n, "malformed prev_hash"))?,
                hash: parse_hash(f(8)).ok_or_else(|| malformed(n, "malformed hash"))?,
                cols: Columns {
                    kind: f(4),
                    event_id: f(5),
                    time_ms: f(6)
                        .parse()
                        .map_err(|_| malformed(n, "malformed time_ms"))?,
                },
                body: f(9),
            },
            "end" => {
                let v: serde_json::Value =
                    serde_json::from_str(f(9)).map_err(|_| malformed(n, "end data is not JSON"))?;
                Row::End {
                    chains: v["chains"].as_u64().unwrap_or(u64::MAX),
                    records: v["records"].as_u64().unwrap_or(u64::MAX),
                    checkpoints: v["checkpoints"].as_u64().unwrap_or(u64::MAX),
                }
            }
            _ => return Err(malformed(n, "unknown row type")),
        };
        st.row(row).map_err(|mut e| {
            e.line = Some(n);
            e
        })?;
    }
}
