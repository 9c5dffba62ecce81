//! RedisAI tensors: the ten dtypes, the BLOB layout and the VALUES rules of
//! RedisAI 1.2.7 (spec/redisai-commands.md §1–3), and the TENSORGET replies.
//!
//! Data is kept as the BLOB layout itself (row-major, little-endian; STRING
//! elements each NUL-terminated), so BLOB round-trips are copies of bytes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::reply::Reply;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    Float,
    Double,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint8,
    Uint16,
    Bool,
    String,
}

impl DType {
    /// RedisAI's case rules: FLOAT/DOUBLE/BOOL/STRING and the `INT`/`UINT`
    /// prefixes are case-insensitive; the bit count must be exact.
    pub fn parse(s: &[u8]) -> Result<DType> {
        let upper = s.to_ascii_uppercase();
        Ok(match upper.as_slice() {
            b"FLOAT" => DType::Float,
            b"DOUBLE" => DType::Double,
            b"INT8" => DType::Int8,
            b"INT16" => DType::Int16,
            b"INT32" => DType::Int32,
            b"INT64" => DType::Int64,
            b"UINT8" => DType::Uint8,
            b"UINT16" => DType::Uint16,
            b"BOOL" => DType::Bool,
            b"STRING" => DType::String,
            _ => return Err(Error::ai("ERR invalid data type")),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Float => "FLOAT",
            DType::Double => "DOUBLE",
            DType::Int8 => "INT8",
            DType::Int16 => "INT16",
            DType::Int32 => "INT32",
            DType::Int64 => "INT64",
            DType::Uint8 => "UINT8",
            DType::Uint16 => "UINT16",
            DType::Bool => "BOOL",
            DType::String => "STRING",
        }
    }

    /// Bytes per element; `None` for STRING (variable).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::Float | DType::Int32 => 4,
            DType::Double | DType::Int64 => 8,
            DType::Int8 | DType::Uint8 | DType::Bool => 1,
            DType::Int16 | DType::Uint16 => 2,
            DType::String => return None,
        })
    }
}

/// A tensor: dtype, shape (empty for a scalar) and data in BLOB layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// What AI.TENSORGET should return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorFormat {
    pub meta: bool,
    pub data: DataFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataFormat {
    None,
    Blob,
    Values,
}

const MSG_VALUES_COUNT: &str = "ERR wrong number of values was given in 'AI.TENSORSET' command";
const MSG_SINGLE_BLOB: &str =
    "ERR a single binary string should come after the BLOB argument in 'AI.TENSORSET' command";

