//! Option haggling: from the greeting's client flags to an export chosen (or STARTTLS, or
//! the client gone), with the metadata contexts the client selected for it.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::connection::ConnectionError;
use crate::nbd::codec::{self as p, ClientOption, TlsMode, TlsVerdict};
use crate::nbd::exports::{Export, ExportSource};

/// Most metadata contexts one SET_META_CONTEXT may select (each costs a lookup per
/// BLOCK_STATUS); more get `NBD_REP_ERR_TOO_BIG`.
pub(super) const MAX_META_CONTEXTS: usize = 64;

/// The outcome of the handshake.
pub(super) struct Session {
    pub(super) export: Arc<dyn Export>,
    /// Held while the session lasts: the export's record of this client (see `Export::attach`).
    pub(super) _attachment: Box<dyn std::any::Any + Send + Sync>,
    pub(super) structured: bool,
    pub(super) limits: p::Limits,
    /// Selected metadata contexts; each one's id is its position plus one.
    pub(super) contexts: Vec<MetaContext>,
}

/// How the handshake ended.
pub(super) enum Negotiated {
    Transmission(Session),
    /// STARTTLS was acknowledged: upgrade the stream, then haggle again.
    StartTls,
    /// The client aborted, or the server is shutting down.
    Closed,
}

/// Metadata contexts selected by SET_META_CONTEXT, and for which export.
pub(super) struct MetaSelection {
    export: String,
    contexts: Vec<MetaContext>,
}

/// A metadata context an export offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum MetaContext {
    /// `base:allocation`: holes (and zero chunks) versus data.
    BaseAllocation,
    /// `qemu:dirty-bitmap:NAME`: what changed since NAME (an older restore point).
    DirtyBitmap(String),
}

impl MetaContext {
    pub(super) fn name(&self) -> String {
        match self {
            MetaContext::BaseAllocation => p::BASE_ALLOCATION.to_owned(),
            MetaContext::DirtyBitmap(b) => format!("{}{b}", p::DIRTY_BITMAP_PREFIX),
        }
    }

    /// The context a SET_META_CONTEXT query names exactly (wildcards select nothing).
    fn parse(query: &str) -> Option<Self> {
        if query == p::BASE_ALLOCATION {
            return Some(MetaContext::BaseAllocation);
        }
        let bitmap = query.strip_prefix(p::DIRTY_BITMAP_PREFIX).filter(|b| !b.is_empty())?;
        Some(MetaContext::DirtyBitmap(bitmap.to_owned()))
    }

    /// Whether a LIST_META_CONTEXT query lists this context: its exact name, or the
    /// wildcards `base:`, `qemu:` and `qemu:dirty-bitmap:` (QEMU's interop doc).
    fn listed_by(&self, query: &str) -> bool {
        match self {
            MetaContext::BaseAllocation => query == "base:" || query == p::BASE_ALLOCATION,
            MetaContext::DirtyBitmap(_) => query == "qemu:" || query == p::DIRTY_BITMAP_PREFIX || query == self.name(),
        }
    }
}

/// Every metadata context `export` offers.
pub(super) fn available_contexts(export: &dyn Export) -> Vec<MetaContext> {
    let mut all = vec![MetaContext::BaseAllocation];
    all.extend(export.dirty_bitmaps().into_iter().map(MetaContext::DirtyBitmap));
    all
}

/// What LIST_META_CONTEXT answers: everything for no query, else what any query lists.
pub(super) fn list_contexts(available: &[MetaContext], queries: &[String]) -> Vec<MetaContext> {
    available.iter().filter(|c| queries.is_empty() || queries.iter().any(|q| c.listed_by(q))).cloned().collect()
}

/// What SET_META_CONTEXT selects: each available context a query names, once, in query
/// order; unknown names are ignored, as the spec demands.
pub(super) fn select_contexts(available: &[MetaContext], queries: &[String]) -> Vec<MetaContext> {
    let mut selected: Vec<MetaContext> = Vec::new();
    for c in queries.iter().filter_map(|q| MetaContext::parse(q)) {
        if available.contains(&c) && !selected.contains(&c) {
            selected.push(c);
        }
    }
    selected
}

