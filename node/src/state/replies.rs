//! The replies that describe stored models and scripts: AI.MODELGET,
//! AI.SCRIPTGET and AI.INFO.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tessera_common::model::BackendKind;
use tessera_common::reply::Reply;

use crate::engine::model::{Stats, StoredModel};
use crate::engine::script::StoredScript;

/// The MODELGET reply: the blob alone, or the labelled array (META and
/// BLOB, 18 entries; META only, 16). A blob of MODEL_CHUNK_SIZE or more is
/// an array of chunks (RedisAI's rule, empty last chunk included).
pub fn model(m: &StoredModel, meta: bool, blob: bool, chunk: usize) -> Reply {
    let def = &m.def;
    let chunk = chunk.max(1);
    let blob_reply = || {
        let b = m.blob();
        // As a blob: sent as its parts (a model laid out for its runtime),
        // and decoded by the router as a slice of what it received.
        let bulk = Reply::Blob;
        if b.len() < chunk {
            bulk(b)
        } else {
            let n = b.len() / chunk + 1;
            Reply::Array(
                (0..n).map(|i| bulk(b.slice((i * chunk).min(b.len())..((i + 1) * chunk).min(b.len())))).collect(),
            )
        }
    };
    if blob && !meta {
        return blob_reply();
    }
    let names = |v: &[String]| Reply::Array(v.iter().map(|n| Reply::Bulk(Bytes::from(n.clone()))).collect());
    // TF binds the names given at MODELSTORE; the other runtimes report
    // their own (empty while the model is still loading on this node).
    let (inputs, outputs) = match m.try_loaded() {
        _ if def.backend == BackendKind::Tf => (def.inputs.clone(), def.outputs.clone()),
        Some(l) => (l.inputs().to_vec(), l.outputs().to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    let mut out = vec![
        Reply::bulk_str("backend"),
        Reply::bulk_str(def.backend.name()),
        Reply::bulk_str("device"),
        Reply::Bulk(Bytes::from(def.device_name.clone())),
        Reply::bulk_str("tag"),
        Reply::Bulk(def.tag.clone()),
        Reply::bulk_str("batchsize"),
        Reply::Int(def.batchsize as i64),
        Reply::bulk_str("minbatchsize"),
        Reply::Int(def.minbatchsize as i64),
        Reply::bulk_str("inputs"),
        names(&inputs),
        Reply::bulk_str("outputs"),
        names(&outputs),
        Reply::bulk_str("minbatchtimeout"),
        Reply::Int(def.minbatchtimeout as i64),
    ];
    if !meta || blob {
        out.extend([Reply::bulk_str("blob"), blob_reply()]);
    }
    Reply::Array(out)
}

/// The AI.INFO reply of a model (18 entries, with `tag`).
pub fn model_info(key: &Bytes, m: &StoredModel) -> Reply {
    let device = Bytes::from(m.def.device_name.clone());
    Reply::Array(info(key, "MODEL", m.def.backend, &device, &m.def.tag, &m.stats))
}

/// The AI.SCRIPTGET reply: the source alone (SOURCE), the labelled
/// metadata (META), or both (neither or both given).
pub fn script(s: &StoredScript, meta: bool, source: bool) -> Reply {
    let def = &s.def;
    let src = || Reply::Bulk(Bytes::from(def.source.clone()));
    if source && !meta {
        return src();
    }
    let mut out = vec![
        Reply::bulk_str("device"),
        Reply::Bulk(def.device_name.clone()),
        Reply::bulk_str("tag"),
        Reply::Bulk(def.tag.clone()),
        Reply::bulk_str("Entry Points"),
        Reply::Array(def.entry_points.iter().map(|e| Reply::Bulk(Bytes::from(e.clone()))).collect()),
    ];
    if !meta || source {
        out.extend([Reply::bulk_str("source"), src()]);
    }
    Reply::Array(out)
}

/// The AI.INFO reply of a script: as a model's, `samples` always -1.
pub fn script_info(key: &Bytes, s: &StoredScript) -> Reply {
    let mut out = info(key, "SCRIPT", BackendKind::Torch, &s.def.device_name, &s.def.tag, &s.stats);
    out[13] = Reply::Int(-1);
    Reply::Array(out)
}

fn info(key: &Bytes, kind: &str, backend: BackendKind, device: &Bytes, tag: &Bytes, s: &Stats) -> Vec<Reply> {
    vec![
        Reply::bulk_str("key"),
        Reply::Bulk(key.clone()),
        Reply::bulk_str("type"),
        Reply::bulk_str(kind),
        Reply::bulk_str("backend"),
        Reply::bulk_str(backend.name()),
        Reply::bulk_str("device"),
        Reply::Bulk(device.clone()),
        Reply::bulk_str("tag"),
        Reply::Bulk(tag.clone()),
        Reply::bulk_str("duration"),
        Reply::Int(s.duration_us.load(Relaxed) as i64),
        Reply::bulk_str("samples"),
        Reply::Int(s.samples.load(Relaxed) as i64),
        Reply::bulk_str("calls"),
        Reply::Int(s.calls.load(Relaxed) as i64),
        Reply::bulk_str("errors"),
        Reply::Int(s.errors.load(Relaxed) as i64),
    ]
}