impl Tensor {
    /// Number of elements: the product of the shape (1 for a scalar).
    pub fn len(&self) -> usize {
        element_count(&self.shape).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses `<type> <shape...> [BLOB <data> | VALUES <v...>]` (the arguments
    /// after the key of AI.TENSORSET), with RedisAI's checks and messages.
    ///
    /// `max_bytes` bounds the tensor's size so that a tiny `VALUES`-less
    /// request cannot ask for a huge zero tensor.
    pub fn parse_set(args: &[Bytes], max_bytes: usize) -> Result<Tensor> {
        let (dtype_arg, rest) = args.split_first().ok_or_else(|| Error::Arity("AI.TENSORSET".into()))?;
        let dtype = DType::parse(dtype_arg)?;
        let mut shape = Vec::new();
        let mut i = 0;
        while i < rest.len() {
            let tok = &rest[i];
            if tok.eq_ignore_ascii_case(b"BLOB") || tok.eq_ignore_ascii_case(b"VALUES") {
                break;
            }
            let dim = parse_i64(tok)
                .filter(|d| *d > 0)
                .ok_or_else(|| Error::ai("ERR invalid or negative value found in tensor shape"))?;
            shape.push(dim);
            i += 1;
        }
        let count =
            element_count(&shape).ok_or_else(|| Error::ai("ERR invalid or negative value found in tensor shape"))?;
        let too_big = || Error::ValueTooLarge;
        let data = match rest.get(i) {
            None => {
                let bytes = match dtype.size() {
                    Some(sz) => count.checked_mul(sz).ok_or_else(too_big)?,
                    None => count,
                };
                if bytes > max_bytes {
                    return Err(too_big());
                }
                Bytes::from(vec![0u8; bytes])
            }
            Some(tok) if tok.eq_ignore_ascii_case(b"BLOB") => {
                let blobs = &rest[i + 1..];
                if blobs.len() != 1 {
                    return Err(Error::ai(MSG_SINGLE_BLOB));
                }
                validate_blob(dtype, count, &blobs[0])?;
                blobs[0].clone()
            }
            Some(_) => {
                let values = &rest[i + 1..];
                if values.len() != count {
                    return Err(Error::ai(MSG_VALUES_COUNT));
                }
                encode_values(dtype, values)?
            }
        };
        Ok(Tensor { dtype, shape, data })
    }

    /// The AI.TENSORGET reply in the labelled 1.2 format.
    pub fn reply(&self, fmt: TensorFormat) -> Result<Reply> {
        let data = match fmt.data {
            DataFormat::None => None,
            DataFormat::Blob => Some(Reply::Bulk(self.data.clone())),
            DataFormat::Values => Some(Reply::Array(self.values()?)),
        };
        if !fmt.meta {
            return Ok(data.unwrap_or(Reply::Null));
        }
        let mut out = vec![
            Reply::bulk_str("dtype"),
            Reply::bulk_str(self.dtype.name()),
            Reply::bulk_str("shape"),
            Reply::Array(self.shape.iter().map(|d| Reply::Int(*d)).collect()),
        ];
        match (fmt.data, data) {
            (DataFormat::Blob, Some(d)) => out.extend([Reply::bulk_str("blob"), d]),
            (DataFormat::Values, Some(d)) => out.extend([Reply::bulk_str("values"), d]),
            _ => {}
        }
        Ok(Reply::Array(out))
    }

    /// The elements as replies: integers for int/uint/bool, doubles for floats
    /// (bulk `%.17g` in RESP2, `,` doubles in RESP3), bulk strings for STRING.
    fn values(&self) -> Result<Vec<Reply>> {
        let d = &self.data[..];
        Ok(match self.dtype {
            DType::Float => d
                .chunks_exact(4)
                .map(|c| Reply::Double(f64::from(f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))))
                .collect(),
            DType::Double => {
                d.chunks_exact(8).map(|c| Reply::Double(f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))).collect()
            }
            DType::Int8 => d.iter().map(|b| Reply::Int(i64::from(*b as i8))).collect(),
            DType::Uint8 | DType::Bool => d.iter().map(|b| Reply::Int(i64::from(*b))).collect(),
            DType::Int16 => {
                d.chunks_exact(2).map(|c| Reply::Int(i64::from(i16::from_le_bytes([c[0], c[1]])))).collect()
            }
            DType::Uint16 => {
                d.chunks_exact(2).map(|c| Reply::Int(i64::from(u16::from_le_bytes([c[0], c[1]])))).collect()
            }
            DType::Int32 => d
                .chunks_exact(4)
                .map(|c| Reply::Int(i64::from(i32::from_le_bytes(c.try_into().unwrap_or([0; 4])))))
                .collect(),
            DType::Int64 => {
                d.chunks_exact(8).map(|c| Reply::Int(i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))).collect()
            }
            DType::String => {
                let body = d.strip_suffix(b"\0").unwrap_or(d);
                if d.is_empty() {
                    Vec::new()
                } else {
                    body.split(|b| *b == 0).map(|s| Reply::Bulk(self.data.slice_ref(s))).collect()
                }
            }
        })
    }
}

/// Parses the AI.TENSORGET format tokens (arguments after the key).
pub fn parse_get_format(args: &[Bytes]) -> Result<TensorFormat> {
    if args.is_empty() {
        return Ok(TensorFormat { meta: true, data: DataFormat::Blob });
    }
    let (mut meta, mut blob, mut values) = (false, false, false);
    for a in args {
        if a.eq_ignore_ascii_case(b"META") {
            meta = true;
        } else if a.eq_ignore_ascii_case(b"BLOB") {
            blob = true;
        } else if a.eq_ignore_ascii_case(b"VALUES") {
            values = true;
        } else {
            return Err(Error::ai("ERR unsupported data format"));
        }
    }
    if blob && values {
        return Err(Error::ai("ERR both BLOB and VALUES specified"));
    }
    let data = if blob {
        DataFormat::Blob
    } else if values {
        DataFormat::Values
    } else {
        DataFormat::None
    };
    Ok(TensorFormat { meta, data })
}

fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(usize::try_from(*d).ok()?))
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn validate_blob(dtype: DType, count: usize, blob: &[u8]) -> Result<()> {
    match dtype.size() {
        Some(sz) => {
            if Some(blob.len()) != count.checked_mul(sz) {
                return Err(Error::ai("ERR data length does not match tensor shape and type"));
            }
            // RedisAI skips the last byte (a bug); every byte is checked here.
            if dtype == DType::Bool && blob.iter().any(|b| *b > 1) {
                return Err(Error::ai("ERR BOOL tensor elements must be 0 or 1"));
            }
        }
        None => {
            let strings = blob.iter().filter(|b| **b == 0).count();
            if blob.last() != Some(&0) || strings != count {
                return Err(Error::ai("ERR Number of string elements in data blob does not match tensor length"));
            }
        }
    }
    Ok(())
}

