//! Auto-batching's tensor work (RedisAI §21.3): which requests can share a
//! run, concatenation along dim 0, and splitting the outputs back.

use bytes::Bytes;

use crate::{strings, BackendError, DType, Result, Tensor};

/// RedisAI's message when an output's dim 0 is not the batch's size.
pub const BAD_BATCH: &str = "ERR Model did not generate the expected batch size";

/// A request's batch size: dim 0 of its first input, or 0 when its inputs do
/// not all share one dim 0 (such a request runs alone).
pub fn batch_size(inputs: &[Tensor]) -> usize {
    let Some(first) = inputs.first().and_then(|t| t.shape.first().copied()) else {
        return 0;
    };
    if inputs.iter().all(|t| t.shape.first() == Some(&first)) {
        usize::try_from(first).unwrap_or(0)
    } else {
        0
    }
}

/// Whether two requests can run in one batch: as many inputs, each with the
/// same dtype, rank and dims past dim 0. (RedisAI does not compare dtypes;
/// joining different dtypes would make garbage, so here they run apart.)
pub fn batchable(a: &[Tensor], b: &[Tensor]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.dtype == y.dtype && x.shape.len() == y.shape.len() && !x.shape.is_empty() && x.shape[1..] == y.shape[1..]
        })
}

/// Concatenates each input position along dim 0, in request order.
pub fn concat(requests: &[&[Tensor]]) -> Vec<Tensor> {
    let Some(first) = requests.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let parts: Vec<&Tensor> = requests.iter().map(|r| &r[i]).collect();
            let mut shape = parts[0].shape.clone();
            shape[0] = parts.iter().map(|t| t.shape[0]).sum();
            let mut data = Vec::with_capacity(parts.iter().map(|t| t.data.len()).sum());
            for t in &parts {
                data.extend_from_slice(&t.data);
            }
            Tensor { dtype: parts[0].dtype, shape, data: data.into() }
        })
        .collect()
}

/// Appends `rows` rows of zeros (empty strings for STRING) to each input
/// along dim 0: a batch padded to a fixed size keeps one input shape from
/// run to run.
pub fn pad(inputs: Vec<Tensor>, rows: usize) -> Vec<Tensor> {
    inputs
        .into_iter()
        .map(|t| {
            let row_elems: usize = t.shape[1..].iter().map(|d| usize::try_from(*d).unwrap_or(0)).product();
            // A STRING element is its bytes and a NUL: an empty one is one 0.
            let elem = t.dtype.size().unwrap_or(1);
            let mut data = t.data.to_vec();
            data.resize(data.len() + rows * row_elems * elem, 0);
            let mut shape = t.shape;
            shape[0] += rows as i64;
            Tensor { dtype: t.dtype, shape, data: data.into() }
        })
        .collect()
}

/// Splits a batch's outputs back into per-request outputs of `sizes[i]`
/// rows each. Every tensor output must have dim 0 equal to the total.
pub fn split(outputs: Vec<Option<Tensor>>, sizes: &[usize]) -> Result<Vec<Vec<Option<Tensor>>>> {
    let total: usize = sizes.iter().sum();
    let mut per_request: Vec<Vec<Option<Tensor>>> = sizes.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for out in outputs {
        let Some(t) = out else {
            per_request.iter_mut().for_each(|r| r.push(None));
            continue;
        };
        if t.shape.first().and_then(|d| usize::try_from(*d).ok()) != Some(total) {
            return Err(BackendError::new(BAD_BATCH));
        }
        let row_elems: usize = t.shape[1..].iter().map(|d| usize::try_from(*d).unwrap_or(0)).product();
        let pieces = split_rows(&t, row_elems, sizes)?;
        for ((r, piece), rows) in per_request.iter_mut().zip(pieces).zip(sizes) {
            let mut shape = t.shape.clone();
            shape[0] = *rows as i64;
            r.push(Some(Tensor { dtype: t.dtype, shape, data: piece }));
        }
    }
    Ok(per_request)
}

fn split_rows(t: &Tensor, row_elems: usize, sizes: &[usize]) -> Result<Vec<Bytes>> {
    let mut out = Vec::with_capacity(sizes.len());
    match t.dtype.size() {
        Some(elem) => {
            let mut at = 0;
            for rows in sizes {
                let len = rows * row_elems * elem;
                let end = (at + len).min(t.data.len());
                out.push(t.data.slice(at..end));
                at = end;
            }
        }
        None => {
            debug_assert_eq!(t.dtype, DType::String);
            let elems = strings(t);
            let mut at = 0usize;
            let mut byte = 0usize;
            for rows in sizes {
                let n = rows * row_elems;
                let len: usize = elems
                    .get(at..at + n)
                    .ok_or_else(|| BackendError::new(BAD_BATCH))?
                    .iter()
                    .map(|s| s.len() + 1)
                    .sum();
                out.push(t.data.slice(byte..byte + len));
                at += n;
                byte += len;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{elements, from_elements, from_strings, strings};

    #[test]
    fn concat_then_split_round_trips() {
        let a = vec![from_elements(vec![1, 2], &[1f32, 2.0])];
        let b = vec![from_elements(vec![2, 2], &[3f32, 4.0, 5.0, 6.0])];
        assert!(batchable(&a, &b));
        assert_eq!(batch_size(&b), 2);
        let joined = concat(&[&a, &b]);
        assert_eq!(joined[0].shape, vec![3, 2]);
        let back = split(joined.into_iter().map(Some).collect(), &[1, 2]).unwrap();
        assert_eq!(back[0][0].as_ref().unwrap(), &a[0]);
        assert_eq!(elements::<f32>(back[1][0].as_ref().unwrap()), vec![3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn padding_adds_zero_rows_that_split_drops() {
        let a = vec![from_elements(vec![1, 2], &[1f32, 2.0]), from_strings(vec![1], &["s"])];
        let padded = pad(a.clone(), 2);
        assert_eq!(padded[0].shape, vec![3, 2]);
        assert_eq!(elements::<f32>(&padded[0]), vec![1.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(strings(&padded[1]), vec![&b"s"[..], &b""[..], &b""[..]]);
        let back = split(padded.into_iter().map(Some).collect(), &[1, 2]).unwrap();
        assert_eq!(back[0][0].as_ref().unwrap(), &a[0]);
        assert_eq!(back[0][1].as_ref().unwrap(), &a[1]);
    }

    #[test]
    fn strings_split_by_elements() {
        let t = from_strings(vec![3], &["x", "yy", ""]);
        let back = split(vec![Some(t)], &[2, 1]).unwrap();
        assert_eq!(&back[0][0].as_ref().unwrap().data[..], b"x\0yy\0");
        assert_eq!(&back[1][0].as_ref().unwrap().data[..], b"\0");
    }

    #[test]
    fn wrong_batch_is_refused() {
        let t = from_elements(vec![1], &[1f32]);
        assert_eq!(split(vec![Some(t)], &[1, 1]).unwrap_err().0, BAD_BATCH);
        let a = vec![from_elements(vec![1, 2], &[1f32, 2.0])];
        let c = vec![from_elements(vec![1, 3], &[1f32, 2.0, 3.0])];
        assert!(!batchable(&a, &c));
        let mixed = vec![from_elements(vec![2], &[1f32, 2.0]), from_elements(vec![3], &[1f32, 2.0, 3.0])];
        assert_eq!(batch_size(&mixed), 0);
    }
}