/// Context id of the `index`th selected context (ids are nonzero and per session).
pub(super) fn context_id(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// Transmission flags for an export: exactly what the server supports on it.
pub fn transmission_flags(export: &dyn Export, structured: bool) -> u16 {
    let mut flags = p::FLAG_HAS_FLAGS | p::FLAG_SEND_FLUSH | p::FLAG_SEND_CACHE;
    if export.read_only() {
        flags |= p::FLAG_READ_ONLY;
    } else {
        flags |= p::FLAG_SEND_FUA | p::FLAG_SEND_TRIM | p::FLAG_SEND_WRITE_ZEROES | p::FLAG_SEND_FAST_ZERO;
    }
    if structured {
        flags |= p::FLAG_SEND_DF;
    }
    if export.can_multi_conn() {
        flags |= p::FLAG_CAN_MULTI_CONN;
    }
    flags
}

/// Option haggling until an export is chosen, the client aborts, or STARTTLS is
/// acknowledged. Unbuffered: nothing the client sends after STARTTLS is read here.
pub(super) async fn negotiate<S>(
    stream: &mut S,
    exports: &dyn ExportSource,
    client: p::ClientFlags,
    mode: TlsMode,
) -> Result<Negotiated, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut structured = false;
    let mut meta: Option<MetaSelection> = None;
    let mut out = Vec::with_capacity(256);
    loop {
        out.clear();
        let mut raw = [0u8; p::OPTION_HEADER_LEN];
        stream.read_exact(&mut raw).await?;
        let header = p::decode_option_header(&raw)?;
        let len = usize::try_from(header.len).unwrap_or(usize::MAX);
        let mut data = vec![0u8; len];
        stream.read_exact(&mut data).await?;
        let option = header.option;
        match p::tls_verdict(mode, option, header.len) {
            TlsVerdict::Proceed => {}
            TlsVerdict::StartTls => {
                p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                stream.write_all(&out).await?;
                stream.flush().await?;
                return Ok(Negotiated::StartTls);
            }
            TlsVerdict::Refuse { reply, message } => {
                p::encode_option_error(&mut out, option, reply, message);
                stream.write_all(&out).await?;
                stream.flush().await?;
                continue;
            }
            TlsVerdict::Close => return Err(ConnectionError::TlsRequired),
        }

        let parsed = match p::parse_option(option, &data) {
            Ok(o) => o,
            Err(invalid) => {
                if option == p::OPT_EXPORT_NAME {
                    // No error reply exists for EXPORT_NAME: end the session.
                    return Err(ConnectionError::UnknownExport(invalid.to_string()));
                }
                p::encode_option_error(&mut out, option, p::REP_ERR_INVALID, &invalid.0);
                stream.write_all(&out).await?;
                stream.flush().await?;
                continue;
            }
        };
        match parsed {
            ClientOption::ExportName(name) => {
                let Some(export) = exports.open(&name) else {
                    return Err(ConnectionError::UnknownExport(name));
                };
                let attachment = export.attach().map_err(|e| ConnectionError::Refused(name.clone(), e.to_string()))?;
                let flags = transmission_flags(&*export, structured);
                let size = export.size_bytes();
                p::encode_export_name_reply(&mut out, size, flags, client.no_zeroes);
                stream.write_all(&out).await?;
                stream.flush().await?;
                let contexts = meta_for(meta, &name);
                return Ok(Negotiated::Transmission(session(export, attachment, structured, flags, contexts)));
            }
            ClientOption::Abort => {
                p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                // The client may already be gone: a failed ACK is not an error.
                let _ = stream.write_all(&out).await;
                let _ = stream.flush().await;
                return Ok(Negotiated::Closed);
            }
            ClientOption::List => {
                for name in exports.list() {
                    p::encode_rep_server(&mut out, &name);
                }
                p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
            }
            // `tls_verdict` answers every STARTTLS; this one is never reached.
            ClientOption::StartTls => {
                p::encode_option_error(&mut out, option, p::REP_ERR_INVALID, "NBD_OPT_STARTTLS is not valid now")
            }
            ClientOption::Info(req) | ClientOption::Go(req) => {
                let go = option == p::OPT_GO;
                let Some(export) = exports.open(&req.name) else {
                    p::encode_option_error(
                        &mut out,
                        option,
                        p::REP_ERR_UNKNOWN,
                        &format!("no export named {:?}", req.name),
                    );
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                    continue;
                };
                // Only a client that goes on to use the export attaches to it.
                let attachment = match go.then(|| export.attach()).transpose() {
                    Ok(a) => a,
                    Err(e) => {
                        p::encode_option_error(&mut out, option, p::REP_ERR_POLICY, &e.to_string());
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        continue;
                    }
                };
                let flags = transmission_flags(&*export, structured);
                let size = export.size_bytes();
                p::encode_info_export(&mut out, option, size, flags);
                if req.requests.contains(&p::INFO_NAME) {
                    p::encode_info_string(&mut out, option, p::INFO_NAME, &export.name());
                }
                if req.requests.contains(&p::INFO_DESCRIPTION) {
                    let d = export.description();
                    p::encode_info_string(&mut out, option, p::INFO_DESCRIPTION, &d);
                }
                // Always sent: a client that did not ask still learns the constraints,
                // and the server errors misaligned requests cleanly either way.
                p::encode_info_block_size(
                    &mut out,
                    option,
                    export.min_block_bytes(),
                    export.preferred_block_bytes(),
                    p::MAX_PAYLOAD_BYTES,
                );
                p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                if go {
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                    let contexts = meta_for(meta, &req.name);
                    let attachment = attachment.unwrap_or_else(|| Box::new(()));
                    return Ok(Negotiated::Transmission(session(export, attachment, structured, flags, contexts)));
                }
            }
            ClientOption::StructuredReply => {
                structured = true;
                p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
            }
            ClientOption::ListMetaContext(req) => match exports.open(&req.name) {
                None => p::encode_option_error(
                    &mut out,
                    option,
                    p::REP_ERR_UNKNOWN,
                    &format!("no export named {:?}", req.name),
                ),
                Some(export) => {
                    for c in list_contexts(&available_contexts(&*export), &req.queries) {
                        p::encode_meta_context(&mut out, option, 0, &c.name());
                    }
                    p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                }
            },
            ClientOption::SetMetaContext(req) => {
                // The selection is replaced even when this option fails.
                meta = None;
                if !structured {
                    p::encode_option_error(
                        &mut out,
                        option,
                        p::REP_ERR_INVALID,
                        "negotiate NBD_OPT_STRUCTURED_REPLY first",
                    );
                } else if let Some(export) = exports.open(&req.name) {
                    let contexts = select_contexts(&available_contexts(&*export), &req.queries);
                    if contexts.len() > MAX_META_CONTEXTS {
                        p::encode_option_error(
                            &mut out,
                            option,
                            p::REP_ERR_TOO_BIG,
                            &format!("at most {MAX_META_CONTEXTS} metadata contexts at once"),
                        );
                    } else {
                        for (i, c) in contexts.iter().enumerate() {
                            p::encode_meta_context(&mut out, option, context_id(i), &c.name());
                        }
                        p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                        meta = Some(MetaSelection { export: req.name, contexts });
                    }
                } else {
                    p::encode_option_error(
                        &mut out,
                        option,
                        p::REP_ERR_UNKNOWN,
                        &format!("no export named {:?}", req.name),
                    );
                }
            }
            ClientOption::ExtendedHeaders => {
                p::encode_option_error(&mut out, option, p::REP_ERR_UNSUP, "extended headers are not supported")
            }
            ClientOption::Unknown(code) => {
                p::encode_option_error(&mut out, option, p::REP_ERR_UNSUP, &format!("option {code} is not supported"))
            }
        }
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
}

pub(super) fn session(
    export: Arc<dyn Export>,
    attachment: Box<dyn std::any::Any + Send + Sync>,
    structured: bool,
    flags: u16,
    contexts: Vec<MetaContext>,
) -> Session {
    let limits = p::Limits {
        flags,
        size_bytes: export.size_bytes(),
        min_block_bytes: export.min_block_bytes(),
        meta_context: !contexts.is_empty(),
    };
    Session { export, _attachment: attachment, structured, limits, contexts }
}

/// The contexts selected for the export the client went on to use (none if it selected
/// them for another export).
pub(super) fn meta_for(meta: Option<MetaSelection>, export: &str) -> Vec<MetaContext> {
    meta.filter(|m| m.export == export).map(|m| m.contexts).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_contexts_are_listed_by_wildcards_and_selected_by_exact_names() {
        let bitmap = |n: &str| MetaContext::DirtyBitmap(n.into());
        let all = vec![MetaContext::BaseAllocation, bitmap("rp1"), bitmap("rp2")];
        let q = |qs: &[&str]| qs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(list_contexts(&all, &[]), all);
        assert_eq!(list_contexts(&all, &q(&["base:"])), vec![MetaContext::BaseAllocation]);
        assert_eq!(list_contexts(&all, &q(&["qemu:"])), vec![bitmap("rp1"), bitmap("rp2")]);
        assert_eq!(list_contexts(&all, &q(&["qemu:dirty-bitmap:"])), vec![bitmap("rp1"), bitmap("rp2")]);
        assert_eq!(list_contexts(&all, &q(&["qemu:dirty-bitmap:rp2", "x-other:y"])), vec![bitmap("rp2")]);
        assert_eq!(list_contexts(&all, &q(&["qemu:dirty-bitmap:rp9"])), vec![]);

        // Wildcards select nothing; unknown names are ignored; duplicates count once.
        assert_eq!(
            select_contexts(&all, &q(&["base:", "qemu:", "qemu:dirty-bitmap:", "qemu:dirty-bitmap:rp9"])),
            vec![]
        );
        assert_eq!(
            select_contexts(&all, &q(&["qemu:dirty-bitmap:rp2", "base:allocation", "qemu:dirty-bitmap:rp2"])),
            vec![bitmap("rp2"), MetaContext::BaseAllocation]
        );
        assert_eq!(bitmap("rp1").name(), "qemu:dirty-bitmap:rp1");
        assert_eq!(context_id(0), 1);
    }
}