fn encode_values(dtype: DType, values: &[Bytes]) -> Result<Bytes> {
    let invalid = || Error::ai("ERR invalid value");
    let mut out = Vec::with_capacity(values.len() * dtype.size().unwrap_or(8));
    for v in values {
        match dtype {
            DType::Float | DType::Double => {
                let s = std::str::from_utf8(v).map_err(|_| invalid())?;
                let f = parse_redis_double(s).ok_or_else(invalid)?;
                if dtype == DType::Float {
                    out.extend_from_slice(&(f as f32).to_le_bytes());
                } else {
                    out.extend_from_slice(&f.to_le_bytes());
                }
            }
            DType::String => {
                let body = v.strip_suffix(b"\0").unwrap_or(v);
                if body.contains(&0) {
                    return Err(Error::ai("ERR C-string value contains null character"));
                }
                out.extend_from_slice(body);
                out.push(0);
            }
            _ => {
                let n = parse_i64(v).ok_or_else(invalid)?;
                // Negative values are accepted within range (RedisAI rejects every
                // negative signed value: a bug, see README compatibility notes).
                match dtype {
                    DType::Int8 => out.extend_from_slice(&i8::try_from(n).map_err(|_| invalid())?.to_le_bytes()),
                    DType::Int16 => out.extend_from_slice(&i16::try_from(n).map_err(|_| invalid())?.to_le_bytes()),
                    DType::Int32 => out.extend_from_slice(&i32::try_from(n).map_err(|_| invalid())?.to_le_bytes()),
                    DType::Int64 => out.extend_from_slice(&n.to_le_bytes()),
                    DType::Uint8 => out.push(u8::try_from(n).map_err(|_| invalid())?),
                    DType::Uint16 => out.extend_from_slice(&u16::try_from(n).map_err(|_| invalid())?.to_le_bytes()),
                    DType::Bool => out.push(u8::try_from(n).ok().filter(|b| *b <= 1).ok_or_else(invalid)?),
                    DType::Float | DType::Double | DType::String => unreachable!("handled above"),
                }
            }
        }
    }
    Ok(Bytes::from(out))
}

/// Parses a double the way Redis's `string2d` accepts it: decimal or
/// exponent notation, `inf`/`-inf`; no spaces, no NaN.
pub fn parse_redis_double(s: &str) -> Option<f64> {
    if s.is_empty() || s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    let f = match lower.as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => s.parse::<f64>().ok()?,
    };
    (!f.is_nan()).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<Bytes> {
        s.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    fn set(s: &[&str]) -> Result<Tensor> {
        Tensor::parse_set(&args(s), 1 << 20)
    }

    fn err(s: &[&str]) -> String {
        set(s).unwrap_err().to_string()
    }

    #[test]
    fn values_and_blob_agree() {
        let a = set(&["FLOAT", "2", "2", "VALUES", "1", "2", "3", "4"]).unwrap();
        assert_eq!(&a.data[..], b"\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@");
        let mut blob_args = args(&["float", "2", "2", "BLOB"]);
        blob_args.push(Bytes::from_static(b"\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@"));
        let blob = Tensor::parse_set(&blob_args, 1 << 20).unwrap();
        assert_eq!(a, blob);
    }

    #[test]
    fn every_dtype_roundtrips_values() {
        for (dt, vals) in [
            ("INT8", vec!["-128", "127"]),
            ("INT16", vec!["-32768", "32767"]),
            ("INT32", vec!["-5", "7"]),
            ("INT64", vec!["-9223372036854775808", "9223372036854775807"]),
            ("UINT8", vec!["0", "255"]),
            ("UINT16", vec!["0", "65535"]),
            ("BOOL", vec!["0", "1"]),
        ] {
            let mut a = vec![dt, "2", "VALUES"];
            a.extend(vals.iter());
            let t = set(&a).unwrap();
            let fmt = TensorFormat { meta: false, data: DataFormat::Values };
            let got = t.reply(fmt).unwrap();
            let want = Reply::Array(vals.iter().map(|v| Reply::Int(v.parse().unwrap())).collect());
            assert_eq!(got, want, "{dt}");
        }
        let t = set(&["DOUBLE", "1", "VALUES", "0.5"]).unwrap();
        assert_eq!(t.data.len(), 8);
    }

    #[test]
    fn errors_are_redisai_verbatim() {
        assert_eq!(err(&["FLOAT32", "1"]), "ERR invalid data type");
        assert_eq!(err(&["INT08", "1"]), "ERR invalid data type");
        assert_eq!(err(&["FLOAT", "0"]), "ERR invalid or negative value found in tensor shape");
        assert_eq!(err(&["FLOAT", "-1"]), "ERR invalid or negative value found in tensor shape");
        assert_eq!(err(&["FLOAT", "x"]), "ERR invalid or negative value found in tensor shape");
        assert_eq!(err(&["FLOAT", "2", "VALUES", "1"]), MSG_VALUES_COUNT);
        assert_eq!(err(&["FLOAT", "2", "BLOB"]), MSG_SINGLE_BLOB);
        assert_eq!(err(&["FLOAT", "2", "BLOB", "a", "b"]), MSG_SINGLE_BLOB);
        assert_eq!(err(&["FLOAT", "2", "BLOB", "abc"]), "ERR data length does not match tensor shape and type");
        assert_eq!(err(&["FLOAT", "1", "VALUES", "abc"]), "ERR invalid value");
        assert_eq!(err(&["INT8", "1", "VALUES", "128"]), "ERR invalid value");
        assert_eq!(err(&["UINT8", "1", "VALUES", "-1"]), "ERR invalid value");
        assert_eq!(err(&["BOOL", "1", "VALUES", "2"]), "ERR invalid value");
        assert_eq!(err(&["BOOL", "2", "BLOB", "\x02\x01"]), "ERR BOOL tensor elements must be 0 or 1");
        assert_eq!(err(&["BOOL", "2", "BLOB", "\x01\x02"]), "ERR BOOL tensor elements must be 0 or 1");
        assert_eq!(
            err(&["STRING", "2", "BLOB", "a\0"]),
            "ERR Number of string elements in data blob does not match tensor length"
        );
        assert_eq!(
            err(&["STRING", "1", "BLOB", "a"]),
            "ERR Number of string elements in data blob does not match tensor length"
        );
        assert_eq!(err(&["STRING", "1", "VALUES", "a\0b"]), "ERR C-string value contains null character");
    }

    #[test]
    fn strings_scalars_and_zeros() {
        let t = set(&["STRING", "2", "VALUES", "first", "second\0"]).unwrap();
        assert_eq!(&t.data[..], b"first\0second\0");
        let v = t.reply(TensorFormat { meta: false, data: DataFormat::Values }).unwrap();
        assert_eq!(v, Reply::Array(vec![Reply::bulk_str("first"), Reply::bulk_str("second")]));
        let empty = set(&["STRING", "2", "BLOB", "\0\0"]).unwrap();
        assert_eq!(empty.len(), 2);
        let scalar = set(&["FLOAT", "VALUES", "1"]).unwrap();
        assert!(scalar.shape.is_empty());
        assert_eq!(scalar.data.len(), 4);
        let zeros = set(&["INT16", "3"]).unwrap();
        assert_eq!(&zeros.data[..], &[0u8; 6]);
        assert!(Tensor::parse_set(&args(&["DOUBLE", "1000000", "1000000"]), 1 << 20).is_err());
    }

    #[test]
    fn get_formats() {
        let f = |s: &[&str]| parse_get_format(&args(s));
        assert_eq!(f(&[]).unwrap(), TensorFormat { meta: true, data: DataFormat::Blob });
        assert_eq!(f(&["META"]).unwrap(), TensorFormat { meta: true, data: DataFormat::None });
        assert_eq!(f(&["values", "meta"]).unwrap(), TensorFormat { meta: true, data: DataFormat::Values });
        assert_eq!(f(&["BLOB", "VALUES"]).unwrap_err().to_string(), "ERR both BLOB and VALUES specified");
        assert_eq!(f(&["JSON"]).unwrap_err().to_string(), "ERR unsupported data format");
        let t = set(&["FLOAT", "2", "VALUES", "2", "3"]).unwrap();
        let meta_values = t.reply(f(&["META", "VALUES"]).unwrap()).unwrap();
        assert_eq!(
            meta_values,
            Reply::Array(vec![
                Reply::bulk_str("dtype"),
                Reply::bulk_str("FLOAT"),
                Reply::bulk_str("shape"),
                Reply::Array(vec![Reply::Int(2)]),
                Reply::bulk_str("values"),
                Reply::Array(vec![Reply::Double(2.0), Reply::Double(3.0)]),
            ])
        );
    }
}
